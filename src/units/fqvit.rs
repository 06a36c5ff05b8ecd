//! FQ-ViT units (megvii-research/FQ-ViT @ 5daf591): Log-Int-Softmax, the PTF integer
//! LayerNorm and the float-path log2 quantiser (`kernels.md` §3).
//!
//! LIS is integer-exact: Reference and Integer modes agree while the row sum stays below
//! 2^53 (beyond that the reference's float64 division rounds). The PTF LayerNorm computes its
//! statistics and per-token multipliers in float64 in the reference; the Integer mode replaces
//! them by an integer square root, integer dividers and per-channel fixed-point constants with
//! `frac_bits` fractional bits, and differs in rounding (measured in `tests/modes.rs`).

use super::ibert::ExpConsts;
use super::vector::{Level, LutSoftmax};
use super::{
    affine, below, check_bits, check_scale, check_upshift, checked_output, mask_row, masked, no_mask, parse_param, row_max, rows,
    softmax_mask, underflow_rows, unknown_param, Aux, Condition, Conditions, Encoding, Method, Mode, NoProbe, Op, ParamInfo, Preset, Probe,
    Unit, UnitError, UnitOutput, WidthProbe,
};
use crate::fixed::{bit_length, div_round, int_range, isqrt, round_half_even_f64, shift_round, signed_width, QTensor, Rounding, Scale};

/// `log_round` of FQ-ViT on an integer `v ≥ 1`: `⌊log2 v⌋`, plus one iff `v ≥ 1.5·2^p`.
#[inline(always)]
pub fn log_round(v: u128) -> u32 {
    let p = bit_length(v) - 1;
    if p >= 1 && (v >> (p - 1)) & 1 == 1 {
        p + 1
    } else {
        p
    }
}

/// Log-Int-Softmax: I-BERT's i-exp, then `log_round(RNE(S/E))` as a log2 code (`kernels.md` §3.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Softmax {
    /// Code bits: codes `0..2^bits−1` plus a zero flag.
    pub bits: u32,
    /// i-exp polynomial range (reference 30).
    pub n: u32,
    /// Input left shift before i-exp (reference 0; `None` = auto, keeps c_int ≥ 1024).
    pub upshift: Option<u32>,
}

impl Softmax {
    /// Build from a preset.
    pub fn preset(p: Preset) -> Softmax {
        match p {
            Preset::Reference => Softmax { bits: 4, n: 30, upshift: Some(0) },
            Preset::Adapted => Softmax { bits: 4, n: 30, upshift: None },
        }
    }

    fn consts(&self, x: &QTensor) -> Result<ExpConsts, UnitError> {
        check_bits("softmax_fqvit", x, 2, 24, None)?;
        if !(1..=6).contains(&self.bits) || !(1..=40).contains(&self.n) {
            return Err(UnitError::Param {
                unit: "softmax_fqvit",
                param: "bits/n",
                value: format!("{}/{}", self.bits, self.n),
                why: "bits must be 1..=6, n 1..=40".into(),
            });
        }
        let s = x
            .scale
            .per_tensor()
            .ok_or_else(|| UnitError::Aux { unit: "softmax_fqvit", what: "LIS needs a per-tensor input scale".into() })?;
        check_upshift("softmax_fqvit", self.upshift)?;
        check_scale(self, x, &Aux::default())?;
        let up = self.upshift.unwrap_or_else(|| ExpConsts::auto_upshift(s));
        Ok(ExpConsts::new(s, self.n, up))
    }

    /// Both modes; with `lut` the exponentials come from a table, and with `fast` too the
    /// Integer mode's rows go through the vector kernels at that level where they accept them.
    fn run_with<P: Probe>(
        &self,
        x: &QTensor,
        aux: &Aux,
        mode: Mode,
        p: &mut P,
        lut: bool,
        fast: Option<Level>,
    ) -> Result<UnitOutput, UnitError> {
        let k = self.consts(x)?;
        let mask = softmax_mask("softmax_fqvit", x, aux)?;
        let (c, _) = rows(x);
        let data = x.data();
        // Filled row by row just before each row is written (one pass over memory, not two).
        let mut out = Vec::with_capacity(data.len());
        let mut cond = Conditions::default();
        let levels = 1u32 << self.bits;
        let code = |v: u128| -> i64 {
            let kk = log_round(v);
            if kk >= levels {
                -1
            } else {
                i64::from(kk)
            }
        };
        if k.c <= 0 {
            // Reference: S = 0, 0/0 = NaN. Defined here as the zero code everywhere.
            out.resize(data.len(), -1);
            underflow_rows(mask, data.len(), c, &mut cond);
        } else {
            let mut e = vec![0i64; c];
            let mut narrow = vec![0u64; levels as usize];
            // The exponent depends only on max − q: tabulate it when that is cheaper.
            let (lo, hi) = int_range(x.bits, x.signed);
            let span = (hi - lo) as usize;
            let table: Vec<i64> =
                if lut && data.len() > span { (0..=span as i64).map(|d| k.exp(-d, &mut NoProbe)).collect() } else { Vec::new() };
            // The kernel's codes are the comparisons' (`vector::log2_code`); its sums are exact
            // (c·max T < 2^62), and it takes only rows with Σe < 2^60.
            let kernel = fast.filter(|_| mode == Mode::Integer).and_then(|l| LutSoftmax::new(l, &table, c, 0, i64::MAX));
            for (r, row) in data.chunks_exact(c).enumerate() {
                let start = out.len();
                out.resize(start + c, -1);
                let orow = &mut out[start..];
                let mrow = mask_row(mask, r, c);
                if let Some(kr) = &kernel {
                    if let Some(sum) = kr.exp(row, mrow, &mut e) {
                        if let Some(any) = kr.log2_codes(&e, sum, levels, orow) {
                            if sum >= 1 << 53 {
                                cond.add(Condition::InexactFloat);
                            }
                            if !any {
                                cond.add(Condition::AllZeroRow);
                            }
                            continue;
                        }
                    }
                }
                let Some(m) = row_max(row, mrow) else {
                    cond.add(Condition::MaskedRow);
                    continue;
                };
                let mut sum: i128 = 0;
                for (j, (ei, &q)) in e.iter_mut().zip(row).enumerate() {
                    *ei = if masked(mrow, j) {
                        0
                    } else if table.is_empty() {
                        k.exp(q - m, p)
                    } else {
                        table[(m - q) as usize]
                    };
                    sum += *ei as i128;
                }
                p.see(sum);
                if sum >= 1i128 << 53 {
                    cond.add(Condition::InexactFloat);
                }
                match mode {
                    Mode::Integer => {
                        // Compare-only datapath: code k ⇔ RNE(S/E) ∈ [t_k, t_(k+1)) with t_0 = 1, t_1 = 2,
                        // t_j = 3·2^(j−2); per row, one divider gives the largest E meeting each t_j,
                        // then every element needs only comparisons (a comparator tree in hardware).
                        let two_s = 2 * sum as u128;
                        p.see(two_s as i128);
                        lis_thresholds(two_s, &mut narrow);
                        for (o, &ei) in orow.iter_mut().zip(&e) {
                            *o = lis_code(&narrow, ei);
                        }
                    }
                    Mode::Reference => {
                        for (o, &ei) in orow.iter_mut().zip(&e) {
                            if ei != 0 {
                                *o = code(round_half_even_f64(sum as f64 / ei as f64) as u128);
                            }
                        }
                    }
                }
                if orow.iter().all(|&o| o < 0) {
                    cond.add(Condition::AllZeroRow);
                }
            }
        }
        Ok(UnitOutput {
            values: out,
            shape: x.shape().to_vec(),
            scale: Scale::PerTensor(1.0),
            encoding: Encoding::Log2 { bits: self.bits },
            conditions: cond.into_vec(),
        })
    }
}

/// The Integer mode's per-row thresholds for `2S` (`S ≥ 1`): `narrow[j]` is the largest E with
/// `RNE(S/E) ≥ t_(j+1)`, `t = 1, 2, 3, 6, 12, …` (`kernels.md` §3.1), so code k ⇔ E meets k of them.
fn lis_thresholds(two_s: u128, narrow: &mut [u64]) {
    for (j, th) in narrow.iter_mut().enumerate() {
        let t: u128 = if j == 0 { 2 } else { 3u128 << (j - 1) };
        let d = 2 * t - 1;
        // v ≥ t ⇔ 2S > (2t−1)·E, or equality with t even (RNE's tie goes to even t).
        let thr = if t.is_multiple_of(2) && two_s.is_multiple_of(d) { two_s / d } else { (two_s - 1) / d };
        // Thresholds never exceed 2S/3 < 2^63 for realistic rows: compare in 64 bits.
        *th = thr.min(u64::MAX as u128) as u64;
    }
}

/// The code of exponential `e` against a row's [`lis_thresholds`]: the number met (a comparator
/// tree in hardware), −1 (the zero flag) for `e = 0` (S / 0 = inf) or when all are met.
fn lis_code(narrow: &[u64], e: i64) -> i64 {
    if e == 0 {
        return -1;
    }
    let k = narrow.partition_point(|&th| e as u64 <= th);
    if k >= narrow.len() {
        -1
    } else {
        k as i64
    }
}

