//! `mnq calibrate` and `mnq infer` end to end on a copy of the bundled model (about 10 s).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mnq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnq")).args(args).output().expect("run mnq")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A copy of the bundled model in a temporary folder.
fn model_copy(dir: &Path) -> PathBuf {
    let src = root().join("sim/models/deit_tiny_fmnist");
    let dst = dir.join("m");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["manifest.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

#[test]
fn calibrate_then_infer() {
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path());
    let ms = m.to_str().unwrap();
    let data = root().join("sim/data/fashion_mnist");
    let ds = data.to_str().unwrap();

    // No scales: infer calibrates on the fly and says so.
    let o = mnq(&["infer", "--model", ms, "--data", ds, "--images", "40", "--calib-images", "16", "--method", "ivit", "--threads", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("calibrated on the fly on 16 images"), "{t}");
    assert!(t.contains("| integer top-1 |") && t.contains("| 16 | norm | layernorm_ivit | 18 × 96 |"), "{t}");

    // calibrate writes the manifest; a second run refuses to replace the scales.
    let before = std::fs::read(m.join("manifest.json")).unwrap();
    let o = mnq(&["calibrate", "--model", ms, "--data", ds, "--images", "32", "--percentile", "99.9"]);
    assert!(o.status.success(), "{}", text(&o));
    let after = std::fs::read_to_string(m.join("manifest.json")).unwrap();
    assert_ne!(before, after.as_bytes());
    assert!(after.contains("\"blocks.3.attn.matmul_qk\"") && after.contains("\"percentile\": 99.9"), "{after}");
    let o = mnq(&["calibrate", "--model", ms, "--data", ds, "--images", "8"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already has") && text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(m.join("manifest.json")).unwrap(), after);

    // --out writes elsewhere, refuses to overwrite, and infer reads it with --manifest.
    let out = d.path().join("cal.json");
    let os = out.to_str().unwrap();
    let o = mnq(&["calibrate", "--model", ms, "--data", ds, "--images", "8", "--bits", "6", "--out", os]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mnq(&["calibrate", "--model", ms, "--data", ds, "--images", "8", "--out", os]);
    assert!(text(&o).contains("exists; pass --force"), "{}", text(&o));
    let o = mnq(&["calibrate", "--model", ms, "--data", ds, "--images", "8", "--out", os, "--force"]);
    assert!(o.status.success(), "{}", text(&o));

    // infer with the stored scales, a mixed assignment and JSON output.
    let assign = d.path().join("a.json");
    let mut layers = Vec::new();
    for b in 0..4 {
        layers.push(format!("\"blocks.{b}.norm1\": \"layernorm_fqvit\""));
        layers.push(format!("\"blocks.{b}.attn.softmax\": \"softmax_ibert\""));
        layers.push(format!("\"blocks.{b}.norm2\": \"layernorm_ivit\""));
        layers.push(format!("\"blocks.{b}.mlp.act\": \"gelu_fqvit\""));
    }
    layers.push("\"norm\": \"layernorm_ibert\"".into());
    std::fs::write(
        &assign,
        format!("{{\"format\": 1, \"model\": \"deit_tiny_fmnist\", \"bits\": 8, \"layers\": {{{}}}}}", layers.join(", ")),
    )
    .unwrap();
    let js = d.path().join("r.json");
    let o = mnq(&[
        "infer",
        "--model",
        ms,
        "--data",
        ds,
        "--images",
        "40",
        "--assign",
        assign.to_str().unwrap(),
        "--json",
        js.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("the manifest's quant section") && t.contains("gelu_fqvit (float)"), "{t}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
    assert_eq!(v["report"]["layers"].as_array().unwrap().len(), 17);
    assert_eq!(v["report"]["images"], 40);

    // Bad input: an unknown layer, an unsupported width, images of the wrong size, missing data.
    std::fs::write(&assign, std::fs::read_to_string(&assign).unwrap().replace("blocks.3.norm2", "blocks.9.norm2")).unwrap();
    let o = mnq(&["infer", "--model", ms, "--data", ds, "--images", "4", "--assign", assign.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("'blocks.9.norm2' does not exist"), "{}", text(&o));
    let o = mnq(&["infer", "--model", ms, "--data", ds, "--images", "4", "--bits", "12"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--bits 12 is not supported"), "{}", text(&o));
    let bad = d.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    ndarray_npy::write_npy(bad.join("eval_images.npy"), &ndarray::Array3::<u8>::zeros((3, 32, 32))).unwrap();
    let o = mnq(&["infer", "--model", ms, "--data", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("eval_images.npy") && text(&o).contains("[3, 32, 32]"), "{}", text(&o));
    let o = mnq(&["infer", "--model", ms, "--data", d.path().join("nowhere").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("nowhere/eval_images.npy"), "{}", text(&o));
    let o = mnq(&["infer", "--model", d.path().join("nomodel").to_str().unwrap(), "--data", ds]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("nomodel/manifest.json"), "{}", text(&o));
}
