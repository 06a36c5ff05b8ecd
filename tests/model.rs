//! Model loading, float forward against an independent reference, integer forward for every
//! method and mixed assignments, taps, calibration, and every bad-input case of the loader.
//! Runs on small random models written from Rust (about 10 s in release).

use mnq::model::manifest::{Assignment, InputNorm, LayerUnit, OrderedLayers, FLOAT_GELU};
use mnq::model::quant::ActScales;
use mnq::model::{
    calibrate, evaluate, forward_pair, layers_of, write_random_model, CalibOptions, Images, IntModel, Manifest, Model, ModelError,
    QuantConfig,
};
use mnq::units::{Method, Op, Preset};
use rand::{Rng, SeedableRng};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

fn manifest(arch: &str, layer_scale: bool, classes: usize) -> Manifest {
    Manifest {
        format: 1,
        name: format!("tiny_{arch}"),
        arch: arch.into(),
        img_size: 16,
        in_chans: 2,
        patch_size: 4,
        embed_dim: 24,
        depth: 2,
        num_heads: 3,
        mlp_ratio: 2.0,
        num_classes: classes,
        layer_scale,
        ln_eps: 1e-6,
        input: InputNorm { mean: vec![0.5, 0.4], std: vec![0.25, 0.3] },
        labels: None,
        source: Some("random (tests/model.rs)".into()),
        swin: None,
        quant: None,
        extra: BTreeMap::new(),
    }
}

fn write(dir: &Path, m: &Manifest, seed: u64) -> Model {
    write_random_model(dir, m, seed).unwrap();
    Model::load(dir).unwrap()
}

/// Random normalised images `[n, C, H, W]` written as float32 .npy, and uint8 pixels.
fn images(dir: &Path, m: &Manifest, n: usize, seed: u64) -> Images {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shape = [n, m.in_chans, m.img_size, m.img_size];
    let px: Vec<u8> = (0..shape.iter().product::<usize>()).map(|_| rng.gen()).collect();
    let a = ndarray::Array4::from_shape_vec(shape, px).unwrap();
    let p = dir.join("imgs.npy");
    ndarray_npy::write_npy(&p, &a).unwrap();
    Images::load_npy(&p, m).unwrap()
}

// ---------------------------------------------------------------------------------------------
// An independent float64 reference of timm's VisionTransformer(Distilled) eval forward, written
// straight from the contract with naive loops and its own safetensors reading.

struct RefModel {
    t: BTreeMap<String, Vec<f64>>,
    m: Manifest,
}