impl Unit for Softmax {
    fn name(&self) -> &'static str {
        "softmax_fqvit"
    }
    fn op(&self) -> Op {
        Op::Softmax
    }
    fn method(&self) -> Method {
        Method::FqVit
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 24, None)
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "bits",
                value: self.bits.to_string(),
                doc: "log2 code bits (codes 0..2^bits-1 plus a zero flag; reference 4)",
            },
            ParamInfo { name: "n", value: self.n.to_string(), doc: "i-exp polynomial range (reference 30)" },
            ParamInfo {
                name: "upshift",
                value: self.upshift.map_or("auto".into(), |v| v.to_string()),
                doc: "input left shift before i-exp (reference 0; auto keeps c_int >= 1024, fixes NaN at coarse scales)",
            },
        ]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        let u = "softmax_fqvit";
        match name {
            "bits" => self.bits = parse_param(u, "bits", value)?,
            "n" => self.n = parse_param(u, "n", value)?,
            "upshift" => self.upshift = if value == "auto" { None } else { Some(parse_param(u, "upshift", value)?) },
            _ => return Err(unknown_param(u, name, &self.params())),
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, _aux: &Aux) -> Result<u32, UnitError> {
        let k = self.consts(x)?;
        let (lo, hi) = int_range(x.bits, x.signed);
        Ok(k.widths(hi - lo).max(signed_width(2 * k.e_max() * x.row_len() as i128)))
    }
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError> {
        checked_output(self.name(), self.run_with(x, aux, mode, &mut NoProbe, true, Some(Level::detect())))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        checked_output(self.name(), self.run_with(x, aux, Mode::Integer, probe, false, None))
    }
    fn scale_fits(&self, s: f64, _bits: u32, _row_len: usize, _aux: &Aux) -> Result<(), String> {
        // LIS keeps the exponentials in 64-bit words (and compares them with 64-bit thresholds).
        ExpConsts::fits(s, self.n, self.upshift.unwrap_or_else(|| ExpConsts::auto_upshift(s)), Some(63))
    }
}

/// `get_MN` of FQ-ViT in float64: `N = clamp(7 − ⌊log2 a⌋, 0, 31)`, `M = clamp(⌊a·2^N⌋, 0, 255)`.
fn get_mn(a: f64) -> (f64, f64) {
    let n = (7.0 - a.log2().floor()).clamp(0.0, 31.0);
    let m = (a * 2f64.powf(n)).floor().clamp(0.0, 255.0);
    (m, n)
}

/// How the PTF LayerNorm's Integer mode is computed; all three give the same output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntPath {
    /// [`LayerNorm::integer_row`] on every row: the definition, observed by probes.
    Reference,
    /// [`LayerNorm::integer_fast`] without the vector kernel (what `Vector` does on CPUs
    /// without AVX-512; tests name it to check it on CPUs with).
    #[cfg(test)]
    Scalar,
    /// [`LayerNorm::integer_fast`] with the AVX-512 kernel where the CPU has it.
    Vector,
}

/// Per-channel constants of the PTF LayerNorm's Integer mode (`frac_bits` F fractional bits).
#[derive(Debug, Clone, PartialEq)]
pub struct IntConsts {
    /// Input factors k_c = RNE(s_c / min s) (powers of two for PTF scales).
    pub kf: Vec<i64>,
    /// RNE(C·γ_c/so_c·2^F).
    pub gq: Vec<i128>,
    /// RNE(γ_c/so_c·2^F).
    pub hq: Vec<i128>,
    /// RNE(β_c/so_c·2^F).
    pub bq: Vec<i128>,
}

/// PTF integer LayerNorm of FQ-ViT (`kernels.md` §3.3).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// Fractional bits of the per-channel constants in Integer mode.
    pub frac_bits: u32,
}

impl LayerNorm {
    /// Build from a preset (both presets share the reference constants; only `frac_bits` is tunable).
    pub fn preset(_p: Preset) -> LayerNorm {
        LayerNorm { frac_bits: 20 }
    }

    /// The Integer mode's offline per-channel constants from the input scales `sc`, (γ, β) and
    /// the output scales `so` (also what the hardware's configuration loads).
    pub fn integer_consts(&self, sc: &[f64], gamma: &[f32], beta: &[f32], so: &[f64]) -> IntConsts {
        let c = sc.len();
        let cf = c as f64;
        let s1 = sc.iter().cloned().fold(f64::INFINITY, f64::min);
        let one = 2f64.powi(self.frac_bits as i32);
        // Power-of-two input factors, C·γ/so, γ/so, β/so.
        IntConsts {
            kf: sc.iter().map(|s| round_half_even_f64(s / s1) as i64).collect(),
            gq: (0..c).map(|i| round_half_even_f64(cf * f64::from(gamma[i]) / so[i] * one) as i128).collect(),
            hq: (0..c).map(|i| round_half_even_f64(f64::from(gamma[i]) / so[i] * one) as i128).collect(),
            bq: (0..c).map(|i| round_half_even_f64(f64::from(beta[i]) / so[i] * one) as i128).collect(),
        }
    }

    /// Both modes; `path` says how Integer mode computes (the probed run takes the reference).
    fn run_with<P: Probe>(&self, x: &QTensor, aux: &Aux, mode: Mode, p: &mut P, path: IntPath) -> Result<UnitOutput, UnitError> {
        let u = "layernorm_fqvit";
        check_bits(u, x, 2, 16, None)?;
        if !(4..=40).contains(&self.frac_bits) {
            return Err(UnitError::Param { unit: u, param: "frac_bits", value: self.frac_bits.to_string(), why: "must be 4..=40".into() });
        }
        let (c, _) = rows(x);
        let (gamma, beta) = affine(u, aux, c)?;
        let so: Vec<f64> = match &aux.out_scale {
            Some(s) => {
                s.validate("PTF output scale", c).map_err(|e| UnitError::Aux { unit: u, what: e.to_string() })?;
                (0..c).map(|i| s.at(i)).collect()
            }
            None => {
                return Err(UnitError::Aux {
                    unit: u,
                    what: "PTF LayerNorm needs the output scale of the next quantiser (--out-scale)".into(),
                })
            }
        };
        let sc: Vec<f64> = (0..c).map(|i| x.scale.at(i)).collect();
        let s1 = sc.iter().cloned().fold(f64::INFINITY, f64::min);
        let zp = aux.zero_point;
        self.fits(x, gamma, beta, &sc, &so, zp)?;
        let data = x.data();
        let mut out = vec![0i64; data.len()];
        let mut cond = Conditions::default();
        let mut xq = vec![0i64; c];
        let cf = c as f64;
        match mode {
            Mode::Reference => {
                let g: Vec<f64> = gamma.iter().map(|&v| f64::from(v)).collect();
                let b: Vec<f64> = beta.iter().map(|&v| f64::from(v)).collect();
                for (row, orow) in data.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
                    for ((xi, &q), &s) in xq.iter_mut().zip(row).zip(&sc) {
                        *xi = round_half_even_f64(((q - zp) as f64 * s) / s1) as i64;
                    }
                    let sum: f64 = xq.iter().map(|&v| v as f64).sum();
                    let ssq: f64 = xq.iter().map(|&v| (v as f64) * (v as f64)).sum();
                    let mean = (sum / cf) * s1;
                    let std = (s1 / cf) * (cf * ssq - sum * sum).sqrt();
                    if std == 0.0 {
                        cond.add(Condition::ZeroVariance);
                        for (i, o) in orow.iter_mut().enumerate() {
                            *o = round_half_even_f64(b[i] / so[i]) as i64;
                        }
                        continue;
                    }
                    for (i, o) in orow.iter_mut().enumerate() {
                        let a = ((s1 / std) * g[i]) / so[i];
                        let (m, n) = get_mn(a.abs());
                        let bb = round_half_even_f64(((b[i] - (mean / std) * g[i]) / so[i]) * 2f64.powf(n));
                        *o = round_half_even_f64(((a.signum() * if a == 0.0 { 0.0 } else { 1.0 } * m) * xq[i] as f64 + bb) / 2f64.powf(n))
                            as i64;
                    }
                }
            }
            Mode::Integer => {
                let k = self.integer_consts(&sc, gamma, beta, &so);
                let mut fast = |simd| self.integer_fast(x, zp, &k, &mut out, &mut cond, simd);
                let done = match path {
                    IntPath::Reference => false,
                    #[cfg(test)]
                    IntPath::Scalar => fast(false),
                    IntPath::Vector => fast(true),
                };
                if !done {
                    for (row, orow) in data.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
                        self.integer_row(row, orow, &mut xq, &k, zp, p, &mut cond);
                    }
                }
            }
        }
        Ok(UnitOutput {
            values: out,
            shape: x.shape().to_vec(),
            scale: out_scale_of(&aux.out_scale),
            encoding: Encoding::Linear,
            conditions: cond.into_vec(),
        })
    }
}

