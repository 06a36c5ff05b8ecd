//! Fixed-point building blocks shared by every unit: rounding modes, saturation,
//! dyadic requantisation (`kernels.md` §0.2) and the quantised tensor `QTensor`.

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors raised when a fixed-point value or tensor is malformed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FixedError {
    /// A bit width outside what the datapath supports.
    #[error("unsupported bit width {bits} (supported: {min}..={max})")]
    Bits { bits: u32, min: u32, max: u32 },
    /// A scale that is zero, negative, NaN or infinite.
    #[error("scale {what} = {value} is not a positive finite number")]
    Scale { what: String, value: f64 },
    /// The number of values does not match the shape.
    #[error("shape {shape:?} holds {expected} values but {got} were given")]
    Shape { shape: Vec<usize>, expected: usize, got: usize },
    /// A per-channel parameter whose length does not match the channel count.
    #[error("{what} has {got} entries but the last dimension has {expected}")]
    Channels { what: String, expected: usize, got: usize },
    /// An integer outside the range of its declared format.
    #[error("value {value} at index {index} is outside the {bits}-bit {sign} range [{lo}, {hi}]")]
    Range { index: usize, value: i64, bits: u32, sign: &'static str, lo: i64, hi: i64 },
}

/// How a quotient or a right shift is rounded to an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rounding {
    /// Toward negative infinity (`torch.floor`, arithmetic shift right).
    Floor,
    /// Round half to even (`torch.round`, Python `round`).
    HalfEven,
    /// Round half toward positive infinity (add half, then floor).
    HalfUp,
    /// Round half away from zero (`decimal.ROUND_HALF_UP`, C `round`).
    HalfAway,
}

/// `num / den` rounded with `mode`, exactly, for `den > 0`.
#[inline]
pub fn div_round(num: i128, den: i128, mode: Rounding) -> i128 {
    debug_assert!(den > 0);
    // 128-bit division is a slow library call: take the 64-bit path when both operands fit.
    let (q, r) = match (i64::try_from(num), i64::try_from(den)) {
        (Ok(n), Ok(d)) => (i128::from(n.div_euclid(d)), i128::from(n.rem_euclid(d))),
        _ => (num.div_euclid(den), num.rem_euclid(den)),
    }; // 0 <= r < den, num = q*den + r
    match mode {
        Rounding::Floor => q,
        Rounding::HalfUp => q + i128::from(2 * r >= den),
        Rounding::HalfEven => {
            let twice = 2 * r;
            if twice > den || (twice == den && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        }
        Rounding::HalfAway => {
            let twice = 2 * r;
            if twice > den || (twice == den && q >= 0) {
                q + 1
            } else {
                q
            }
        }
    }
}

/// `x / 2^sh` rounded with `mode`, exactly (a right shift with rounding).
#[inline]
pub fn shift_round(x: i128, sh: u32, mode: Rounding) -> i128 {
    if sh == 0 {
        return x;
    }
    if sh >= 127 {
        return div_round_big_shift(x, mode);
    }
    let q = x >> sh;
    let r = x - (q << sh); // 0 <= r < 2^sh
    let half = 1i128 << (sh - 1);
    match mode {
        Rounding::Floor => q,
        Rounding::HalfUp => q + i128::from(r >= half),
        Rounding::HalfEven => q + i128::from(r > half || (r == half && q & 1 == 1)),
        Rounding::HalfAway => q + i128::from(r > half || (r == half && q >= 0)),
    }
}

fn div_round_big_shift(x: i128, mode: Rounding) -> i128 {
    // |x| < 2^127 <= 2^(sh-1): the quotient is in (-1/2, 1/2].
    match mode {
        Rounding::Floor if x < 0 => -1,
        _ => 0,
    }
}

/// Inclusive integer range of an n-bit signed or unsigned format.
pub fn int_range(bits: u32, signed: bool) -> (i64, i64) {
    assert!((1..=63).contains(&bits), "int_range: bits {bits} out of 1..=63");
    if signed {
        (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
    } else {
        (0, (1i64 << bits) - 1)
    }
}

/// Saturate `x` to the n-bit signed or unsigned range.
#[inline]
pub fn saturate(x: i128, bits: u32, signed: bool) -> i64 {
    let (lo, hi) = int_range(bits, signed);
    x.clamp(i128::from(lo), i128::from(hi)) as i64
}

/// Two's-complement width (sign bit included) needed to hold `v`.
#[inline]
pub fn signed_width(v: i128) -> u32 {
    let m = if v < 0 { !v } else { v };
    128 - m.leading_zeros() + 1
}

/// Number of bits of the magnitude of a non-negative value (`bit_length`).
#[inline]
pub fn bit_length(v: u128) -> u32 {
    128 - v.leading_zeros()
}

/// Exact integer square root (floor), the hardware replacement for `floor(sqrt(v))`.
pub fn isqrt(v: u128) -> u128 {
    if v < 2 {
        return v;
    }
    // Start above the root and descend: Newton from above is monotone.
    let mut x = 1u128 << bit_length(v).div_ceil(2);
    loop {
        let y = (x + v / x) >> 1;
        if y >= x {
            return x;
        }
        x = y;
    }
}

/// Round an f64 to the nearest f32 and back (one binary32 rounding).
#[inline]
pub fn fl32(x: f64) -> f64 {
    f64::from(x as f32)
}

/// PyTorch's `python_scalar / tensor`: `fl(fl(1/s) * c)`, two roundings (`kernels.md` §0.1).
#[inline]
pub fn rdiv(c: f64, s: f64) -> f64 {
    (1.0 / s) * c
}

/// Float64 `frexp`: `x = mant * 2^exp`, `0.5 <= |mant| < 1` (zero gives `(0, 0)`).
pub fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let bits = x.to_bits();
    let exp_field = ((bits >> 52) & 0x7ff) as i32;
    if exp_field == 0 {
        // Subnormal: scale into the normal range first.
        let (m, e) = frexp(x * 2f64.powi(64));
        return (m, e - 64);
    }
    let e = exp_field - 1022;
    let mant_bits = (bits & !(0x7ffu64 << 52)) | (1022u64 << 52);
    (f64::from_bits(mant_bits), e)
}

/// A dyadic multiplier: the value `m / 2^e` that replaces a real scale ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dyadic {
    /// Signed mantissa, `2^30 <= |m| <= 2^31` (or 0).
    pub m: i64,
    /// Right-shift amount.
    pub e: i32,
}

