//! `manifest.json` (architecture, input normalisation, optional quantisation section) and
//! `assignment.json` (layer → unit), as specified by the model directory contract.

use super::ModelError;
use crate::units::{self, Op, Preset};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Manifest format version this code reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// Transformer architecture of a model directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// timm `VisionTransformer`: one class token.
    Vit,
    /// timm `VisionTransformerDistilled`: class and distillation tokens, two heads.
    Deit,
    /// timm `SwinTransformer`: shifted-window stages with patch merging, mean-pooled head.
    Swin,
}

/// The `swin` section of a Swin manifest: one entry per stage (timm `SwinTransformer` arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinSpec {
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Width per stage.
    pub embed_dims: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// timm's target window side per stage (the effective window is min(window, stage grid side)).
    pub window_size: Vec<usize>,
    /// Whether the patch embedding has a LayerNorm (timm default true).
    #[serde(default = "default_true")]
    pub patch_norm: bool,
}

fn default_true() -> bool {
    true
}

/// Per-channel input normalisation: a pixel `p` in [0, 1] becomes `(p − mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputNorm {
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Standard deviation per channel.
    pub std: Vec<f64>,
}

/// Parameters of FQ-ViT's power-of-two-factor (PTF) quantiser of one LayerNorm input.
///
/// Stored as the calibrated range plus the per-channel factor exponents, so the format follows
/// the activation width: `scale8 = (max − min)/(2^b − 1)`, `zp = clamp(−RNE(min/scale8), 0, 2^b − 1)`,
/// channel scale `s_c = scale8/8 · 2^alpha_c` (FQ-ViT `ptf.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PtfParams {
    /// Calibrated minimum of the tensor.
    pub min: f64,
    /// Calibrated maximum of the tensor.
    pub max: f64,
    /// Per-channel power-of-two exponents, each in 0..=3.
    pub alpha: Vec<u8>,
}

/// How the activation scales were obtained (written by `mnq calibrate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibInfo {
    /// Number of calibration images.
    pub images: usize,
    /// Percentile of |x| used for the range (100 = min/max).
    pub percentile: f64,
    /// File the images came from.
    pub source: String,
}