impl LayerNorm {
    /// One row of the Integer mode, as the hardware computes it: the definition of the integer
    /// datapath (every intermediate goes through `p`). [`LayerNorm::integer_fast`] must equal it.
    #[allow(clippy::too_many_arguments)]
    fn integer_row<P: Probe>(
        &self,
        row: &[i64],
        orow: &mut [i64],
        xq: &mut [i64],
        k: &IntConsts,
        zp: i64,
        p: &mut P,
        cond: &mut Conditions,
    ) {
        let f = self.frac_bits;
        let c = row.len();
        let mut sum: i128 = 0;
        let mut ssq: i128 = 0;
        for ((xi, &q), &kc) in xq.iter_mut().zip(row).zip(&k.kf) {
            *xi = (q - zp) * kc;
            p.see(*xi as i128);
            sum += *xi as i128;
            ssq += (*xi as i128) * (*xi as i128);
        }
        p.see(ssq * c as i128);
        let d = isqrt((c as i128 * ssq - sum * sum) as u128) as i128;
        p.see(d);
        if d == 0 {
            cond.add(Condition::ZeroVariance);
            for (o, &bb) in orow.iter_mut().zip(&k.bq) {
                *o = shift_round(bb, f, Rounding::HalfEven) as i64;
            }
            return;
        }
        for (i, o) in orow.iter_mut().enumerate() {
            *o = ptf_output(k.gq[i], k.hq[i], k.bq[i], d, sum, xq[i], f, p);
        }
    }
}

/// One output of the PTF integer datapath (row statistics `d`, `sum`; channel constants
/// `gq`, `hq`, `bq`; input `xq`): the reference arithmetic, in 128-bit words.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn ptf_output<P: Probe>(gq: i128, hq: i128, bq: i128, d: i128, sum: i128, xq: i64, f: u32, p: &mut P) -> i64 {
    let g = gq.abs();
    let (n, m) = ptf_exponent(gq, d, f);
    p.see(g << n);
    let num = (bq * d - sum * hq) << n;
    p.see(num);
    let bb = div_round(num, d << f, Rounding::HalfEven);
    let sm = if gq < 0 { -m } else { m };
    let acc = sm * xq as i128 + bb;
    p.see(acc);
    shift_round(acc, n, Rounding::HalfEven) as i64
}

/// The per-token multiplier of [`ptf_output`] as `(N, M)`: `A = |gq| / (d·2^F)`,
/// `N = clamp(7 − ⌊log2 A⌋, 0, 31)` from bit lengths and one compare, `M = min(⌊A·2^N⌋, 255)`.
#[inline(always)]
fn ptf_exponent(gq: i128, d: i128, f: u32) -> (u32, i128) {
    let g = gq.abs();
    if g == 0 {
        (31u32, 0i128)
    } else {
        let (bg, bd) = (bit_length(g as u128) as i64, bit_length(d as u128) as i64);
        let ge = if bg >= bd { g >= d << (bg - bd) } else { g << (bd - bg) >= d };
        let l = bg - bd - f as i64 - i64::from(!ge);
        let n = (7 - l).clamp(0, 31) as u32;
        let m = div_round(g << n, d << f, Rounding::Floor).clamp(0, 255);
        (n, m)
    }
}

/// [`ptf_output`] out of line: the fast path's exit for the rare element whose numerator does
/// not fit its 64-bit word (kept out of the hot loop so that loop stays small).
#[allow(clippy::too_many_arguments)]
#[cold]
#[inline(never)]
fn ptf_output_cold(gq: i64, hq: i64, bq: i64, d: u64, sum: i64, xq: i64, f: u32) -> i64 {
    ptf_output(gq.into(), hq.into(), bq.into(), d.into(), sum.into(), xq, f, &mut NoProbe)
}

/// Exact `u64` division by a divisor fixed for a whole row, by one multiply-high and one
/// correction: `inv = ⌊(2^64−1)/d⌋ ≥ 2^64/d − 1`, so `x·inv/2^64 ∈ (x/d − 1, x/d]` for every
/// `x < 2^64` and the estimate is the quotient or one below it; the remainder says which.
#[derive(Debug, Clone, Copy)]
struct RowDivider {
    d: u64,
    inv: u64,
}

impl RowDivider {
    fn new(d: u64) -> RowDivider {
        assert!(d > 0, "RowDivider: zero divisor");
        RowDivider { d, inv: u64::MAX / d }
    }

    /// `(⌊x/d⌋, x mod d)`, exactly.
    #[inline(always)]
    fn div_rem(self, x: u64) -> (u64, u64) {
        let q = ((u128::from(x) * u128::from(self.inv)) >> 64) as u64;
        let r = x - q * self.d; // q ≤ x/d: no wrap; r < 2d
                                // Masks, not a branch: the correction is taken about half the time, unpredictably.
        let carry = u64::from(r >= self.d);
        (q + carry, r - (self.d & carry.wrapping_neg()))
    }
}

/// [`isqrt`] seeded by the float64 square root: exact (the two loops restore `s² ≤ v < (s+1)²`
/// whatever the seed), and below 2^104 the seed is within a few units so they run at most a
/// few steps instead of Newton's divisions from a power of two.
fn isqrt_seeded(v: u128) -> u128 {
    if v >= 1u128 << 104 {
        return isqrt(v);
    }
    let mut s = (v as f64).sqrt() as u128;
    while s * s > v {
        s -= 1;
    }
    while (s + 1) * (s + 1) <= v {
        s += 1;
    }
    s
}

/// `x / 2^n` rounded half to even, `n ≤ 62`, `|x| < 2^62`: `shift_round(x, n, HalfEven)` in
/// one add and one shift (adding `2^(n−1) − 1` plus the quotient's low bit moves exactly the
/// values above half, and the ties of odd quotients, to the next multiple of `2^n`).
#[inline(always)]
fn rne_shift(x: i64, n: u32) -> i64 {
    let nz = i64::from(n != 0);
    let half = (1i64 << n) >> 1;
    (x + half - nz + ((x >> n) & nz)) >> n
}

/// Per-channel constants of the fast path in 64-bit words, one array each (the vector kernel
/// loads eight channels at once).
struct FastChannels {
    /// |C·γ/so| at 2^F.
    g: Vec<u64>,
    /// `g` shifted so its top bit is bit 63 (0 when `g` is 0): one compare with the row's
    /// normalised divisor gives `⌊log2(g/D)⌋` without a variable shift per element.
    g_norm: Vec<u64>,
    /// Bit length of `g`.
    g_bits: Vec<i64>,
    /// −1 where C·γ/so is negative, else 0 (`(m ^ s) − s` applies the sign).
    sign: Vec<i64>,
    /// γ/so at 2^F.
    hq: Vec<i64>,
    /// β/so at 2^F.
    bq: Vec<i64>,
}

impl FastChannels {
    /// From the constants of [`IntConsts`], each of magnitude below 2^62.
    fn new(gq: &[i128], hq: &[i128], bq: &[i128]) -> FastChannels {
        let g: Vec<u64> = gq.iter().map(|v| v.unsigned_abs() as u64).collect();
        FastChannels {
            g_norm: g.iter().map(|&v| if v == 0 { 0 } else { v << v.leading_zeros() }).collect(),
            g_bits: g.iter().map(|&v| 64 - i64::from(v.leading_zeros())).collect(),
            sign: gq.iter().map(|&v| -i64::from(v < 0)).collect(),
            hq: hq.iter().map(|&v| v as i64).collect(),
            bq: bq.iter().map(|&v| v as i64).collect(),
            g,
        }
    }
}

/// Per-row values of the fast path: `d = ⌊√(C·Σx² − (Σx)²)⌋`, `Σx`, and the divisor
/// `D = d·2^F < 2^56` in the forms the element steps use.
struct FastRow {
    d: u64,
    sum: i64,
    big_d: u64,
    div: RowDivider,
    d_bits: i64,
    d_norm: u64,
}

impl FastRow {
    /// For `1 ≤ d` and `d·2^f < 2^56`.
    fn new(d: u64, sum: i64, f: u32) -> FastRow {
        let big_d = d << f;
        FastRow {
            d,
            sum,
            big_d,
            div: RowDivider::new(big_d),
            d_bits: 64 - i64::from(big_d.leading_zeros()),
            d_norm: big_d << big_d.leading_zeros(),
        }
    }
}