impl RefModel {
    fn load(dir: &Path, m: &Manifest) -> RefModel {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut t = BTreeMap::new();
        for (name, view) in st.tensors() {
            let v = view.data().chunks(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect();
            t.insert(name, v);
        }
        RefModel { t, m: m.clone() }
    }

    fn w(&self, n: &str) -> &[f64] {
        &self.t[n]
    }

    fn linear(&self, x: &[Vec<f64>], p: &str) -> Vec<Vec<f64>> {
        let w = self.w(&format!("{p}.weight"));
        let b = self.w(&format!("{p}.bias"));
        let out = b.len();
        let inp = w.len() / out;
        x.iter().map(|r| (0..out).map(|o| b[o] + (0..inp).map(|k| r[k] * w[o * inp + k]).sum::<f64>()).collect()).collect()
    }

    fn ln(&self, x: &[Vec<f64>], p: &str) -> Vec<Vec<f64>> {
        let g = self.w(&format!("{p}.weight"));
        let b = self.w(&format!("{p}.bias"));
        x.iter()
            .map(|r| {
                let n = r.len() as f64;
                let mean = r.iter().sum::<f64>() / n;
                let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                r.iter().enumerate().map(|(i, v)| (v - mean) / (var + self.m.ln_eps).sqrt() * g[i] + b[i]).collect()
            })
            .collect()
    }

    fn forward(&self, img: &[f32]) -> Vec<f64> {
        let m = &self.m;
        let (c, s, p, d) = (m.in_chans, m.img_size, m.patch_size, m.embed_dim);
        let g = s / p;
        let pw = self.w("patch_embed.proj.weight");
        let pb = self.w("patch_embed.proj.bias");
        let mut x: Vec<Vec<f64>> = vec![self.w("cls_token").to_vec()];
        if m.arch == "deit" {
            x.push(self.w("dist_token").to_vec());
        }
        for py in 0..g {
            for px in 0..g {
                let mut tok = vec![0.0; d];
                for (o, t) in tok.iter_mut().enumerate() {
                    let mut acc = pb[o];
                    for ch in 0..c {
                        for ky in 0..p {
                            for kx in 0..p {
                                let iv = f64::from(img[ch * s * s + (py * p + ky) * s + px * p + kx]);
                                acc += iv * pw[((o * c + ch) * p + ky) * p + kx];
                            }
                        }
                    }
                    *t = acc;
                }
                x.push(tok);
            }
        }
        let pos = self.w("pos_embed");
        for (i, r) in x.iter_mut().enumerate() {
            for (j, v) in r.iter_mut().enumerate() {
                *v += pos[i * d + j];
            }
        }
        let (nh, hd) = (m.num_heads, d / m.num_heads);
        for b in 0..m.depth {
            let pre = format!("blocks.{b}.");
            let h = self.ln(&x, &format!("{pre}norm1"));
            let qkv = self.linear(&h, &format!("{pre}attn.qkv"));
            let t = x.len();
            let mut ctx = vec![vec![0.0; d]; t];
            for head in 0..nh {
                for i in 0..t {
                    let sc: Vec<f64> = (0..t)
                        .map(|j| (0..hd).map(|e| qkv[i][head * hd + e] * qkv[j][d + head * hd + e]).sum::<f64>() / (hd as f64).sqrt())
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = sc.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = ex.iter().sum();
                    for e in 0..hd {
                        ctx[i][head * hd + e] = (0..t).map(|j| ex[j] / z * qkv[j][2 * d + head * hd + e]).sum();
                    }
                }
            }
            let a = self.linear(&ctx, &format!("{pre}attn.proj"));
            for (i, r) in x.iter_mut().enumerate() {
                for (j, v) in r.iter_mut().enumerate() {
                    let g = if m.layer_scale { self.w(&format!("{pre}ls1.gamma"))[j] } else { 1.0 };
                    *v += g * a[i][j];
                }
            }
            let h2 = self.ln(&x, &format!("{pre}norm2"));
            let f1 = self.linear(&h2, &format!("{pre}mlp.fc1"));
            let ge: Vec<Vec<f64>> =
                f1.iter().map(|r| r.iter().map(|&v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))).collect()).collect();
            let f2 = self.linear(&ge, &format!("{pre}mlp.fc2"));
            for (i, r) in x.iter_mut().enumerate() {
                for (j, v) in r.iter_mut().enumerate() {
                    let g = if m.layer_scale { self.w(&format!("{pre}ls2.gamma"))[j] } else { 1.0 };
                    *v += g * f2[i][j];
                }
            }
        }
        let n = self.ln(&x, "norm");
        if m.num_classes == 0 {
            return n[0].clone();
        }
        let h = self.linear(&n[..1], "head");
        if m.arch == "deit" {
            let hd = self.linear(&n[1..2], "head_dist");
            h[0].iter().zip(&hd[0]).map(|(a, b)| (a + b) / 2.0).collect()
        } else {
            h[0].clone()
        }
    }
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-12);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn float_forward_matches_independent_reference() {
    for (arch, ls, classes) in [("vit", false, 5), ("deit", true, 7), ("vit", true, 0)] {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(arch, ls, classes);
        let model = write(dir.path(), &m, 3);
        let r = RefModel::load(dir.path(), &m);
        let imgs = images(dir.path(), &m, 3, 4);
        for i in 0..imgs.len() {
            let img = imgs.image(i);
            let want = r.forward(&img);
            let f64o = model.forward_float::<f64>(&img, None).logits;
            let f32o = model.forward_float::<f32>(&img, None).logits;
            assert_eq!(f64o.len(), want.len());
            assert!(max_rel(&f64o, &want) < 1e-10, "{arch} f64: {}", max_rel(&f64o, &want));
            assert!(max_rel(&f32o, &want) < 1e-4, "{arch} f32: {}", max_rel(&f32o, &want));
        }
    }
}

