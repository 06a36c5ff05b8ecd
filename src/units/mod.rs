//! Golden models: bit-accurate integer models of every non-linear unit.
//!
//! Each unit is named `<op>_<method>` and implements [`Unit`]. A unit runs in one of two
//! [`Mode`]s: `Reference` reproduces the float64 run of the published code bit for bit
//! (replaying its float64 steps where it has them), `Integer` is the pure-integer datapath
//! that the hardware builds. Where the two can differ is documented on each unit.

pub mod float;
pub mod fqvit;
pub mod ibert;
pub mod ivit;

use crate::fixed::{FixedError, QTensor, Scale};
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// The non-linear operation a unit computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Row-wise softmax (attention probabilities).
    Softmax,
    /// GELU activation.
    Gelu,
    /// LayerNorm over the last dimension.
    LayerNorm,
    /// Dyadic requantisation (QuantAct glue between layers).
    Requant,
    /// FQ-ViT log2 quantiser of probabilities (float path).
    Log2Quant,
}

impl Op {
    /// Lower-case name used in unit names.
    pub fn name(self) -> &'static str {
        match self {
            Op::Softmax => "softmax",
            Op::Gelu => "gelu",
            Op::LayerNorm => "layernorm",
            Op::Requant => "requant",
            Op::Log2Quant => "log2quant",
        }
    }
}

/// The published family a unit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// I-BERT (polynomial approximations).
    IBert,
    /// FQ-ViT (log2 quantisation, power-of-two factors).
    FqVit,
    /// I-ViT (bit-shifting approximations).
    IVit,
}

impl Method {
    /// Lower-case name used in unit names.
    pub fn name(self) -> &'static str {
        match self {
            Method::IBert => "ibert",
            Method::FqVit => "fqvit",
            Method::IVit => "ivit",
        }
    }
}

/// Which datapath a unit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bit-exact with the float64 run of the reference code.
    Reference,
    /// The pure-integer datapath that hardware builds.
    Integer,
}

/// A named set of a unit's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The constants of the published code, breakages included.
    Reference,
    /// Constants adapted so that the unit works at 8 and 6 bits (kernels.md §6 breakages fixed).
    Adapted,
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Reference => "reference",
            Preset::Adapted => "adapted",
        })
    }
}

/// Extra inputs some units need besides the integer tensor.
#[derive(Debug, Clone, Default)]
pub struct Aux {
    /// LayerNorm weight (float32 parameter), one per channel.
    pub gamma: Option<Vec<f32>>,
    /// LayerNorm bias (float32 parameter), one per channel.
    pub beta: Option<Vec<f32>>,
    /// Zero point of an asymmetric input (FQ-ViT); 0 for symmetric inputs.
    pub zero_point: i64,
    /// Output scale chosen by the next quantiser (PTF LayerNorm, requantiser), float32 values.
    pub out_scale: Option<Scale>,
    /// Residual branch added by the requantiser.
    pub identity: Option<QTensor>,
    /// Softmax mask (Swin's shifted windows): one flag per input element, `true` = masked.
    /// A masked element is left out of its row's maximum and sum and gets probability zero.
    /// Only softmax units accept one.
    pub mask: Option<std::sync::Arc<[bool]>>,
}

/// How output integers are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Encoding {
    /// Real value = integer * scale.
    Linear,
    /// Log2 code: `k` means `2^-k`, `-1` means exactly zero.
    Log2 {
        /// Code bits (codes 0..2^bits-1 plus the zero flag).
        bits: u32,
    },
}

/// A condition where the reference code yields NaN, infinity or an assertion, and what the unit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// A LayerNorm row with zero variance (reference: division by zero, NaN); output = bias.
    ZeroVariance,
    /// i-exp constant c_int = 0 at a coarse scale (reference: 0 * inf = NaN); output = 0.
    ExpUnderflow,
    /// I-BERT LayerNorm variance still >= 2^32 after the shift (reference: assertion fails).
    VarianceOverflow,
    /// A LayerNorm weight of zero (reference: bias/0 = inf); bias term set to 0.
    ZeroGamma,
    /// Shiftmax / ShiftGELU sum clamped at the sum limit (outputs no longer sum to one).
    SumSaturated,
    /// A float64 intermediate of the reference exceeded 2^53 and was rounded.
    InexactFloat,
    /// A softmax row whose every element is masked; output all zero probabilities.
    MaskedRow,
}

/// Output of a unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitOutput {
    /// Output integers (or log2 codes), row-major, same shape as the input.
    pub values: Vec<i64>,
    /// Shape of the output.
    pub shape: Vec<usize>,
    /// Output scale (for log2 codes: 1).
    pub scale: Scale,
    /// How to read the integers.
    pub encoding: Encoding,
    /// Conditions met, with the number of rows or elements affected.
    pub conditions: Vec<(Condition, usize)>,
}

impl UnitOutput {
    /// Real values of the output.
    pub fn dequantize(&self) -> Vec<f64> {
        let c = *self.shape.last().unwrap_or(&1);
        self.values
            .iter()
            .enumerate()
            .map(|(i, &v)| match self.encoding {
                Encoding::Linear => v as f64 * self.scale.at(i % c),
                Encoding::Log2 { .. } => {
                    if v < 0 {
                        0.0
                    } else {
                        2f64.powi(-(v as i32))
                    }
                }
            })
            .collect()
    }
}

