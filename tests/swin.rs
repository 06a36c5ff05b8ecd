//! Swin on the layer graph: the float forward against PyTorch's logits (a random 3-stage timm
//! Swin exported by `sim/export.py`, committed in `tests/fixtures/swin_random`), the layer
//! counts of Swin-T counted from its manifest, the integer forward for every method and
//! width, and the shifted-window mask giving exactly zero probability in every softmax unit.

use mnq::model::manifest::{unit_for, InputNorm, Manifest, SwinSpec};
use mnq::model::quant::ActScales;
use mnq::model::{calibrate, forward_pair, layers_of, CalibOptions, Images, IntModel, Model, QuantConfig, Reference};
use mnq::units::{Method, Op, Preset};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swin_random")
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let top = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / top
}

#[test]
fn float_forward_matches_pytorch() {
    for dir in [fixture(), Path::new(env!("CARGO_MANIFEST_DIR")).join("sim/models/swin_tiny_fmnist")] {
        if !dir.join("manifest.json").exists() {
            panic!("{} is missing", dir.display());
        }
        let model = Model::load(&dir).unwrap();
        let r = Reference::load(&dir.join("reference.npz"), &model.manifest).unwrap();
        let mut worst = (0.0f64, 0.0f64);
        for i in 0..r.images.len() {
            let img = r.images.image(i);
            let want: Vec<f64> = r.outputs[i].iter().map(|&v| f64::from(v)).collect();
            let a = model.forward_float::<f32>(&img, None).logits;
            let b = model.forward_float::<f64>(&img, None).logits;
            assert!(max_rel(&a, &want) <= 1e-4, "{} image {i} f32: {:e}", dir.display(), max_rel(&a, &want));
            assert!(max_rel(&b, &want) <= 1e-4, "{} image {i} f64: {:e}", dir.display(), max_rel(&b, &want));
            worst = (worst.0.max(max_rel(&a, &want)), worst.1.max(max_rel(&b, &want)));
        }
        eprintln!("{}: max relative logit error f32 {:.2e}, f64 {:.2e}", dir.display(), worst.0, worst.1);
    }
}

fn swin_t() -> Manifest {
    Manifest {
        format: 1,
        name: "swin_t".into(),
        arch: "swin".into(),
        img_size: 224,
        in_chans: 3,
        patch_size: 4,
        embed_dim: 96,
        depth: 12,
        num_heads: 3,
        mlp_ratio: 4.0,
        num_classes: 1000,
        layer_scale: false,
        ln_eps: 1e-5,
        input: InputNorm { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] },
        labels: None,
        source: None,
        swin: Some(SwinSpec {
            depths: vec![2, 2, 6, 2],
            embed_dims: vec![96, 192, 384, 768],
            num_heads: vec![3, 6, 12, 24],
            window_size: vec![7; 4],
            patch_norm: true,
        }),
        quant: None,
        extra: BTreeMap::new(),
    }
}

#[test]
fn swin_t_has_12_softmax_12_gelu_29_layernorm() {
    let layers = layers_of(&swin_t());
    let count = |op| layers.iter().filter(|l| l.op == op).count();
    assert_eq!((count(Op::Softmax), count(Op::Gelu), count(Op::LayerNorm)), (12, 12, 29));
    let sm: Vec<_> = layers.iter().filter(|l| l.op == Op::Softmax).collect();
    // Stage 0: 56×56 tokens in 64 windows of 49, 3 heads; the last stage is one 7×7 window.
    assert_eq!((sm[0].rows, sm[0].row_len), (3 * 56 * 56, 49));
    assert_eq!((sm[11].rows, sm[11].row_len), (24 * 49, 49));
    let merge = layers.iter().find(|l| l.name == "layers.1.downsample.norm").unwrap();
    assert_eq!((merge.rows, merge.row_len), (28 * 28, 384));
    assert_eq!(layers[0].name, "patch_embed.norm");
    assert_eq!(layers.last().unwrap().name, "norm");
}

#[test]
fn swin_manifest_errors_name_the_field() {
    let mut m = swin_t();
    m.swin.as_mut().unwrap().window_size[0] = 5;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.json"), m.to_json()).unwrap();
    let e = Manifest::load(&dir.path().join("manifest.json")).unwrap_err().to_string();
    assert!(e.contains("56x56 token grid is not a multiple of the 5x5 window"), "{e}");
    let mut m = swin_t();
    m.depth = 11;
    std::fs::write(dir.path().join("manifest.json"), m.to_json()).unwrap();
    let e = Manifest::load(&dir.path().join("manifest.json")).unwrap_err().to_string();
    assert!(e.contains("sum of swin.depths (12)"), "{e}");
    let mut m = swin_t();
    m.swin = None;
    std::fs::write(dir.path().join("manifest.json"), m.to_json()).unwrap();
    let e = Manifest::load(&dir.path().join("manifest.json")).unwrap_err().to_string();
    assert!(e.contains("needs a \"swin\" section"), "{e}");
}