#[test]
fn hand_checked_single_patch_model() {
    // One patch, one block whose attention and MLP weights are zero: the output is
    // head(norm(cls + pos0 + proj_bias + fc2_bias)) with the block's residual adds only adding biases.
    let dir = tempfile::tempdir().unwrap();
    let mut m = manifest("vit", false, 2);
    m.img_size = 4;
    m.in_chans = 1;
    m.input = InputNorm { mean: vec![0.0], std: vec![1.0] };
    m.embed_dim = 3;
    m.num_heads = 1;
    m.depth = 1;
    write_random_model(dir.path(), &m, 1).unwrap();
    let mut model = Model::load(dir.path()).unwrap();
    let mut set = |name: &str, f: &dyn Fn(&mut Vec<f32>)| f(model.tensor_mut(name).unwrap_or_else(|| panic!("{name}")));
    for l in ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"] {
        for part in ["weight", "bias"] {
            set(&format!("blocks.0.{l}.{part}"), &|v| v.iter_mut().for_each(|x| *x = 0.0));
        }
    }
    set("blocks.0.mlp.fc2.bias", &|v| *v = vec![1.0, 0.0, -1.0]);
    set("cls_token", &|v| *v = vec![0.0, 0.0, 0.0]);
    set("pos_embed", &|v| v[..3].copy_from_slice(&[1.0, 2.0, 3.0]));
    set("norm.weight", &|v| *v = vec![1.0; 3]);
    set("norm.bias", &|v| *v = vec![0.0; 3]);
    set("head.weight", &|v| *v = vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    set("head.bias", &|v| *v = vec![0.0, 0.5]);
    // cls row = [1,2,3] + [1,0,-1] = [2,2,2]: zero variance, LayerNorm gives 0 → logits = bias.
    let out = model.forward_float::<f64>(&[0.0; 16], None).logits;
    assert_eq!(out, vec![0.0, 0.5]);
    // Make the row [2, 2, 4]: mean 8/3, var 8/9, normalised [-1/√2, -1/√2, √2].
    *model.tensor_mut("blocks.0.mlp.fc2.bias").unwrap() = vec![1.0, 0.0, 1.0];
    let out = model.forward_float::<f64>(&[0.0; 16], None).logits;
    let inv = 1.0 / (8.0f64 / 9.0 + 1e-6).sqrt();
    assert!((out[0] - (2.0 - 8.0 / 3.0) * inv).abs() < 1e-12, "{out:?}");
    assert!((out[1] - ((4.0 - 8.0 / 3.0) * inv + 0.5)).abs() < 1e-12, "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// Loader errors.

fn err_of(dir: &Path) -> String {
    Model::load(dir).unwrap_err().to_string()
}

fn rewrite_tensors(dir: &Path, f: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    f(&mut v);
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        v.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(&p, safetensors::serialize(views, &None).unwrap()).unwrap();
}

#[test]
fn loader_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest("deit", false, 4);
    write(dir.path(), &m, 1);
    let fresh = || write_random_model(dir.path(), &m, 1).unwrap();

    // Missing tensor.
    rewrite_tensors(dir.path(), |v| v.retain(|t| t.0 != "blocks.1.mlp.fc2.bias"));
    let e = err_of(dir.path());
    assert!(e.contains("'blocks.1.mlp.fc2.bias' is missing"), "{e}");

    // Wrong shape.
    fresh();
    rewrite_tensors(dir.path(), |v| {
        let t = v.iter_mut().find(|t| t.0 == "blocks.0.attn.qkv.weight").unwrap();
        t.2 = vec![24, 72];
    });
    let e = err_of(dir.path());
    assert!(e.contains("'blocks.0.attn.qkv.weight' has shape [24, 72]") && e.contains("[72, 24]"), "{e}");

    // Wrong dtype.
    fresh();
    rewrite_tensors(dir.path(), |v| {
        let t = v.iter_mut().find(|t| t.0 == "norm.weight").unwrap();
        t.1 = safetensors::Dtype::F16;
        t.3.truncate(t.3.len() / 2);
    });
    let e = err_of(dir.path());
    assert!(e.contains("'norm.weight' has dtype F16"), "{e}");

    // NaN weight.
    fresh();
    rewrite_tensors(dir.path(), |v| {
        let t = v.iter_mut().find(|t| t.0 == "head.bias").unwrap();
        t.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = err_of(dir.path());
    assert!(e.contains("'head.bias'") && e.contains("non-finite") && e.contains("index 1"), "{e}");

    // Truncated file.
    fresh();
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
    std::fs::write(&p, &bytes[..5]).unwrap();
    assert!(err_of(dir.path()).contains("truncated"));

    // Missing file.
    std::fs::remove_file(&p).unwrap();
    assert!(err_of(dir.path()).contains("model.safetensors"));

    // Manifest disagreeing with the weights: a deit file under a vit manifest, a deeper file.
    fresh();
    let mut mv = m.clone();
    mv.arch = "vit".into();
    std::fs::write(dir.path().join("manifest.json"), mv.to_json()).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("disagrees") && e.contains("dist_token") && e.contains("arch \"deit\""), "{e}");
    let mut md = m.clone();
    md.depth = 1;
    std::fs::write(dir.path().join("manifest.json"), md.to_json()).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("blocks.1.") && e.contains("depth"), "{e}");
    let mut ml = m.clone();
    ml.layer_scale = true;
    std::fs::write(dir.path().join("manifest.json"), ml.to_json()).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("'blocks.0.ls1.gamma' is missing") && e.contains("layer_scale"), "{e}");
    let mut me = m.clone();
    me.embed_dim = 30;
    me.num_heads = 3;
    std::fs::write(dir.path().join("manifest.json"), me.to_json()).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("has shape") && e.contains("manifest implies"), "{e}");

    // Unknown architecture, malformed manifest, inconsistent manifest.
    let mut ma = m.clone();
    ma.arch = "convnext".into();
    std::fs::write(dir.path().join("manifest.json"), ma.to_json()).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("unknown architecture 'convnext'") && e.contains("manifest.json"), "{e}");
    ma.arch = "swin".into();
    std::fs::write(dir.path().join("manifest.json"), ma.to_json()).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("needs a \"swin\" section"), "{e}");
    std::fs::write(dir.path().join("manifest.json"), &m.to_json()[..40]).unwrap();
    let e = err_of(dir.path());
    assert!(e.contains("not a valid manifest"), "{e}");
    let mut mp = m.clone();
    mp.img_size = 15;
    std::fs::write(dir.path().join("manifest.json"), mp.to_json()).unwrap();
    assert!(err_of(dir.path()).contains("not a multiple of patch_size"));
    std::fs::write(dir.path().join("manifest.json"), m.to_json()).unwrap();
    assert!(Model::load(dir.path()).is_ok());
}

