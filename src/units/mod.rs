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
pub(crate) mod vector;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    /// A softmax row (not masked) whose every probability rounds to zero: the row is too long
    /// or too flat for the output width, and its outputs no longer sum to one.
    AllZeroRow,
    /// i-GELU's erf is a single level at this scale and shift (`|c_int|/2^n` too small, or
    /// `b_int = −1` at coarse scales): the output is the input times a constant, not a GELU.
    ErfCollapsed,
    /// A LayerNorm row whose standard deviation exceeds the normalising numerator
    /// (`⌊2^31/std⌋ = 0`): the output is the bias alone.
    FactorUnderflow,
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

/// The input scales for which a unit's scale-derived constants and intermediates fit its
/// datapath, for one input width and row length (`Unit::scale_range`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScaleRange {
    /// Smallest accepted scale.
    pub lo: f64,
    /// Largest accepted scale.
    pub hi: f64,
}

impl fmt::Display for ScaleRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Four significant digits, rounded inward so that a scale printed inside is accepted.
        let lo = if self.lo <= f64::from_bits(1) { "any positive".to_string() } else { sig4(self.lo, true) };
        let hi = if self.hi >= f64::MAX { "any finite".to_string() } else { sig4(self.hi, false) };
        write!(f, "[{lo}, {hi}]")
    }
}

/// `v` as `d.ddde±x`, rounded up (`up`) or down in the last digit.
fn sig4(v: f64, up: bool) -> String {
    let near = format!("{v:.3e}");
    let (Some((m, e)), Ok(back)) = (near.split_once('e'), near.parse::<f64>()) else {
        return near;
    };
    let (Ok(mut digits), Ok(mut e)) = (m.replace('.', "").parse::<i64>(), e.parse::<i32>()) else {
        return near;
    };
    if up && back < v {
        digits += 1;
    } else if !up && back > v {
        digits -= 1;
    }
    if digits >= 10_000 {
        digits /= 10;
        e += 1;
    } else if digits < 1000 {
        digits *= 10;
        e -= 1;
    }
    format!("{}.{:03}e{e}", digits / 1000, digits % 1000)
}

