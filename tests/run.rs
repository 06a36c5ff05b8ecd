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
        "attribution_8b.md",
        "attribution_8b.csv",
        "attribution_8b.json",
        "attribution_8b.svg",
        "attribution_8b.png",
        "ranges_8b.md",
        "ranges_8b.csv",
        "ranges_8b.json",
        "ranges_8b.svg",
        "ranges_8b.png",
        "summary.json",
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
    // The attribution's all-integer variant is the rule's model the accuracy step evaluated.
    let at = &r["attribution"][0]["attribution"];
    let rule_acc = b["accuracy"].as_array().unwrap().iter().find(|a| a["name"] == "rule_sqnr-diff").unwrap();
    assert_eq!(at["results"][0]["variant"]["name"], "integer");
    assert_eq!(at["results"][0]["top1"], rule_acc["top1"]);
    assert_eq!(at["results"][0]["agreement"], rule_acc["agreement"]);
    assert_eq!(at["float_top1"], r["float_top1"]);
    let n_layers = table.as_array().unwrap().len();
    assert_eq!(at["results"].as_array().unwrap().len(), 6 + n_layers, "integer, linear only, units only, 3 op kinds, one per layer");
    // The range profile: one row per layer and method, figures within their formats.
    let rj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("ranges_8b.json")).unwrap()).unwrap();
    let rows = rj["layers"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * n_layers);
    for row in rows {
        let bits = row["format"]["bits"].as_f64().unwrap();
        let used = row["bits_used"].as_f64().unwrap();
        assert!((0.0..=bits).contains(&used), "{row}");
        let sat = row["saturated_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&sat), "{row}");
        let (lo, hi) = (row["float_input"][0].as_f64().unwrap(), row["float_input"][1].as_f64().unwrap());
        assert!(lo <= hi, "{row}");
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

/// Area of one instance of `unit` at `bits` as the run computes it from the committed cost
/// table: logic and flip-flops plus the row buffers at 1.5 NAND2-eq per SRAM bit.
fn unit_area(t: &mnq::cost::Table, unit: &str, bits: u32) -> f64 {
    let a = t.area(unit, bits, 1).unwrap();
    a.nand2_eq + mnq::study::SRAM_NAND2_EQ_PER_BIT * a.memory_bits as f64
}

#[test]
fn dataflow_area_budget_uses_the_committed_cost_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t = mnq::cost::Table::load(&root.join("reports/cost/cost.json")).unwrap();
    let model = mnq::model::Model::load(&root.join("sim/models/deit_tiny_fmnist")).unwrap();
    // Dataflow: one unit per layer, so the smallest area is the cheapest hardware unit of each layer's op.
    let hw = |op: mnq::units::Op| -> Vec<String> {
        t.rows.iter().filter(|r| r.bits == 8 && r.lanes == 1 && r.op == op.name()).map(|r| r.unit.clone()).collect()
    };
    let cheapest: f64 = model.layers.iter().map(|l| hw(l.op).iter().map(|u| unit_area(&t, u, 8)).fold(f64::INFINITY, f64::min)).sum();
    let budget = (cheapest * 1.05).ceil();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let b = budget.to_string();
    let o = mnq(&[
        "run",
        "--quiet",
        "--bits",
        "8",
        "--sens-images",
        "8",
        "--images",
        "8",
        "--arch",
        "dataflow",
        "--area-budget",
        &b,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["pareto_area_8b.csv", "pareto_area_8b.md", "pareto_criterion_area_8b.svg", "pareto_criterion_area_8b.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let s = &r["bits"][0]["budget_solution"];
    let area = s["area"].as_f64().unwrap();
    assert!(area <= budget && area >= cheapest, "{area} outside [{cheapest}, {budget}]");
    // The area is the sum over layers of the chosen units' areas in the cost table.
    let a = s["assignment"].as_object().unwrap();
    assert_eq!(a.len(), model.layers.len());
    let sum: f64 = a.values().map(|u| unit_area(&t, u.as_str().unwrap(), 8)).sum();
    assert!((sum - area).abs() < 1e-6, "dataflow area {area}, cost table sum {sum}");
    // Every point of the area front is non-dominated: area up, criterion strictly down.
    let pts = r["bits"][0]["pareto"]["area"]["points"].as_array().unwrap();
    assert!(pts.len() >= 2);
    for w in pts.windows(2) {
        assert!(w[0]["area"].as_f64() < w[1]["area"].as_f64());
        assert!(w[0]["criterion"].as_f64() > w[1]["criterion"].as_f64());
    }
    // A budget below the cheapest assignment is refused, naming the smallest achievable area; nothing written.
    let out2 = dir.path().join("r2");
    let low = (cheapest * 0.9).floor().to_string();
    let o = mnq(&[
        "run",
        "--quiet",
        "--bits",
        "8",
        "--sens-images",
        "4",
        "--images",
        "4",
        "--arch",
        "dataflow",
        "--area-budget",
        &low,
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("smallest achievable area"), "{err}");
    assert!(!out2.exists());
}

#[test]
fn area_metric_lut6_takes_the_xilinx_column_and_a_table_without_it_is_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t = mnq::cost::Table::load(&root.join("reports/cost/cost.json")).unwrap();
    let lut6 = |u: &str| t.luts(u, 8, 1, mnq::cost::Target::Xilinx).unwrap() as f64;
    let model = mnq::model::Model::load(&root.join("sim/models/deit_tiny_fmnist")).unwrap();
    let hw = |op: mnq::units::Op| -> Vec<String> {
        t.rows.iter().filter(|r| r.bits == 8 && r.lanes == 1 && r.op == op.name()).map(|r| r.unit.clone()).collect()
    };
    let cheapest: f64 = model.layers.iter().map(|l| hw(l.op).iter().map(|u| lut6(u)).fold(f64::INFINITY, f64::min)).sum();
    let budget = (cheapest * 1.05).ceil().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let args = |out: &Path, table: &Path| -> Vec<String> {
        [
            "run",
            "--quiet",
            "--bits",
            "8",
            "--sens-images",
            "4",
            "--images",
            "4",
            "--arch",
            "dataflow",
            "--area-metric",
            "lut6",
            "--area-budget",
            &budget,
            "--cost-table",
            table.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&out, &root.join("reports/cost/cost.json"));
    let o = mnq(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let s = &r["bits"][0]["budget_solution"];
    let area = s["area"].as_f64().unwrap();
    let sum: f64 = s["assignment"].as_object().unwrap().values().map(|u| lut6(u.as_str().unwrap())).sum();
    assert!((sum - area).abs() < 1e-9, "dataflow area {area}, sum of the units' LUT6-eq {sum}");
    assert!(area >= cheapest, "{area} < {cheapest}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary.to_string().contains("area_lut6_eq") && !summary.to_string().contains("area_nand2_eq"));
    // The same run on a table without Xilinx figures: refused with the `mnq cost` run to do, nothing written.
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("reports/cost/cost.json")).unwrap()).unwrap();
    for row in v["rows"].as_array_mut().unwrap() {
        row.as_object_mut().unwrap().remove("xilinx");
    }
    let old = dir.path().join("old.json");
    std::fs::write(&old, serde_json::to_string(&v).unwrap()).unwrap();
    let out2 = dir.path().join("r2");
    let a = args(&out2, &old);
    let o = mnq(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--area-metric lut6") && err.contains("--target xilinx") && err.contains("no xilinx figures"), "{err}");
    assert!(!out2.exists());
}