/// One output of the fast path: [`ptf_output`] for a row that passed the row checks of
/// [`LayerNorm::integer_fast`], in 64-bit words (the vector kernel's lanes compute the same).
#[inline(always)]
fn fast_output(ch: &FastChannels, i: usize, r: &FastRow, xi: i64, f: u32) -> i64 {
    let g = ch.g[i];
    // n = clamp(7 − ⌊log2(g/D)⌋, 0, 31) and m = min(⌊g·2^n/D⌋, 255), as in ptf_output.
    let (n, m) = if g == 0 {
        (31u32, 0i64)
    } else {
        let l = ch.g_bits[i] - r.d_bits - i64::from(ch.g_norm[i] < r.d_norm);
        if l > 7 {
            (0, 255) // g/D ≥ 2^8: the clamp
        } else {
            // g·2^n/D < 2^(l+1+n) ≤ 2^8, so g·2^n < 256·D < 2^64.
            let n = (7 - l).min(31) as u32;
            (n, r.div.div_rem(g << n).0.min(255) as i64)
        }
    };
    let b = ch.bq[i] * r.d as i64 - r.sum * ch.hq[i]; // |b| < the row bound < 2^63
    let ab = b.unsigned_abs();
    if ab.leading_zeros() < n {
        let gq = (g as i64 ^ ch.sign[i]) - ch.sign[i];
        return ptf_output_cold(gq, ch.hq[i], ch.bq[i], r.d, r.sum, xi, f);
    }
    // RNE(b·2^n / D), from |b| (round-half-even is odd-symmetric).
    let (q, rem) = r.div.div_rem(ab << n);
    // Bitwise, not short-circuit: `2r > D` is a coin flip for the branch predictor.
    let up = u64::from(2 * rem > r.big_d) | (u64::from(2 * rem == r.big_d) & q);
    let mag = (q + (up & 1)) as i64; // < 2^64/D + 1 ≤ 2^60 (D ≥ 2^F ≥ 16)
    let bb = if b < 0 { -mag } else { mag };
    let sm = (m ^ ch.sign[i]) - ch.sign[i];
    // |sm·xq| < 2^8·2^33 and |bb| ≤ 2^60: no overflow.
    rne_shift(sm * xi + bb, n)
}

impl LayerNorm {
    /// The Integer mode, equal to [`LayerNorm::integer_row`] on every row, in 64-bit words
    /// with per-row dividers (eight channels at a time with AVX-512 when `simd` and the CPU
    /// has it). Rows whose divisor or numerator bound does not fit those words (very wide
    /// inputs, extreme constants) and single elements whose shifted numerator does not fit
    /// take the reference arithmetic. Returns false, having written nothing, when the
    /// constants themselves do not fit (the caller then runs the reference on every row).
    fn integer_fast(&self, x: &QTensor, zp: i64, k: &IntConsts, out: &mut [i64], cond: &mut Conditions, simd: bool) -> bool {
        const LIM: i128 = 1 << 62;
        if [&k.gq, &k.hq, &k.bq].iter().any(|v| v.iter().any(|&t| t.abs() >= LIM)) {
            return false;
        }
        let f = self.frac_bits;
        let (c, _) = rows(x);
        let ch = FastChannels::new(&k.gq, &k.hq, &k.bq);
        let bmax = ch.bq.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        let hmax = ch.hq.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        // Zero-variance rows output RNE(β/so), the same for every such row.
        let zero_var: Vec<i64> = k.bq.iter().map(|&b| shift_round(b, f, Rounding::HalfEven) as i64).collect();
        // |xq| < 2^bits·k_max: the row's sums fit 64 bits when C²·xmax² does.
        let kmax = k.kf.iter().map(|v| v.unsigned_abs()).max().unwrap_or(1) as u128;
        let xmax = (1u128 << x.bits) * kmax;
        let narrow_stats = (c as u128).pow(2).saturating_mul(xmax.saturating_mul(xmax)) < 1u128 << 62;
        #[cfg(target_arch = "x86_64")]
        let simd = simd && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq");
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        let mut xq = vec![0i64; c];
        for (row, orow) in x.data().chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let (sum, var) = if narrow_stats {
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let (mut sum, mut ssq, mut done) = (0i64, 0i64, 0);
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: the CPU has AVX-512F and AVX-512DQ (checked above).
                    (sum, ssq, done) = unsafe { avx512::stats(row, &k.kf, zp, &mut xq) };
                }
                for i in done..c {
                    xq[i] = (row[i] - zp) * k.kf[i];
                    sum += xq[i];
                    ssq += xq[i] * xq[i];
                }
                (i128::from(sum), i128::from(c as i64 * ssq - sum * sum))
            } else {
                for ((xi, &q), &kc) in xq.iter_mut().zip(row).zip(&k.kf) {
                    *xi = (q - zp) * kc;
                }
                let sum: i128 = xq.iter().map(|&v| i128::from(v)).sum();
                let ssq: i128 = xq.iter().map(|&v| i128::from(v) * i128::from(v)).sum();
                (sum, c as i128 * ssq - sum * sum)
            };
            let d = isqrt_seeded(var as u128);
            if d == 0 {
                cond.add(Condition::ZeroVariance);
                orow.copy_from_slice(&zero_var);
                continue;
            }
            // The 64-bit path needs D = d·2^F < 2^56 (so g·2^n < 256·D fits), |Σ| < 2^62 and
            // |β/so·d − Σ·γ/so| < 2^63; otherwise this row takes the reference arithmetic.
            if d >= 1u128 << (56 - f)
                || sum.unsigned_abs() >= 1u128 << 62
                || (u128::from(bmax) * d).saturating_add(sum.unsigned_abs().saturating_mul(u128::from(hmax))) >= 1u128 << 63
            {
                self.integer_row(row, orow, &mut xq, k, zp, &mut NoProbe, cond);
                continue;
            }
            let r = FastRow::new(d as u64, sum as i64, f);
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the CPU has AVX-512F and AVX-512DQ (checked above).
                done = unsafe { avx512::row(&ch, &r, &xq, orow, f) };
            }
            for i in done..c {
                orow[i] = fast_output(&ch, i, &r, xq[i], f);
            }
        }
        true
    }
}