/// The interval of scales where `ok` holds, found by bisection in log scale around the first
/// accepted power of two (nearest 1 first); `None` when no power of two is accepted.
pub fn scale_range_of(ok: impl Fn(f64) -> bool) -> Option<ScaleRange> {
    let anchor =
        (0..=1074).flat_map(|k| [k, -k]).map(|e: i32| f64::from(e).exp2()).filter(|v| v.is_finite() && *v > 0.0).find(|&v| ok(v))?;
    let smallest = f64::from_bits(1);
    let edge = |mut inside: f64, mut outside: f64| {
        for _ in 0..80 {
            let mid = ((inside.log2() + outside.log2()) / 2.0).exp2();
            if mid == inside || mid == outside || !(mid > 0.0 && mid.is_finite()) {
                break;
            }
            if ok(mid) {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        inside
    };
    let lo = if ok(smallest) { smallest } else { edge(anchor, smallest) };
    let hi = if ok(f64::MAX) { f64::MAX } else { edge(anchor, f64::MAX) };
    Some(ScaleRange { lo, hi })
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
    /// An input scale whose constants do not fit the unit's datapath.
    #[error("{unit}: input scale {value:e} is outside the range this unit computes correctly for {bits}-bit inputs in rows of {row}: {} ({why}); quantise the input at a scale inside it", .range.map_or("no scale works with these parameters".to_string(), |r| r.to_string()))]
    ScaleRange {
        /// Unit name.
        unit: &'static str,
        /// The scale given.
        value: f64,
        /// Input width.
        bits: u32,
        /// Row length.
        row: usize,
        /// The accepted range at this width and row length.
        range: Option<ScaleRange>,
        /// Which constant or intermediate does not fit.
        why: String,
    },
    /// An output scale that is not a finite non-zero number (a backstop: the scale checks
    /// should refuse such inputs first).
    #[error("{unit}: the output scale came out as {value}, not a finite non-zero number; the input scale or the parameters are outside what the unit supports")]
    OutputScale {
        /// Unit name.
        unit: &'static str,
        /// The scale computed.
        value: f64,
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
    /// Why input scale `s` does not fit this unit's constants and datapath for `bits`-bit
    /// inputs in rows of `row_len` (checked arithmetic on the scale-derived constants), or `Ok`.
    /// Units whose constants do not depend on the input scale accept every positive finite one.
    fn scale_fits(&self, _s: f64, _bits: u32, _row_len: usize, _aux: &Aux) -> Result<(), String> {
        Ok(())
    }
    /// The accepted input scales for `bits`-bit inputs in rows of `row_len`: the interval
    /// where [`Unit::scale_fits`] holds (`None` when no scale does).
    fn scale_range(&self, bits: u32, row_len: usize, aux: &Aux) -> Option<ScaleRange> {
        scale_range_of(|s| self.scale_fits(s, bits, row_len, aux).is_ok())
    }
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

/// `v < lim`, and false when `v` is NaN: the form every range check here takes, so that a
/// NaN constant fails the check instead of passing it.
#[inline]
pub(crate) fn below(v: f64, lim: f64) -> bool {
    v < lim
}

/// Refuse an input whose scale (every distinct per-channel value) does not fit the unit.
pub(crate) fn check_scale<U: Unit>(u: &U, x: &QTensor, aux: &Aux) -> Result<(), UnitError> {
    let row = x.row_len();
    let mut vals = x.scale.values();
    vals.sort_by(f64::total_cmp);
    vals.dedup();
    for s in vals {
        if let Err(why) = u.scale_fits(s, x.bits, row, aux) {
            return Err(UnitError::ScaleRange { unit: u.name(), value: s, bits: x.bits, row, range: u.scale_range(x.bits, row, aux), why });
        }
    }
    Ok(())
}

/// The backstop on every unit's output: a scale that is not finite, or zero without a zero
/// LayerNorm weight to explain it, fails the run instead of reaching a file as `null` or `-0`.
pub(crate) fn checked_output(unit: &'static str, out: Result<UnitOutput, UnitError>) -> Result<UnitOutput, UnitError> {
    let out = out?;
    let zero_ok = out.conditions.iter().any(|(c, _)| *c == Condition::ZeroGamma);
    if let Some(v) = out.scale.values().into_iter().find(|v| !v.is_finite() || (*v == 0.0 && !zero_ok)) {
        return Err(UnitError::OutputScale { unit, value: v });
    }
    Ok(out)
}

/// Refuse an input left shift that would overflow 64-bit words for inputs of up to 24 bits.
pub(crate) fn check_upshift(unit: &'static str, up: Option<u32>) -> Result<(), UnitError> {
    match up {
        Some(v) if v > 24 => {
            Err(UnitError::Param { unit, param: "upshift", value: v.to_string(), why: "must be at most 24 (or auto)".into() })
        }
        _ => Ok(()),
    }
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

/// Conditions of a softmax whose exponentials all underflow (c_int = 0): every row is
/// `ExpUnderflow`, except the fully masked ones, which are `MaskedRow` as at any other scale.
pub(crate) fn underflow_rows(mask: Option<&[bool]>, len: usize, c: usize, cond: &mut Conditions) {
    let rows = len / c.max(1);
    let masked = (0..rows).filter(|&r| mask_row(mask, r, c).is_some_and(|m| m.iter().all(|&k| k))).count();
    cond.add_n(Condition::MaskedRow, masked);
    cond.add_n(Condition::ExpUnderflow, rows - masked);
}

/// Maximum over the unmasked elements of a row; None when every element is masked.
#[inline]
pub(crate) fn row_max(row: &[i64], mask: Option<&[bool]>) -> Option<i64> {
    match mask {
        None => row.iter().copied().max(),
        Some(m) => row.iter().zip(m).filter(|(_, &k)| !k).map(|(&q, _)| q).max(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_ranges_print_inward() {
        let r = ScaleRange { lo: 1.22571e-9, hi: 4.23500001e101 };
        assert_eq!(r.to_string(), "[1.226e-9, 4.235e101]");
        assert_eq!(ScaleRange { lo: 9.99951, hi: 9.99949e5 }.to_string(), "[1.000e1, 9.999e5]");
        assert_eq!(ScaleRange { lo: f64::from_bits(1), hi: f64::MAX }.to_string(), "[any positive, any finite]");
        assert_eq!(ScaleRange { lo: 3e-320, hi: 1.0 }.to_string(), "[3.000e-320, 1.000e0]");
        // Bisection finds the edges of an interval to full precision.
        let r = scale_range_of(|s| (1e-7..=3e5).contains(&s)).unwrap();
        assert!((r.lo / 1e-7 - 1.0).abs() < 1e-12 && (r.hi / 3e5 - 1.0).abs() < 1e-12, "{r:?}");
        assert!(scale_range_of(|_| false).is_none());
    }
}
