//! The command-line hooks of the PyTorch side (`sim/mnq_torch`): `mnq infer --logits` and
//! `mnq eval --unit gelu_fqvit`. Their exactness against PyTorch is tested by
//! `sim/test_mnq_torch.py`; these tests check the files and values on the Rust side alone.

use ndarray::{Array1, Array2};
use ndarray_npy::{NpzReader, ReadNpyExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mnq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnq")).current_dir(root()).args(args).output().expect("run mnq")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn infer_writes_every_images_logits() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("logits.npz");
    let o =
        mnq(&["infer", "--images", "48", "--calib-images", "32", "--method", "ibert", "--threads", "2", "--logits", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let mut z = NpzReader::new(std::fs::File::open(&out).unwrap()).unwrap();
    let ints: Array2<i64> = z.by_name("int_logits").unwrap();
    let logits: Array2<f64> = z.by_name("logits").unwrap();
    let flogits: Array2<f64> = z.by_name("float_logits").unwrap();
    // DeiT: the class head's 10 accumulators, then the distillation head's.
    assert_eq!(ints.shape(), &[48, 20]);
    assert_eq!(logits.shape(), &[48, 10]);
    assert_eq!(flogits.shape(), &[48, 10]);
    assert!(ints.iter().any(|&v| v.abs() > 1000), "accumulators, not codes");
    // The integer logits' top-1 is the integer top-1 the report prints.
    let labels = Array1::<u8>::read_npy(std::fs::File::open(root().join("sim/data/fashion_mnist/eval_labels.npy")).unwrap()).unwrap();
    let top1 = |l: &Array2<f64>| {
        l.rows()
            .into_iter()
            .zip(&labels)
            .filter(|(r, &y)| r.iter().enumerate().fold((0, f64::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 == y as usize)
            .count() as f64
            / 48.0
    };
    let t = text(&o);
    assert!(t.contains(&format!("| integer top-1 | {:.2} % |", 100.0 * top1(&logits))), "{t}");
    assert!(t.contains(&format!("| float (f32) top-1 | {:.2} % |", 100.0 * top1(&flogits))), "{t}");
}

#[test]
fn infer_refuses_a_logits_file_that_is_not_npz() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("logits.npy");
    let o = mnq(&["infer", "--images", "4", "--logits", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("give a .npz path"), "{}", text(&o));
    assert!(!out.exists());
}

#[test]
fn eval_runs_the_float_gelu_fallback() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("in.json");
    let out = d.path().join("out.json");
    let q: Vec<i64> = (-32..32).collect();
    std::fs::write(&inp, serde_json::json!({"q": q, "shape": [2, 32], "scale": 0.11}).to_string()).unwrap();
    let o = mnq(&[
        "eval",
        "--unit",
        "gelu_fqvit",
        "--bits",
        "6",
        "--out-scale",
        "0.05",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let got: Vec<i64> = v["values"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    // RNE(gelu(q·0.11)/0.05) clamped to 6 bits: 0 at 0, negative and small below, clamped at 31 above.
    let want: Vec<i64> = q.iter().map(|&c| i64::from(mnq::model::quant::float_gelu_code(c, 0.11, 0.05, 6))).collect();
    assert_eq!(got, want);
    assert_eq!(got[32], 0);
    assert_eq!(*got.last().unwrap(), 31);
    assert!(got[..32].iter().all(|&x| (-4..=0).contains(&x)), "{got:?}");
    assert_eq!(v["scale"].as_f64(), Some(0.05));
    // Refusals: no output scale, unsigned input.
    let o = mnq(&["eval", "--unit", "gelu_fqvit", "--bits", "6", "--input", inp.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("needs --out-scale"), "{}", text(&o));
}