/// The fast path's element steps on eight channels at once (AVX-512F/DQ). Division by the
/// row's `D` is a float64 estimate corrected by exact integer remainders; lanes outside the
/// estimate's proven range send their group of eight to [`fast_output`].
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{fast_output, FastChannels, FastRow};
    use std::arch::x86_64::*;

    /// Quotients below this take the float64 estimate (see [`quotient`]).
    const EST_LIMIT: f64 = (1u64 << 48) as f64;

    /// `(⌊x/D⌋, x mod D, ok)` per lane for `D < 2^56`, exact on the lanes of `ok`.
    /// `fl(fl(x)·fl(1/D))` is within a relative 4·2^−53 < 2^−50 of `x/D`, so below 2^48 it is
    /// within 1/4 of `x/D` and its truncation is the quotient or one off either way; the
    /// remainder `x − q·D` (exact in wrapping 64-bit arithmetic, it lies in [−D, 2D)) then
    /// says which. Lanes with an estimate of 2^48 or more are left out of `ok`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn quotient(x: __m512i, d: __m512i, inv: __m512d) -> (__m512i, __m512i, __mmask8) {
        let qf = _mm512_mul_pd(_mm512_cvtepu64_pd(x), inv);
        let ok = _mm512_cmplt_pd_mask(qf, _mm512_set1_pd(EST_LIMIT));
        let q0 = _mm512_cvttpd_epu64(qf);
        let r0 = _mm512_sub_epi64(x, _mm512_mullo_epi64(q0, d));
        let one = _mm512_set1_epi64(1);
        let low = _mm512_cmplt_epi64_mask(r0, _mm512_setzero_si512());
        let high = _mm512_cmpge_epi64_mask(r0, d);
        let q = _mm512_mask_add_epi64(_mm512_mask_sub_epi64(q0, low, q0, one), high, q0, one);
        let r = _mm512_mask_sub_epi64(_mm512_mask_add_epi64(r0, low, r0, d), high, r0, d);
        (q, r, ok)
    }

    /// `xq = (q − zp)·k_c` of the first `8·⌊C/8⌋` channels of one row into `xq`, with their
    /// `Σxq` and `Σxq²`, and how many channels that is. For rows whose sums fit 64 bits (the
    /// caller's `narrow_stats`; then no partial sum wraps either).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn stats(row: &[i64], kf: &[i64], zp: i64, xq: &mut [i64]) -> (i64, i64, usize) {
        let c = row.len();
        let full = c / 8 * 8;
        assert!(kf.len() == c && xq.len() == c);
        let z = _mm512_set1_epi64(zp);
        let (mut s, mut s2) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ c and the three slices have c entries (asserted above).
            let (q, k) = unsafe { (_mm512_loadu_si512(row.as_ptr().add(i).cast()), _mm512_loadu_si512(kf.as_ptr().add(i).cast())) };
            let x = _mm512_mullo_epi64(_mm512_sub_epi64(q, z), k);
            unsafe { _mm512_storeu_si512(xq.as_mut_ptr().add(i).cast(), x) };
            s = _mm512_add_epi64(s, x);
            s2 = _mm512_add_epi64(s2, _mm512_mullo_epi64(x, x));
        }
        (_mm512_reduce_add_epi64(s), _mm512_reduce_add_epi64(s2), full)
    }

    /// Outputs of the first `8·⌊C/8⌋` channels of one row; returns how many it wrote.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn row(ch: &FastChannels, r: &FastRow, xq: &[i64], out: &mut [i64], f: u32) -> usize {
        let c = xq.len();
        let full = c / 8 * 8;
        assert!(
            out.len() == c
                && [ch.g.len(), ch.g_norm.len(), ch.g_bits.len(), ch.sign.len(), ch.hq.len(), ch.bq.len()].iter().all(|&l| l == c)
        );
        let zero = _mm512_setzero_si512();
        let one = _mm512_set1_epi64(1);
        let d_bits = _mm512_set1_epi64(r.d_bits);
        let d_norm = _mm512_set1_epi64(r.d_norm as i64);
        let big_d = _mm512_set1_epi64(r.big_d as i64);
        let inv = _mm512_set1_pd(1.0 / r.big_d as f64);
        let dd = _mm512_set1_epi64(r.d as i64);
        let sum = _mm512_set1_epi64(r.sum);
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ c and every array has c entries (asserted above).
            let ld = |v: &[u64]| unsafe { _mm512_loadu_si512(v.as_ptr().add(i).cast()) };
            let ldi = |v: &[i64]| unsafe { _mm512_loadu_si512(v.as_ptr().add(i).cast()) };
            let (g, gn, gb, sg, hq, bq, x) = (ld(&ch.g), ld(&ch.g_norm), ldi(&ch.g_bits), ldi(&ch.sign), ldi(&ch.hq), ldi(&ch.bq), ldi(xq));
            // l = ⌊log2(g/D)⌋, t = 7 − l; n = clamp(t, 0, 31), 31 where g = 0.
            let l = _mm512_sub_epi64(gb, d_bits);
            let l = _mm512_mask_sub_epi64(l, _mm512_cmplt_epu64_mask(gn, d_norm), l, one);
            let t = _mm512_sub_epi64(_mm512_set1_epi64(7), l);
            let c31 = _mm512_set1_epi64(31);
            let n = _mm512_min_epi64(_mm512_max_epi64(t, zero), c31);
            let n = _mm512_mask_mov_epi64(n, _mm512_cmpeq_epi64_mask(g, zero), c31);
            // m = min(⌊g·2^n/D⌋, 255), 255 where l > 7 (t < 0); g = 0 gives 0. Where t ≥ 0 the
            // quotient is below 2^8, well inside the estimate's range.
            let c255 = _mm512_set1_epi64(255);
            let (qm, _, _) = quotient(_mm512_sllv_epi64(g, n), big_d, inv);
            let m = _mm512_mask_mov_epi64(_mm512_min_epu64(qm, c255), _mm512_cmplt_epi64_mask(t, zero), c255);
            // b = β/so·d − Σ·γ/so; the lane is in range when |b|·2^n < 2^64.
            let b = _mm512_sub_epi64(_mm512_mullo_epi64(bq, dd), _mm512_mullo_epi64(sum, hq));
            let ab = _mm512_abs_epi64(b);
            let fits = _mm512_cmpeq_epi64_mask(_mm512_srlv_epi64(ab, _mm512_sub_epi64(_mm512_set1_epi64(64), n)), zero);
            let (qb, rb, small) = quotient(_mm512_sllv_epi64(ab, n), big_d, inv);
            if fits & small != 0xff {
                for (j, o) in out[i..i + 8].iter_mut().enumerate() {
                    *o = fast_output(ch, i + j, r, xq[i + j], f);
                }
                continue;
            }
            // RNE(|b|·2^n/D) with the sign of b.
            let two_r = _mm512_add_epi64(rb, rb);
            let up = _mm512_cmpgt_epu64_mask(two_r, big_d) | (_mm512_cmpeq_epi64_mask(two_r, big_d) & _mm512_test_epi64_mask(qb, one));
            let mag = _mm512_mask_add_epi64(qb, up, qb, one);
            let bb = _mm512_mask_sub_epi64(mag, _mm512_cmplt_epi64_mask(b, zero), zero, mag);
            let sm = _mm512_sub_epi64(_mm512_xor_si512(m, sg), sg);
            let acc = _mm512_add_epi64(_mm512_mullo_epi64(sm, x), bb);
            // rne_shift(acc, n), lane by lane.
            let nz = _mm512_maskz_mov_epi64(_mm512_cmpneq_epi64_mask(n, zero), one);
            let half = _mm512_srli_epi64::<1>(_mm512_sllv_epi64(one, n));
            let odd = _mm512_and_si512(_mm512_srlv_epi64(acc, n), nz);
            let y = _mm512_srav_epi64(_mm512_add_epi64(_mm512_add_epi64(acc, half), _mm512_sub_epi64(odd, nz)), n);
            // SAFETY: i + 8 ≤ c = out.len().
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), y) };
        }
        full
    }
}

impl LayerNorm {
    /// Checked bounds of the PTF datapath for these scales and parameters: the zero point is a
    /// code of the input format, the channel factors `s_c/min s` stay below 2^16, and the
    /// per-channel constants `C·γ/so`, `β/so` (at 2^F) and the outputs fit the 128-bit words
    /// (the terms of `declared_width`, in floating point so the check itself cannot overflow).
    fn fits(&self, x: &QTensor, gamma: &[f32], beta: &[f32], sc: &[f64], so: &[f64], zp: i64) -> Result<(), UnitError> {
        let u = "layernorm_fqvit";
        let (lo, hi) = int_range(x.bits, x.signed);
        if !(lo..=hi).contains(&zp) {
            return Err(UnitError::Aux {
                unit: u,
                what: format!("zero point {zp} is not a code of the {}-bit input format [{lo}, {hi}]", x.bits),
            });
        }
        let s1 = sc.iter().cloned().fold(f64::INFINITY, f64::min);
        let kmax = sc.iter().map(|s| (s / s1).round()).fold(1.0, f64::max);
        if !below(kmax, 65536.5) {
            return Err(UnitError::Aux {
                unit: u,
                what: format!("the per-channel input scales differ by a factor of {kmax:.3e}; the PTF datapath takes factors up to 2^16 (PTF uses 1, 2, 4, 8)"),
            });
        }
        let c = sc.len() as f64;
        let f = 2f64.powi(self.frac_bits as i32);
        let xmax = 2f64.powi(x.bits as i32 + 1) * kmax; // |q − zp|·k, with room for the zero point
        let limit = 2f64.powi(125);
        for i in 0..sc.len() {
            let g = f64::from(gamma[i]).abs() / so[i];
            let b = f64::from(beta[i]).abs() / so[i];
            // C·γ/so·2^F shifted by N ≤ 31; (β/so·D + Σ·γ/so)·2^F·2^31 with D ≤ C·xmax, Σ ≤ C·xmax.
            let gq = c * g * f * 2f64.powi(31);
            let num = (b + g) * c * xmax * f * 2f64.powi(31);
            let out = 255.0 * xmax + (b + c * xmax * g);
            if !(gq < limit && num < limit && out < 2f64.powi(62)) {
                let need = (f64::from(gamma[i]).abs() * c * xmax + f64::from(beta[i]).abs()) * f * 2f64.powi(31) / limit;
                return Err(UnitError::Aux {
                    unit: u,
                    what: format!(
                        "output scale {:e} of channel {i} is too fine for γ = {}, β = {}: the constants γ/so, β/so at 2^{} need more than the 128-bit datapath; use an output scale of at least {need:.3e}",
                        so[i], gamma[i], beta[i], self.frac_bits
                    ),
                });
            }
        }
        Ok(())
    }
}

fn out_scale_of(s: &Option<Scale>) -> Scale {
    s.clone().unwrap_or(Scale::PerTensor(1.0))
}

impl Unit for LayerNorm {
    fn name(&self) -> &'static str {
        "layernorm_fqvit"
    }
    fn op(&self) -> Op {
        Op::LayerNorm
    }
    fn method(&self) -> Method {
        Method::FqVit
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 16, None)
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![ParamInfo {
            name: "frac_bits",
            value: self.frac_bits.to_string(),
            doc: "fractional bits of the per-channel constants C*gamma/so, gamma/so, beta/so (Integer mode)",
        }]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        match name {
            "frac_bits" => self.frac_bits = parse_param("layernorm_fqvit", "frac_bits", value)?,
            _ => return Err(unknown_param("layernorm_fqvit", name, &self.params())),
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, aux: &Aux) -> Result<u32, UnitError> {
        let u = "layernorm_fqvit";
        check_bits(u, x, 2, 16, None)?;
        let (c, _) = rows(x);
        let (gamma, beta) = affine(u, aux, c)?;
        let so: Vec<f64> = match &aux.out_scale {
            Some(s) => (0..c).map(|i| s.at(i)).collect(),
            None => return Err(UnitError::Aux { unit: u, what: "PTF LayerNorm needs --out-scale".into() }),
        };
        let s1 = (0..c).map(|i| x.scale.at(i)).fold(f64::INFINITY, f64::min);
        let kmax = (0..c).map(|i| round_half_even_f64(x.scale.at(i) / s1) as i128).max().unwrap_or(1);
        let one = 2f64.powi(self.frac_bits as i32);
        let gmax = (0..c).map(|i| (c as f64 * f64::from(gamma[i]) / so[i] * one).abs().round() as i128).max().unwrap_or(0);
        let hmax = (0..c).map(|i| (f64::from(gamma[i]) / so[i] * one).abs().round() as i128).max().unwrap_or(0);
        let bmax = (0..c).map(|i| (f64::from(beta[i]) / so[i] * one).abs().round() as i128).max().unwrap_or(0);
        let xmax = (1i128 << x.bits) * kmax; // |q − zp| < 2^bits
        let ssq = xmax * xmax * c as i128;
        let sum = xmax * c as i128;
        let d = isqrt((ssq * c as i128) as u128) as i128;
        let num = (bmax * d + sum * hmax) << 31;
        Ok([
            signed_width(xmax),
            signed_width(ssq * c as i128),
            signed_width(gmax << 31),
            signed_width(num),
            signed_width(255 * xmax + (num >> self.frac_bits)),
        ]
        .into_iter()
        .max()
        .unwrap())
    }
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, aux, mode, &mut NoProbe, IntPath::Vector))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        // The probe observes the reference integer datapath (the fast path computes the same
        // values in other, narrower steps, so its intermediates are not the hardware's).
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, aux, Mode::Integer, probe, IntPath::Reference))
    }
}