#[test]
fn image_and_label_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest("vit", false, 3);
    let p = dir.path().join("x.npy");
    ndarray_npy::write_npy(&p, &ndarray::Array3::<u8>::zeros((2, 16, 16))).unwrap();
    let e = Images::load_npy(&p, &m).unwrap_err().to_string();
    assert!(e.contains("x.npy") && e.contains("[2, 16, 16]") && e.contains("[N, 2, 16, 16]"), "{e}");
    ndarray_npy::write_npy(&p, &ndarray::Array4::<u8>::zeros((2, 2, 15, 16))).unwrap();
    assert!(Images::load_npy(&p, &m).unwrap_err().to_string().contains("[2, 2, 15, 16]"));
    ndarray_npy::write_npy(&p, &ndarray::Array4::<f64>::zeros((2, 2, 16, 16))).unwrap();
    assert!(Images::load_npy(&p, &m).unwrap_err().to_string().contains("another dtype"));
    let mut f = ndarray::Array4::<f32>::zeros((2, 2, 16, 16));
    f[[1, 0, 3, 3]] = f32::NAN;
    ndarray_npy::write_npy(&p, &f).unwrap();
    assert!(Images::load_npy(&p, &m).unwrap_err().to_string().contains("not finite"));
    ndarray_npy::write_npy(&p, &ndarray::Array4::<u8>::zeros((2, 2, 16, 16))).unwrap();
    let imgs = Images::load_npy(&p, &m).unwrap();
    assert_eq!(imgs.len(), 2);
    // Pixel 0 normalises to (0 − mean)/std per channel.
    let img = imgs.image(1);
    assert_eq!(img[0], -0.5 / 0.25);
    assert_eq!(img[16 * 16], -0.4 / 0.3);
    let l = dir.path().join("l.npy");
    ndarray_npy::write_npy(&l, &ndarray::arr1(&[1u8, 2, 0])).unwrap();
    assert!(imgs.clone().with_labels(&l, 3).unwrap_err().to_string().contains("3 labels for 2 images"));
    ndarray_npy::write_npy(&l, &ndarray::arr1(&[1u8, 3])).unwrap();
    assert!(imgs.clone().with_labels(&l, 3).unwrap_err().to_string().contains("label 3 at index 1"));
    ndarray_npy::write_npy(&l, &ndarray::arr1(&[1u8, 2])).unwrap();
    assert_eq!(imgs.with_labels(&l, 3).unwrap().labels, Some(vec![1, 2]));
}

// ---------------------------------------------------------------------------------------------
// Assignments.

#[test]
fn assignment_roundtrip_and_errors() {
    let m = manifest("deit", false, 4);
    let layers = layers_of(&m);
    assert_eq!(layers.len(), 9);
    assert_eq!(layers[5].name, "blocks.1.attn.softmax");
    assert_eq!(layers[5].label(), "5.softmax");
    assert_eq!((layers[5].rows, layers[5].row_len), (3 * 18, 18));
    assert_eq!((layers[3].rows, layers[3].row_len), (18, 48));
    assert_eq!((layers[8].name.as_str(), layers[8].rows, layers[8].row_len), ("norm", 18, 24));
    let a = Assignment::single(&layers, &m.name, 8, Method::FqVit);
    assert_eq!(a.layers.0[3].1, FLOAT_GELU);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.json");
    a.save(&p).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    // Execution order is kept in the file (blocks.1 after blocks.0.mlp.act, norm last).
    assert!(text.find("blocks.0.mlp.act").unwrap() < text.find("blocks.1.norm1").unwrap());
    assert!(text.find("blocks.1.mlp.act").unwrap() < text.find("\"norm\"").unwrap());
    let b = Assignment::load(&p).unwrap();
    assert_eq!(a, b);
    let units = b.resolve(&layers, "a.json").unwrap();
    assert_eq!(units[3], LayerUnit::FloatGelu);
    assert_eq!(units[0], LayerUnit::Unit("layernorm_fqvit".into()));

    let mut bad = a.clone();
    bad.layers.0.push(("blocks.7.norm1".into(), "layernorm_ivit".into()));
    let e = bad.resolve(&layers, "a.json").unwrap_err().to_string();
    assert!(e.contains("a.json") && e.contains("'blocks.7.norm1' does not exist"), "{e}");
    let mut bad = a.clone();
    bad.layers.0[1].1 = "softmax_magic".into();
    let e = bad.resolve(&layers, "a.json").unwrap_err().to_string();
    assert!(e.contains("unknown unit 'softmax_magic'") && e.contains("blocks.0.attn.softmax"), "{e}");
    let mut bad = a.clone();
    bad.layers.0[1].1 = "gelu_ivit".into();
    let e = bad.resolve(&layers, "a.json").unwrap_err().to_string();
    assert!(e.contains("'blocks.0.attn.softmax' is a softmax layer but unit 'gelu_ivit' computes gelu"), "{e}");
    assert!(e.contains("softmax_ibert, softmax_ivit, softmax_fqvit"), "{e}");
    let mut bad = a.clone();
    bad.layers.0[0].1 = "requant_ivit".into();
    assert!(bad.resolve(&layers, "x").unwrap_err().to_string().contains("computes requant"));
    let mut bad = a.clone();
    bad.layers.0.remove(8);
    bad.layers.0.remove(2);
    let e = bad.resolve(&layers, "a.json").unwrap_err().to_string();
    assert!(e.contains("missing: blocks.0.norm2, norm"), "{e}");
    std::fs::write(&p, text.replacen("\"blocks.0.norm2\"", "\"blocks.0.norm1\"", 1)).unwrap();
    assert!(Assignment::load(&p).unwrap_err().to_string().contains("appears twice"));
    std::fs::write(&p, &text[..30]).unwrap();
    assert!(Assignment::load(&p).unwrap_err().to_string().contains("not a valid assignment"));
}