impl Dyadic {
    /// `batch_frexp` of I-ViT/I-BERT: `m = ROUND_HALF_UP(mant * 2^31)`, `e = 31 - exp`.
    pub fn from_ratio(ratio: f64) -> Dyadic {
        let (mant, ex) = frexp(ratio);
        // mant * 2^31 is exact in f64; Decimal's ROUND_HALF_UP rounds half away from zero.
        let scaled = mant * 2f64.powi(31);
        let m = div_round_f64_half_away(scaled);
        Dyadic { m, e: 31 - ex }
    }

    /// The real value `m / 2^e`.
    pub fn value(&self) -> f64 {
        self.m as f64 * 2f64.powi(-self.e)
    }

    /// Exact `RNE(z * m / 2^e)`: the integer datapath.
    #[inline]
    pub fn apply(&self, z: i64) -> i128 {
        let p = i128::from(z) * i128::from(self.m);
        if self.e >= 0 {
            shift_round(p, self.e as u32, Rounding::HalfEven)
        } else {
            p << (-self.e) as u32
        }
    }

    /// `RNE(fl64(z * m) / 2^e)`: the reference code's float64 replay.
    #[inline]
    pub fn apply_f64(&self, z: f64) -> f64 {
        let p = z * self.m as f64;
        round_half_even_f64(p * 2f64.powi(-self.e))
    }
}

fn div_round_f64_half_away(x: f64) -> i64 {
    x.round() as i64 // f64::round is half away from zero
}

/// Round half to even on f64 (`torch.round`).
#[inline]
pub fn round_half_even_f64(x: f64) -> f64 {
    x.round_ties_even()
}

/// Which output widths the requantiser clamps (`kernels.md` §0.2: the reference clamps only some).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClampList {
    /// I-ViT: clamp only when bits is 4, 8, 16 or 32.
    IVit,
    /// I-BERT: clamp only when bits is 4, 8 or 16.
    IBert,
    /// Always clamp (what hardware does; the adapted preset).
    Always,
}

impl ClampList {
    /// Whether an output of `bits` is clamped.
    pub fn clamps(&self, bits: u32) -> bool {
        match self {
            ClampList::IVit => matches!(bits, 4 | 8 | 16 | 32),
            ClampList::IBert => matches!(bits, 4 | 8 | 16),
            ClampList::Always => true,
        }
    }
}

/// Scale of a quantised tensor: one per tensor or one per channel (last dimension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scale {
    /// One scale for the whole tensor.
    PerTensor(f64),
    /// One scale per channel of the last dimension.
    PerChannel(Vec<f64>),
}

