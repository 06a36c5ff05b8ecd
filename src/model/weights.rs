//! Loading `model.safetensors` against the manifest, and writing random models for tests and benches.

use super::{layers_of, Layer, Manifest, ModelError};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A linear layer: `y = x·Wᵀ + b`, W row-major `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Weights `[out, in]`.
    pub w: Vec<f32>,
    /// Bias `[out]`.
    pub b: Vec<f32>,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
}

/// LayerNorm affine parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Norm {
    /// Weight (gamma).
    pub w: Vec<f32>,
    /// Bias (beta).
    pub b: Vec<f32>,
}

/// One pre-norm transformer block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// LayerNorm before attention.
    pub norm1: Norm,
    /// Fused q, k, v projection `[3D, D]`.
    pub qkv: Linear,
    /// Attention output projection `[D, D]`.
    pub proj: Linear,
    /// LayerScale after attention.
    pub ls1: Option<Vec<f32>>,
    /// LayerNorm before the MLP.
    pub norm2: Norm,
    /// MLP first layer `[H, D]`.
    pub fc1: Linear,
    /// MLP second layer `[D, H]`.
    pub fc2: Linear,
    /// LayerScale after the MLP.
    pub ls2: Option<Vec<f32>>,
}

/// A loaded vision transformer: manifest, float32 weights and its non-linear layers.
#[derive(Debug, Clone)]
pub struct Model {
    /// The manifest.
    pub manifest: Manifest,
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// Class token `[D]`.
    pub cls_token: Vec<f32>,
    /// Distillation token `[D]` (DeiT).
    pub dist_token: Option<Vec<f32>>,
    /// Position embedding `[T, D]`.
    pub pos_embed: Vec<f32>,
    /// Patch embedding as a linear layer on flattened `[C, P, P]` patches.
    pub patch: Linear,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub norm: Norm,
    /// Classifier (None for a feature backbone).
    pub head: Option<Linear>,
    /// Distillation classifier (DeiT).
    pub head_dist: Option<Linear>,
    /// Non-linear layers in execution order.
    pub layers: Vec<Layer>,
}

/// Every tensor a manifest requires: name → (shape, which manifest field requires it).
pub fn expected_tensors(m: &Manifest) -> BTreeMap<String, (Vec<usize>, String)> {
    let d = m.embed_dim;
    let h = m.hidden();
    let mut e = BTreeMap::new();
    let mut add = |n: String, s: Vec<usize>, why: &str| {
        e.insert(n, (s, why.to_string()));
    };
    add("cls_token".into(), vec![1, 1, d], "every vit/deit");
    if m.distilled() {
        add("dist_token".into(), vec![1, 1, d], "arch deit");
    }
    add("pos_embed".into(), vec![1, m.tokens(), d], "img_size, patch_size, arch");
    add("patch_embed.proj.weight".into(), vec![d, m.in_chans, m.patch_size, m.patch_size], "embed_dim, in_chans, patch_size");
    add("patch_embed.proj.bias".into(), vec![d], "embed_dim");
    for i in 0..m.depth {
        let p = format!("blocks.{i}.");
        for n in ["norm1", "norm2"] {
            add(format!("{p}{n}.weight"), vec![d], "depth, embed_dim");
            add(format!("{p}{n}.bias"), vec![d], "depth, embed_dim");
        }
        add(format!("{p}attn.qkv.weight"), vec![3 * d, d], "depth, embed_dim");
        add(format!("{p}attn.qkv.bias"), vec![3 * d], "depth, embed_dim");
        add(format!("{p}attn.proj.weight"), vec![d, d], "depth, embed_dim");
        add(format!("{p}attn.proj.bias"), vec![d], "depth, embed_dim");
        add(format!("{p}mlp.fc1.weight"), vec![h, d], "depth, embed_dim, mlp_ratio");
        add(format!("{p}mlp.fc1.bias"), vec![h], "depth, embed_dim, mlp_ratio");
        add(format!("{p}mlp.fc2.weight"), vec![d, h], "depth, embed_dim, mlp_ratio");
        add(format!("{p}mlp.fc2.bias"), vec![d], "depth, embed_dim");
        if m.layer_scale {
            add(format!("{p}ls1.gamma"), vec![d], "layer_scale true");
            add(format!("{p}ls2.gamma"), vec![d], "layer_scale true");
        }
    }
    add("norm.weight".into(), vec![d], "embed_dim");
    add("norm.bias".into(), vec![d], "embed_dim");
    if m.num_classes > 0 {
        add("head.weight".into(), vec![m.num_classes, d], "num_classes");
        add("head.bias".into(), vec![m.num_classes], "num_classes");
        if m.distilled() {
            add("head_dist.weight".into(), vec![m.num_classes, d], "num_classes, arch deit");
            add("head_dist.bias".into(), vec![m.num_classes], "num_classes, arch deit");
        }
    }
    e
}

/// What a manifest would need to say for an unexpected tensor to belong.
fn hint_for(name: &str) -> &'static str {
    if name == "dist_token" || name.starts_with("head_dist") {
        "a distillation token/head: the manifest should say arch \"deit\""
    } else if name.contains(".ls1.") || name.contains(".ls2.") {
        "LayerScale gammas: the manifest should say layer_scale true"
    } else if name.starts_with("blocks.") {
        "more blocks than the manifest's depth"
    } else if name.starts_with("head") {
        "a classifier head: the manifest's num_classes is 0"
    } else {
        "not part of a timm VisionTransformer as the contract describes it"
    }
}

impl Model {
    /// Load `dir/manifest.json` and `dir/model.safetensors`, checking every tensor.
    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        Model::load_with(dir, &dir.join("manifest.json"))
    }

    /// Load with a manifest from another file (e.g. one written by `mnq calibrate --out`).
    pub fn load_with(dir: &Path, manifest_path: &Path) -> Result<Model, ModelError> {
        let manifest = Manifest::load(manifest_path)?;
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        Model::from_bytes(manifest, dir, &path, &bytes)
    }

    /// Build from a parsed manifest and the bytes of a safetensors file (`path` for messages).
    pub fn from_bytes(manifest: Manifest, dir: &Path, path: &Path, bytes: &[u8]) -> Result<Model, ModelError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Weights { path: path.to_path_buf(), what: e.to_string() })?;
        let expected = expected_tensors(&manifest);
        let present: BTreeSet<String> = st.names().into_iter().cloned().collect();
        let mut extra: Vec<&String> = present.iter().filter(|n| !expected.contains_key(*n)).collect();
        extra.sort_by_key(|n| n.as_str());
        if let Some(first) = extra.first() {
            let shown: Vec<&str> = extra.iter().take(5).map(|s| s.as_str()).collect();
            return Err(ModelError::UnexpectedTensor {
                path: path.to_path_buf(),
                names: format!(
                    "{}{}",
                    shown.join(", "),
                    if extra.len() > 5 { format!(" and {} more", extra.len() - 5) } else { String::new() }
                ),
                hint: hint_for(first).into(),
            });
        }
        let get = |name: &str| -> Result<Vec<f32>, ModelError> {
            let (shape, why) = &expected[name];
            let t =
                st.tensor(name).map_err(|_| ModelError::MissingTensor { path: path.to_path_buf(), name: name.into(), why: why.clone() })?;
            if t.dtype() != Dtype::F32 {
                return Err(ModelError::TensorDtype { path: path.to_path_buf(), name: name.into(), dtype: format!("{:?}", t.dtype()) });
            }
            if t.shape() != shape.as_slice() {
                return Err(ModelError::TensorShape {
                    path: path.to_path_buf(),
                    name: name.into(),
                    expected: shape.clone(),
                    got: t.shape().to_vec(),
                });
            }
            let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(ModelError::NonFinite { path: path.to_path_buf(), name: name.into(), index, value });
            }
            Ok(v)
        };
        // Check presence of every tensor first so the error names the first missing one in order.
        for (name, (_, why)) in &expected {
            if !present.contains(name) {
                return Err(ModelError::MissingTensor { path: path.to_path_buf(), name: name.clone(), why: why.clone() });
            }
        }
        let m = &manifest;
        let d = m.embed_dim;
        let h = m.hidden();
        let lin = |p: &str, out: usize, inp: usize| -> Result<Linear, ModelError> {
            Ok(Linear { w: get(&format!("{p}.weight"))?, b: get(&format!("{p}.bias"))?, out, inp })
        };
        let norm = |p: &str| -> Result<Norm, ModelError> { Ok(Norm { w: get(&format!("{p}.weight"))?, b: get(&format!("{p}.bias"))? }) };
        let mut blocks = Vec::with_capacity(m.depth);
        for i in 0..m.depth {
            let p = format!("blocks.{i}.");
            blocks.push(Block {
                norm1: norm(&format!("{p}norm1"))?,
                qkv: lin(&format!("{p}attn.qkv"), 3 * d, d)?,
                proj: lin(&format!("{p}attn.proj"), d, d)?,
                ls1: if m.layer_scale { Some(get(&format!("{p}ls1.gamma"))?) } else { None },
                norm2: norm(&format!("{p}norm2"))?,
                fc1: lin(&format!("{p}mlp.fc1"), h, d)?,
                fc2: lin(&format!("{p}mlp.fc2"), d, h)?,
                ls2: if m.layer_scale { Some(get(&format!("{p}ls2.gamma"))?) } else { None },
            });
        }
        let cpp = m.in_chans * m.patch_size * m.patch_size;
        Ok(Model {
            cls_token: get("cls_token")?,
            dist_token: if m.distilled() { Some(get("dist_token")?) } else { None },
            pos_embed: get("pos_embed")?,
            patch: lin("patch_embed.proj", d, cpp)?,
            blocks,
            norm: norm("norm")?,
            head: if m.num_classes > 0 { Some(lin("head", m.num_classes, d)?) } else { None },
            head_dist: if m.num_classes > 0 && m.distilled() { Some(lin("head_dist", m.num_classes, d)?) } else { None },
            layers: layers_of(m),
            manifest,
            dir: dir.to_path_buf(),
        })
    }

    /// Length of the forward's output (classes, or D for a feature backbone).
    pub fn out_len(&self) -> usize {
        if self.manifest.num_classes > 0 {
            self.manifest.num_classes
        } else {
            self.manifest.embed_dim
        }
    }
}

/// Write a model directory with random weights (timm names, float32) for `manifest`, for tests
/// and benchmarks. Weights are N(0, 1/fan_in), LayerNorm gammas near 1, biases small.
pub fn write_random_model(dir: &Path, manifest: &Manifest, seed: u64) -> Result<(), ModelError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let expected = expected_tensors(manifest);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, (shape, _)) in &expected {
        let n: usize = shape.iter().product();
        let fan_in = if name.ends_with(".weight") && shape.len() >= 2 { shape[1..].iter().product::<usize>() } else { 1 };
        let values: Vec<f32> = if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm.weight" {
            (0..n).map(|_| 1.0 + 0.2 * rng.gen_range(-1.0f32..1.0)).collect()
        } else if name.ends_with(".gamma") {
            (0..n).map(|_| 0.5 + 0.5 * rng.gen::<f32>()).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| 0.05 * rng.gen_range(-1.0f32..1.0)).collect()
        } else {
            let std = if fan_in > 1 { 1.0 / (fan_in as f32).sqrt() } else { 0.5 };
            let nd = Normal::new(0.0f32, std).expect("valid std");
            (0..n).map(|_| nd.sample(&mut rng)).collect()
        };
        tensors.push((name.clone(), shape.clone(), values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("consistent tensor"))).collect();
    let bytes = safetensors::serialize(views, &None).map_err(|e| ModelError::Write { what: e.to_string() })?;
    let w = |p: PathBuf, b: &[u8]| crate::io::write_atomic(&p, b).map_err(|e| ModelError::Write { what: e.to_string() });
    w(dir.join("model.safetensors"), &bytes)?;
    w(dir.join("manifest.json"), manifest.to_json().as_bytes())
}