/// Counter of conditions met while a unit runs.
#[derive(Debug, Default, Clone)]
pub struct Conditions(Vec<(Condition, usize)>);

impl Conditions {
    /// Count one more occurrence of `c`.
    pub fn add(&mut self, c: Condition) {
        self.add_n(c, 1);
    }

    /// Count `n` more occurrences of `c`.
    pub fn add_n(&mut self, c: Condition, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(e) = self.0.iter_mut().find(|e| e.0 == c) {
            e.1 += n;
        } else {
            self.0.push((c, n));
        }
    }

    /// The counted conditions.
    pub fn into_vec(self) -> Vec<(Condition, usize)> {
        self.0
    }
}

/// Observer of every intermediate value of an integer datapath (for width checks).
pub trait Probe {
    /// Called with each intermediate value.
    fn see(&mut self, v: i128);
}

/// A probe that does nothing (the fast path).
pub struct NoProbe;

impl Probe for NoProbe {
    #[inline(always)]
    fn see(&mut self, _v: i128) {}
}

/// A probe recording the widest intermediate, in two's-complement bits.
#[derive(Debug, Default, Clone, Copy)]
pub struct WidthProbe {
    /// Widest signed width seen.
    pub max_width: u32,
}

impl Probe for WidthProbe {
    #[inline]
    fn see(&mut self, v: i128) {
        self.max_width = self.max_width.max(crate::fixed::signed_width(v));
    }
}

/// Errors of the golden models.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum UnitError {
    /// No unit of that name.
    #[error("unknown unit '{0}' (known: {known})", known = unit_names().join(", "))]
    Unknown(String),
    /// The input tensor is malformed.
    #[error("{unit}: {source}")]
    Input {
        /// Unit name.
        unit: &'static str,
        /// What is wrong.
        source: FixedError,
    },
    /// An input bit width the unit does not support.
    #[error("{unit}: input width {bits} bits is not supported (supported: {min}..={max}, {sign})")]
    Bits {
        /// Unit name.
        unit: &'static str,
        /// Requested width.
        bits: u32,
        /// Smallest supported width.
        min: u32,
        /// Largest supported width.
        max: u32,
        /// Required signedness.
        sign: &'static str,
    },
    /// A required auxiliary input is missing or malformed.
    #[error("{unit}: {what}")]
    Aux {
        /// Unit name.
        unit: &'static str,
        /// What is wrong and how to fix it.
        what: String,
    },
    /// A parameter outside its allowed range.
    #[error("{unit}: parameter {param} = {value} is invalid: {why}")]
    Param {
        /// Unit name.
        unit: &'static str,
        /// Parameter name.
        param: &'static str,
        /// Given value.
        value: String,
        /// Allowed range.
        why: String,
    },
}

/// A parameter of a unit as shown by `mnq units`.
#[derive(Debug, Clone, Serialize)]
pub struct ParamInfo {
    /// Name as accepted by `--param name=value`.
    pub name: &'static str,
    /// Current value.
    pub value: String,
    /// What it controls.
    pub doc: &'static str,
}

/// Common interface of every golden model.
pub trait Unit: Send + Sync {
    /// `<op>_<method>`.
    fn name(&self) -> &'static str;
    /// The operation.
    fn op(&self) -> Op;
    /// The family.
    fn method(&self) -> Method;
    /// Supported input widths and signedness (`None` = either).
    fn input_bits(&self) -> (u32, u32, Option<bool>);
    /// Current parameters.
    fn params(&self) -> Vec<ParamInfo>;
    /// Set one parameter by name (`--param name=value`).
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError>;
    /// Widest intermediate (two's-complement bits) for this input format, scale and row length.
    fn declared_width(&self, x: &QTensor, aux: &Aux) -> Result<u32, UnitError>;
    /// Run the unit.
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError>;
    /// Run the integer datapath while observing every intermediate.
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError>;
}

/// Names of every unit, in registry order.
pub fn unit_names() -> Vec<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).collect()
}

type Builder = fn(Preset) -> Box<dyn Unit>;

/// The registry: one line per unit.
const REGISTRY: &[(&str, Builder)] = &[
    ("softmax_ibert", |p| Box::new(ibert::Softmax::preset(p))),
    ("softmax_ivit", |p| Box::new(ivit::Softmax::preset(p))),
    ("softmax_fqvit", |p| Box::new(fqvit::Softmax::preset(p))),
    ("gelu_ibert", |p| Box::new(ibert::Gelu::preset(p))),
    ("gelu_ivit", |p| Box::new(ivit::Gelu::preset(p))),
    ("layernorm_ibert", |p| Box::new(ibert::LayerNorm::preset(p))),
    ("layernorm_ivit", |p| Box::new(ivit::LayerNorm::preset(p))),
    ("layernorm_fqvit", |p| Box::new(fqvit::LayerNorm::preset(p))),
    ("requant_ivit", |p| Box::new(ivit::Requant::preset(p, Method::IVit))),
    ("requant_ibert", |p| Box::new(ivit::Requant::preset(p, Method::IBert))),
    ("log2quant_fqvit", |p| Box::new(fqvit::Log2Quant::preset(p))),
];