/// The optional `quant` section of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantSection {
    /// Weight bits the scales were made for.
    pub weight_bits: u32,
    /// Activation bits the per-tensor scales were made for (residual scales are always 16-bit).
    pub act_bits: u32,
    /// Per-tensor symmetric activation scales by quantisation-point name.
    #[serde(default)]
    pub act_scales: BTreeMap<String, f64>,
    /// Per-layer assignment of non-linear units (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<BTreeMap<String, String>>,
    /// PTF parameters of each LayerNorm input (mnq extension; needed by `layernorm_fqvit`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ptf: BTreeMap<String, PtfParams>,
    /// How the scales were calibrated (mnq extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibInfo>,
    /// Fields this version does not know, kept when the manifest is rewritten.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A model directory's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub format: u32,
    /// Model name.
    pub name: String,
    /// Architecture (`vit` or `deit`), checked after parsing so an unknown one gets a clear error.
    pub arch: String,
    /// Image height = width in pixels.
    pub img_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Patch size in pixels.
    pub patch_size: usize,
    /// Embedding dimension D.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden size over D.
    pub mlp_ratio: f64,
    /// Classes (0: a feature backbone).
    pub num_classes: usize,
    /// Whether blocks have LayerScale gammas `ls1`/`ls2`.
    #[serde(default)]
    pub layer_scale: bool,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// Input normalisation.
    pub input: InputNorm,
    /// Class names (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Free-text provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Swin stages (arch `swin` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swin: Option<SwinSpec>,
    /// Quantisation section (`null` when absent).
    #[serde(default)]
    pub quant: Option<QuantSection>,
    /// Fields this version does not know, kept when the manifest is rewritten.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// Parse and validate a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
            path: path.to_path_buf(),
            what: format!("not a valid manifest ({e}); see the model directory contract for the fields"),
        })?;
        m.validate().map_err(|what| match what {
            ManifestProblem::Arch(arch) => ModelError::UnknownArch { path: path.to_path_buf(), arch },
            ManifestProblem::Other(what) => ModelError::Manifest { path: path.to_path_buf(), what },
        })?;
        Ok(m)
    }

    /// The architecture (validated by [`Manifest::load`]).
    pub fn arch(&self) -> Arch {
        match self.arch.as_str() {
            "deit" => Arch::Deit,
            "swin" => Arch::Swin,
            _ => Arch::Vit,
        }
    }

    /// Whether the model has a distillation token and head.
    pub fn distilled(&self) -> bool {
        self.arch() == Arch::Deit
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        let g = self.img_size / self.patch_size;
        g * g
    }

    /// Tokens T entering the first block (ViT/DeiT: patches + class token + distillation
    /// token; Swin: the patches of stage 0).
    pub fn tokens(&self) -> usize {
        match self.arch() {
            Arch::Swin => self.num_patches(),
            _ => self.num_patches() + 1 + usize::from(self.distilled()),
        }
    }

    /// MLP hidden size H = int(D · mlp_ratio), as timm computes it.
    pub fn hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Values per image (C·H·W).
    pub fn image_len(&self) -> usize {
        self.in_chans * self.img_size * self.img_size
    }

    fn validate(&self) -> Result<(), ManifestProblem> {
        let bad = |w: String| Err(ManifestProblem::Other(w));
        if self.format != MANIFEST_FORMAT {
            return bad(format!("format {} is not supported (this mnq reads format {MANIFEST_FORMAT})", self.format));
        }
        if !["vit", "deit", "swin"].contains(&self.arch.as_str()) {
            return Err(ManifestProblem::Arch(self.arch.clone()));
        }
        for (name, v) in [
            ("img_size", self.img_size),
            ("in_chans", self.in_chans),
            ("patch_size", self.patch_size),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.img_size % self.patch_size != 0 {
            return bad(format!("img_size {} is not a multiple of patch_size {}", self.img_size, self.patch_size));
        }
        if self.embed_dim % self.num_heads != 0 {
            return bad(format!("embed_dim {} is not a multiple of num_heads {}", self.embed_dim, self.num_heads));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.hidden() == 0 {
            return bad(format!("mlp_ratio {} must be positive", self.mlp_ratio));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps > 0.0) {
            return bad(format!("ln_eps {} must be a positive number", self.ln_eps));
        }
        if self.input.mean.len() != self.in_chans || self.input.std.len() != self.in_chans {
            return bad(format!(
                "input.mean and input.std need one entry per channel ({}), got {} and {}",
                self.in_chans,
                self.input.mean.len(),
                self.input.std.len()
            ));
        }
        if self.input.mean.iter().any(|v| !v.is_finite()) || self.input.std.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return bad("input.mean must be finite and input.std positive".into());
        }
        match (&self.swin, self.arch()) {
            (Some(s), Arch::Swin) => self.validate_swin(s).map_err(ManifestProblem::Other)?,
            (None, Arch::Swin) => {
                return bad("arch swin needs a \"swin\" section (depths, embed_dims, num_heads, window_size per stage)".into())
            }
            (Some(_), _) => return bad(format!("a \"swin\" section belongs to arch swin, not {}", self.arch)),
            (None, _) => {}
        }
        if let Some(l) = &self.labels {
            if self.num_classes > 0 && l.len() != self.num_classes {
                return bad(format!("labels has {} names but num_classes is {}", l.len(), self.num_classes));
            }
        }
        if let Some(q) = &self.quant {
            for (name, s) in &q.act_scales {
                if !(s.is_finite() && *s > 0.0) {
                    return bad(format!("quant.act_scales.{name} = {s} is not a positive number"));
                }
            }
            for (name, p) in &q.ptf {
                if p.alpha.len() != self.embed_dim || p.alpha.iter().any(|a| *a > 3) || !(p.min.is_finite() && p.max.is_finite()) {
                    return bad(format!(
                        "quant.ptf.{name} needs finite min/max and {} alpha values in 0..=3 (got {})",
                        self.embed_dim,
                        p.alpha.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks of a Swin manifest: stage lists of one length, consistent with the top-level
    /// fields, and every stage's grid divisible by its window (the graph does not pad).
    fn validate_swin(&self, s: &SwinSpec) -> Result<(), String> {
        let n = s.depths.len();
        if n == 0 || s.embed_dims.len() != n || s.num_heads.len() != n || s.window_size.len() != n {
            return Err(format!(
                "swin.depths, swin.embed_dims, swin.num_heads and swin.window_size need one entry per stage (got {}, {}, {}, {})",
                n,
                s.embed_dims.len(),
                s.num_heads.len(),
                s.window_size.len()
            ));
        }
        if self.layer_scale {
            return Err("layer_scale must be false for arch swin (timm's SwinTransformer has no LayerScale)".into());
        }
        let total: usize = s.depths.iter().sum();
        if total != self.depth || s.embed_dims[0] != self.embed_dim || s.num_heads[0] != self.num_heads {
            return Err(format!(
                "depth ({}), embed_dim ({}) and num_heads ({}) must equal the sum of swin.depths ({total}), swin.embed_dims[0] ({}) and swin.num_heads[0] ({})",
                self.depth, self.embed_dim, self.num_heads, s.embed_dims[0], s.num_heads[0]
            ));
        }
        let mut grid = self.img_size / self.patch_size;
        for st in 0..n {
            let (d, h, w) = (s.embed_dims[st], s.num_heads[st], s.window_size[st]);
            if s.depths[st] == 0 || d == 0 || h == 0 || w == 0 {
                return Err(format!("swin stage {st}: depth, width, heads and window must be at least 1"));
            }
            if d % h != 0 {
                return Err(format!("swin stage {st}: embed_dims {d} is not a multiple of num_heads {h}"));
            }
            if (d as f64 * self.mlp_ratio) as usize == 0 {
                return Err(format!("swin stage {st}: mlp_ratio {} gives no hidden units", self.mlp_ratio));
            }
            if st > 0 {
                if grid % 2 != 0 {
                    return Err(format!("swin stage {st}: patch merging needs an even grid, but stage {} is {grid}x{grid}", st - 1));
                }
                grid /= 2;
            }
            let win = w.min(grid);
            if grid % win != 0 {
                return Err(format!(
                    "swin stage {st}: the {grid}x{grid} token grid is not a multiple of the {win}x{win} window (timm would pad; mnq's graph does not)"
                ));
            }
        }
        Ok(())
    }

    /// The manifest as pretty JSON (with a trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }
}

enum ManifestProblem {
    Arch(String),
    Other(String),
}

/// What computes one non-linear layer: a golden unit, or FQ-ViT's float GELU fallback.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LayerUnit {
    /// A golden unit from the registry, by name (`softmax_ivit`, ...).
    Unit(String),
    /// FQ-ViT has no integer GELU: float GELU on the dequantised input, output quantised to the
    /// activation width, as FQ-ViT itself does. **Not an integer unit.**
    FloatGelu,
}

/// Name under which the FQ-ViT float GELU fallback appears in assignments.
pub const FLOAT_GELU: &str = "gelu_fqvit";

impl LayerUnit {
    /// Parse a unit name as it appears in an assignment.
    pub fn parse(name: &str) -> Result<LayerUnit, String> {
        if name == FLOAT_GELU {
            return Ok(LayerUnit::FloatGelu);
        }
        units::build(name, Preset::Adapted).map(|_| LayerUnit::Unit(name.to_string())).map_err(|_| {
            format!("unknown unit '{name}' (known: {}, {FLOAT_GELU} = FQ-ViT's float GELU fallback)", layer_unit_names().join(", "))
        })
    }

    /// Name as written in an assignment.
    pub fn name(&self) -> &str {
        match self {
            LayerUnit::Unit(n) => n,
            LayerUnit::FloatGelu => FLOAT_GELU,
        }
    }

    /// The operation it computes.
    pub fn op(&self) -> Op {
        match self {
            LayerUnit::Unit(n) => units::build(n, Preset::Adapted).map(|u| u.op()).unwrap_or(Op::Requant),
            LayerUnit::FloatGelu => Op::Gelu,
        }
    }

    /// Whether the layer runs in integer arithmetic (false only for the float GELU fallback).
    pub fn is_integer(&self) -> bool {
        !matches!(self, LayerUnit::FloatGelu)
    }
}

/// Unit names that may be assigned to a layer computing `op`.
pub fn units_for(op: Op) -> Vec<String> {
    let mut v: Vec<String> = units::unit_names()
        .into_iter()
        .filter(|n| units::build(n, Preset::Adapted).map(|u| u.op() == op).unwrap_or(false))
        .map(String::from)
        .collect();
    if op == Op::Gelu {
        v.push(FLOAT_GELU.to_string());
    }
    v
}

fn layer_unit_names() -> Vec<String> {
    [Op::Softmax, Op::Gelu, Op::LayerNorm].into_iter().flat_map(units_for).filter(|n| n != FLOAT_GELU).collect()
}

/// The unit of `method` for `op` (`gelu_fqvit` is the float fallback).
pub fn unit_for(op: Op, method: units::Method) -> LayerUnit {
    let name = format!("{}_{}", op.name(), method.name());
    if name == FLOAT_GELU {
        LayerUnit::FloatGelu
    } else {
        LayerUnit::Unit(name)
    }
}

/// Layer names in execution order, kept as a map that serialises in that order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderedLayers(pub Vec<(String, String)>);

impl OrderedLayers {
    /// The unit assigned to `layer`.
    pub fn get(&self, layer: &str) -> Option<&str> {
        self.0.iter().find(|(l, _)| l == layer).map(|(_, u)| u.as_str())
    }

    /// Number of layers per unit, in order of first use.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for (_, u) in &self.0 {
            match out.iter_mut().find(|(n, _)| n == u) {
                Some(e) => e.1 += 1,
                None => out.push((u.clone(), 1)),
            }
        }
        out
    }
}

impl Serialize for OrderedLayers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for OrderedLayers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedLayers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping layer names to unit names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<OrderedLayers, A::Error> {
                let mut v: Vec<(String, String)> = Vec::new();
                while let Some((k, u)) = a.next_entry::<String, String>()? {
                    if v.iter().any(|(n, _)| *n == k) {
                        return Err(serde::de::Error::custom(format!("layer '{k}' appears twice")));
                    }
                    v.push((k, u));
                }
                Ok(OrderedLayers(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// `assignment.json`: which unit computes each non-linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Format version (1).
    pub format: u32,
    /// Model name the assignment was made for.
    pub model: String,
    /// Bit width it was made for.
    pub bits: u32,
    /// Layer → unit name, in execution order.
    pub layers: OrderedLayers,
}

impl Assignment {
    /// Read an assignment file (syntax only; [`Assignment::resolve`] checks it against a model).
    pub fn load(path: &Path) -> Result<Assignment, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let a: Assignment = serde_json::from_str(&text)
            .map_err(|e| ModelError::Assignment { origin: path.display().to_string(), what: format!("not a valid assignment ({e})") })?;
        if a.format != 1 {
            return Err(ModelError::Assignment {
                origin: path.display().to_string(),
                what: format!("format {} is not supported (expected 1)", a.format),
            });
        }
        Ok(a)
    }

    /// Write the assignment atomically as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let mut s = serde_json::to_string_pretty(self).expect("assignment serialises");
        s.push('\n');
        crate::io::write_atomic(path, s.as_bytes()).map_err(|e| ModelError::Write { what: e.to_string() })
    }

    /// Every layer computed by `method` (FQ-ViT GELU layers get the float fallback).
    pub fn single(layers: &[super::Layer], model: &str, bits: u32, method: units::Method) -> Assignment {
        Assignment {
            format: 1,
            model: model.to_string(),
            bits,
            layers: OrderedLayers(layers.iter().map(|l| (l.name.clone(), unit_for(l.op, method).name().to_string())).collect()),
        }
    }

    /// Check against a model's layers and return the unit of each layer in execution order.
    ///
    /// Errors name the unknown layer, the unknown unit, the unit of the wrong operation, or the
    /// missing layers. `source` names the file or flag the assignment came from.
    pub fn resolve(&self, layers: &[super::Layer], source: &str) -> Result<Vec<LayerUnit>, ModelError> {
        let ops: Vec<(String, Op)> = layers.iter().map(|l| (l.name.clone(), l.op)).collect();
        self.check(&ops, source)
    }

    /// [`Assignment::resolve`] against (layer name, op) pairs in execution order, for callers
    /// that have a sensitivity table rather than a loaded model.
    pub fn check(&self, layers: &[(String, Op)], source: &str) -> Result<Vec<LayerUnit>, ModelError> {
        let err = |what: String| ModelError::Assignment { origin: source.to_string(), what };
        let mut out: Vec<Option<LayerUnit>> = vec![None; layers.len()];
        for (name, unit) in &self.layers.0 {
            let Some(index) = layers.iter().position(|(l, _)| l == name) else {
                return Err(err(format!(
                    "layer '{name}' does not exist in this model (its non-linear layers are {} … {}, {} in all)",
                    layers.first().map(|l| l.0.as_str()).unwrap_or(""),
                    layers.last().map(|l| l.0.as_str()).unwrap_or(""),
                    layers.len()
                )));
            };
            let op = layers[index].1;
            let u = LayerUnit::parse(unit).map_err(|w| err(format!("layer '{name}': {w}")))?;
            if u.op() != op {
                return Err(err(format!(
                    "layer '{name}' is a {} layer but unit '{unit}' computes {}; use one of {}",
                    op.name(),
                    u.op().name(),
                    units_for(op).join(", ")
                )));
            }
            out[index] = Some(u);
        }
        let missing: Vec<&str> = layers.iter().zip(&out).filter(|(_, u)| u.is_none()).map(|(l, _)| l.0.as_str()).collect();
        if !missing.is_empty() {
            return Err(err(format!("every non-linear layer needs a unit; missing: {}", missing.join(", "))));
        }
        Ok(out.into_iter().map(|u| u.expect("checked")).collect())
    }
}