// ---------------------------------------------------------------------------------------------
// Integer forward.

fn calibrated(model: &Model, imgs: &Images, bits: u32) -> ActScales {
    let q = calibrate(model, imgs, &CalibOptions { weight_bits: bits, act_bits: bits, percentile: None, mse: false }, &|| {}).unwrap();
    ActScales::from_section(&q, bits, &model.graph)
}

fn int_model(model: &Model, scales: &ActScales, bits: u32, method: Method) -> IntModel {
    let a = Assignment::single(&model.layers, &model.manifest.name, bits, method);
    let units = a.resolve(&model.layers, "test").unwrap();
    IntModel::new(model, scales, QuantConfig { weight_bits: bits, act_bits: bits, preset: Preset::Adapted, units }).unwrap()
}

#[test]
fn integer_forward_tracks_float_for_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest("deit", true, 6);
    let model = write(dir.path(), &m, 11);
    let imgs = images(dir.path(), &m, 12, 12);
    for bits in [8u32, 6] {
        let scales = calibrated(&model, &imgs, bits);
        for method in [Method::IVit, Method::IBert, Method::FqVit] {
            let qm = int_model(&model, &scales, bits, method);
            let r = evaluate::<f32>(&model, &qm, &imgs, &|| {}).unwrap();
            let logits = r.logits_asqnr_db.unwrap();
            // 20·log10 of the mean power ratio: 8-bit models keep the logits ~ 20 dB above the error.
            let floor = if bits == 8 { 20.0 } else { 8.0 };
            assert!(logits > floor, "{bits}-bit {method:?}: logits ASQNR {logits:.1} dB");
            for l in &r.layers {
                let out = l.asqnr_out_db.unwrap_or(f64::INFINITY);
                assert!(out > if bits == 8 { 10.0 } else { 2.0 }, "{bits}-bit {method:?} {}: {out:.1} dB", l.name);
            }
            if bits == 8 {
                assert!(r.agreement >= 0.75, "{method:?}: agreement {}", r.agreement);
            }
        }
    }
}

#[test]
fn integer_forward_is_deterministic_and_mixed_assignments_run() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest("vit", false, 5);
    let model = write(dir.path(), &m, 21);
    let imgs = images(dir.path(), &m, 4, 22);
    let scales = calibrated(&model, &imgs, 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for _ in 0..6 {
        let units: Vec<LayerUnit> = model
            .layers
            .iter()
            .map(|l| {
                let c = mnq::model::manifest::units_for(l.op);
                LayerUnit::parse(&c[rng.gen_range(0..c.len())]).unwrap()
            })
            .collect();
        let cfg = QuantConfig { weight_bits: 8, act_bits: 8, preset: Preset::Adapted, units };
        let qm = IntModel::new(&model, &scales, cfg.clone()).unwrap();
        let img = imgs.image(1);
        let a = qm.forward(&img, None).unwrap();
        let b = qm.forward(&img, None).unwrap();
        assert_eq!(a, b);
        let f = model.forward_float::<f64>(&img, None);
        let ratio = mnq::model::eval::sqnr_ratio(&f.logits, &a.logits);
        assert!(ratio > 10.0, "{:?}: ratio {ratio}", cfg.units);
        // 4-bit activations and weights run too (the narrowest supported width).
        let units4 = cfg.units.clone();
        let s4 = ActScales::from_section(
            &calibrate(&model, &imgs, &CalibOptions { weight_bits: 4, act_bits: 4, percentile: None, mse: false }, &|| {}).unwrap(),
            4,
            &model.graph,
        );
        let q4 = IntModel::new(&model, &s4, QuantConfig { weight_bits: 4, act_bits: 4, preset: Preset::Adapted, units: units4 }).unwrap();
        assert!(q4.forward(&img, None).unwrap().logits.iter().all(|v| v.is_finite()));
        // The reference presets run too.
        let qr = IntModel::new(&model, &scales, QuantConfig { preset: Preset::Reference, ..cfg }).unwrap();
        assert_eq!(qr.forward(&img, None).unwrap().logits.len(), 5);
    }
}

