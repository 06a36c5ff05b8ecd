//! Loading `model.safetensors` against the manifest, and writing random models for tests and benches.

use super::graph::{self, Graph, ParamId};
use super::{Layer, Manifest, ModelError};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A loaded vision transformer: manifest, layer graph and its float32 parameters.
#[derive(Debug, Clone)]
pub struct Model {
    /// The manifest.
    pub manifest: Manifest,
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// The layer graph the manifest describes.
    pub graph: Graph,
    /// Parameter values, indexed like `graph.params`.
    pub params: Vec<Vec<f32>>,
    /// Non-linear layers in execution order (the graph's).
    pub layers: Vec<Layer>,
    /// Integer weights quantised so far, shared by every integer model of this model.
    pub wcache: super::quant::WeightCache,
}

/// Every tensor a manifest requires: name → (shape, which manifest field requires it).
pub fn expected_tensors(m: &Manifest) -> BTreeMap<String, (Vec<usize>, String)> {
    graph::build(m).params.into_iter().map(|p| (p.name, (p.shape, p.why))).collect()
}

/// What a manifest would need to say for an unexpected tensor to belong.
fn hint_for(name: &str) -> &'static str {
    if name == "dist_token" || name.starts_with("head_dist") {
        "a distillation token/head: the manifest should say arch \"deit\""
    } else if name.contains(".ls1.") || name.contains(".ls2.") {
        "LayerScale gammas: the manifest should say layer_scale true"
    } else if name.starts_with("blocks.") {
        "more blocks than the manifest's depth"
    } else if name.ends_with("relative_position_index") || name.ends_with("attn_mask") {
        "derived Swin buffers (mnq computes them): export the checkpoint with sim/export.py"
    } else if name.starts_with("layers.") {
        "more Swin stages or blocks than the manifest's swin section"
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
        let g = graph::build(&manifest);
        let params = g.params.iter().map(|p| get(&p.name)).collect::<Result<Vec<_>, _>>()?;
        Ok(Model { layers: g.layers.clone(), graph: g, params, manifest, dir: dir.to_path_buf(), wcache: Default::default() })
    }

    /// Length of the forward's output (classes, or the feature width for a backbone).
    pub fn out_len(&self) -> usize {
        self.graph.out_len
    }

    /// The values of parameter `id`.
    pub fn param(&self, id: ParamId) -> &[f32] {
        &self.params[id]
    }

    /// The values of the tensor called `name` (timm name).
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.graph.param(name).map(|i| self.params[i].as_slice())
    }

    /// Mutable values of the tensor called `name` (tests that build models by hand).
    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut Vec<f32>> {
        self.graph.param(name).map(|i| &mut self.params[i])
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
        let values: Vec<f32> = if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name == "norm.weight"
            || name.ends_with(".norm.weight")
        {
            (0..n).map(|_| 1.0 + 0.2 * rng.gen_range(-1.0f32..1.0)).collect()
        } else if name.ends_with("relative_position_bias_table") {
            let nd = Normal::new(0.0f32, 0.5).expect("valid std");
            (0..n).map(|_| nd.sample(&mut rng)).collect()
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
