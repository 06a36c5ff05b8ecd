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

/// The largest sizes a manifest may state, far above any published vision transformer (ViT-22B:
/// depth 48, width 6144). They bound what the layer graph and the forwards allocate, and are
/// checked before anything is built or read, so a typing slip (`"depth": 1000000000`) is an
/// error naming the field instead of memory growing until the process is killed.
pub mod bounds {
    /// Blocks (`depth`).
    pub const DEPTH: usize = 1024;
    /// Embedding width (`embed_dim`, every `swin.embed_dims`).
    pub const EMBED_DIM: usize = 16384;
    /// Attention heads per block.
    pub const HEADS: usize = 1024;
    /// Image side in pixels (`img_size`).
    pub const IMG_SIZE: usize = 8192;
    /// Input channels (`in_chans`).
    pub const IN_CHANS: usize = 64;
    /// MLP hidden width (`embed_dim · mlp_ratio`).
    pub const HIDDEN: usize = 65536;
    /// Classes (`num_classes`).
    pub const CLASSES: usize = 1 << 20;
    /// Tokens entering the first block.
    pub const TOKENS: usize = 1 << 16;
    /// Swin stages.
    pub const STAGES: usize = 16;
    /// Elements one non-linear layer processes per image (softmax: heads × tokens², the
    /// attention matrix; GELU: tokens × hidden): 2^28, 2 GiB as f64.
    pub const LAYER_ELEMENTS: u128 = 1 << 28;
}

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
    /// Range scheme other than min/max or a percentile (`"mse"`: the clipping search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<String>,
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
        Manifest::parse(&text, path)
    }

    /// Parse and validate the text of a manifest (`path` names it in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ModelError> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| ModelError::Manifest {
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

    /// Width of the pooled features a headless model outputs (Swin: the last stage's width).
    pub fn feature_dim(&self) -> usize {
        self.swin.as_ref().and_then(|s| s.embed_dims.last().copied()).unwrap_or(self.embed_dim)
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
        for (name, v, max) in [
            ("depth", self.depth, bounds::DEPTH),
            ("embed_dim", self.embed_dim, bounds::EMBED_DIM),
            ("num_heads", self.num_heads, bounds::HEADS),
            ("img_size", self.img_size, bounds::IMG_SIZE),
            ("in_chans", self.in_chans, bounds::IN_CHANS),
            ("num_classes", self.num_classes, bounds::CLASSES),
        ] {
            if v > max {
                return bad(format!(
                    "{name} {v} is above mnq's bound of {max} (bounds in the README, \"Bad input\"); is the manifest mistyped?"
                ));
            }
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return bad(format!("img_size {} is not a multiple of patch_size {}", self.img_size, self.patch_size));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(format!("embed_dim {} is not a multiple of num_heads {}", self.embed_dim, self.num_heads));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.hidden() == 0 {
            return bad(format!("mlp_ratio {} must be positive", self.mlp_ratio));
        }
        if self.mlp_ratio * self.embed_dim as f64 > bounds::HIDDEN as f64 {
            return bad(format!(
                "mlp_ratio {} × embed_dim {} = {} hidden units is above mnq's bound of {}",
                self.mlp_ratio,
                self.embed_dim,
                self.mlp_ratio * self.embed_dim as f64,
                bounds::HIDDEN
            ));
        }
        if self.tokens() > bounds::TOKENS {
            return bad(format!(
                "img_size {} with patch_size {} gives {} tokens, above mnq's bound of {}",
                self.img_size,
                self.patch_size,
                self.tokens(),
                bounds::TOKENS
            ));
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
        if let Some((what, n)) = self.largest_layer() {
            if n > bounds::LAYER_ELEMENTS {
                return bad(format!(
                    "the {what} would hold {n} values per image, above mnq's bound of {} (2^28); check img_size, patch_size, embed_dim, num_heads and mlp_ratio",
                    bounds::LAYER_ELEMENTS
                ));
            }
        }
        if let Some(l) = &self.labels {
            if self.num_classes > 0 && l.len() != self.num_classes {
                return bad(format!("labels has {} names but num_classes is {}", l.len(), self.num_classes));
            }
        }
        if let Some(q) = &self.quant {
            for (name, b) in [("weight_bits", q.weight_bits), ("act_bits", q.act_bits)] {
                if !(2..=32).contains(&b) {
                    return bad(format!("quant.{name} {b} is outside 2..=32"));
                }
            }
            for (name, s) in &q.act_scales {
                if !(s.is_finite() && *s > 0.0) {
                    return bad(format!("quant.act_scales.{name} = {s} is not a positive number"));
                }
            }
            // The channel count of each LayerNorm is the graph's (Swin's stages differ); the
            // integer model checks it per layer. Here: sane values, bounded length.
            for (name, p) in &q.ptf {
                if p.alpha.is_empty()
                    || p.alpha.len() > bounds::HIDDEN
                    || p.alpha.iter().any(|a| *a > 3)
                    || !(p.min.is_finite() && p.max.is_finite() && p.min <= p.max)
                {
                    return bad(format!(
                        "quant.ptf.{name} needs finite min ≤ max and one alpha value in 0..=3 per channel of the LayerNorm (got {} values)",
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
        if n > bounds::STAGES {
            return Err(format!("swin.depths has {n} stages, above mnq's bound of {}", bounds::STAGES));
        }
        if let Some((i, d)) = s.embed_dims.iter().enumerate().find(|(_, d)| **d > bounds::EMBED_DIM) {
            return Err(format!("swin.embed_dims[{i}] = {d} is above mnq's bound of {}", bounds::EMBED_DIM));
        }
        if let Some((i, h)) = s.num_heads.iter().enumerate().find(|(_, h)| **h > bounds::HEADS) {
            return Err(format!("swin.num_heads[{i}] = {h} is above mnq's bound of {}", bounds::HEADS));
        }
        if let Some((i, d)) = s.depths.iter().enumerate().find(|(_, d)| **d > bounds::DEPTH) {
            return Err(format!("swin.depths[{i}] = {d} is above mnq's bound of {}", bounds::DEPTH));
        }
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
        let total: usize = s.depths.iter().fold(0usize, |a, &d| a.saturating_add(d));
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
            if d as f64 * self.mlp_ratio > bounds::HIDDEN as f64 {
                return Err(format!(
                    "swin stage {st}: {} hidden units is above mnq's bound of {}",
                    d as f64 * self.mlp_ratio,
                    bounds::HIDDEN
                ));
            }
            if st > 0 {
                if !grid.is_multiple_of(2) {
                    return Err(format!("swin stage {st}: patch merging needs an even grid, but stage {} is {grid}x{grid}", st - 1));
                }
                grid /= 2;
            }
            let win = w.min(grid);
            if !grid.is_multiple_of(win) {
                return Err(format!(
                    "swin stage {st}: the {grid}x{grid} token grid is not a multiple of the {win}x{win} window (timm would pad; mnq's graph does not)"
                ));
            }
        }
        Ok(())
    }

    /// The non-linear layer holding the most values per image, and that count, from the sizes
    /// alone (no graph is built); `None` for an inconsistent Swin section (reported elsewhere).
    fn largest_layer(&self) -> Option<(String, u128)> {
        let u = |v: usize| v as u128;
        let hidden = |d: usize| (d as f64 * self.mlp_ratio) as u128;
        let mut best: (String, u128) = (String::new(), 0);
        let mut see = |what: String, n: u128| {
            if n > best.1 {
                best = (what, n);
            }
        };
        match (&self.swin, self.arch()) {
            (Some(s), Arch::Swin) => {
                let mut grid = u(self.img_size / self.patch_size);
                for st in 0..s.depths.len().min(s.embed_dims.len()).min(s.num_heads.len()).min(s.window_size.len()) {
                    if st > 0 {
                        grid /= 2;
                    }
                    let win = u(s.window_size[st]).min(grid).max(1);
                    let t = grid * grid;
                    see(format!("stage {st} attention (heads × tokens × window²)"), u(s.num_heads[st]) * t * win * win);
                    see(format!("stage {st} GELU (tokens × hidden)"), t * hidden(s.embed_dims[st]));
                    see(format!("stage {st} LayerNorm (tokens × width)"), t * u(s.embed_dims[st]));
                }
            }
            _ => {
                let t = u(self.tokens());
                see("attention matrix (heads × tokens²)".into(), u(self.num_heads) * t * t);
                see("GELU (tokens × hidden)".into(), t * hidden(self.embed_dim));
                see("LayerNorm (tokens × embed_dim)".into(), t * u(self.embed_dim));
            }
        }
        (best.1 > 0).then_some(best)
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
    /// The operation in float64 on the dequantised input (`softmax_float`, `gelu_float`,
    /// `layernorm_float`): the error-attribution baseline, which leaves only the linear
    /// quantisation on that layer. Never a candidate of `mnq run`; **not an integer unit**.
    Exact(Op),
}

/// Name under which the FQ-ViT float GELU fallback appears in assignments.
pub const FLOAT_GELU: &str = "gelu_fqvit";

/// The ops that have an exact float64 form ([`LayerUnit::Exact`]), named `<op>_float`.
pub const EXACT_OPS: [Op; 3] = [Op::Softmax, Op::Gelu, Op::LayerNorm];

impl LayerUnit {
    /// Parse a unit name as it appears in an assignment.
    pub fn parse(name: &str) -> Result<LayerUnit, String> {
        if name == FLOAT_GELU {
            return Ok(LayerUnit::FloatGelu);
        }
        if let Some(op) = EXACT_OPS.into_iter().find(|op| name == LayerUnit::Exact(*op).name()) {
            return Ok(LayerUnit::Exact(op));
        }
        units::build(name, Preset::Adapted).map(|_| LayerUnit::Unit(name.to_string())).map_err(|_| {
            format!("unknown unit '{name}' (known: {}, {FLOAT_GELU} = FQ-ViT's float GELU fallback, softmax_float/gelu_float/layernorm_float = the op in float64)", layer_unit_names().join(", "))
        })
    }

    /// Name as written in an assignment.
    pub fn name(&self) -> &str {
        match self {
            LayerUnit::Unit(n) => n,
            LayerUnit::FloatGelu => FLOAT_GELU,
            LayerUnit::Exact(Op::Softmax) => "softmax_float",
            LayerUnit::Exact(Op::Gelu) => "gelu_float",
            // Built only from EXACT_OPS, so the remaining op is LayerNorm.
            LayerUnit::Exact(_) => "layernorm_float",
        }
    }

    /// The operation it computes.
    pub fn op(&self) -> Op {
        match self {
            LayerUnit::Unit(n) => units::build(n, Preset::Adapted).map(|u| u.op()).unwrap_or(Op::Requant),
            LayerUnit::FloatGelu => Op::Gelu,
            LayerUnit::Exact(op) => *op,
        }
    }

    /// Whether the layer runs in integer arithmetic (false for the float GELU fallback and the
    /// exact float64 ops).
    pub fn is_integer(&self) -> bool {
        matches!(self, LayerUnit::Unit(_))
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
        Assignment::parse(&text, &path.display().to_string())
    }

    /// Parse the text of an assignment (`origin` names it in messages); syntax only.
    pub fn parse(text: &str, origin: &str) -> Result<Assignment, ModelError> {
        let a: Assignment = serde_json::from_str(text)
            .map_err(|e| ModelError::Assignment { origin: origin.to_string(), what: format!("not a valid assignment ({e})") })?;
        if a.format != 1 {
            return Err(ModelError::Assignment {
                origin: origin.to_string(),
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
