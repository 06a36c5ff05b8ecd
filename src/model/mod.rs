//! Trained vision transformers: manifest + safetensors loading, float and integer forward passes with taps.
//!
//! A model is a directory with `model.safetensors` (timm tensor names) and `manifest.json`
//! (see the model directory contract). [`Model::load`] checks every tensor against the manifest.
//! [`float::FloatRun`] is timm's eval-mode forward in f32 or f64; [`quant::IntModel`] is the
//! integer forward of the I-ViT code base (HAWQ-V3 dyadic arithmetic) with every Softmax, GELU
//! and LayerNorm computed by a golden unit, any method per layer. Both forwards are step
//! machines that stop at every non-linear layer and show its input and output (a [`Tap`]), so a
//! caller can walk a float and an integer forward of the same image in lockstep without keeping
//! the model's activations.

pub mod arch;
pub mod attribution;
pub mod calib;
pub mod data;
pub mod eval;
pub mod float;
pub mod gemm;
pub mod graph;
pub mod manifest;
pub mod quant;
pub mod weights;

pub use calib::{calibrate, CalibOptions, Calibration};
pub use data::{Images, Reference};
pub use eval::{
    evaluate, evaluate_acc, evaluate_logits, evaluate_logits_many, float_outputs, forward_multi, forward_pair, EvalAcc, EvalReport,
    ExactSum, LayerReport,
};
pub use float::{FloatRun, Real};
pub use graph::Graph;
pub use manifest::{Arch, Assignment, LayerUnit, Manifest, QuantSection, FLOAT_GELU};
pub use quant::{forward_shared, ActScales, IntModel, IntRun, QuantConfig};
pub use weights::{write_random_model, Model};

use crate::units::{Condition, Op, UnitError};
use std::path::PathBuf;
use thiserror::Error;