/// Codes of the float-path log2 quantiser on float32 probabilities, as the reference computes
/// them (`log2f` in binary32): `(code, zero)` with `code = clamp(RNE(−log2 p), 0, 2^bits−1)`.
pub fn log2_quant_f32(p: &[f32], bits: u32) -> Vec<(i64, bool)> {
    let top = (1i64 << bits) - 1;
    p.iter()
        .map(|&v| {
            let r = (-(v.log2())).round_ties_even();
            let zero = r >= (1i64 << bits) as f32;
            let code = if r.is_nan() { top } else { (r.max(0.0).min(top as f32)) as i64 };
            (code, zero)
        })
        .collect()
}

/// Exact `RNE(−log2 p)` for `p = q·2^−frac` (`q ≥ 1`): ties cannot occur, so comparing `q²` with
/// `2^(2L+1)` decides the rounding. This is the integer hardware's log2 quantiser.
pub fn log2_round_exact(q: u64, frac: i32) -> i64 {
    let l = i64::from(bit_length(u128::from(q))) - 1; // ⌊log2 q⌋
    let up = u128::from(q) * u128::from(q) >= 1u128 << (2 * l + 1); // log2 q ≥ l + 1/2
    i64::from(frac) - l - i64::from(up)
}

/// Exact `(code, zero)` of the log2 quantiser for a float32 probability: `RNE(−log2 p)` decided
/// by comparing `p²` with powers of two (ties cannot occur), no `log2f`. Differs from
/// [`log2_quant_f32`] only where binary32 `log2f` rounds across a `2^−(k+½)` boundary.
pub fn log2_quant_exact(p: f32, bits: u32) -> (i64, bool) {
    let top = (1i64 << bits) - 1;
    if p <= 0.0 || p.is_nan() {
        return (top, true);
    }
    // p = mant · 2^exp exactly, mant a 24-bit integer.
    let (m, e) = crate::fixed::frexp(f64::from(p));
    let mant = (m * 2f64.powi(24)) as u64;
    let r = log2_round_exact(mant, 24 - e);
    (r.clamp(0, top), r >= 1i64 << bits)
}

/// FQ-ViT Log2Quantizer of probabilities (`kernels.md` §3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Log2Quant {
    /// Code bits.
    pub bits: u32,
}

impl Log2Quant {
    /// Build from a preset.
    pub fn preset(_p: Preset) -> Log2Quant {
        Log2Quant { bits: 4 }
    }
}

impl Unit for Log2Quant {
    fn name(&self) -> &'static str {
        "log2quant_fqvit"
    }
    fn op(&self) -> Op {
        Op::Log2Quant
    }
    fn method(&self) -> Method {
        Method::FqVit
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 32, Some(false))
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![ParamInfo { name: "bits", value: self.bits.to_string(), doc: "code bits (reference 4)" }]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        match name {
            "bits" => self.bits = parse_param("log2quant_fqvit", "bits", value)?,
            _ => return Err(unknown_param("log2quant_fqvit", name, &self.params())),
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, _aux: &Aux) -> Result<u32, UnitError> {
        Ok(2 * x.bits + 2)
    }
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_probed_mode(x, mode, &mut NoProbe))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_probed_mode(x, Mode::Integer, probe))
    }
}

impl Log2Quant {
    fn run_probed_mode<P: Probe>(&self, x: &QTensor, mode: Mode, p: &mut P) -> Result<UnitOutput, UnitError> {
        let u = "log2quant_fqvit";
        check_bits(u, x, 2, 32, Some(false))?;
        if !(1..=6).contains(&self.bits) {
            return Err(UnitError::Param { unit: u, param: "bits", value: self.bits.to_string(), why: "must be 1..=6".into() });
        }
        let s = x.scale.per_tensor().ok_or_else(|| UnitError::Aux { unit: u, what: "needs a per-tensor scale".into() })?;
        let levels = 1i64 << self.bits;
        let values = match mode {
            Mode::Reference => {
                let pf: Vec<f32> = x.data().iter().map(|&q| (q as f64 * s) as f32).collect();
                log2_quant_f32(&pf, self.bits).into_iter().map(|(c, z)| if z { -1 } else { c }).collect()
            }
            Mode::Integer => {
                let (m, e) = crate::fixed::frexp(s);
                if m != 0.5 {
                    return Err(UnitError::Aux {
                        unit: u,
                        what: format!("the integer log2 quantiser needs a power-of-two input scale (got {s}); use --mode reference"),
                    });
                }
                let frac = 1 - e; // s = 2^-frac
                x.data()
                    .iter()
                    .map(|&q| {
                        p.see(i128::from(q) * i128::from(q));
                        if q == 0 {
                            return -1;
                        }
                        let r = log2_round_exact(q as u64, frac);
                        if r >= levels {
                            -1
                        } else {
                            r.clamp(0, levels - 1)
                        }
                    })
                    .collect()
            }
        };
        Ok(UnitOutput {
            values,
            shape: x.shape().to_vec(),
            scale: Scale::PerTensor(1.0),
            encoding: Encoding::Log2 { bits: self.bits },
            conditions: vec![],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::vector::cases;
    use super::*;

    #[test]
    fn log_round_threshold_is_one_and_a_half() {
        assert_eq!(log_round(1), 0);
        assert_eq!(log_round(2), 1);
        assert_eq!(log_round(3), 2); // 3 >= 1.5*2
        assert_eq!(log_round(5), 2);
        assert_eq!(log_round(6), 3);
        assert_eq!(log_round(11), 3);
        assert_eq!(log_round(12), 4);
    }

    #[test]
    fn row_divider_is_exact() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(16);
        let mut divisors: Vec<u64> = vec![1, 2, 3, 7, 16, 255, 1 << 20, (1 << 32) - 1, 1 << 32, (1 << 56) - 1, u64::MAX / 3, u64::MAX];
        divisors.extend((0..200).map(|_| {
            let top = u64::MAX >> r.gen_range(0..63);
            r.gen_range(1..=top)
        }));
        for &d in &divisors {
            let div = RowDivider::new(d);
            let mut xs = vec![0, 1, d - 1, d, d.saturating_add(1), u64::MAX, u64::MAX - 1, u64::MAX - d + 1];
            for _ in 0..200 {
                let k = r.gen_range(0..=u64::MAX / d);
                xs.extend([k * d, (k * d).saturating_sub(1), (k * d).saturating_add(d - 1), r.gen()]);
            }
            for x in xs {
                assert_eq!(div.div_rem(x), (x / d, x % d), "{x} / {d}");
            }
        }
    }

    #[test]
    fn rne_shift_equals_shift_round() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(17);
        for n in 0..=31u32 {
            let one = 1i64 << n;
            let mut xs: Vec<i64> = vec![0, 1, -1, one, -one, (1 << 61) - 1, -(1 << 61)];
            for _ in 0..2000 {
                let q = r.gen_range(-(1i64 << (60 - n))..(1i64 << (60 - n)));
                // Ties and their neighbours, where the rounding rules differ.
                xs.extend([q * one + (one >> 1), q * one + (one >> 1) - 1, q * one + (one >> 1) + 1, r.gen_range(-(1i64 << 61)..1 << 61)]);
            }
            for x in xs {
                assert_eq!(i128::from(rne_shift(x, n)), shift_round(x.into(), n, Rounding::HalfEven), "{x} >> {n}");
            }
        }
    }

    #[test]
    fn seeded_isqrt_is_floor_sqrt() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(18);
        let mut vs: Vec<u128> = (0..=1000).collect();
        for b in 1..=126u32 {
            let s = (1u128 << (b / 2)) + r.gen_range(0..1u128 << (b / 2));
            let s = s.min((1u128 << 64) - 1);
            vs.extend([s * s - 1, s * s, s * s + 1, (s + 1) * (s + 1) - 1, r.gen_range(0..1u128 << b)]);
        }
        vs.push(u128::MAX);
        for v in vs {
            assert_eq!(isqrt_seeded(v), isqrt(v), "isqrt({v})");
        }
    }

