//! `mnq run` end to end on the bundled model (small: 16 sensitivity and 32 evaluation images at 8 bits).

use std::path::Path;
use std::process::Command;

fn mnq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mnq")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("mnq runs")
}

#[test]
fn run_end_to_end_small() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = mnq(&["run", "--quiet", "--bits", "8", "--sens-images", "16", "--images", "32", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "index.md",
        "results.json",
        "sensitivity_8b.md",
        "sensitivity_8b.csv",
        "sqnr_8b.svg",
        "sqnr_8b.png",
        "table2_rules.md",
        "table3_mapping.md",
        "table4_single_vs_mixed.md",
        "assignment_sqnr-diff_8b.json",
        "assignment_sqnr-output_8b.json",
        "assignment_abs-sqnr-diff_8b.json",
        "pareto_latency_8b.csv",
        "pareto_criterion_latency_8b.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let b = &r["bits"][0];
    assert_eq!(b["bits"], 8);
    let model = mnq::model::Model::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sim/models/deit_tiny_fmnist"))).unwrap();
    // Every rule's assignment file is valid for the model.
    for rule in ["sqnr-diff", "sqnr-output", "abs-sqnr-diff"] {
        let a = mnq::model::Assignment::load(&out.join(format!("assignment_{rule}_8b.json"))).unwrap();
        a.resolve(&model.layers, rule).unwrap();
    }
    // Pareto points are non-dominated (latency up, criterion strictly down for a minimised criterion).
    let pts = b["pareto"]["latency"]["points"].as_array().unwrap();
    assert!(!pts.is_empty());
    for w in pts.windows(2) {
        assert!(w[0]["latency"].as_u64() < w[1]["latency"].as_u64());
        assert!(w[0]["criterion"].as_f64() > w[1]["criterion"].as_f64());
    }
    // The SQNR-diff rule picks, per layer, the lowest diff in the table.
    let table = &b["table"]["layers"];
    let rule = &b["rules"][0]["assignment"];
    for l in table.as_array().unwrap() {
        let best = l["cells"]
            .as_array()
            .unwrap()
            .iter()
            .min_by(|x, y| x["sqnr_diff_db"].as_f64().unwrap().total_cmp(&y["sqnr_diff_db"].as_f64().unwrap()))
            .unwrap();
        assert_eq!(rule[l["name"].as_str().unwrap()], best["unit"]);
    }
    // Accuracy entries are fractions.
    for a in b["accuracy"].as_array().unwrap() {
        let t = a["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&t));
    }
}

#[test]
fn bad_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = mnq(&["run", "--quiet", "--model", "/nonexistent/model", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/model"));
    assert!(!out.exists());
    // A latency budget below every assignment: the error names the cheapest.
    let o = mnq(&[
        "run",
        "--quiet",
        "--bits",
        "8",
        "--sens-images",
        "4",
        "--images",
        "4",
        "--latency-budget",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("latency"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary folder left behind");
    // An area budget without a cost table.
    let o = mnq(&[
        "run",
        "--quiet",
        "--bits",
        "8",
        "--area-budget",
        "100",
        "--cost-table",
        "/nonexistent/cost.json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("mnq cost"));
    assert!(!out.exists());
}