/// Build a unit by name with a preset.
pub fn build(name: &str, preset: Preset) -> Result<Box<dyn Unit>, UnitError> {
    REGISTRY.iter().find(|(n, _)| *n == name).map(|(_, b)| b(preset)).ok_or_else(|| UnitError::Unknown(name.to_string()))
}

/// Check an input against a unit's supported widths and signedness.
pub(crate) fn check_bits(unit: &'static str, x: &QTensor, min: u32, max: u32, signed: Option<bool>) -> Result<(), UnitError> {
    let sign_ok = signed.is_none_or(|s| s == x.signed);
    if x.bits < min || x.bits > max || !sign_ok {
        return Err(UnitError::Bits {
            unit,
            bits: x.bits,
            min,
            max,
            sign: match signed {
                Some(true) => "signed",
                Some(false) => "unsigned",
                None => "signed or unsigned",
            },
        });
    }
    Ok(())
}

/// Parse a parameter value, naming the parameter on failure.
pub(crate) fn parse_param<T: std::str::FromStr>(unit: &'static str, param: &'static str, value: &str) -> Result<T, UnitError> {
    value.parse().map_err(|_| UnitError::Param { unit, param, value: value.to_string(), why: "not a number of the right type".into() })
}

/// Error for an unknown parameter name.
pub(crate) fn unknown_param(unit: &'static str, name: &str, params: &[ParamInfo]) -> UnitError {
    UnitError::Param {
        unit,
        param: "name",
        value: name.to_string(),
        why: format!("no such parameter (known: {})", params.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")),
    }
}

/// Rows of a tensor: (row length, number of rows).
pub(crate) fn rows(x: &QTensor) -> (usize, usize) {
    let c = x.row_len();
    (c, x.data().len().checked_div(c).unwrap_or(0))
}

/// The softmax mask of `aux`, checked against `x`: one flag per element (`true` = masked).
pub(crate) fn softmax_mask<'a>(unit: &'static str, x: &QTensor, aux: &'a Aux) -> Result<Option<&'a [bool]>, UnitError> {
    match aux.mask.as_deref() {
        None => Ok(None),
        Some(m) if m.len() == x.data().len() => Ok(Some(m)),
        Some(m) => Err(UnitError::Aux {
            unit,
            what: format!("the softmax mask has {} flags but the input has {} elements (one flag per element)", m.len(), x.data().len()),
        }),
    }
}

/// Refuse a mask on a unit that has none (only softmax units mask), so it is never dropped silently.
pub(crate) fn no_mask(unit: &'static str, aux: &Aux) -> Result<(), UnitError> {
    if aux.mask.is_some() {
        return Err(UnitError::Aux { unit, what: "only softmax units take a mask".into() });
    }
    Ok(())
}

/// The flags of row `r` of length `c` of a mask.
#[inline]
pub(crate) fn mask_row(mask: Option<&[bool]>, r: usize, c: usize) -> Option<&[bool]> {
    mask.map(|m| &m[r * c..(r + 1) * c])
}

/// Maximum over the unmasked elements of a row; None when every element is masked.
#[inline]
pub(crate) fn row_max(row: &[i64], mask: Option<&[bool]>) -> Option<i64> {
    match mask {
        None => row.iter().copied().max(),
        Some(m) => row.iter().zip(m).filter(|(_, &k)| !k).map(|(&q, _)| q).max(),
    }
}

/// Rows of length `c` whose every element is masked (reported as [`Condition::MaskedRow`]
/// also where a degenerate scale short-cuts the whole tensor).
pub(crate) fn masked_rows(mask: Option<&[bool]>, c: usize) -> usize {
    mask.map_or(0, |m| m.chunks_exact(c.max(1)).filter(|r| r.iter().all(|&f| f)).count())
}

/// Whether element `j` of a row is masked.
#[inline(always)]
pub(crate) fn masked(mask: Option<&[bool]>, j: usize) -> bool {
    mask.is_some_and(|m| m[j])
}

/// Look up the LayerNorm affine parameters, checking their lengths.
pub(crate) fn affine<'a>(unit: &'static str, aux: &'a Aux, c: usize) -> Result<(&'a [f32], &'a [f32]), UnitError> {
    let g = aux.gamma.as_deref().ok_or_else(|| UnitError::Aux { unit, what: "LayerNorm weight (gamma) is missing".into() })?;
    let b = aux.beta.as_deref().ok_or_else(|| UnitError::Aux { unit, what: "LayerNorm bias (beta) is missing".into() })?;
    for (what, v) in [("weight (gamma)", g), ("bias (beta)", b)] {
        if v.len() != c {
            return Err(UnitError::Aux { unit, what: format!("LayerNorm {what} has {} entries but rows have {c} channels", v.len()) });
        }
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(UnitError::Aux { unit, what: format!("LayerNorm {what} contains {bad}") });
        }
    }
    Ok((g, b))
}
