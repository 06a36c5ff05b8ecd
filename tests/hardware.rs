//! Hardware chain: the committed Verilog is what the generator writes, it lints clean under
//! `verilator -Wall` (with the justified waivers of `testbenches/lint.vlt`), yosys synthesises
//! it with no combinational loop (`check -assert`) to the committed cost table's figures, and under Verilator it equals the cycle model on every beat and every cycle, which in
//! turn equals the golden model — softmaxes on masked (Swin) rows too, the multi-method softmaxes
//! with modes switching between rows. Needs verilator and
//! yosys (installed by `.ci/run`).

use std::path::PathBuf;
use std::process::Command;

fn mnq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mnq")).args(args).current_dir(root()).output().expect("run mnq")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn rtl_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("rtl"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "v"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "rtl/ holds no Verilog");
    v
}

#[test]
fn committed_rtl_is_regenerated_byte_identically() {
    let o = mnq(&["rtl", "--check"]);
    assert!(o.status.success(), "rtl/ differs from the generator:\n{}", text(&o));
}

#[test]
fn verilator_lint_wall_is_clean() {
    for f in rtl_files() {
        let o = Command::new("verilator")
            .arg("--lint-only")
            .arg("-Wall")
            .arg(root().join("testbenches/lint.vlt"))
            .arg(&f)
            .output()
            .expect("verilator is required: apt-get install -y verilator");
        assert!(o.status.success(), "{}: {}", f.display(), text(&o));
    }
}