    /// The DeiT-shaped bench input goes through the fast path (not the whole-tensor fallback to
    /// the reference), scalar and vector, with the reference's outputs.
    #[test]
    fn bench_input_takes_the_fast_path() {
        use crate::sensitivity::{sample, Dist};
        let ln = LayerNorm::preset(Preset::Reference);
        let s = sample(&ln, 8, Dist::Layernorm, 197, 1).unwrap();
        let (c, _) = rows(&s.q);
        let (gamma, beta) = affine("t", &s.aux, c).unwrap();
        let sc: Vec<f64> = (0..c).map(|i| s.q.scale.at(i)).collect();
        let so: Vec<f64> = (0..c).map(|i| s.aux.out_scale.as_ref().unwrap().at(i)).collect();
        let k = ln.integer_consts(&sc, gamma, beta, &so);
        let reference =
            checked_output("layernorm_fqvit", ln.run_with(&s.q, &s.aux, Mode::Integer, &mut NoProbe, IntPath::Reference)).unwrap();
        for simd in [false, true] {
            let mut out = vec![0; s.q.data().len()];
            assert!(ln.integer_fast(&s.q, s.aux.zero_point, &k, &mut out, &mut Conditions::default(), simd));
            assert_eq!(out, reference.values);
        }
        assert_eq!(ln.run(&s.q, &s.aux, Mode::Integer).unwrap(), reference);
    }

    /// A random PTF LayerNorm case: `bits`-bit codes (signed or not) around a zero point,
    /// power-of-two per-channel input scales, γ and β from zero to large (so the exponent N
    /// meets both clamps), per-tensor or per-channel output scales; rows uniform, narrow,
    /// two-valued or constant (zero variance).
    fn ptf_case(bits: u32, signed: bool, c: usize, nrows: usize, seed: u64) -> (QTensor, Aux) {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let (lo, hi) = int_range(bits, signed);
        let zp = r.gen_range(lo..=hi);
        let mut q = Vec::with_capacity(nrows * c);
        for _ in 0..nrows {
            let centre = r.gen_range(lo..=hi);
            let spread = r.gen_range(0..=(hi - lo));
            match r.gen_range(0..5) {
                0 => q.extend((0..c).map(|_| r.gen_range(lo..=hi))),
                1 | 2 => q.extend((0..c).map(|_| (centre + r.gen_range(-spread / 8..=spread / 8)).clamp(lo, hi))),
                3 => {
                    let other = r.gen_range(lo..=hi);
                    q.extend((0..c).map(|_| if r.gen_bool(0.5) { centre } else { other }))
                }
                _ => q.extend(std::iter::repeat_n(centre, c)),
            }
        }
        let base = f64::from(2f32.powf(r.gen_range(-12.0..0.0)));
        let max_factor = [0, 3, 3, 8][r.gen_range(0..4)];
        let scale = if r.gen_bool(0.9) {
            Scale::PerChannel((0..c).map(|_| base * 2f64.powi(r.gen_range(0..=max_factor))).collect())
        } else {
            Scale::PerTensor(base)
        };
        let x = QTensor::new(q, &[nrows, c], scale, bits, signed).unwrap();
        let value = |r: &mut rand::rngs::StdRng| -> f32 {
            let m = match r.gen_range(0..10) {
                0 => 0.0,
                1 => r.gen_range(1e-7f32..1e-3),
                2 => r.gen_range(10f32..300.0),
                _ => r.gen_range(0.05f32..3.0),
            };
            if r.gen_bool(0.3) {
                -m
            } else {
                m
            }
        };
        let gamma = (0..c).map(|_| value(&mut r)).collect();
        let beta = (0..c).map(|_| value(&mut r)).collect();
        let so = |r: &mut rand::rngs::StdRng| f64::from(2f32.powf(r.gen_range(-10.0..3.0)));
        let out_scale =
            if r.gen_bool(0.7) { Scale::PerTensor(so(&mut r)) } else { Scale::PerChannel((0..c).map(|_| so(&mut r)).collect()) };
        let aux = Aux { gamma: Some(gamma), beta: Some(beta), zero_point: zp, out_scale: Some(out_scale), ..Aux::default() };
        (x, aux)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// The fast Integer paths (`run`, and the scalar one) equal the reference integer
        /// datapath: the whole output (values, scale, conditions) or the same error.
        #[test]
        fn fast_integer_path_equals_reference(
            bits in 2u32..=16,
            signed in proptest::bool::ANY,
            c in proptest::prop_oneof![1usize..=16, 1usize..=1024],
            nrows in 1usize..=3,
            frac_bits in proptest::prop_oneof![proptest::strategy::Just(20u32), 4u32..=40],
            adapted in proptest::bool::ANY,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let preset = if adapted { Preset::Adapted } else { Preset::Reference };
            let mut ln = LayerNorm::preset(preset);
            ln.frac_bits = frac_bits;
            let (x, aux) = ptf_case(bits, signed, c, nrows, seed);
            let reference = checked_output("layernorm_fqvit", ln.run_with(&x, &aux, Mode::Integer, &mut NoProbe, IntPath::Reference));
            let scalar = checked_output("layernorm_fqvit", ln.run_with(&x, &aux, Mode::Integer, &mut NoProbe, IntPath::Scalar));
            // `run` is the vector kernel where the CPU has AVX-512, else the scalar fast path.
            for (what, fast) in [("run", ln.run(&x, &aux, Mode::Integer)), ("scalar", scalar)] {
                match (fast, &reference) {
                    (Ok(a), Ok(b)) => proptest::prop_assert_eq!(&a, b, "{} differs", what),
                    (a, b) => proptest::prop_assert_eq!(format!("{a:?}"), format!("{b:?}"), "{} differs", what),
                }
            }
        }
    }

