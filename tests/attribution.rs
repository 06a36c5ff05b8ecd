//! `mnq attribute` and `mnq infer --float-ops` on the bundled model: the variants are the same
//! integer models `mnq infer` runs, and the files are written as promised.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn mnq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnq")).current_dir(root()).args(args).output().expect("run mnq")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "mnq failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn infer_top1(dir: &std::path::Path, name: &str, extra: &[&str]) -> (f64, f64) {
    let p = dir.join(name);
    let ps = p.to_str().unwrap();
    let mut args = vec!["infer", "--images", "60", "--bits", "6", "--method", "ibert", "--threads", "2", "--json", ps];
    args.extend_from_slice(extra);
    ok(&mnq(&args));
    let r = &json(&p)["report"];
    (r["int_top1"].as_f64().unwrap(), r["agreement"].as_f64().unwrap())
}

#[test]
fn attribution_variants_are_the_models_infer_runs() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("attr");
    let o = mnq(&["attribute", "--images", "60", "--bits", "6", "--method", "ibert", "--threads", "2", "--out", out.to_str().unwrap()]);
    ok(&o);
    let stem = "attribution_6b_ibert";
    for ext in ["md", "csv", "json", "svg", "png"] {
        let p = out.join(format!("{stem}.{ext}"));
        assert!(p.is_file() && std::fs::metadata(&p).unwrap().len() > 0, "{} missing", p.display());
    }
    let a = json(&out.join(format!("{stem}.json")));
    let res = a["attribution"]["results"].as_array().unwrap();
    let names: Vec<&str> = res.iter().map(|r| r["variant"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["integer", "linear only", "units only", "softmax float", "gelu float", "layernorm float"]);
    let top = |i: usize| res[i]["top1"].as_f64().unwrap();
    let agree = |i: usize| res[i]["agreement"].as_f64().unwrap();
    // The all-integer variant is `mnq infer`'s model, the others `--float-ops` ones.
    let dir = t.path();
    assert_eq!((top(0), agree(0)), infer_top1(dir, "int.json", &[]));
    assert_eq!((top(1), agree(1)), infer_top1(dir, "lin.json", &["--float-ops", "softmax,gelu,layernorm"]));
    assert_eq!((top(3), agree(3)), infer_top1(dir, "sm.json", &["--float-ops", "softmax"]));
    // With every non-linear layer exact, the units chosen no longer matter: another method's
    // "linear only" row is the same model, figure for figure.
    let out2 = t.path().join("attr2");
    ok(&mnq(&[
        "attribute",
        "--images",
        "60",
        "--bits",
        "6",
        "--method",
        "fqvit",
        "--threads",
        "2",
        "--no-plots",
        "--out",
        out2.to_str().unwrap(),
    ]));
    let b = json(&out2.join("attribution_6b_fqvit.json"));
    let r2 = &b["attribution"]["results"][1];
    for k in ["top1", "agreement", "logits_asqnr_db"] {
        assert_eq!(res[1][k], r2[k], "{k}");
    }
    assert!(!out2.join("attribution_6b_fqvit.png").exists());
    // The table says what it measured.
    let md = std::fs::read_to_string(out.join(format!("{stem}.md"))).unwrap();
    assert!(md.contains("| linear only | 17 |") && md.contains("| units only | 0 |"), "{md}");
    assert!(md.contains("the units alone, around float linear layers"), "{md}");
    // The float layers are named as such in infer's layer table.
    let o = mnq(&["infer", "--images", "4", "--float-ops", "gelu", "--threads", "1"]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("gelu_float (float)") && text.contains("4 layers compute their op in float64"), "{text}");
}

#[test]
fn attribution_bad_input_is_refused_before_the_run() {
    let t = tempfile::tempdir().unwrap();
    let o = mnq(&["infer", "--images", "4", "--float-ops", "linear"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("softmax"), "{}", String::from_utf8_lossy(&o.stderr));
    // An output folder that is a file.
    let f = t.path().join("file");
    std::fs::write(&f, b"keep").unwrap();
    let o = mnq(&["attribute", "--images", "4", "--out", f.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&f).unwrap(), b"keep");
    // A unit name of the exact form in an assignment for the wrong op is refused naming both.
    let a = t.path().join("a.json");
    std::fs::write(&a, r#"{"format": 1, "model": "deit_tiny_fmnist", "bits": 8, "layers": {"blocks.0.norm1": "softmax_float"}}"#).unwrap();
    let o = mnq(&["infer", "--images", "4", "--assign", a.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("softmax_float") && e.contains("blocks.0.norm1"), "{e}");
}

/// The reverse split's units see exactly what the integer forward feeds them: given the integer
/// forward's own (dequantised) unit input, [`IntModel::unit_on_float`] gives back its unit
/// output, bit for bit, for every layer, method and width, on the ViT and the Swin model.
#[test]
fn units_on_float_inputs_reproduce_the_integer_forward_taps() {
    use mnq::model::quant::ActScales;
    use mnq::model::{Assignment, Images, IntModel, Model, QuantConfig};
    use mnq::units::{Method, Preset};
    for model_dir in ["sim/models/deit_tiny_fmnist", "sim/models/swin_tiny_fmnist"] {
        let model = Model::load(&root().join(model_dir)).unwrap();
        let data = root().join("sim/data/fashion_mnist");
        let images = Images::load_npy(&data.join("eval_images.npy"), &model.manifest).unwrap();
        let calib = Images::load_npy(&data.join("calib_images.npy"), &model.manifest).unwrap();
        let mut calib4 = calib.clone();
        calib4.truncate(16);
        for bits in [8u32, 6] {
            let opts = mnq::model::CalibOptions { weight_bits: bits, act_bits: bits, percentile: None, mse: false };
            let q = mnq::model::calibrate(&model, &calib4, &opts, &|| {}).unwrap();
            let scales = ActScales::from_section(&q, bits, &model.graph);
            for m in [Method::IBert, Method::IVit, Method::FqVit] {
                let units = Assignment::single(&model.layers, "t", bits, m).resolve(&model.layers, "t").unwrap();
                let qm = IntModel::new(&model, &scales, QuantConfig { weight_bits: bits, act_bits: bits, preset: Preset::Adapted, units })
                    .unwrap();
                let mut seen = 0;
                let mut cb = |t: &mnq::model::Tap| {
                    let got = qm.unit_on_float(t.layer.index, t.input).unwrap();
                    assert_eq!(got.len(), t.output.len());
                    let same = got.iter().zip(t.output).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{model_dir} {bits}b {m:?} layer {}", t.layer.name);
                    seen += 1;
                };
                qm.forward(&images.image(0), Some(&mut cb)).unwrap();
                assert_eq!(seen, model.layers.len());
            }
        }
    }
}
