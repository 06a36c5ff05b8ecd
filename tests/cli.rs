//! The `mnq` command end to end: golden checks, eval, error, and bad input (exit 2, a message
//! naming the problem, no output file written, nothing the user had overwritten).

mod common;

use ndarray::{arr1, arr2};
use ndarray_npy::WriteNpyExt;
use std::path::Path;
use std::process::{Command, Output};

fn mnq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnq")).args(args).output().expect("run mnq")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn golden_folder_is_exact() {
    let dir = common::golden_dir();
    let o = mnq(&["golden", dir.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let n = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count();
    assert_eq!(t.lines().filter(|l| l.contains(": exact,")).count(), n, "{t}");
    assert!(t.contains(&format!("{n} cases: {n} exact, 0 mismatching, 0 unreadable")), "{t}");
}

#[test]
fn golden_reports_mismatch_and_bad_files() {
    let d = tempfile::tempdir().unwrap();
    // A real case with one output altered must be reported with its index and both values.
    let src = common::golden_dir().join("ivit_softmax_in8_out8.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    let old = v["runs"]["f64"]["out_int"][5].as_i64().unwrap();
    v["runs"]["f64"]["out_int"][5] = serde_json::json!(old + 1);
    let p = d.path().join("altered.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let o = mnq(&["golden", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("1 of 1182 outputs mismatch; first at index 5: expected {}, got {old}", old + 1)), "{}", text(&o));
    // Truncated JSON and an unknown kernel: exit 2 with the reason.
    let t = d.path().join("trunc.json");
    std::fs::write(&t, "{\"id\": \"x\", \"family\": ").unwrap();
    let o = mnq(&["golden", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not valid JSON"), "{}", text(&o));
    v["kernel"] = serde_json::json!("IntTanh");
    std::fs::write(&p, v.to_string()).unwrap();
    let o = mnq(&["golden", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown kernel 'IntTanh'"), "{}", text(&o));
}

#[test]
fn golden_reports_every_file_with_the_worst_status() {
    let d = tempfile::tempdir().unwrap();
    let good = common::golden_dir().join("ivit_softmax_in8_out8.json");
    let text_of = std::fs::read_to_string(&good).unwrap();
    std::fs::write(d.path().join("a_good.json"), &text_of).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text_of).unwrap();
    let old = v["runs"]["f64"]["out_int"][0].as_i64().unwrap();
    v["runs"]["f64"]["out_int"][0] = serde_json::json!(old + 1);
    std::fs::write(d.path().join("b_altered.json"), v.to_string()).unwrap();
    std::fs::write(d.path().join("c_trunc.json"), &text_of[..text_of.len() / 2]).unwrap();
    std::fs::write(d.path().join("d_good.json"), &text_of).unwrap();
    // A mismatch alone: status 1, every file listed.
    let o = mnq(&["golden", d.path().join("a_good.json").to_str().unwrap(), d.path().join("b_altered.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // With an unreadable file in the folder: status 2, and the files after it still run.
    let o = mnq(&["golden", d.path().to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert_eq!(t.lines().filter(|l| l.contains(": exact,")).count(), 2, "{t}");
    assert!(t.contains("c_trunc.json: unreadable:") && t.contains("not valid JSON"), "{t}");
    assert!(t.contains("1 of 1182 outputs mismatch"), "{t}");
    assert!(t.contains("4 cases: 2 exact, 1 mismatching, 1 unreadable"), "{t}");
}

#[test]
fn units_lists_every_unit() {
    let o = mnq(&["units", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    for n in [
        "softmax_ibert",
        "softmax_ivit",
        "softmax_fqvit",
        "gelu_ibert",
        "gelu_ivit",
        "layernorm_ibert",
        "layernorm_ivit",
        "layernorm_fqvit",
        "requant_ivit",
        "log2quant_fqvit",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(v[0]["internal_width_bits"]["reference/8b"].as_u64().unwrap() > 8);
}

fn eval(args: &[&str]) -> Output {
    let mut a = vec!["eval"];
    a.extend_from_slice(args);
    mnq(&a)
}

#[test]
fn eval_json_ints_floats_and_npy() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("in.json");
    let out = d.path().join("out.json");
    std::fs::write(&inp, r#"{"q": [0, -10, -40, 5], "shape": [1, 4]}"#).unwrap();
    let o = eval(&[
        "--unit",
        "softmax_ivit",
        "--bits",
        "8",
        "--scale",
        "0.1",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["shape"], serde_json::json!([1, 4]));
    assert_eq!(v["scale"].as_f64().unwrap(), 2f64.powi(-15));
    let vals: Vec<i64> = v["values"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    assert!(vals[3] > vals[0] && vals[0] > vals[1] && vals[1] > vals[2], "{vals:?}");
    // Floats are quantised first: x / 0.1 gives the same codes.
    std::fs::write(&inp, r#"{"x": [0.0, -1.0, -4.0, 0.5], "shape": [1, 4]}"#).unwrap();
    let out2 = d.path().join("out2.json");
    let o = eval(&[
        "--unit",
        "softmax_ivit",
        "--bits",
        "8",
        "--scale",
        "0.1",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out2).unwrap()).unwrap();
    assert_eq!(v["values"], v2["values"]);
    // .npy integers (int8) and LayerNorm with defaults from the JSON extras.
    let npy = d.path().join("in.npy");
    arr2(&[[1i8, 2, 3, 4], [4, 3, 2, 1]]).write_npy(std::fs::File::create(&npy).unwrap()).unwrap();
    let out3 = d.path().join("out3.json");
    let o = eval(&[
        "--unit",
        "gelu_ivit",
        "--preset",
        "adapted",
        "--bits",
        "8",
        "--scale",
        "0.05",
        "--input",
        npy.to_str().unwrap(),
        "--output",
        out3.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v3: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out3).unwrap()).unwrap();
    assert_eq!(v3["shape"], serde_json::json!([2, 4]));
}

/// Run a failing eval and check: exit 2, the message contains `needle`, `out` untouched.
fn refused(args: &[&str], out: &Path, needle: &str) {
    let before = std::fs::read(out).ok();
    let o = eval(args);
    assert_eq!(o.status.code(), Some(2), "expected exit 2 for {args:?}: {}", text(&o));
    assert!(text(&o).contains(needle), "message for {args:?} should mention '{needle}': {}", text(&o));
    assert_eq!(std::fs::read(out).ok(), before, "output file changed on failure");
    let stray: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temporary files left behind: {stray:?}");
}

#[test]
fn eval_refuses_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let good = p("good.json");
    std::fs::write(&good, r#"{"q": [1, 2, 3, 4], "shape": [2, 2]}"#).unwrap();
    let out = p("out.json");
    let o = out.to_str().unwrap();
    let g = good.to_str().unwrap();
    // Missing output: nothing may be created.
    refused(&["--unit", "softmax_tanh", "--bits", "8", "--scale", "0.1", "--input", g, "--output", o], &out, "unknown unit 'softmax_tanh'");
    refused(&["--unit", "gelu_ivit", "--bits", "17", "--scale", "0.1", "--input", g, "--output", o], &out, "not supported");
    refused(&["--unit", "gelu_ivit", "--bits", "8", "--scale", "0", "--input", g, "--output", o], &out, "not a positive finite number");
    refused(&["--unit", "gelu_ivit", "--bits", "8", "--scale", "-0.5", "--input", g, "--output", o], &out, "not a positive finite number");
    refused(&["--unit", "gelu_ivit", "--bits", "8", "--scale", "inf", "--input", g, "--output", o], &out, "not a positive finite number");
    refused(&["--unit", "gelu_ivit", "--bits", "2", "--scale", "0.1", "--input", g, "--output", o], &out, "outside the 2-bit signed range");
    // An existing output file survives a failed run.
    std::fs::write(&out, "precious").unwrap();
    let shape = p("shape.json");
    std::fs::write(&shape, r#"{"q": [1, 2, 3], "shape": [2, 2]}"#).unwrap();
    refused(
        &["--unit", "gelu_ivit", "--bits", "8", "--scale", "0.1", "--input", shape.to_str().unwrap(), "--output", o],
        &out,
        "needs 4 values",
    );
    let trunc = p("trunc.json");
    std::fs::write(&trunc, r#"{"q": [1, 2, "#).unwrap();
    refused(
        &["--unit", "gelu_ivit", "--bits", "8", "--scale", "0.1", "--input", trunc.to_str().unwrap(), "--output", o],
        &out,
        "truncated",
    );
    let nan = p("nan.npy");
    arr1(&[0.5f32, f32::NAN]).write_npy(std::fs::File::create(&nan).unwrap()).unwrap();
    refused(&["--unit", "gelu_ivit", "--bits", "8", "--scale", "0.1", "--input", nan.to_str().unwrap(), "--output", o], &out, "not finite");
    let tnpy = p("trunc.npy");
    let full = p("full.npy");
    arr1(&[1i16, 2, 3, 4, 5, 6]).write_npy(std::fs::File::create(&full).unwrap()).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&tnpy, &bytes[..bytes.len() - 5]).unwrap();
    refused(&["--unit", "gelu_ivit", "--bits", "8", "--scale", "0.1", "--input", tnpy.to_str().unwrap(), "--output", o], &out, "truncated");
    refused(
        &["--unit", "gelu_ivit", "--bits", "8", "--scale", "0.1", "--input", p("missing.json").to_str().unwrap(), "--output", o],
        &out,
        "missing.json",
    );
    refused(
        &["--unit", "layernorm_fqvit", "--bits", "8", "--unsigned", "--scale", "0.1", "--input", g, "--output", o],
        &out,
        "LayerNorm weight (gamma) is missing",
    );
    let ln = p("ln.json");
    std::fs::write(&ln, r#"{"q": [1, 2, 3, 4], "shape": [2, 2], "gamma": [1, 1], "beta": [0, 0]}"#).unwrap();
    refused(
        &["--unit", "layernorm_fqvit", "--bits", "8", "--unsigned", "--scale", "0.1", "--input", ln.to_str().unwrap(), "--output", o],
        &out,
        "--out-scale",
    );
    refused(
        &["--unit", "gelu_ivit", "--param", "bogus=1", "--bits", "8", "--scale", "0.1", "--input", g, "--output", o],
        &out,
        "no such parameter",
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
}

#[test]
fn error_writes_json_and_plots() {
    let d = tempfile::tempdir().unwrap();
    let o =
        mnq(&["error", "--unit", "gelu_ibert", "--preset", "adapted", "--bits", "8", "--rows", "4", "--out", d.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "gelu_ibert_8b_adapted.json",
        "gelu_ibert_8b_adapted_transfer.svg",
        "gelu_ibert_8b_adapted_transfer.png",
        "gelu_ibert_8b_adapted_error_hist.svg",
        "gelu_ibert_8b_adapted_error_hist.png",
    ] {
        let p = d.path().join(f);
        assert!(p.is_file() && std::fs::metadata(&p).unwrap().len() > 100, "{f} missing or empty");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("gelu_ibert_8b_adapted.json")).unwrap()).unwrap();
    assert!(v["vs_float"]["sqnr_db"].as_f64().unwrap() > 30.0, "{v}");
    let o = mnq(&["error", "--unit", "requant_ivit", "--bits", "8", "--out", d.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no float counterpart"), "{}", text(&o));
}

#[test]
fn committed_unit_reports_are_reproduced() {
    // The figures committed in reports/units are what the shipped code computes now.
    let d = tempfile::tempdir().unwrap();
    for (unit, preset) in [("softmax_ivit", "reference"), ("gelu_ibert", "adapted"), ("layernorm_fqvit", "reference")] {
        let o = mnq(&["error", "--unit", unit, "--preset", preset, "--bits", "8", "--no-plots", "--out", d.path().to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let name = format!("{unit}_8b_{preset}.json");
        let fresh: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join(&name)).unwrap()).unwrap();
        let committed: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/units").join(&name)).unwrap(),
        )
        .unwrap();
        for key in ["vs_float", "vs_float_on_quantised_input", "input_quantisation", "declared_width_bits", "params"] {
            assert_eq!(fresh[key], committed[key], "{name}: '{key}' differs from the committed report; rerun the main job");
        }
    }
}