impl Scale {
    /// Scale of channel `c`.
    #[inline]
    pub fn at(&self, c: usize) -> f64 {
        match self {
            Scale::PerTensor(s) => *s,
            Scale::PerChannel(v) => v[c],
        }
    }

    /// All scale values.
    pub fn values(&self) -> Vec<f64> {
        match self {
            Scale::PerTensor(s) => vec![*s],
            Scale::PerChannel(v) => v.clone(),
        }
    }

    /// The scale if it is per tensor.
    pub fn per_tensor(&self) -> Option<f64> {
        match self {
            Scale::PerTensor(s) => Some(*s),
            Scale::PerChannel(_) => None,
        }
    }

    /// Check every value is positive and finite, and a per-channel scale has `channels` entries.
    pub fn validate(&self, what: &str, channels: usize) -> Result<(), FixedError> {
        for v in self.values() {
            if !(v.is_finite() && v > 0.0) {
                return Err(FixedError::Scale { what: what.into(), value: v });
            }
        }
        if let Scale::PerChannel(v) = self {
            if v.len() != channels {
                return Err(FixedError::Channels { what: what.into(), expected: channels, got: v.len() });
            }
        }
        Ok(())
    }
}

/// A quantised tensor: integers in row-major order (last dimension = row), a scale, and the format.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    /// The integers.
    pub q: ArrayD<i64>,
    /// The scale: real value = q * scale.
    pub scale: Scale,
    /// Bit width of the format.
    pub bits: u32,
    /// Whether the format is signed (two's complement) or unsigned.
    pub signed: bool,
}