    /// A channel for [`element_steps_equal_reference`]: `gq` from zero through exact powers of
    /// two times `D` (where `⌊log2(g/D)⌋` turns on an equality) to 2^61, `hq`, `bq` within the
    /// row bound, and with `tie` a `bq` that makes `b·2^n/D` an exact half (round-half-even's
    /// tie), `xq` up to 2^33.
    fn element_case(r: &mut rand::rngs::StdRng, d: u64, sum: i64, f: u32, tie: bool) -> (i128, i128, i128, i64) {
        use rand::Rng;
        let big_d = d << f;
        let mag = |r: &mut rand::rngs::StdRng, top: u32| -> i64 {
            let sh = r.gen_range(0..=top);
            r.gen_range(0..=(1i64 << top) >> sh)
        };
        let g: i64 = match r.gen_range(0..5) {
            0 => 0,
            1 | 2 => {
                let j = r.gen_range(-40i32..=10);
                let v = if j >= 0 { big_d.checked_shl(j as u32).filter(|v| *v < 1 << 61).unwrap_or(big_d) } else { big_d >> -j };
                v.max(1) as i64 + r.gen_range(-1..=1)
            }
            _ => mag(r, 61).max(1),
        };
        let gq = i128::from(if r.gen_bool(0.3) { -g } else { g });
        // |bq|·d + |Σ|·|hq| < 2^62 keeps the row bound.
        let hcap = (1u64 << 61) / (sum.unsigned_abs() + 1);
        let bcap = (1u64 << 61) / d;
        let sign = |r: &mut rand::rngs::StdRng, v: i64| if r.gen_bool(0.5) { -v } else { v };
        let (h, b) = (mag(r, 61).min(hcap as i64), mag(r, 61).min(bcap as i64));
        let mut hq = sign(r, h);
        let mut bq = sign(r, b);
        if tie {
            // b = bq·d − Σ·hq = (2k+1)·d·2^(F−n−1) with hq = d·h', bq = (2k+1)·2^(F−n−1) + Σ·h'.
            let n = ptf_exponent(gq, i128::from(d), f).0;
            if n < f {
                let hm = (hcap / d) as i64;
                let h = mag(r, 20);
                let h = sign(r, h).clamp(-hm, hm);
                let odd = 2 * mag(r, 20) + 1;
                let t = odd.checked_shl(f - n - 1).and_then(|v| v.checked_add(sum.checked_mul(h)?));
                if let Some(t) = t.filter(|t| t.unsigned_abs() < bcap) {
                    (hq, bq) = (d as i64 * h, t);
                }
            }
        }
        let x = mag(r, 33);
        (gq, i128::from(hq), i128::from(bq), sign(r, x))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The fast path's element steps, scalar and vector, equal [`ptf_output`] on rows that
        /// pass its row checks, including exact ties and power-of-two ratios `g/D`.
        #[test]
        fn element_steps_equal_reference(f in 4u32..=40, seed in proptest::prelude::any::<u64>()) {
            use rand::{Rng, SeedableRng};
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            let top = 56 - f;
            let dtop = ((1u64 << top) - 1) >> r.gen_range(0..top);
            let d = r.gen_range(1..=dtop);
            let sh = r.gen_range(0..=40);
            let sum = r.gen_range(-(1i64 << 40)..=1 << 40) >> sh;
            let c = r.gen_range(1..=40);
            let tie = r.gen_bool(0.5);
            let cases: Vec<_> = (0..c).map(|_| element_case(&mut r, d, sum, f, tie)).collect();
            let want: Vec<i64> = cases.iter().map(|&(g, h, b, x)| ptf_output(g, h, b, d.into(), sum.into(), x, f, &mut NoProbe)).collect();
            let (gq, hq, bq): (Vec<i128>, Vec<i128>, Vec<i128>) = (cases.iter().map(|v| v.0).collect(), cases.iter().map(|v| v.1).collect(), cases.iter().map(|v| v.2).collect());
            let xq: Vec<i64> = cases.iter().map(|v| v.3).collect();
            let ch = FastChannels::new(&gq, &hq, &bq);
            let row = FastRow::new(d, sum, f);
            let scalar: Vec<i64> = (0..c).map(|i| fast_output(&ch, i, &row, xq[i], f)).collect();
            proptest::prop_assert_eq!(&scalar, &want, "scalar");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
                let mut out = vec![0i64; c];
                // SAFETY: the features were just checked.
                let done = unsafe { avx512::row(&ch, &row, &xq, &mut out, f) };
                proptest::prop_assert_eq!(&out[..done], &want[..done], "avx512");
            }
        }
    }

    /// On the golden PTF case (`../shared/golden`), Reference mode reproduces the published
    /// outputs (so the case is read right) and the fast Integer path equals the reference one.
    #[test]
    fn golden_ptf_case_fast_equals_reference() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/fqvit_ptf_layernorm_in8.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("the golden folder beside the project")).unwrap();
        let ints = |p: &str| -> Vec<i64> { v.pointer(p).unwrap().as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
        let f32s = |p: &str| -> Vec<f32> { ints(p).into_iter().map(|b| f32::from_bits(b as u32)).collect() };
        let shape: Vec<usize> = ints("/input/shape").into_iter().map(|d| d as usize).collect();
        let sc = Scale::PerChannel(f32s("/input/scale/f32_bits").into_iter().map(f64::from).collect());
        let x = QTensor::new(ints("/input/q"), &shape, sc, 8, false).unwrap();
        let aux = Aux {
            gamma: Some(f32s("/params/weight/f32_bits")),
            beta: Some(f32s("/params/bias/f32_bits")),
            zero_point: v.pointer("/input/zero_point").unwrap().as_f64().unwrap() as i64,
            out_scale: Some(Scale::PerTensor(f64::from(f32s("/params/out_scale/f32_bits")[0]))),
            ..Aux::default()
        };
        for preset in [Preset::Reference, Preset::Adapted] {
            let ln = LayerNorm::preset(preset);
            assert_eq!(ln.run(&x, &aux, Mode::Reference).unwrap().values, ints("/runs/f64/out_int"));
            let reference =
                checked_output("layernorm_fqvit", ln.run_with(&x, &aux, Mode::Integer, &mut NoProbe, IntPath::Reference)).unwrap();
            assert_eq!(ln.run(&x, &aux, Mode::Integer).unwrap(), reference);
            let scalar = checked_output("layernorm_fqvit", ln.run_with(&x, &aux, Mode::Integer, &mut NoProbe, IntPath::Scalar)).unwrap();
            assert_eq!(scalar, reference);
        }
    }

    /// LIS's fast runs (`run`, and the kernels at every level this CPU has) against the
    /// definition (`lut = false`, every exponential computed) and the table run.
    fn fast_lis_equals_definition(sm: &Softmax, x: &QTensor, aux: &Aux) -> Result<(), String> {
        let def = |lut, level| checked_output("softmax_fqvit", sm.run_with(x, aux, Mode::Integer, &mut NoProbe, lut, level));
        let runs = vec![("table".to_string(), def(true, None)), ("run".to_string(), sm.run(x, aux, Mode::Integer))];
        cases::levels_same_as_definition(|level| def(level.is_some(), level), runs)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// LIS's fast Integer path equals the definition: the whole output or the same error, for
        /// every input width, both presets and perturbed code bits, n and upshift, masks included.
        #[test]
        fn lis_fast_integer_path_equals_reference(
            bits in proptest::prop_oneof![2u32..=16, 2u32..=24],
            signed in proptest::bool::ANY,
            c in proptest::prop_oneof![1usize..=16, 1usize..=1024],
            nrows in 1usize..=4,
            adapted in proptest::bool::ANY,
            tweak in 0u32..5,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut sm = Softmax::preset(if adapted { Preset::Adapted } else { Preset::Reference });
            match tweak {
                1 => sm.bits = 1 + (seed % 6) as u32,
                2 => sm.n = 1 + (seed % 40) as u32,
                3 => sm.upshift = Some((seed % 25) as u32),
                _ => {}
            }
            let x = cases::rows(bits, signed, c, nrows, seed);
            let aux = cases::mask(&x, seed);
            if let Err(e) = fast_lis_equals_definition(&sm, &x, &aux) {
                proptest::prop_assert!(false, "{}", e);
            }
        }
    }

    /// Every two-element row of 8-bit codes, signed and unsigned, both presets, scales from
    /// fine to coarse, unmasked and with the first element of every third row masked.
    #[test]
    fn lis_fast_integer_path_exhaustive_8bit_pairs() {
        for preset in [Preset::Reference, Preset::Adapted] {
            let sm = Softmax::preset(preset);
            for signed in [false, true] {
                for s in [1e-4, 2f64.powi(-7), 0.0371, 0.25, 1.5] {
                    let x = cases::all_pairs(8, signed, s);
                    fast_lis_equals_definition(&sm, &x, &Aux::default()).unwrap();
                    let mask: Vec<bool> = (0..x.data().len()).map(|i| i % 6 == 0).collect();
                    fast_lis_equals_definition(&sm, &x, &Aux { mask: Some(mask.into()), ..Aux::default() }).unwrap();
                }
            }
        }
    }

    /// The kernels' closed-form codes equal the definition's threshold comparisons at every
    /// level: sums up to the 2^60 bound, exponentials 0, 1, S and on either side of every
    /// threshold (RNE's ties included), 1 to 64 levels.
    #[test]
    fn log2_codes_equal_the_thresholds() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(11);
        let table = [1i64];
        for case in 0..3000 {
            let top = 1i64 << r.gen_range(1..=60);
            let sum: i64 = if case % 3 == 0 { r.gen_range(1..200) } else { r.gen_range(1..top) };
            let levels = if r.gen_bool(0.5) { 16 } else { r.gen_range(1u32..=64) };
            let two_s = 2 * sum as u128;
            let mut e = vec![0, 1, sum];
            for _ in 0..r.gen_range(0..40) {
                let t: i64 = match r.gen_range(0..8) {
                    0 => 2,
                    1 => 3,
                    _ => 3i64 << r.gen_range(1..40),
                };
                let v = (2 * i128::from(sum) / i128::from(2 * t - 1)) as i64;
                e.push((v + r.gen_range(-1..=1)).clamp(0, sum));
                e.push(r.gen_range(0..=sum));
            }
            let mut narrow = vec![0u64; levels as usize];
            lis_thresholds(two_s, &mut narrow);
            let want: Vec<i64> = e.iter().map(|&v| lis_code(&narrow, v)).collect();
            for level in Level::available() {
                let kr = LutSoftmax::new(level, &table, 1, 0, i64::MAX).unwrap();
                let mut out = vec![7; e.len()];
                let any = kr.log2_codes(&e, sum, levels, &mut out);
                assert_eq!((any, &out), (Some(want.iter().any(|&k| k >= 0)), &want), "{level:?} S={sum} levels={levels} e={e:?}");
            }
        }
    }

    /// The DeiT-shaped bench input takes the kernels on every row (none refused).
    #[test]
    fn lis_bench_input_takes_the_fast_path() {
        use crate::sensitivity::{sample, Dist};
        for preset in [Preset::Reference, Preset::Adapted] {
            let sm = Softmax::preset(preset);
            let s = sample(&sm, 8, Dist::Attention, 6 * 197, 1).unwrap();
            fast_lis_equals_definition(&sm, &s.q, &s.aux).unwrap();
            let k = sm.consts(&s.q).unwrap();
            let (lo, hi) = int_range(s.q.bits, s.q.signed);
            // The unit's table, as its Integer mode builds it.
            let table: Vec<i64> = (0..=hi - lo).map(|d| k.exp(-d, &mut NoProbe)).collect();
            let (c, _) = rows(&s.q);
            let kr = LutSoftmax::new(Level::detect(), &table, c, 0, i64::MAX).unwrap();
            // At upshift 0 the i-exp halves every |x0| codes: AVX-512 computes it, no gathers.
            #[cfg(target_arch = "x86_64")]
            if Level::detect() == Level::Avx512 && sm.upshift == Some(0) {
                assert!(kr.computes_table(), "{preset}");
            }
            for row in s.q.data().chunks_exact(c) {
                let (mut e, mut o) = (vec![0; c], vec![0; c]);
                let sum = kr.exp(row, None, &mut e).unwrap();
                assert!(kr.log2_codes(&e, sum, 1 << sm.bits, &mut o).is_some());
            }
        }
    }

    #[test]
    fn exact_log2_rounding() {
        // p = q / 2^15: −log2 p = 15 − log2 q
        assert_eq!(log2_round_exact(1 << 15, 15), 0);
        assert_eq!(log2_round_exact(1 << 14, 15), 1);
        // 23170/2^15 = 0.70709 < 2^-0.5 = 0.707107: rounds to 1; 23171 rounds to 0.
        assert_eq!(log2_round_exact(23170, 15), 1);
        assert_eq!(log2_round_exact(23171, 15), 0);
    }
}
