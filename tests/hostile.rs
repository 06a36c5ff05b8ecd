//! Hostile input (issue 17): every row of the issue's table against the release binary, and
//! the per-unit scale ranges that replace silent wrap-around. Each bad input must end quickly
//! with exit 2, a message naming the file and field (or flag) and the way out, and no output
//! file; each degenerate-but-defined result must come with a reported condition.

mod common;

use mnq::fixed::{QTensor, Scale};
use mnq::units::{self, Aux, Condition, Encoding, Mode, Preset, Unit};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Run mnq, killing it (and failing) if it is still running after `limit`: a hang is a failure.
fn mnq_within(args: &[&str], limit: Duration) -> Output {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_mnq")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run mnq");
    let t0 = Instant::now();
    while child.try_wait().expect("wait for mnq").is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("mnq {args:?} still running after {limit:?} (killed): {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn mnq(args: &[&str]) -> Output {
    mnq_within(args, Duration::from_secs(120))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Exit 2 with every needle in the message.
fn refused(o: &Output, needles: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2: {t}");
    assert!(t.contains("error: "), "{t}");
    for n in needles {
        assert!(t.contains(n), "message should mention '{n}': {t}");
    }
}

/// A copy of the bundled model (manifest and weights) under `dir/m`.
fn model_copy(dir: &Path) -> PathBuf {
    let src = root().join("sim/models/deit_tiny_fmnist");
    let dst = dir.join("m");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["manifest.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// A `.npy` of uint8 whose header claims `shape` over `data` bytes.
fn lying_npy(path: &Path, shape: &str, data: usize) {
    let mut h = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend(std::iter::repeat_n(7u8, data));
    std::fs::write(path, v).unwrap();
}

fn eval_json(d: &Path, unit: &str, extra: &[&str], input: &str) -> (Output, PathBuf) {
    let inp = d.join(format!("in_{}.json", std::process::id()));
    std::fs::write(&inp, input).unwrap();
    let out = d.join("out.json");
    let _ = std::fs::remove_file(&out);
    let mut args = vec!["eval", "--unit", unit, "--input", inp.to_str().unwrap(), "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    (mnq(&args), out)
}

// Row 1: "depth": 1000000000 — memory grew until killed.
#[test]
fn huge_manifest_sizes_are_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path());
    edit_json(&m.join("manifest.json"), |v| v["depth"] = serde_json::json!(1_000_000_000u64));
    let o = mnq_within(&["infer", "--model", m.to_str().unwrap(), "--images", "10"], Duration::from_secs(30));
    refused(&o, &["manifest.json", "depth 1000000000", "bound of 1024"]);
    // Other sizes: a huge width, an attention matrix beyond the per-layer bound, a Swin stage.
    for (field, value, needle) in
        [("embed_dim", 3_000_000u64, "embed_dim 3000000"), ("num_classes", 1u64 << 40, "num_classes"), ("img_size", 8192, "tokens")]
    {
        let m2 = model_copy(&d.path().join(field));
        edit_json(&m2.join("manifest.json"), |v| {
            v[field] = serde_json::json!(value);
            if field == "img_size" {
                v["patch_size"] = serde_json::json!(8);
            }
        });
        let o = mnq_within(&["infer", "--model", m2.to_str().unwrap(), "--images", "1"], Duration::from_secs(30));
        refused(&o, &["manifest.json", needle]);
    }
    let sw = d.path().join("swin");
    std::fs::create_dir_all(&sw).unwrap();
    for f in ["manifest.json", "model.safetensors"] {
        std::fs::copy(root().join("tests/fixtures/swin_random").join(f), sw.join(f)).unwrap();
    }
    edit_json(&sw.join("manifest.json"), |v| {
        v["swin"]["depths"] = serde_json::json!([1_000_000_000u64, 2, 2]);
        v["depth"] = serde_json::json!(1_000_000_004u64);
    });
    let o = mnq_within(&["infer", "--model", sw.to_str().unwrap(), "--images", "1"], Duration::from_secs(30));
    refused(&o, &["manifest.json", "depth"]);
}

// Row 2: --threads 100000 hung with no message.
#[test]
fn thread_counts_are_bounded() {
    let o = mnq_within(&["infer", "--images", "10", "--threads", "100000"], Duration::from_secs(30));
    refused(&o, &["--threads 100000", "bound of 1024"]);
    let o = mnq_within(&["calibrate", "--threads", "0"], Duration::from_secs(30));
    refused(&o, &["--threads must be at least 1"]);
    // `mnq run --threads 0` used to become 1 silently.
    let o = mnq_within(&["run", "--threads", "0"], Duration::from_secs(30));
    refused(&o, &["--threads must be at least 1"]);
    let o = mnq_within(&["cost", "--jobs", "5000", "--no-synth"], Duration::from_secs(30));
    refused(&o, &["--jobs 5000"]);
}

// Row 3: an .npy header claiming (10^12, 28, 28) over 1.5 MB aborted with an allocation failure.
#[test]
fn npy_headers_are_checked_against_the_file() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    lying_npy(&data.join("eval_images.npy"), "(1000000000000, 28, 28)", 1_568_000);
    let o = mnq_within(&["infer", "--data", data.to_str().unwrap(), "--images", "10"], Duration::from_secs(60));
    refused(&o, &["eval_images.npy", "'shape'", "(1000000000000, 28, 28)", "truncated"]);
    // The same lie as the labels, and as an eval input.
    std::fs::copy(root().join("sim/data/fashion_mnist/eval_images.npy"), data.join("eval_images.npy")).unwrap();
    lying_npy(&data.join("eval_labels.npy"), "(100000000000000,)", 2000);
    let o = mnq_within(&["infer", "--data", data.to_str().unwrap(), "--images", "10"], Duration::from_secs(60));
    refused(&o, &["eval_labels.npy", "'shape'"]);
    let inp = d.path().join("x.npy");
    lying_npy(&inp, "(1000000000000, 28, 28)", 1_568_000);
    let out = d.path().join("o.json");
    let o = mnq(&[
        "eval",
        "--unit",
        "gelu_ivit",
        "--bits",
        "8",
        "--scale",
        "0.1",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    refused(&o, &["x.npy", "'shape'"]);
    assert!(!out.exists());
    // A header longer than the file, and a shape that overflows the address space.
    std::fs::write(&inp, b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{").unwrap();
    let o = mnq(&[
        "eval",
        "--unit",
        "gelu_ivit",
        "--bits",
        "8",
        "--scale",
        "0.1",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    refused(&o, &["x.npy", "header claims"]);
    lying_npy(&inp, "(4294967296, 4294967296, 4294967296)", 8);
    let o = mnq(&[
        "eval",
        "--unit",
        "gelu_ivit",
        "--bits",
        "8",
        "--scale",
        "0.1",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    refused(&o, &["x.npy", "'shape'"]);
}

// Rows 4–6: extreme --scale gave wrapped outputs, "scale": -0.0 or null, and silent all-zero rows.
#[test]
fn extreme_scales_are_refused_with_the_range() {
    let d = tempfile::tempdir().unwrap();
    let x = r#"{"x":[0.1,0.2,-0.3,0.4],"shape":[1,4]}"#;
    for (unit, preset, scale) in [
        ("gelu_ibert", "reference", "1e-300"),
        ("gelu_ibert", "reference", "1e-10"),
        ("gelu_ibert", "adapted", "1e-300"),
        ("gelu_ibert", "reference", "1e300"),
        ("gelu_ivit", "reference", "1e300"),
        ("gelu_ivit", "adapted", "1e-300"),
        ("softmax_ivit", "reference", "1e-300"),
        ("softmax_ibert", "reference", "1e-300"),
        ("softmax_fqvit", "reference", "1e-300"),
    ] {
        let (o, out) = eval_json(d.path(), unit, &["--bits", "8", "--preset", preset, "--scale", scale], x);
        refused(&o, &[unit, &format!("input scale {scale}"), "outside the range", "for 8-bit inputs in rows of 4: ["]);
        assert!(!out.exists(), "{unit} at {scale} wrote an output");
    }
    // Inside the range, every output scale is a finite number and the outputs are sane.
    for (unit, scale) in
        [("gelu_ibert", "1e-6"), ("gelu_ibert", "1e6"), ("gelu_ivit", "1e30"), ("softmax_ivit", "1e-9"), ("softmax_ivit", "1e300")]
    {
        let (o, out) = eval_json(d.path(), unit, &["--bits", "8", "--preset", "reference", "--scale", scale], x);
        assert!(o.status.success(), "{unit} at {scale}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let s = v["scale"].as_f64().unwrap_or_else(|| panic!("{unit} at {scale}: scale {}", v["scale"]));
        assert!(s.is_finite() && s != 0.0, "{unit} at {scale}: scale {s}");
        for q in v["values"].as_array().unwrap() {
            assert!(q.as_i64().unwrap().abs() < 1 << 40, "{unit} at {scale}: output {q}");
        }
    }
    // gelu_ibert at a coarse scale: defined but degenerate, so reported.
    let (o, out) = eval_json(d.path(), "gelu_ibert", &["--bits", "8", "--preset", "reference", "--scale", "1e6"], x);
    assert!(o.status.success() && text(&o).contains("ErfCollapsed"), "{}", text(&o));
    assert!(std::fs::read_to_string(&out).unwrap().contains("erf-collapsed"));
    // A uniform row of 200 at 8-bit Shiftmax outputs: every probability rounds to zero, reported.
    let row = format!(r#"{{"q":[{}],"shape":[1,200]}}"#, vec!["3"; 200].join(","));
    let (o, out) = eval_json(d.path(), "softmax_ivit", &["--bits", "8", "--scale", "0.1", "--param", "out_bits=8"], &row);
    assert!(o.status.success() && text(&o).contains("AllZeroRow"), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["conditions"], serde_json::json!([["all-zero-row", 1]]));
    assert!(v["values"].as_array().unwrap().iter().all(|q| q == 0));
}

// Row 7: {"q":[1.5,2]} and {"q":[99999999999999999999]} were accepted at --bits 8.
#[test]
fn integer_inputs_are_integers_in_range() {
    let d = tempfile::tempdir().unwrap();
    let a = ["--bits", "8", "--scale", "0.1"];
    let (o, out) = eval_json(d.path(), "gelu_ivit", &a, r#"{"q":[1.5,2]}"#);
    refused(&o, &["'q' value 1.5 at index 0 is not an integer", "'x'"]);
    assert!(!out.exists());
    let (o, _) = eval_json(d.path(), "gelu_ivit", &a, r#"{"q":[99999999999999999999]}"#);
    refused(&o, &["'q' value", "at index 0"]);
    let (o, _) = eval_json(d.path(), "gelu_ivit", &a, r#"{"q":[9223372036854775808]}"#);
    refused(&o, &["outside the 64-bit integer range"]);
    let (o, _) = eval_json(d.path(), "gelu_ivit", &a, r#"{"q":[1000]}"#);
    refused(&o, &["value 1000 at index 0 is outside the 8-bit signed range [-128, 127]"]);
    let (o, _) = eval_json(d.path(), "gelu_ibert", &["--bits", "32", "--scale", "0.1"], r#"{"q":[1, 4294967296]}"#);
    refused(&o, &["value 4294967296 at index 1 is outside the 32-bit signed range"]);
    let (o, _) = eval_json(d.path(), "requant_ivit", &["--bits", "48", "--scale", "0.1", "--out-scale", "0.5"], r#"{"q":[1e20]}"#);
    refused(&o, &["too large to be an exact integer code"]);
    let (o, _) = eval_json(d.path(), "gelu_ivit", &a, r#"{"q":[1, "2"]}"#);
    refused(&o, &["is not a number"]);
    // Integral floats are integers.
    let (o, out) = eval_json(d.path(), "gelu_ivit", &a, r#"{"q":[1.0, -2]}"#);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.exists());
    // A zero point outside the input format.
    let (o, _) = eval_json(
        d.path(),
        "layernorm_fqvit",
        &["--bits", "8", "--unsigned", "--scale", "0.1", "--out-scale", "0.05", "--zero-point", "-9223372036854775808"],
        r#"{"q":[1,2,3,4],"shape":[1,4],"gamma":[1,1,1,1],"beta":[0,0,0,0]}"#,
    );
    refused(&o, &["zero point -9223372036854775808 is not a code of the 8-bit input format [0, 255]"]);
}

// Row 8: x of ±1e308 was clamped silently.
#[test]
fn clamped_float_inputs_are_counted() {
    let d = tempfile::tempdir().unwrap();
    let (o, out) = eval_json(d.path(), "gelu_ivit", &["--bits", "8", "--scale", "0.1"], r#"{"x":[1e308,-1e308,0.5,20.0]}"#);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("note: 3 of 4 float inputs were beyond the 8-bit range"), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["clamped_inputs"], 3);
    let (o, out) = eval_json(d.path(), "gelu_ivit", &["--bits", "8", "--scale", "0.1"], r#"{"x":[0.5,1.5]}"#);
    assert!(o.status.success() && !text(&o).contains("clamped"), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["clamped_inputs"], 0);
}

// Row 9: --calib-images 0 became 1; cosim --elements 0 was ignored; counts beyond the files.
#[test]
fn zero_and_contradictory_counts_are_refused() {
    let o = mnq(&["infer", "--images", "10", "--calib-images", "0"]);
    refused(&o, &["--calib-images must be at least 1"]);
    let o = mnq(&["cosim", "--elements", "0"]);
    refused(&o, &["--elements must be at least 1"]);
    let o = mnq(&["cosim", "--elements", "1000000000000"]);
    refused(&o, &["--elements 1000000000000 is above"]);
    let o = mnq(&["infer", "--images", "5000"]);
    refused(&o, &["--images 5000", "holds only 2000 images"]);
    let o = mnq(&["run", "--sens-images", "100000"]);
    refused(&o, &["--sens-images 100000", "calib_images.npy holds only"]);
    let o = mnq(&["error", "--unit", "gelu_ivit", "--rows", "100000000000"]);
    refused(&o, &["--rows 100000000000 is above"]);
    // --calib-images with a manifest that has scales contradicts it (it would be ignored).
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path());
    edit_json(&m.join("manifest.json"), |v| {
        v["quant"] = serde_json::json!({"weight_bits": 8, "act_bits": 8, "act_scales": {"patch_embed": 0.1}});
    });
    let o = mnq(&["infer", "--model", m.to_str().unwrap(), "--images", "2", "--calib-images", "16"]);
    refused(&o, &["--calib-images is used only when the manifest has no activation scales"]);
}

// Row 10: --output equal to --input overwrote the input.
#[test]
fn outputs_never_overwrite_inputs() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("in.json");
    let body = r#"{"q":[1,2,3,4],"shape":[1,4]}"#;
    std::fs::write(&inp, body).unwrap();
    let spelled = d.path().join("sub/../in.json");
    std::fs::create_dir_all(d.path().join("sub")).unwrap();
    for out in [&inp, &spelled] {
        let o = mnq(&[
            "eval",
            "--unit",
            "gelu_ivit",
            "--bits",
            "8",
            "--scale",
            "0.1",
            "--input",
            inp.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        refused(&o, &["is also an input", "choose another output path"]);
        assert_eq!(std::fs::read_to_string(&inp).unwrap(), body);
    }
    #[cfg(unix)]
    {
        let link = d.path().join("link.json");
        std::fs::hard_link(&inp, &link).unwrap();
        let o = mnq(&[
            "eval",
            "--unit",
            "gelu_ivit",
            "--bits",
            "8",
            "--scale",
            "0.1",
            "--input",
            inp.to_str().unwrap(),
            "--output",
            link.to_str().unwrap(),
        ]);
        refused(&o, &["is also an input"]);
        assert_eq!(std::fs::read_to_string(&inp).unwrap(), body);
    }
    // A folder as the output file, and infer --json onto the model's manifest.
    let o = mnq(&[
        "eval",
        "--unit",
        "gelu_ivit",
        "--bits",
        "8",
        "--scale",
        "0.1",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        d.path().to_str().unwrap(),
    ]);
    refused(&o, &["the output is written as JSON"]);
    let m = model_copy(d.path());
    let before = std::fs::read(m.join("manifest.json")).unwrap();
    let mf = m.join("manifest.json");
    let o = mnq(&["infer", "--model", m.to_str().unwrap(), "--images", "2", "--json", mf.to_str().unwrap()]);
    refused(&o, &["is also an input"]);
    assert_eq!(std::fs::read(&mf).unwrap(), before);
    // calibrate --out onto the model's own weights.
    let w = m.join("model.safetensors");
    let wb = std::fs::read(&w).unwrap();
    let o = mnq(&["calibrate", "--model", m.to_str().unwrap(), "--images", "2", "--out", w.to_str().unwrap(), "--force"]);
    refused(&o, &["is also an input"]);
    assert_eq!(std::fs::read(&w).unwrap(), wb);
    // mnq run into the model folder.
    let o = mnq(&["run", "--model", m.to_str().unwrap(), "--out", m.to_str().unwrap()]);
    refused(&o, &["is also an input"]);
}

// Row 11: infer --json /proc/x failed only after the whole run.
#[test]
fn unwritable_outputs_fail_before_the_run() {
    let t0 = Instant::now();
    let o = mnq_within(&["infer", "--json", "/proc/x"], Duration::from_secs(30));
    refused(&o, &["/proc/x", "cannot write here", "nothing was run"]);
    assert!(!text(&o).contains("integer top-1"), "the run happened first: {}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("in.json");
    std::fs::write(&inp, r#"{"q":[1,2]}"#).unwrap();
    let o = mnq(&[
        "eval",
        "--unit",
        "gelu_ivit",
        "--bits",
        "8",
        "--scale",
        "0.1",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        "/proc/x/y.json",
    ]);
    refused(&o, &["/proc/x/y.json", "cannot write here"]);
    let o = mnq(&["cosim", "--json", "/proc/x.json"]);
    refused(&o, &["/proc/x.json", "cannot write here"]);
    let o = mnq(&["error", "--unit", "gelu_ivit", "--out", "/proc/units"]);
    refused(&o, &["/proc/units", "cannot write here"]);
}

// ---- The per-unit scale ranges behind rows 4–6 -------------------------------------------

/// Every unit with an auxiliary input that makes it runnable on plain rows of `c`.
fn aux_for(name: &str, c: usize) -> Aux {
    match name {
        n if n.starts_with("layernorm") => Aux {
            gamma: Some((0..c).map(|i| 0.5 + (i % 5) as f32 * 0.2).collect()),
            beta: Some((0..c).map(|i| (i % 3) as f32 * 0.1 - 0.1).collect()),
            out_scale: Some(Scale::PerTensor(0.05)),
            ..Aux::default()
        },
        n if n.starts_with("requant") => Aux { out_scale: Some(Scale::PerTensor(0.05)), ..Aux::default() },
        _ => Aux::default(),
    }
}

fn widths(u: &dyn Unit) -> Vec<u32> {
    let (lo, hi, _) = u.input_bits();
    [2u32, 4, 6, 8, 12, 16, 24, 32, 48].into_iter().filter(|b| (lo..=hi).contains(b)).collect()
}

/// Rows of every code pattern that stresses a datapath: the extremes, a flat row, random codes.
fn stress_rows(bits: u32, signed: bool, c: usize, seed: u64) -> Vec<i64> {
    let (lo, hi) = mnq::fixed::int_range(bits, signed);
    let mut r = common::rng(seed);
    let mut v = Vec::new();
    v.extend((0..c).map(|j| if j == 0 { lo } else { hi }));
    v.extend((0..c).map(|j| if j == 0 { hi } else { lo }));
    v.extend(std::iter::repeat_n(hi, c));
    v.extend(std::iter::repeat_n(lo, c));
    v.extend((0..c).map(|_| rand::Rng::gen_range(&mut r, lo..=hi)));
    v
}

/// What must hold on any output, at any accepted scale: no wrap-around, no absurd values.
fn sane(name: &str, x: &QTensor, out: &units::UnitOutput) -> Result<(), String> {
    let conds: Vec<Condition> = out.conditions.iter().map(|(c, _)| *c).collect();
    for v in out.scale.values() {
        if !v.is_finite() || (v == 0.0 && !conds.contains(&Condition::ZeroGamma)) {
            return Err(format!("output scale {v}"));
        }
    }
    let vals = &out.values;
    let bad = |i: usize, why: &str| Err(format!("output {} at {i} (input {}): {why}", vals[i], x.data()[i]));
    match name {
        "softmax_ibert" => {
            if let Some(i) = vals.iter().position(|&v| !(0..=256).contains(&v)) {
                return bad(i, "outside [0, 2^8]");
            }
        }
        "softmax_ivit" => {
            let top = if conds.contains(&Condition::SumSaturated) { 1i64 << 62 } else { 1 << 15 };
            if let Some(i) = vals.iter().position(|&v| !(0..=top).contains(&v)) {
                return bad(i, "outside the Shiftmax range");
            }
        }
        "softmax_fqvit" | "log2quant_fqvit" => {
            if let Some(i) = vals.iter().position(|&v| !(-1..=15).contains(&v)) {
                return bad(i, "not a 4-bit log2 code");
            }
            assert!(matches!(out.encoding, Encoding::Log2 { .. }));
        }
        "gelu_ibert" | "gelu_ivit" => {
            let y = out.dequantize();
            let xs = x.dequantize();
            let collapsed = conds.contains(&Condition::ErfCollapsed) || conds.contains(&Condition::SumSaturated);
            for (i, (&yi, &xi)) in y.iter().zip(&xs).enumerate() {
                if yi != 0.0 && xi != 0.0 && yi.signum() != xi.signum() && yi.abs() > out.scale.at(i % x.row_len()).abs() * 2.0 {
                    return bad(i, "sign differs from the input");
                }
                if !collapsed && yi.abs() > 1.5 * xi.abs() + 2.0 * out.scale.at(i % x.row_len()).abs() + 1e-300 {
                    return bad(i, "larger than 1.5·|x|");
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[test]
fn scale_ranges_are_intervals_and_hold_what_they_promise() {
    let mut checked = 0usize;
    for name in units::unit_names() {
        for preset in [Preset::Reference, Preset::Adapted] {
            let unit = units::build(name, preset).unwrap();
            let (_, _, sign) = unit.input_bits();
            let signed = sign.unwrap_or(true);
            for bits in widths(unit.as_ref()) {
                for c in [1usize, 197] {
                    let aux = aux_for(name, c);
                    let range = unit.scale_range(bits, c, &aux).unwrap_or_else(|| panic!("{name} {preset} {bits}b: no accepted scale"));
                    assert!(range.lo <= range.hi, "{name} {preset} {bits}b: {range:?}");
                    // The range is exactly where the check accepts (powers of two across f64).
                    for k in (-1074..=1023).step_by(5) {
                        let s = f64::from(k).exp2();
                        let inside = range.lo <= s && s <= range.hi;
                        assert_eq!(
                            unit.scale_fits(s, bits, c, &aux).is_ok(),
                            inside,
                            "{name} {preset} {bits}b rows {c}: 2^{k} vs {range:?}"
                        );
                    }
                    // The scales a quantiser of this width gives a realistic tensor are accepted.
                    if !name.starts_with("log2quant") && !name.starts_with("requant") && bits <= 16 {
                        // LIS keeps c_int·2^n in 64 bits: at 16 bits its logits must span at least ±0.6.
                        let amaxes: &[f64] = if name == "softmax_fqvit" { &[1.0, 8.0, 64.0] } else { &[0.5, 8.0, 64.0] };
                        for &amax in amaxes {
                            let s = amax / ((1u64 << (bits - 1)) as f64);
                            assert!(range.lo <= s && s <= range.hi, "{name} {preset} {bits}b: scale {s} (|x| ≤ {amax}) refused: {range:?}");
                        }
                    }
                    // Across the range, both ends included, every run is sane.
                    let (l0, l1) = (range.lo.log2(), range.hi.min(1e30).log2());
                    for i in 0..=12 {
                        let s = (l0 + (l1 - l0) * f64::from(i) / 12.0).exp2().clamp(range.lo, range.hi);
                        if name == "log2quant_fqvit" && bits > 16 {
                            continue;
                        }
                        let s = if name == "log2quant_fqvit" { 2f64.powi(s.log2().round() as i32).clamp(range.lo, range.hi) } else { s };
                        let q = stress_rows(bits, signed, c, u64::from(bits) + c as u64);
                        let x = QTensor::new(q.clone(), &[q.len() / c, c], Scale::PerTensor(s), bits, signed).unwrap();
                        for mode in [Mode::Integer, Mode::Reference] {
                            let out = unit
                                .run(&x, &aux, mode)
                                .unwrap_or_else(|e| panic!("{name} {preset} {bits}b rows {c} s={s:e} {mode:?}: {e}"));
                            if let Err(e) = sane(name, &x, &out) {
                                panic!("{name} {preset} {bits}b rows {c} s={s:e} {mode:?}: {e}");
                            }
                            checked += 1;
                        }
                    }
                    // Just outside the range: refused, with the range in the message.
                    for s in [range.lo / 4.0, range.hi * 4.0] {
                        if !(s.is_finite() && s > 0.0) || (range.lo..=range.hi).contains(&s) {
                            continue;
                        }
                        let q = stress_rows(bits, signed, c, 1);
                        let x = QTensor::new(q.clone(), &[q.len() / c, c], Scale::PerTensor(s), bits, signed).unwrap();
                        let e = unit.run(&x, &aux, Mode::Integer).unwrap_err().to_string();
                        assert!(e.contains("outside the range") && e.contains('['), "{name} {bits}b at {s:e}: {e}");
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} runs");
}

#[test]
fn degenerate_results_are_reported() {
    // A uniform row longer than 2^ob: I-BERT probabilities of 1/300 at 8 bits round to zero.
    let ibert = units::build("softmax_ibert", Preset::Reference).unwrap();
    let x = QTensor::new(vec![5; 300], &[1, 300], Scale::PerTensor(0.1), 8, true).unwrap();
    for mode in [Mode::Integer, Mode::Reference] {
        let out = ibert.run(&x, &Aux::default(), mode).unwrap();
        assert!(out.values.iter().all(|&v| v == 0));
        assert_eq!(out.conditions, vec![(Condition::AllZeroRow, 1)], "{mode:?}");
    }
    // A normal row is not flagged.
    let x = QTensor::new(vec![5, 1, -3, 0], &[1, 4], Scale::PerTensor(0.1), 8, true).unwrap();
    assert!(ibert.run(&x, &Aux::default(), Mode::Integer).unwrap().conditions.is_empty());
    // LIS: every code is the zero flag in a uniform row of 2^16.
    let lis = units::build("softmax_fqvit", Preset::Reference).unwrap();
    let x = QTensor::new(vec![0; 1 << 16], &[1, 1 << 16], Scale::PerTensor(0.1), 8, true).unwrap();
    let out = lis.run(&x, &Aux::default(), Mode::Integer).unwrap();
    assert!(out.values.iter().all(|&v| v == -1) && out.conditions.contains(&(Condition::AllZeroRow, 1)), "{:?}", out.conditions);
    // The reference i-GELU at 8 bits (erf ∈ {−1, 0}, kernels.md §1.1) is reported; adapted is not.
    let x = QTensor::new((-128..128).collect(), &[1, 256], Scale::PerTensor(8.0 / 127.0), 8, true).unwrap();
    let r = units::build("gelu_ibert", Preset::Reference).unwrap().run(&x, &Aux::default(), Mode::Integer).unwrap();
    assert_eq!(r.conditions, vec![(Condition::ErfCollapsed, 256)]);
    let a = units::build("gelu_ibert", Preset::Adapted).unwrap().run(&x, &Aux::default(), Mode::Integer).unwrap();
    assert!(a.conditions.is_empty(), "{:?}", a.conditions);
    // A 32-bit LayerNorm row spread wider than 2^31: ⌊(2^31−1)/std⌋ = 0, the output is the bias.
    for name in ["layernorm_ivit", "layernorm_ibert"] {
        let u = units::build(name, Preset::Adapted).unwrap();
        let c = 4;
        let q = vec![i64::from(i32::MIN), i64::from(i32::MAX), i64::from(i32::MIN), i64::from(i32::MAX)];
        let x = QTensor::new(q, &[1, c], Scale::PerTensor(1e-3), 32, true).unwrap();
        let out = u.run(&x, &aux_for(name, c), Mode::Integer).unwrap();
        assert!(out.conditions.contains(&(Condition::FactorUnderflow, 1)), "{name}: {:?}", out.conditions);
    }
}

#[test]
fn masked_rows_at_coarse_scales_stay_masked_rows() {
    // c_int = 0 (s > 1.671, reference preset): a fully masked row is still reported as masked
    // (found by tests/properties.rs softmax_mask_is_a_shorter_row: a 1-element masked row).
    let x = QTensor::new(vec![0, 1, 2, 3], &[2, 2], Scale::PerTensor(3.88), 3, true).unwrap();
    let aux = Aux { mask: Some(vec![true, true, false, true].into()), ..Aux::default() };
    for name in ["softmax_ibert", "softmax_fqvit"] {
        let u = units::build(name, Preset::Reference).unwrap();
        for mode in [Mode::Integer, Mode::Reference] {
            let out = u.run(&x, &aux, mode).unwrap();
            assert_eq!(out.conditions, vec![(Condition::MaskedRow, 1), (Condition::ExpUnderflow, 1)], "{name} {mode:?}");
        }
    }
}

#[test]
fn output_scale_and_constant_checks_name_the_fix() {
    // PTF LayerNorm: an output scale so fine that γ/so·2^20 passes the 128-bit datapath.
    let u = units::build("layernorm_fqvit", Preset::Reference).unwrap();
    let x = QTensor::new(vec![1, 2, 3, 4], &[1, 4], Scale::PerTensor(0.1), 8, false).unwrap();
    let mut aux = aux_for("layernorm_fqvit", 4);
    aux.out_scale = Some(Scale::PerTensor(1e-30));
    let e = u.run(&x, &aux, Mode::Integer).unwrap_err().to_string();
    assert!(e.contains("output scale 1e-30 of channel 0 is too fine") && e.contains("at least"), "{e}");
    // Per-channel factors far beyond PTF's 1..8.
    let x = QTensor::new(vec![1, 2, 3, 4], &[1, 4], Scale::PerChannel(vec![1e-9, 1.0, 1.0, 1.0]), 8, false).unwrap();
    let e = u.run(&x, &aux_for("layernorm_fqvit", 4), Mode::Integer).unwrap_err().to_string();
    assert!(e.contains("differ by a factor"), "{e}");
    // Requantiser: an output scale that float32 cannot hold, and a ratio beyond 61-bit outputs.
    let r = units::build("requant_ivit", Preset::Adapted).unwrap();
    let x = QTensor::new(vec![1, 2], &[2], Scale::PerTensor(0.1), 32, true).unwrap();
    let aux = Aux { out_scale: Some(Scale::PerTensor(1e300)), ..Aux::default() };
    assert!(r.run(&x, &aux, Mode::Integer).unwrap_err().to_string().contains("not a normal float32"));
    let aux = Aux { out_scale: Some(Scale::PerTensor(1e-30)), ..Aux::default() };
    let x = QTensor::new(vec![1, 2], &[2], Scale::PerTensor(1e10), 32, true).unwrap();
    let e = r.run(&x, &aux, Mode::Integer).unwrap_err().to_string();
    assert!(e.contains("outside the range") && e.contains("beyond 61-bit outputs"), "{e}");
    // An input shift that would overflow 64-bit words.
    let mut s = units::build("softmax_ivit", Preset::Reference).unwrap();
    s.set_param("upshift", "40").unwrap();
    let x = QTensor::new(vec![1, 2], &[1, 2], Scale::PerTensor(0.1), 24, true).unwrap();
    assert!(s.run(&x, &Aux::default(), Mode::Integer).unwrap_err().to_string().contains("at most 24"));
}