#[test]
fn shared_prefix_forwards_equal_independent_forwards() {
    // forward_shared runs one branch per distinct unit from the layer where models part; each
    // output must be the model's own forward, bit for bit, whatever the mix of assignments,
    // exact layers, scales, widths and kernels it is given.
    for (arch, ls) in [("vit", true), ("deit", false), ("swin", false)] {
        let dir = tempfile::tempdir().unwrap();
        let model = if arch == "swin" {
            // Shifted windows with masks and relative position bias: the random timm Swin fixture.
            Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swin_random")).unwrap()
        } else {
            write(dir.path(), &manifest(arch, ls, 4), 71)
        };
        let m = model.manifest.clone();
        let imgs = images(dir.path(), &m, 3, 72);
        let s8 = calibrated(&model, &imgs, 8);
        let s6 = calibrated(&model, &imgs, 6);
        let mut rng = rand::rngs::StdRng::seed_from_u64(73);
        let mut qms = Vec::new();
        let base: Vec<LayerUnit> = Assignment::single(&model.layers, &m.name, 8, Method::IVit).resolve(&model.layers, "t").unwrap();
        for k in 0..10 {
            let units: Vec<LayerUnit> = match k {
                // The base, and the base again: identical models share the whole run.
                0 | 1 => base.clone(),
                // One layer exact (an attribution variant), early, middle and last.
                2..=4 => {
                    let li = [0, model.layers.len() / 2, model.layers.len() - 1][k - 2];
                    let mut u = base.clone();
                    u[li] = LayerUnit::Exact(model.layers[li].op);
                    u
                }
                // Random mixes, float GELU included.
                _ => model
                    .layers
                    .iter()
                    .map(|l| {
                        let mut c = mnq::model::manifest::units_for(l.op);
                        c.push(format!("{}_float", l.op.name()));
                        LayerUnit::parse(&c[rng.gen_range(0..c.len())]).unwrap()
                    })
                    .collect(),
            };
            qms.push(IntModel::new(&model, &s8, QuantConfig { weight_bits: 8, act_bits: 8, preset: Preset::Adapted, units }).unwrap());
        }
        // Other families: another width, the reference preset, the plain kernels.
        qms.push(
            IntModel::new(&model, &s6, QuantConfig { weight_bits: 6, act_bits: 6, preset: Preset::Adapted, units: base.clone() }).unwrap(),
        );
        qms.push(
            IntModel::new(&model, &s8, QuantConfig { weight_bits: 8, act_bits: 8, preset: Preset::Reference, units: base.clone() })
                .unwrap(),
        );
        qms.push(int_model(&model, &s8, 8, Method::IVit).with_plain_kernels(true));
        let refs: Vec<&IntModel> = qms.iter().collect();
        let mut exact_differs = false;
        for i in 0..imgs.len() {
            let img = imgs.image(i);
            let shared = mnq::model::forward_shared(&refs, &img).unwrap();
            for (k, qm) in qms.iter().enumerate() {
                assert_eq!(shared[k], qm.forward(&img, None).unwrap(), "{arch}: model {k}, image {i}");
            }
            exact_differs |= (2..=4).any(|k| shared[k].int_logits != shared[0].int_logits);
        }
        // The branches are real: an exact layer changes the integer logits somewhere.
        assert!(exact_differs, "{arch}: no exact-layer variant differs from the base");
    }
}

#[test]
fn fast_kernels_equal_plain_integer_kernels_bit_for_bit() {
    // The SIMD GEMMs and vector requantisers against i64 loops and Dyadic::apply, on every
    // method, both widths, taps included.
    let dir = tempfile::tempdir().unwrap();
    let mut m = manifest("deit", true, 5);
    m.in_chans = 1;
    m.input = InputNorm { mean: vec![0.3], std: vec![0.3] };
    m.patch_size = 4;
    m.img_size = 20; // 25 patches: odd GEMM sizes and tails
    let model = write(dir.path(), &m, 61);
    let imgs = images(dir.path(), &m, 3, 62);
    for bits in [8u32, 6] {
        let scales = calibrated(&model, &imgs, bits);
        for method in [Method::IVit, Method::IBert, Method::FqVit] {
            let fast = int_model(&model, &scales, bits, method);
            let plain = int_model(&model, &scales, bits, method).with_plain_kernels(true);
            for i in 0..imgs.len() {
                let img = imgs.image(i);
                let mut a = Vec::new();
                let oa = fast.forward(&img, Some(&mut |t| a.push((t.input.to_vec(), t.output.to_vec())))).unwrap();
                let mut b = Vec::new();
                let ob = plain.forward(&img, Some(&mut |t| b.push((t.input.to_vec(), t.output.to_vec())))).unwrap();
                assert_eq!(oa, ob, "{bits}-bit {method:?} image {i}");
                assert!(a == b, "{bits}-bit {method:?} image {i}: taps differ");
            }
        }
    }
}