/// Errors of model loading, configuration and the forward passes.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{what}")]
    Write {
        /// What failed.
        what: String,
    },
    /// The manifest is malformed or inconsistent.
    #[error("{path}: {what}")]
    Manifest {
        /// Manifest file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The manifest names an architecture mnq does not implement.
    #[error("{path}: unknown architecture '{arch}' (supported: vit, deit, swin)")]
    UnknownArch {
        /// Manifest file.
        path: PathBuf,
        /// The architecture given.
        arch: String,
    },
    /// The weights file is not a readable safetensors file.
    #[error("{path}: not a readable safetensors file ({what}); is it truncated?")]
    Weights {
        /// Weights file.
        path: PathBuf,
        /// Parser message.
        what: String,
    },
    /// A tensor the manifest requires is absent.
    #[error("{path}: tensor '{name}' is missing (required by the manifest: {why})")]
    MissingTensor {
        /// Weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Which manifest field requires it.
        why: String,
    },
    /// A tensor has a dtype other than float32.
    #[error("{path}: tensor '{name}' has dtype {dtype}, expected F32 (export float32 weights)")]
    TensorDtype {
        /// Weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor's shape disagrees with the manifest.
    #[error("{path}: tensor '{name}' has shape {got:?} but the manifest implies {expected:?}")]
    TensorShape {
        /// Weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape from the manifest.
        expected: Vec<usize>,
        /// Shape in the file.
        got: Vec<usize>,
    },
    /// The file holds tensors the manifest does not account for.
    #[error("{path}: the manifest disagrees with the weights: unexpected tensor(s) {names} ({hint})")]
    UnexpectedTensor {
        /// Weights file.
        path: PathBuf,
        /// The first unexpected names.
        names: String,
        /// What the manifest would need to say.
        hint: String,
    },
    /// A weight is NaN or infinite.
    #[error("{path}: tensor '{name}' holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// Weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// An assignment is malformed or does not fit the model.
    #[error("assignment {origin}: {what}")]
    Assignment {
        /// File or flag it came from.
        origin: String,
        /// What is wrong.
        what: String,
    },
    /// An image file is malformed or does not fit the model.
    #[error("{path}: {what}")]
    Images {
        /// File.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Quantisation settings or scales are missing or invalid.
    #[error("{what}")]
    Quant {
        /// What is wrong and the way out.
        what: String,
    },
    /// A golden unit refused its input.
    #[error("layer {layer} ({unit}): {source}")]
    Unit {
        /// Layer name.
        layer: String,
        /// Unit name.
        unit: String,
        /// The unit's error (boxed: it is large).
        source: Box<UnitError>,
    },
}

/// A non-linear layer of the model, in execution order.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Position in execution order (0-based; plots show `index.op`).
    pub index: usize,
    /// Contract name, e.g. `blocks.3.attn.softmax`.
    pub name: String,
    /// Operation.
    pub op: Op,
    /// Block index in execution order (None outside blocks: patch-embedding, patch-merging and final norms).
    pub block: Option<usize>,
    /// Rows the layer processes per image (softmax: heads × tokens, windows included; LayerNorm and GELU: tokens).
    pub rows: usize,
    /// Row length (softmax: tokens, or tokens per window; LayerNorm: channels; GELU: hidden size H).
    pub row_len: usize,
}

impl Layer {
    /// Short label for plots: `7.softmax`.
    pub fn label(&self) -> String {
        format!("{}.{}", self.index, self.op.name())
    }

    /// Elements per image (`rows × row_len`).
    pub fn elements(&self) -> usize {
        self.rows * self.row_len
    }
}

/// Non-linear layers of a model described by `m` (a validated manifest), in execution order.
pub fn layers_of(m: &Manifest) -> Vec<Layer> {
    graph::build(m).layers
}

/// The input and output of one non-linear layer for one image: float values in the float
/// forward, dequantised values in the integer forward. Row-major with rows of `layer.row_len`.
#[derive(Debug, Clone, Copy)]
pub struct Tap<'a> {
    /// The layer.
    pub layer: &'a Layer,
    /// Input as the unit sees it (integer forward: in the unit's input format, dequantised).
    pub input: &'a [f64],
    /// Output of the unit (integer forward: the unit's own output format, dequantised).
    pub output: &'a [f64],
    /// Conditions the unit met on this image (empty in the float forward).
    pub conditions: &'a [(Condition, usize)],
    /// The integer format of the input (integer forward only).
    pub format: Option<&'a InputFormat>,
}

/// The integer format a non-linear layer's unit takes its input in: what the float values
/// are quantised to there (range profiling compares the float model's values with it).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputFormat {
    /// Width of the codes.
    pub bits: u32,
    /// Two's-complement codes, or unsigned with a zero point.
    pub signed: bool,
    /// Code of the real value 0.
    pub zero_point: i64,
    /// One scale (per tensor), or one per channel (the row's last axis).
    pub scales: Vec<f64>,
}

impl InputFormat {
    /// The smallest and largest code.
    pub fn code_range(&self) -> (i64, i64) {
        let b = self.bits.min(62);
        if self.signed {
            (-(1i64 << (b - 1)), (1i64 << (b - 1)) - 1)
        } else {
            (0, (1i64 << b) - 1)
        }
    }

    /// Scale of element `i` of a row-major tensor.
    pub fn scale_at(&self, i: usize) -> f64 {
        self.scales[i % self.scales.len().max(1)]
    }
}

/// Result of a forward pass for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Logits (or features when the model has no head).
    pub logits: Vec<f64>,
    /// Integer forward: the integers the logits are computed from, so that another
    /// implementation can be compared exactly — the head accumulators (DeiT: the class head's,
    /// then the distillation head's), or the pooled final-norm codes of a head-less model.
    /// Empty for the float forward.
    pub int_logits: Vec<i64>,
}

impl Output {
    /// Index of the largest logit (first on ties).
    pub fn top1(&self) -> usize {
        let mut best = 0;
        for (i, v) in self.logits.iter().enumerate() {
            if *v > self.logits[best] {
                best = i;
            }
        }
        best
    }
}