impl QTensor {
    /// Build and validate a tensor: shape, range of every value, scale.
    pub fn new(values: Vec<i64>, shape: &[usize], scale: Scale, bits: u32, signed: bool) -> Result<QTensor, FixedError> {
        if !(1..=63).contains(&bits) {
            return Err(FixedError::Bits { bits, min: 1, max: 63 });
        }
        let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
        if expected != values.len() || shape.is_empty() {
            return Err(FixedError::Shape { shape: shape.to_vec(), expected, got: values.len() });
        }
        let (lo, hi) = int_range(bits, signed);
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| **v < lo || **v > hi) {
            return Err(FixedError::Range { index, value, bits, sign: if signed { "signed" } else { "unsigned" }, lo, hi });
        }
        let channels = *shape.last().unwrap();
        scale.validate("input scale", channels)?;
        let q = ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|_| FixedError::Shape { shape: shape.to_vec(), expected, got: 0 })?;
        Ok(QTensor { q, scale, bits, signed })
    }

    /// Quantise floats: `q = clamp(RNE(x / scale), range)`; refuses NaN and infinities.
    pub fn quantize(x: &[f64], shape: &[usize], scale: f64, bits: u32, signed: bool) -> Result<QTensor, FixedError> {
        QTensor::quantize_counted(x, shape, scale, bits, signed).map(|(t, _)| t)
    }

    /// [`QTensor::quantize`], also returning how many values fell outside the format's range
    /// and were clamped (so a caller can report them instead of clamping silently).
    pub fn quantize_counted(x: &[f64], shape: &[usize], scale: f64, bits: u32, signed: bool) -> Result<(QTensor, usize), FixedError> {
        Scale::PerTensor(scale).validate("input scale", 1)?;
        if let Some(v) = x.iter().find(|v| !v.is_finite()) {
            return Err(FixedError::Scale { what: "float input value".into(), value: *v });
        }
        let (lo, hi) = int_range(bits.clamp(1, 63), signed);
        let (lo, hi) = (lo as f64, hi as f64);
        let mut clamped = 0;
        let q = x
            .iter()
            .map(|v| {
                let r = round_half_even_f64(v / scale);
                clamped += usize::from(!(lo..=hi).contains(&r));
                r.clamp(lo, hi) as i64
            })
            .collect();
        Ok((QTensor::new(q, shape, Scale::PerTensor(scale), bits, signed)?, clamped))
    }

    /// Row length (last dimension).
    pub fn row_len(&self) -> usize {
        *self.q.shape().last().unwrap()
    }

    /// The integers as one contiguous slice (row-major).
    pub fn data(&self) -> &[i64] {
        self.q.as_slice().expect("QTensor is always in standard layout")
    }

    /// Shape of the tensor.
    pub fn shape(&self) -> &[usize] {
        self.q.shape()
    }

    /// Real values `q * scale`.
    pub fn dequantize(&self) -> Vec<f64> {
        let c = self.row_len();
        self.data().iter().enumerate().map(|(i, &v)| v as f64 * self.scale.at(i % c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div_round_modes() {
        use Rounding::*;
        for (n, d, f, he, hu, ha) in [
            (5, 2, 2, 2, 3, 3),
            (7, 2, 3, 4, 4, 4),
            (-5, 2, -3, -2, -2, -3),
            (-7, 2, -4, -4, -3, -4),
            (7, 3, 2, 2, 2, 2),
            (-7, 3, -3, -2, -2, -2),
        ] {
            assert_eq!(div_round(n, d, Floor), f, "floor {n}/{d}");
            assert_eq!(div_round(n, d, HalfEven), he, "even {n}/{d}");
            assert_eq!(div_round(n, d, HalfUp), hu, "up {n}/{d}");
            assert_eq!(div_round(n, d, HalfAway), ha, "away {n}/{d}");
        }
    }

    #[test]
    fn shift_round_matches_div_round_exhaustively() {
        for mode in [Rounding::Floor, Rounding::HalfEven, Rounding::HalfUp, Rounding::HalfAway] {
            for x in -600i128..600 {
                for sh in 0..10u32 {
                    assert_eq!(shift_round(x, sh, mode), div_round(x, 1 << sh, mode), "{x} >> {sh} {mode:?}");
                }
            }
        }
    }

    #[test]
    fn saturation_and_widths() {
        assert_eq!(saturate(300, 8, true), 127);
        assert_eq!(saturate(-300, 8, true), -128);
        assert_eq!(saturate(-3, 8, false), 0);
        assert_eq!(saturate(256, 8, false), 255);
        assert_eq!(signed_width(127), 8);
        assert_eq!(signed_width(128), 9);
        assert_eq!(signed_width(-128), 8);
        assert_eq!(signed_width(-129), 9);
        assert_eq!(signed_width(0), 1);
    }

    #[test]
    fn isqrt_exact() {
        for v in 0u128..5000 {
            let r = isqrt(v);
            assert!(r * r <= v && (r + 1) * (r + 1) > v, "isqrt({v}) = {r}");
        }
        let big = (1u128 << 100) + 12345;
        let r = isqrt(big);
        assert!(r * r <= big && (r + 1) * (r + 1) > big);
    }

    #[test]
    fn frexp_and_dyadic() {
        assert_eq!(frexp(1.0), (0.5, 1));
        assert_eq!(frexp(0.75), (0.75, 0));
        assert_eq!(frexp(-3.0), (-0.75, 2));
        let d = Dyadic::from_ratio(0.75);
        assert_eq!(d, Dyadic { m: 3 << 29, e: 31 });
        assert_eq!(d.apply(4), 3);
        assert_eq!(d.apply(2), 2); // 1.5 -> 2 (even)
        assert_eq!(d.apply(-2), -2);
        let n = Dyadic::from_ratio(-0.3);
        assert!(n.m < 0 && (n.value() + 0.3).abs() < 1e-9);
        // mantissa just below 1 rounds up to 2^31 (kernels.md §0.2)
        let top = Dyadic::from_ratio(1.0 - 2f64.powi(-40));
        assert_eq!(top.m, 1 << 31);
    }

    #[test]
    fn qtensor_validation() {
        assert!(QTensor::new(vec![1, 2, 3], &[2, 2], Scale::PerTensor(1.0), 8, true).is_err());
        assert!(QTensor::new(vec![128], &[1], Scale::PerTensor(1.0), 8, true).is_err());
        assert!(QTensor::new(vec![1], &[1], Scale::PerTensor(f64::NAN), 8, true).is_err());
        assert!(QTensor::new(vec![1], &[1], Scale::PerTensor(-1.0), 8, true).is_err());
        assert!(QTensor::new(vec![1, 2], &[1, 2], Scale::PerChannel(vec![1.0]), 8, true).is_err());
        assert!(QTensor::quantize(&[f64::NAN], &[1], 0.1, 8, true).is_err());
        let t = QTensor::quantize(&[0.25, -0.36, 100.0], &[3], 0.1, 8, true).unwrap();
        assert_eq!(t.data(), &[2, -4, 127]);
        let (t, n) = QTensor::quantize_counted(&[1e308, -1e308, 12.7, -12.8, 20.0], &[5], 0.1, 8, true).unwrap();
        assert_eq!((t.data(), n), (&[127, -128, 127, -128, 127][..], 3));
        assert!(QTensor::new(vec![1], &[usize::MAX, 2], Scale::PerTensor(1.0), 8, true).is_err());
    }
}