/// Every method at 8 and 6 bits (and a mixed assignment) runs on Swin, stays close to float,
/// and every masked key of a shifted window gets probability exactly zero, in float (≈0) and
/// in every integer unit (exactly 0).
#[test]
fn integer_forward_every_method_and_masks() {
    let model = Model::load(&fixture()).unwrap();
    let r = Reference::load(&fixture().join("reference.npz"), &model.manifest).unwrap();
    let imgs: &Images = &r.images;
    let masks: Vec<Option<std::sync::Arc<[bool]>>> = model
        .graph
        .nodes
        .iter()
        .filter_map(|n| match n {
            mnq::model::graph::Node::Softmax { mask, .. } => Some(mask.clone()),
            _ => None,
        })
        .collect();
    assert!(masks.iter().filter(|m| m.is_some()).count() == 2, "stages 0 and 1 have a shifted block each");
    for bits in [8u32, 6] {
        let q = calibrate(&model, imgs, &CalibOptions { weight_bits: bits, act_bits: bits, percentile: None, mse: false }, &|| {}).unwrap();
        let scales = ActScales::from_section(&q, bits, &model.graph);
        let mixes = [Method::IBert, Method::FqVit, Method::IVit];
        let mut configs: Vec<Vec<_>> = mixes.iter().map(|&m| model.layers.iter().map(|l| unit_for(l.op, m)).collect()).collect();
        configs.push(model.layers.iter().enumerate().map(|(i, l)| unit_for(l.op, mixes[i % 3])).collect());
        for units in configs {
            let qm =
                IntModel::new(&model, &scales, QuantConfig { weight_bits: bits, act_bits: bits, preset: Preset::Adapted, units }).unwrap();
            for i in 0..imgs.len() {
                let img = imgs.image(i);
                let mut sm = 0;
                let (f, q) = forward_pair::<f64>(&model, &qm, &img, &mut |a, b| {
                    if a.layer.op != Op::Softmax {
                        return;
                    }
                    if let Some(m) = &masks[sm] {
                        for (k, &masked) in m.iter().enumerate() {
                            if masked {
                                assert!(a.output[k] < 1e-30, "float masked probability {}", a.output[k]);
                                assert_eq!(b.output[k], 0.0, "{} integer masked probability", a.layer.name);
                            }
                        }
                    }
                    sm += 1;
                })
                .unwrap();
                let rel = max_rel(&q.logits, &f.logits);
                assert!(rel < 0.6, "{bits} bits {:?}: integer logits far from float ({rel})", qm.config.units[0]);
            }
            let plain = IntModel::new(&model, &scales, qm.config.clone()).unwrap().with_plain_kernels(true);
            assert_eq!(plain.forward(&imgs.image(0), None).unwrap(), qm.forward(&imgs.image(0), None).unwrap());
        }
    }
}

/// The patch-merging LayerNorm's PTF channel factors are computed on the merged tokens (the
/// order that LayerNorm sees), and a calibrated Swin manifest, whose LayerNorms have different
/// widths per stage, loads again.
#[test]
fn calibration_follows_the_patch_merge_and_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sim/models/swin_tiny_fmnist");
    let model = Model::load(&dir).unwrap();
    let mut imgs =
        Images::load_npy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("sim/data/fashion_mnist/calib_images.npy"), &model.manifest).unwrap();
    imgs.truncate(8);
    let bits = 8u32;
    let q = calibrate(&model, &imgs, &CalibOptions { weight_bits: bits, act_bits: bits, percentile: None, mse: false }, &|| {}).unwrap();
    let merges: Vec<_> = model.layers.iter().filter(|l| l.name.contains("downsample")).collect();
    assert!(!merges.is_empty(), "the bundled Swin has a patch merge");
    let levels = ((1u64 << bits) - 1) as f64;
    for l in merges {
        let p = &q.ptf[&l.name];
        let c = l.row_len;
        // The same PTF search by hand on the LayerNorm's own input (the float tap).
        let scale8 = ((p.max - p.min) / levels).max(f64::from(f32::EPSILON));
        let zp = (-(p.min / scale8).round_ties_even()).clamp(0.0, levels);
        let mut err = vec![[0.0f64; 4]; c];
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..imgs.len() {
            let img = imgs.image(i);
            let mut cb = |t: &mnq::model::Tap| {
                if t.layer.index != l.index {
                    return;
                }
                for row in t.input.chunks_exact(c) {
                    for (ch, &x) in row.iter().enumerate() {
                        lo = lo.min(x);
                        hi = hi.max(x);
                        for (a, e) in err[ch].iter_mut().enumerate() {
                            let s = scale8 / f64::from(1u32 << (3 - a));
                            let qv = ((x / s).round_ties_even() + zp).clamp(0.0, levels);
                            *e += (x - (qv - zp) * s).powi(2);
                        }
                    }
                }
            };
            model.forward_float::<f32>(&img, Some(&mut cb));
        }
        assert_eq!((lo, hi), (p.min, p.max), "{}: the range is the merged input's", l.name);
        let want: Vec<u8> = err.iter().map(|e| (1..4).fold(0usize, |b, a| if e[a] < e[b] { a } else { b }) as u8).collect();
        assert_eq!(p.alpha, want, "{}: alpha per merged channel", l.name);
    }
    // The manifest with these scales loads again and runs.
    let mut m = model.manifest.clone();
    m.quant = Some(q);
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("manifest.json"), m.to_json()).unwrap();
    let again = Manifest::load(&t.path().join("manifest.json")).unwrap();
    assert_eq!(again.quant.as_ref().unwrap().ptf.len(), model.layers.iter().filter(|l| l.op == Op::LayerNorm).count());
}