#[test]
fn yosys_synthesises_every_file_to_the_committed_areas() {
    // The ASIC-like script of `mnq cost` (word-level synthesis with `check -assert` against
    // combinational loops, then gates): every committed file synthesises, and to exactly the
    // figures of the committed cost table.
    let d = tempfile::tempdir().unwrap();
    let (out, work) = (d.path().join("out"), d.path().join("work"));
    let o =
        mnq(&["cost", "--target", "asic", "--no-plots", "--jobs", "2", "--out", out.to_str().unwrap(), "--work", work.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let fresh = mnq::cost::Table::load(&out.join("cost.json")).unwrap();
    let committed = mnq::cost::Table::load(&root().join("reports/cost/cost.json")).unwrap();
    assert_eq!(fresh.rows.len(), rtl_files().len());
    for r in &fresh.rows {
        assert!(matches!(r.asic, Some(mnq::cost::Outcome::Ok(_))), "{}: {:?}", r.name, r.asic);
        let c = committed.row(&r.unit, r.bits, r.lanes).unwrap();
        assert_eq!(r.asic, c.asic, "{}: synthesis differs from reports/cost/cost.json: rerun `mnq cost`", r.name);
    }
}

#[test]
fn cosim_default_set_is_cycle_exact() {
    let work = tempfile::tempdir().unwrap();
    let o = mnq(&["cosim", "--elements", "100000", "--work", work.path().to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let lines: Vec<&str> = t.lines().filter(|l| l.contains("cycle-exact; golden exact")).collect();
    assert_eq!(lines.len(), rtl_files().len(), "{t}");
    for l in lines {
        let beats: usize = l.split(": ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(beats >= 25_000, "{l}");
        // Every softmax also streams Swin's shifted-window masks (N = 49, 16, 4) and corner masks.
        if l.starts_with("softmax") {
            let masked: usize =
                l.split("golden exact; ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
            assert!(masked >= 2_000 && l.contains(" masked elements"), "{l}");
        }
        // The multi-method softmaxes switch modes between rows, often.
        if l.starts_with("softmax_multi") {
            let switches: usize =
                l.split("masked elements; ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
            assert!(switches >= 200 && l.contains(" mode switches between rows"), "{l}");
        }
    }
}

#[test]
fn cosim_detects_an_rtl_that_ignores_the_mask() {
    // With the mask input tied to 0 the unmasked streams still agree; the first masked stream
    // (Swin, N = 49: stream 3) must show mismatches.
    let d = tempfile::tempdir().unwrap();
    let v = std::fs::read_to_string(root().join("rtl/softmax_ivit_8b_l1.v")).unwrap();
    assert_eq!(v.matches("row$in_mask = in_mask;").count(), 1);
    std::fs::write(d.path().join("softmax_ivit_8b_l1.v"), v.replace("row$in_mask = in_mask;", "row$in_mask = 1'b0;")).unwrap();
    let work = d.path().join("work");
    let o = mnq(&[
        "cosim",
        "--unit",
        "softmax_ivit",
        "--bits",
        "8",
        "--lanes",
        "1",
        "--elements",
        "2000",
        "--rtl",
        d.path().to_str().unwrap(),
        "--work",
        work.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("mismatches; first: stream 3, beat"), "{}", text(&o));
}

#[test]
fn cosim_detects_a_wrong_rtl() {
    // An unsigned instead of a signed multiplier must show up as mismatches.
    let d = tempfile::tempdir().unwrap();
    let src = root().join("rtl/gelu_ibert_8b_l1.v");
    let v = std::fs::read_to_string(&src).unwrap();
    assert!(v.contains("$signed(a) * $signed(b)"));
    std::fs::write(d.path().join("gelu_ibert_8b_l1.v"), v.replace("$signed(a) * $signed(b)", "a * b")).unwrap();
    let work = d.path().join("work");
    let o = mnq(&[
        "cosim",
        "--unit",
        "gelu_ibert",
        "--bits",
        "8",
        "--lanes",
        "1",
        "--elements",
        "5000",
        "--rtl",
        d.path().to_str().unwrap(),
        "--work",
        work.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("mismatches; first: stream 0, beat"), "{}", text(&o));
}

#[test]
fn cosim_detects_a_multi_softmax_that_ignores_the_mode() {
    // With the mode register held at the first method, every row runs I-BERT: the I-ViT and
    // FQ-ViT rows of the mixed streams must show mismatches.
    let d = tempfile::tempdir().unwrap();
    let name = "softmax_multi_ibert_fqvit_ivit_8b_l1";
    let v = std::fs::read_to_string(root().join(format!("rtl/{name}.v"))).unwrap();
    assert_eq!(v.matches("mode$d = lmode;").count(), 1);
    std::fs::write(d.path().join(format!("{name}.v")), v.replace("mode$d = lmode;", "mode$d = code0;")).unwrap();
    let work = d.path().join("work");
    let o = mnq(&[
        "cosim",
        "--unit",
        "softmax_multi",
        "--methods",
        "ivit,fqvit,ibert",
        "--bits",
        "8",
        "--lanes",
        "1",
        "--elements",
        "2000",
        "--rtl",
        d.path().to_str().unwrap(),
        "--work",
        work.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("mismatches; first: stream 0, beat"), "{}", text(&o));
}

#[test]
fn impossible_configurations_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().to_str().unwrap();
    for (args, needle) in [
        (vec!["rtl", "--unit", "gelu_ibert", "--lanes", "3", "--out", out], "LANES = 3 is not supported"),
        (vec!["rtl", "--unit", "gelu_ibert", "--bits", "7", "--out", out], "7-bit inputs are not generated"),
        (vec!["rtl", "--unit", "softmax_tanh", "--out", out], "has no hardware model yet"),
        (vec!["rtl", "--unit", "layernorm_fqvit", "--bits", "4", "--out", out], "supported widths [6, 8]"),
        (vec!["rtl", "--unit", "softmax_multi", "--methods", "ivit", "--out", out], "is one method: its unit is softmax_ivit"),
        (vec!["rtl", "--unit", "softmax_multi", "--methods", "ivit,ivit", "--out", out], "names a method twice"),
        (vec!["rtl", "--unit", "softmax_multi", "--methods", "ibert,tanh", "--out", out], "'tanh' is not a method"),
        (vec!["rtl", "--unit", "softmax_multi", "--lanes", "2", "--out", out], "LANES = 2 is not generated for softmax_multi"),
        (vec!["rtl", "--unit", "softmax_multi", "--bits", "4", "--out", out], "supported widths [6, 8]"),
        (
            vec!["rtl", "--unit", "softmax_ivit", "--methods", "ibert,ivit", "--out", out],
            "--methods selects the methods of --unit softmax_multi",
        ),
    ] {
        let o = mnq(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(needle), "{}", text(&o));
    }
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "nothing may be generated for a refused configuration");
}

#[test]
fn missing_verilator_names_the_package() {
    let o = Command::new(env!("CARGO_BIN_EXE_mnq"))
        .args(["cosim", "--elements", "10"])
        .current_dir(root())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("apt-get install -y verilator"), "{}", text(&o));
}