#[test]
fn taps_are_complete_in_order_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest("deit", false, 3);
    let model = write(dir.path(), &m, 31);
    let imgs = images(dir.path(), &m, 2, 32);
    let scales = calibrated(&model, &imgs, 8);
    let qm = int_model(&model, &scales, 8, Method::IVit);
    let img = imgs.image(0);
    let mut seen = Vec::new();
    let mut float_out: Vec<Vec<f64>> = Vec::new();
    let out = model.forward_float::<f64>(
        &img,
        Some(&mut |t| {
            assert_eq!(t.input.len(), t.layer.elements(), "{}", t.layer.name);
            assert_eq!(t.output.len(), t.layer.elements(), "{}", t.layer.name);
            seen.push(t.layer.name.clone());
            float_out.push(t.output.to_vec());
        }),
    );
    let names: Vec<String> = model.layers.iter().map(|l| l.name.clone()).collect();
    assert_eq!(seen, names);
    // Softmax rows sum to one, GELU output is GELU of its input, LayerNorm rows have mean ≈ β mean.
    let sm = &float_out[1];
    for row in sm.chunks(m.tokens()) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    assert_eq!(out, model.forward_float::<f64>(&img, None));
    let mut iseen = Vec::new();
    let mut pairs = 0;
    qm.forward(
        &img,
        Some(&mut |t| {
            assert_eq!(t.input.len(), t.layer.elements());
            assert_eq!(t.output.len(), t.layer.elements());
            iseen.push(t.layer.index);
        }),
    )
    .unwrap();
    assert_eq!(iseen, (0..names.len()).collect::<Vec<_>>());
    let (fo, qo) = forward_pair::<f64>(&model, &qm, &img, &mut |a, b| {
        assert_eq!(a.layer.index, pairs);
        assert_eq!(a.layer, b.layer);
        assert_eq!(a.output, &float_out[pairs][..]);
        // Integer softmax outputs are probabilities too (within the unit's rounding).
        if a.layer.op == Op::Softmax {
            for row in b.output.chunks(a.layer.row_len) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 0.05, "{}", row.iter().sum::<f64>());
            }
        }
        pairs += 1;
    })
    .unwrap();
    assert_eq!(pairs, names.len());
    assert_eq!(fo, out);
    assert_eq!(qo, qm.forward(&img, None).unwrap());
}

#[test]
fn calibration_scales_and_manifest_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest("vit", false, 4);
    let model = write(dir.path(), &m, 41);
    let imgs = images(dir.path(), &m, 5, 42);
    let q = calibrate(&model, &imgs, &CalibOptions { weight_bits: 8, act_bits: 8, percentile: None, mse: false }, &|| {}).unwrap();
    let names: Vec<String> = model.graph.points.iter().map(|p| p.name.clone()).collect();
    assert_eq!(q.act_scales.keys().cloned().collect::<std::collections::BTreeSet<_>>(), names.iter().cloned().collect());
    // Min/max: input scale = max|x| / 127 over the images.
    let amax = (0..imgs.len()).flat_map(|i| imgs.image(i)).map(|v| f64::from(v).abs()).fold(0.0, f64::max);
    assert!((q.act_scales["input"] - amax / 127.0).abs() < 1e-12);
    // Residual scales are for 16 bits.
    let mut res_amax = 0.0f64;
    let r11 = model.graph.point("blocks.1.residual1").unwrap();
    let mut obs = |p: usize, v: &[f32]| {
        if p == r11 {
            res_amax = v.iter().fold(res_amax, |a, &x| a.max(f64::from(x).abs()));
        }
    };
    for i in 0..imgs.len() {
        let img = imgs.image(i);
        mnq::model::FloatRun::<f32>::new(&model, &img, false).with_observer(&mut obs).finish();
    }
    assert!((q.act_scales["blocks.1.residual1"] - res_amax / 32767.0).abs() < 1e-12);
    assert_eq!(q.ptf.len(), 5);
    assert!(q.ptf.values().all(|p| p.alpha.len() == 24 && p.alpha.iter().all(|a| *a <= 3) && p.min < p.max));
    // A percentile gives ranges no larger than min/max.
    let qp = calibrate(&model, &imgs, &CalibOptions { weight_bits: 8, act_bits: 8, percentile: Some(99.0), mse: false }, &|| {}).unwrap();
    for (k, s) in &qp.act_scales {
        assert!(*s <= q.act_scales[k] * (1.0 + 1e-12), "{k}");
    }
    assert!(qp.act_scales["blocks.0.mlp.fc1"] < q.act_scales["blocks.0.mlp.fc1"]);
    // Written into the manifest and read back, the integer model is the same.
    let mut m2 = m.clone();
    m2.quant = Some(q.clone());
    std::fs::write(dir.path().join("manifest.json"), m2.to_json()).unwrap();
    let back = Model::load(dir.path()).unwrap();
    assert_eq!(back.manifest.quant.as_ref().unwrap(), &q);
    let s1 = ActScales::from_section(&q, 8, &model.graph);
    let s2 = ActScales::from_section(back.manifest.quant.as_ref().unwrap(), 8, &back.graph);
    let img = imgs.image(2);
    for method in [Method::IVit, Method::FqVit] {
        assert_eq!(
            int_model(&model, &s1, 8, method).forward(&img, None).unwrap(),
            int_model(&back, &s2, 8, method).forward(&img, None).unwrap()
        );
    }
    // Scales made at 8 bits convert to 6 bits by range; residual scales stay.
    let s6 = ActScales::from_section(&q, 6, &model.graph);
    assert!((s6.scales["input"] - q.act_scales["input"] * 127.0 / 31.0).abs() < 1e-15);
    assert_eq!(s6.scales["blocks.0.residual2"], q.act_scales["blocks.0.residual2"]);
}

#[test]
fn quantisation_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest("vit", false, 4);
    let model = write(dir.path(), &m, 51);
    let imgs = images(dir.path(), &m, 2, 52);
    let scales = calibrated(&model, &imgs, 8);
    let units = Assignment::single(&model.layers, "x", 8, Method::IVit).resolve(&model.layers, "x").unwrap();
    for bits in [3u32, 9, 16] {
        let e =
            IntModel::new(&model, &scales, QuantConfig { weight_bits: bits, act_bits: 8, preset: Preset::Adapted, units: units.clone() });
        assert!(e.err().unwrap().to_string().contains(&format!("weight width {bits} bits is not supported")));
    }
    let e = calibrate(&model, &imgs, &CalibOptions { weight_bits: 8, act_bits: 12, percentile: None, mse: false }, &|| {});
    assert!(e.unwrap_err().to_string().contains("12-bit activations"));
    let e = calibrate(&model, &imgs, &CalibOptions { weight_bits: 8, act_bits: 8, percentile: Some(0.0), mse: false }, &|| {});
    assert!(e.unwrap_err().to_string().contains("percentile"));
    let mut s = scales.clone();
    s.scales.remove("blocks.1.attn.matmul_qk");
    let e = IntModel::new(&model, &s, QuantConfig { weight_bits: 8, act_bits: 8, preset: Preset::Adapted, units: units.clone() });
    let e = e.err().unwrap().to_string();
    assert!(e.contains("'blocks.1.attn.matmul_qk' is missing") && e.contains("mnq calibrate"), "{e}");
    let mut s = scales.clone();
    s.ptf.remove("blocks.0.norm2");
    let fq = Assignment::single(&model.layers, "x", 8, Method::FqVit).resolve(&model.layers, "x").unwrap();
    let e = IntModel::new(&model, &s, QuantConfig { weight_bits: 8, act_bits: 8, preset: Preset::Adapted, units: fq });
    let e = e.err().unwrap().to_string();
    assert!(e.contains("blocks.0.norm2 uses layernorm_fqvit") && e.contains("quant.ptf"), "{e}");
    assert!(matches!(
        IntModel::new(&model, &scales, QuantConfig { weight_bits: 8, act_bits: 8, preset: Preset::Adapted, units: units[1..].to_vec() }),
        Err(ModelError::Quant { .. })
    ));
    let _ = OrderedLayers::default();
}

// ---------------------------------------------------------------------------------------------
// The bundled trained model (sim/models/deit_tiny_fmnist, committed with its reference.npz).

fn bundled() -> (std::path::PathBuf, Model) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("sim/models/deit_tiny_fmnist");
    let model = Model::load(&dir).expect("the bundled model is committed under sim/models/deit_tiny_fmnist");
    (root.to_path_buf(), model)
}

#[test]
fn bundled_model_matches_pytorch_reference_logits() {
    let (root, model) = bundled();
    let r = mnq::model::Reference::load(&root.join("sim/models/deit_tiny_fmnist/reference.npz"), &model.manifest).unwrap();
    assert!(r.images.len() >= 2);
    let mut worst = (0.0f64, 0.0f64);
    for i in 0..r.images.len() {
        let img = r.images.image(i);
        let want: Vec<f64> = r.outputs[i].iter().map(|&v| f64::from(v)).collect();
        let f32o = model.forward_float::<f32>(&img, None).logits;
        let f64o = model.forward_float::<f64>(&img, None).logits;
        // Max relative logit error: max |a − b| over the logits / max |b|.
        assert!(max_rel(&f32o, &want) <= 1e-4, "image {i} f32: {:e}", max_rel(&f32o, &want));
        assert!(max_rel(&f64o, &want) <= 1e-4, "image {i} f64: {:e}", max_rel(&f64o, &want));
        worst = (worst.0.max(max_rel(&f32o, &want)), worst.1.max(max_rel(&f64o, &want)));
    }
    eprintln!("{} reference images: max relative logit error f32 {:.2e}, f64 {:.2e}", r.images.len(), worst.0, worst.1);
}

#[test]
fn bundled_model_integer_accuracy_tracks_float() {
    let (root, model) = bundled();
    let data = root.join("sim/data/fashion_mnist");
    let mut calib = Images::load_npy(&data.join("calib_images.npy"), &model.manifest).unwrap();
    calib.truncate(64);
    let mut eval =
        Images::load_npy(&data.join("eval_images.npy"), &model.manifest).unwrap().with_labels(&data.join("eval_labels.npy"), 10).unwrap();
    eval.truncate(300);
    for bits in [8u32, 6] {
        let q =
            calibrate(&model, &calib, &CalibOptions { weight_bits: bits, act_bits: bits, percentile: None, mse: false }, &|| {}).unwrap();
        let scales = ActScales::from_section(&q, bits, &model.graph);
        for method in [Method::IVit, Method::IBert, Method::FqVit] {
            let r = evaluate::<f32>(&model, &int_model(&model, &scales, bits, method), &eval, &|| {}).unwrap();
            let (f, i) = (r.float_top1.unwrap(), r.int_top1.unwrap());
            assert!(f > 0.8, "float top-1 {f}");
            assert!(i > f - 0.03, "{bits}-bit {method:?}: integer top-1 {i} vs float {f}");
            assert!(r.agreement > 0.94, "{bits}-bit {method:?}: agreement {}", r.agreement);
        }
    }
}
