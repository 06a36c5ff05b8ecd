//! I-BERT units (kssteven418/I-BERT @ 1b09c75): i-exp softmax, i-GELU and IntLayerNorm
//! (`kernels.md` §1).
//!
//! Reference mode replays the float64 steps of the published code: the inner 16-bit QuantAct
//! of the softmax, the `⌊rdiv⌋` normalisations, i-GELU's float64 products and LayerNorm's
//! `torch.sqrt` and dynamic-shift rule. Integer mode is what hardware builds: a dyadic 16-bit
//! requantiser, integer dividers, an integer square root and the integer shift rule.

// The reference's truncated constants (−0.6931 for −ln 2, 1.4142 for √2) are what bit-exactness needs.
#![allow(clippy::approx_constant)]

use super::ivit::{floor_div, ln_bias_and_scale, ln_scale_row};
use super::vector::{IbertGelu, Level, LnRows, LutSoftmax};
use super::{
    affine, below, check_bits, check_scale, check_upshift, checked_output, mask_row, masked, no_mask, parse_param, row_max, rows,
    softmax_mask, underflow_rows, unknown_param, Aux, Condition, Conditions, Encoding, Method, Mode, NoProbe, Op, ParamInfo, Preset, Probe,
    Unit, UnitError, UnitOutput, WidthProbe,
};
use crate::fixed::{bit_length, div_round, int_range, isqrt, rdiv, round_half_even_f64, signed_width, Dyadic, QTensor, Rounding, Scale};

/// Polynomial constants of I-BERT's i-exp, evaluated as the Python code does.
pub(crate) const EXP_A: f64 = 0.35815147;
/// `b = 0.96963238 / 0.35815147` (Python double division).
pub(crate) fn exp_b() -> f64 {
    0.96963238 / EXP_A
}
/// `c = 1 / 0.35815147`.
pub(crate) fn exp_c() -> f64 {
    1.0 / EXP_A
}

/// Constants of i-exp for one input scale (`kernels.md` §1.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpConsts {
    /// `x0_int = ⌊−0.6931/s⌋`.
    pub x0: i64,
    /// `b_int`.
    pub b: i64,
    /// `c_int`.
    pub c: i64,
    /// Polynomial range n.
    pub n: u32,
    /// Input upshift.
    pub upshift: u32,
    /// Scale of the polynomial output `fl(a·fl(s·s))` (before `/2^n`).
    pub poly_sf: f64,
}

impl ExpConsts {
    /// Constants for scale `s`, with the input shifted left by `upshift` first.
    pub fn new(s: f64, n: u32, upshift: u32) -> ExpConsts {
        let s = s / 2f64.powi(upshift as i32);
        let ss = s * s;
        ExpConsts {
            x0: rdiv(-0.6931, s).floor() as i64,
            b: rdiv(exp_b(), s).floor() as i64,
            c: rdiv(exp_c(), ss).floor().min(9.0e18) as i64,
            n,
            upshift,
            poly_sf: EXP_A * ss,
        }
    }

    /// Whether the constants at input scale `s` (upshift `up`) fit 64-bit words: `c_int < 2^62`
    /// (it is never clamped) and, where the exponentials themselves are kept in 64-bit words
    /// (`e_bits`, LIS), `c_int·2^n < 2^e_bits`. Coarse scales always fit (c_int = 0 is
    /// reported as [`Condition::ExpUnderflow`]).
    pub fn fits(s: f64, n: u32, up: u32, e_bits: Option<u32>) -> Result<(), String> {
        let sp = s / 2f64.powi(up as i32);
        let c = rdiv(exp_c(), sp * sp);
        if !below(c, 2f64.powi(62)) {
            return Err(format!("i-exp's c_int = ⌊1/(a·s²)⌋ = {c:.3e} does not fit 62 bits"));
        }
        if let Some(eb) = e_bits {
            let e = c.floor() * 2f64.powi(n as i32);
            if !below(e, 2f64.powi(eb as i32)) {
                return Err(format!("the largest exponential c_int·2^n = {e:.3e} does not fit {eb} bits"));
            }
        }
        Ok(())
    }

    /// Upshift so the polynomial has at least 2^10 levels (c_int ≥ 1024): fixes c_int = 0 at coarse scales.
    pub fn auto_upshift(s: f64) -> u32 {
        (0..24).find(|&p| ExpConsts::new(s, 30, p).c >= 1024).unwrap_or(24)
    }

    /// `E = max(0, z·2^(n−qq))` for `x = q − max ≤ 0` (before the upshift), as `(z, n − qq)`.
    #[inline(always)]
    pub fn exp_parts<P: Probe>(&self, x: i64, p: &mut P) -> (i64, u32) {
        let x = x << self.upshift;
        p.see(x as i128);
        let lim = i64::from(self.n) * self.x0;
        let x = x.max(lim);
        let qq = floor_div(x, self.x0);
        let r = x - self.x0 * qq;
        p.see((self.x0 * qq) as i128);
        let t = r + self.b;
        p.see(t as i128);
        let rt = r as i128 * t as i128;
        p.see(rt);
        let z = (rt + self.c as i128).max(0);
        p.see(z);
        (z as i64, (self.n as i64 - qq) as u32)
    }

    /// `E = max(0, z·2^(n−qq))`.
    #[inline(always)]
    pub fn exp<P: Probe>(&self, x: i64, p: &mut P) -> i64 {
        let (z, sh) = self.exp_parts(x, p);
        let e = (z as i128) << sh;
        p.see(e);
        e as i64
    }

    /// The largest E (at the row maximum): `c·2^n`.
    pub fn e_max(&self) -> i128 {
        (self.c as i128) << self.n
    }

    /// Widths of the exponent datapath for inputs spanning `span` codes.
    pub fn widths(&self, span: i64) -> u32 {
        let xmin = -(i128::from(span) << self.upshift);
        let r = i128::from(self.x0);
        [
            signed_width(xmin),
            signed_width(i128::from(self.n) * r),
            signed_width(r + i128::from(self.b)),
            signed_width(r * (r + i128::from(self.b)).abs().max(i128::from(self.b))),
            signed_width(i128::from(self.c) + r.abs() * i128::from(self.b)),
            signed_width(self.e_max()),
        ]
        .into_iter()
        .max()
        .unwrap()
    }
}

fn opt_param(v: Option<u32>) -> String {
    v.map_or("auto".into(), |v| v.to_string())
}

fn parse_opt(unit: &'static str, param: &'static str, v: &str) -> Result<Option<u32>, UnitError> {
    if v == "auto" {
        Ok(None)
    } else {
        parse_param(unit, param, v).map(Some)
    }
}

/// I-BERT IntSoftmax: i-exp, a 16-bit requantisation and normalisation (`kernels.md` §1.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Softmax {
    /// Output bits `ob`: output in `[0, 2^ob]` (reference) with scale `2^−ob`.
    pub out_bits: u32,
    /// Polynomial range: inputs clamped at `n·x0` (reference 30).
    pub n: u32,
    /// Clamp the output to `2^ob − 1` so it fits `ob` bits (adapted) instead of reaching `2^ob`.
    pub clamp_out: bool,
    /// Input left shift before i-exp (reference 0; `None` = auto, keeps c_int ≥ 1024 at coarse scales).
    pub upshift: Option<u32>,
}

impl Softmax {
    /// Build from a preset.
    pub fn preset(p: Preset) -> Softmax {
        match p {
            Preset::Reference => Softmax { out_bits: 8, n: 30, clamp_out: false, upshift: Some(0) },
            Preset::Adapted => Softmax { out_bits: 8, n: 30, clamp_out: true, upshift: None },
        }
    }

    fn consts(&self, x: &QTensor) -> Result<ExpConsts, UnitError> {
        check_bits("softmax_ibert", x, 2, 24, None)?;
        if !(2..=24).contains(&self.out_bits) || !(1..=40).contains(&self.n) {
            return Err(UnitError::Param {
                unit: "softmax_ibert",
                param: "out_bits/n",
                value: format!("{}/{}", self.out_bits, self.n),
                why: "out_bits must be 2..=24 and n 1..=40".into(),
            });
        }
        let s = x
            .scale
            .per_tensor()
            .ok_or_else(|| UnitError::Aux { unit: "softmax_ibert", what: "softmax needs a per-tensor input scale".into() })?;
        check_upshift("softmax_ibert", self.upshift)?;
        check_scale(self, x, &Aux::default())?;
        let up = self.upshift.unwrap_or_else(|| ExpConsts::auto_upshift(s));
        Ok(ExpConsts::new(s, self.n, up))
    }

    /// Both modes; with `lut` the Integer mode's exponentials come from a table, and with
    /// `fast` too its rows go through the vector kernel at that level where it accepts them.
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
        let mask = softmax_mask("softmax_ibert", x, aux)?;
        let (c, _) = rows(x);
        let data = x.data();
        // The Integer mode fills it row by row just before each row is written (one pass over memory, not two).
        let mut out = Vec::with_capacity(data.len());
        let mut cond = Conditions::default();
        let scale = Scale::PerTensor(2f64.powi(-(self.out_bits as i32)));
        let top = if self.clamp_out { (1i64 << self.out_bits) - 1 } else { 1i64 << self.out_bits };
        if k.c <= 0 {
            // Reference: every E is 0, the sum is 0 and 0·∞ = NaN. Defined here as all zeros.
            out.resize(data.len(), 0);
            underflow_rows(mask, data.len(), c, &mut cond);
            return Ok(UnitOutput {
                values: out,
                shape: x.shape().to_vec(),
                scale,
                encoding: Encoding::Linear,
                conditions: cond.into_vec(),
            });
        }
        let e_max = k.e_max();
        let osh = 32 - self.out_bits;
        match mode {
            Mode::Integer => {
                // Hardware: E16 = RNE(E · m / 2^e) with the dyadic form of 32767 / E_max.
                let d = Dyadic::from_ratio(32767.0 / e_max as f64);
                // RNE(E·m / 2^e) with E = z·2^sh, computed as RNE(z·m / 2^(e−sh)): a narrow multiplier.
                fn req<Q: Probe>((z, sh): (i64, u32), d: Dyadic, p: &mut Q) -> i64 {
                    let prod = z as i128 * d.m as i128;
                    p.see(prod);
                    let net = d.e - sh as i32;
                    let v = if net >= 0 { crate::fixed::shift_round(prod, net as u32, Rounding::HalfEven) } else { prod << (-net) as u32 };
                    let v = v.clamp(-32768, 32767) as i64;
                    p.see(v as i128);
                    v
                }
                let (lo, hi) = int_range(x.bits, x.signed);
                let span = (hi - lo) as usize;
                let table: Vec<i64> = if lut && data.len() > span {
                    (0..=span as i64).map(|dd| req(k.exp_parts(-dd, &mut NoProbe), d, &mut NoProbe)).collect()
                } else {
                    Vec::new()
                };
                let mut e16 = vec![0i64; c];
                // E16 ≤ 32767 and factor ≤ 2^32: the products are the definition's 64-bit ones.
                let kernel = fast.and_then(|l| LutSoftmax::new(l, &table, c, osh, top));
                for (r, row) in data.chunks_exact(c).enumerate() {
                    let start = out.len();
                    out.resize(start + c, 0);
                    let orow = &mut out[start..];
                    let mrow = mask_row(mask, r, c);
                    if let Some(kr) = &kernel {
                        if kr.row(row, mrow, &mut e16, orow, |sum| (sum > 0).then(|| ((1i64 << 32) / sum, None)), &mut cond) {
                            continue;
                        }
                    }
                    let Some(m) = row_max(row, mrow) else {
                        cond.add(Condition::MaskedRow);
                        continue;
                    };
                    let mut sum = 0i64;
                    for (j, (ei, &q)) in e16.iter_mut().zip(row).enumerate() {
                        *ei = if masked(mrow, j) {
                            0
                        } else if table.is_empty() {
                            req(k.exp_parts(q - m, p), d, p)
                        } else {
                            table[(m - q) as usize]
                        };
                        sum += *ei;
                    }
                    p.see(sum as i128);
                    let factor = (1i64 << 32) / sum;
                    p.see(factor as i128);
                    for (o, &ei) in orow.iter_mut().zip(&e16) {
                        let prod = ei * factor;
                        p.see(prod as i128);
                        *o = (prod >> osh).min(top);
                    }
                    if orow.iter().all(|&o| o == 0) {
                        cond.add(Condition::AllZeroRow);
                    }
                }
            }
            Mode::Reference => {
                // Replay of QuantAct(16) on the integer E (kernels.md §1.2), in float64.
                let exp_sf = k.poly_sf / 2f64.powi(k.n as i32);
                let act_sf = (e_max as f64).max(1e-8) / 32767.0;
                let d = Dyadic::from_ratio(exp_sf / f64::from(act_sf as f32));
                let mut e16 = vec![0f64; c];
                out.resize(data.len(), 0);
                for (r, (row, orow)) in data.chunks_exact(c).zip(out.chunks_exact_mut(c)).enumerate() {
                    let mrow = mask_row(mask, r, c);
                    let Some(m) = row_max(row, mrow) else {
                        cond.add(Condition::MaskedRow);
                        continue;
                    };
                    let mut sum = 0f64;
                    for (j, (ei, &q)) in e16.iter_mut().zip(row).enumerate() {
                        if masked(mrow, j) {
                            *ei = 0.0;
                            continue;
                        }
                        // E = z·2^sh in float64, as the reference computes it: exact while E < 2^53,
                        // and never wrapped at the fine scales where E passes 2^63.
                        let (z, sh) = k.exp_parts(q - m, p);
                        let e = z as f64 * 2f64.powi(sh as i32);
                        if e >= 2f64.powi(53) {
                            cond.add(Condition::InexactFloat);
                        }
                        let z16 = round_half_even_f64(e / exp_sf);
                        let v = d.apply_f64(z16).clamp(-32768.0, 32767.0);
                        *ei = (v * act_sf) / act_sf;
                        sum += *ei;
                    }
                    let factor = rdiv(2f64.powi(32), sum).floor();
                    for (o, &ei) in orow.iter_mut().zip(&e16) {
                        *o = ((ei * factor) / 2f64.powi(osh as i32)).floor() as i64;
                        *o = (*o).min(top);
                    }
                    if orow.iter().all(|&o| o == 0) {
                        cond.add(Condition::AllZeroRow);
                    }
                }
            }
        }
        Ok(UnitOutput { values: out, shape: x.shape().to_vec(), scale, encoding: Encoding::Linear, conditions: cond.into_vec() })
    }
}

impl Unit for Softmax {
    fn name(&self) -> &'static str {
        "softmax_ibert"
    }
    fn op(&self) -> Op {
        Op::Softmax
    }
    fn method(&self) -> Method {
        Method::IBert
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 24, None)
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo { name: "out_bits", value: self.out_bits.to_string(), doc: "output bits ob: scale 2^-ob" },
            ParamInfo { name: "n", value: self.n.to_string(), doc: "i-exp polynomial range: inputs clamped at n*x0 (reference 30)" },
            ParamInfo {
                name: "clamp_out",
                value: self.clamp_out.to_string(),
                doc: "clamp output to 2^ob-1 (adapted) instead of reaching 2^ob (reference)",
            },
            ParamInfo {
                name: "upshift",
                value: opt_param(self.upshift),
                doc: "input left shift before i-exp (reference 0; auto keeps c_int >= 1024)",
            },
        ]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        let u = "softmax_ibert";
        match name {
            "out_bits" => self.out_bits = parse_param(u, "out_bits", value)?,
            "n" => self.n = parse_param(u, "n", value)?,
            "clamp_out" => self.clamp_out = parse_param(u, "clamp_out", value)?,
            "upshift" => self.upshift = parse_opt(u, "upshift", value)?,
            _ => return Err(unknown_param(u, name, &self.params())),
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, _aux: &Aux) -> Result<u32, UnitError> {
        let k = self.consts(x)?;
        let (lo, hi) = int_range(x.bits, x.signed);
        let d = Dyadic::from_ratio(32767.0 / k.e_max().max(1) as f64);
        let c = x.row_len() as i128;
        Ok([k.widths(hi - lo), signed_width(i128::from(k.c) * i128::from(d.m)), signed_width(32767 * c), signed_width(1i128 << 32)]
            .into_iter()
            .max()
            .unwrap())
    }
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError> {
        checked_output(self.name(), self.run_with(x, aux, mode, &mut NoProbe, true, Some(Level::detect())))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        checked_output(self.name(), self.run_with(x, aux, Mode::Integer, probe, false, None))
    }
    fn scale_fits(&self, s: f64, _bits: u32, _row_len: usize, _aux: &Aux) -> Result<(), String> {
        ExpConsts::fits(s, self.n, self.upshift.unwrap_or_else(|| ExpConsts::auto_upshift(s)), None)
    }
}

/// i-GELU constants for one input scale (`kernels.md` §1.1): the hardware's configuration registers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeluConsts {
    /// `b_int = ⌊−1.769/s_e⌋` (negative).
    pub b: i64,
    /// `c_int = ⌊(1/−0.2888)/s_e²⌋` (negative).
    pub c: i64,
    /// `shift_int = ⌊1/sig_sf⌋` (negative).
    pub shift: i64,
    /// erf right shift.
    pub n: u32,
    /// Output scale (negative).
    pub s_out: f64,
}

/// I-BERT IntGELU (i-GELU): a second-order erf polynomial (`kernels.md` §1.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Gelu {
    /// erf output shift `n` (reference 14, tuned for int32 inputs); `None` = auto, keeping ~2^11 erf levels.
    pub n: Option<u32>,
    /// `k ≈ √2` (reference 1.4142).
    pub k: f64,
}

const GELU_A: f64 = -0.2888;
const GELU_B: f64 = -1.769;

impl Gelu {
    /// Build from a preset.
    pub fn preset(p: Preset) -> Gelu {
        match p {
            Preset::Reference => Gelu { n: Some(14), k: 1.4142 },
            Preset::Adapted => Gelu { n: None, k: 1.4142 },
        }
    }

    /// The per-layer constants for input scale `s`.
    pub fn consts(&self, s: f64) -> GeluConsts {
        let se = s / self.k;
        let ss = se * se;
        let b = rdiv(GELU_B, se).floor() as i64;
        let c = rdiv(1.0 / GELU_A, ss).floor().max(-9.0e18) as i64;
        let n = self.n.unwrap_or_else(|| bit_length(c.unsigned_abs() as u128).saturating_sub(12));
        let sig_sf = (ss * GELU_A) * 2f64.powi(n as i32);
        let shift = rdiv(1.0, sig_sf).floor() as i64;
        let s_out = (s * sig_sf) / 2.0;
        GeluConsts { b, c, shift, n, s_out }
    }

    fn check(&self, x: &QTensor) -> Result<(), UnitError> {
        check_bits("gelu_ibert", x, 2, 32, Some(true))?;
        if !(self.k.is_finite() && self.k > 0.0) || self.n.is_some_and(|n| n > 60) {
            return Err(UnitError::Param {
                unit: "gelu_ibert",
                param: "k/n",
                value: format!("{}/{:?}", self.k, self.n),
                why: "k must be positive, n at most 60".into(),
            });
        }
        check_scale(self, x, &Aux::default())
    }

    /// Checked version of [`Gelu::consts`]: every constant, the output scale and the largest
    /// output `2^(bits−1)·(|c_int|/2^n + |shift_int| + 2)` fit 62-bit integers and finite floats.
    fn fits(&self, s: f64, bits: u32) -> Result<(), String> {
        let lim = 2f64.powi(62);
        let se = s / self.k;
        let ss = se * se;
        let c = rdiv(1.0 / GELU_A, ss).floor();
        let b = rdiv(GELU_B, se).floor();
        if !(c.abs() < lim && b.abs() < lim) {
            return Err(format!("i-GELU's c_int = ⌊1/(a·(s/k)²)⌋ = {c:.3e} does not fit 62 bits"));
        }
        let n = self.n.unwrap_or_else(|| bit_length(c.abs() as u128).saturating_sub(12));
        let sig_sf = (ss * GELU_A) * 2f64.powi(n as i32);
        let shift = rdiv(1.0, sig_sf).floor();
        let s_out = (s * sig_sf) / 2.0;
        if !(sig_sf.is_finite() && s_out.is_finite() && s_out.abs() >= f64::MIN_POSITIVE && shift.abs() < lim) {
            return Err(format!("the output scale s·a·(s/k)²·2^n/2 = {s_out:e} is not a finite normal number"));
        }
        let omax = 2f64.powi(bits as i32 - 1) * ((c.abs() / 2f64.powi(n as i32)).floor() + shift.abs() + 2.0);
        if !below(omax, lim) {
            return Err(format!("outputs reach {omax:.3e} (2^(bits−1)·(|c_int|/2^n + |shift_int|)), beyond 62-bit integers"));
        }
        Ok(())
    }

    /// Whether the erf of `k` has a single level for positive inputs (and so for negative
    /// ones): `⌊c/2^n⌋ = ⌊(c + (b+1)²)/2^n⌋`.
    fn erf_collapsed(k: &GeluConsts) -> bool {
        let c = i128::from(k.c);
        let b1 = i128::from(k.b) + 1;
        (c >> k.n) == ((c + b1 * b1) >> k.n)
    }

    /// Both modes; with `fast` the Integer mode runs the vector kernel at that level where it
    /// accepts the constants.
    fn run_with<P: Probe>(&self, x: &QTensor, mode: Mode, p: &mut P, fast: Option<Level>) -> Result<UnitOutput, UnitError> {
        self.check(x)?;
        let c = x.row_len();
        let consts: Vec<GeluConsts> = match &x.scale {
            Scale::PerTensor(s) => vec![self.consts(*s)],
            Scale::PerChannel(v) => v.iter().map(|s| self.consts(*s)).collect(),
        };
        let mut cond = Conditions::default();
        let collapsed: Vec<bool> = consts.iter().map(Self::erf_collapsed).collect();
        let n_collapsed = if collapsed.len() == 1 {
            if collapsed[0] {
                x.data().len()
            } else {
                0
            }
        } else {
            (0..x.data().len()).filter(|i| collapsed[i % c]).count()
        };
        cond.add_n(Condition::ErfCollapsed, n_collapsed);
        let fast_out = match (mode, fast) {
            (Mode::Integer, Some(level)) => Self::integer_fast(level, x, &consts),
            _ => None,
        };
        let out: Vec<i64> = if let Some(out) = fast_out { out } else { self.definition(x, &consts, mode, p, &mut cond) };
        let scale = match &x.scale {
            Scale::PerTensor(_) => Scale::PerTensor(consts[0].s_out),
            Scale::PerChannel(_) => Scale::PerChannel(consts.iter().map(|k| k.s_out).collect()),
        };
        Ok(UnitOutput { values: out, shape: x.shape().to_vec(), scale, encoding: Encoding::Linear, conditions: cond.into_vec() })
    }

    /// The Integer mode through the vector kernel at `level`, or `None` where the kernel does
    /// not prove its 64-bit words wide enough (the definition then runs).
    fn integer_fast(level: Level, x: &QTensor, consts: &[GeluConsts]) -> Option<Vec<i64>> {
        let data = x.data();
        let c = x.row_len();
        if data.is_empty() || c == 0 {
            return None;
        }
        let lanes = |f: fn(&GeluConsts) -> i64| -> Vec<i64> { consts.iter().map(f).collect() };
        let (b, cc, shift, n) = (lanes(|k| k.b), lanes(|k| k.c), lanes(|k| k.shift), lanes(|k| i64::from(k.n)));
        let k = IbertGelu::new(level, x.bits, &b, &cc, &shift, &n)?;
        let mut out = vec![0i64; data.len()];
        if k.per_element() {
            for (row, orow) in data.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
                k.run(row, orow);
            }
        } else {
            k.run(data, &mut out);
        }
        Some(out)
    }

    /// The element steps of both modes, one element at a time (the Integer mode's definition).
    fn definition<P: Probe>(&self, x: &QTensor, consts: &[GeluConsts], mode: Mode, p: &mut P, cond: &mut Conditions) -> Vec<i64> {
        let c = x.row_len();
        x.data()
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let k = &consts[if consts.len() == 1 { 0 } else { i % c }];
                match mode {
                    Mode::Integer => {
                        let a = q.abs().min(-k.b);
                        let t = (a + k.b) as i128;
                        let y = t * t + k.c as i128;
                        p.see(y);
                        let y = if q < 0 {
                            -y
                        } else if q == 0 {
                            0
                        } else {
                            y
                        };
                        let erf = y >> k.n;
                        let sum = erf + k.shift as i128;
                        p.see(sum);
                        let o = q as i128 * sum;
                        p.see(o);
                        o as i64
                    }
                    Mode::Reference => {
                        let qf = q as f64;
                        let a = qf.abs().min(-(k.b as f64));
                        let t = a + k.b as f64;
                        let y = t * t + k.c as f64;
                        let y = qf.signum() * y * if q == 0 { 0.0 } else { 1.0 };
                        let erf = (y / 2f64.powi(k.n as i32)).floor();
                        let o = qf * (erf + k.shift as f64);
                        if o.abs() >= 2f64.powi(53) {
                            cond.add(Condition::InexactFloat);
                        }
                        o as i64
                    }
                }
            })
            .collect()
    }
}

impl Unit for Gelu {
    fn name(&self) -> &'static str {
        "gelu_ibert"
    }
    fn op(&self) -> Op {
        Op::Gelu
    }
    fn method(&self) -> Method {
        Method::IBert
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 32, Some(true))
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "n",
                value: opt_param(self.n),
                doc: "erf shift n (reference 14, breaks below 16-bit inputs; auto keeps ~2^11 erf levels)",
            },
            ParamInfo { name: "k", value: self.k.to_string(), doc: "sqrt(2) as written in the reference (1.4142)" },
        ]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        let u = "gelu_ibert";
        match name {
            "n" => self.n = parse_opt(u, "n", value)?,
            "k" => self.k = parse_param(u, "k", value)?,
            _ => return Err(unknown_param(u, name, &self.params())),
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, _aux: &Aux) -> Result<u32, UnitError> {
        self.check(x)?;
        let qmax = 1i128 << (x.bits - 1);
        Ok(x.scale
            .values()
            .iter()
            .map(|s| {
                let k = self.consts(*s);
                let t = i128::from(k.b).abs().min(qmax);
                let y = t * t + i128::from(k.c).abs();
                let sum = (y >> k.n) + 1 + i128::from(k.shift).abs();
                [signed_width(y), signed_width(-sum), signed_width(-qmax * sum)].into_iter().max().unwrap()
            })
            .max()
            .unwrap())
    }
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, mode, &mut NoProbe, Some(Level::detect())))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, Mode::Integer, probe, None))
    }
    fn scale_fits(&self, s: f64, bits: u32, _row_len: usize, _aux: &Aux) -> Result<(), String> {
        self.fits(s, bits)
    }
}

/// How I-BERT LayerNorm picks the variance shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShiftRule {
    /// The reference: start from `shift`, raise it when a variance reaches 2^32 (training-mode `overflow_handling`).
    Dynamic(u32),
    /// A frozen shift (the reference after `fix()`): variances ≥ 2^32 pass unnoticed.
    Frozen(u32),
    /// A static shift from the input width so the variance always fits 32 bits (adapted).
    Static,
}

/// I-BERT IntLayerNorm (`kernels.md` §1.3).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// Variance shift rule.
    pub shift: ShiftRule,
}

impl LayerNorm {
    /// Build from a preset.
    pub fn preset(p: Preset) -> LayerNorm {
        match p {
            Preset::Reference => LayerNorm { shift: ShiftRule::Dynamic(0) },
            Preset::Adapted => LayerNorm { shift: ShiftRule::Static },
        }
    }

    /// Static shift for `bits`-bit inputs and rows of `c`: `Σ (y >> t)^2 < 2^32` for any row.
    pub fn static_shift(bits: u32, c: usize) -> u32 {
        let worst = (1u128 << (2 * bits)) * c as u128; // |y| < 2^bits
        (0..64).find(|t| worst >> (2 * t) < 1u128 << 32).unwrap_or(64)
    }

    /// The Integer mode through the row kernels at `level` (`cond` holds the conditions counted
    /// so far), or `None` where they do not prove 64-bit words wide enough (the definition runs).
    fn integer_fast(&self, level: Level, x: &QTensor, bias: &[i64], mut cond: Conditions) -> Option<(Vec<i64>, Conditions)> {
        let (c, _) = rows(x);
        let ln = LnRows::new(level, x.bits, c, bias)?;
        let data = x.data();
        let stats: Vec<_> = data.chunks_exact(c).map(|r| ln.stats(r)).collect();
        let means: Vec<i64> = stats.iter().map(|s| div_round(i128::from(s.sum), c as i128, Rounding::HalfEven) as i64).collect();
        // Σ((q − mean) >> sh)², exactly (LnRows bounds every sum below 2^63).
        let vars_at = |sh: u32| -> Vec<i128> {
            data.chunks_exact(c)
                .zip(stats.iter().zip(&means))
                .map(|(r, (s, &m))| if sh == 0 { s.centred_sumsq(m, c) } else { i128::from(ln.sumsq_shifted(r, m, sh)) })
                .collect()
        };
        let mut shift = match self.shift {
            ShiftRule::Dynamic(s) | ShiftRule::Frozen(s) => s,
            ShiftRule::Static => Self::static_shift(x.bits, c),
        };
        let mut vars = vars_at(shift);
        let limit = 1i128 << 32;
        if matches!(self.shift, ShiftRule::Dynamic(_)) && vars.iter().any(|&v| v >= limit) {
            let t = vars_at(0).iter().map(|&v| (0..64).find(|t| v <= 1i128 << (32 + 2 * t)).unwrap_or(64)).max().unwrap_or(0);
            shift = shift.max(t as u32);
            vars = vars_at(shift);
        }
        cond.add_n(Condition::VarianceOverflow, vars.iter().filter(|&&v| v >= limit).count());
        // Filled row by row just before each row is written (one pass over memory, not two).
        let mut out = Vec::with_capacity(data.len());
        for ((row, &var), (st, &mean)) in data.chunks_exact(c).zip(&vars).zip(stats.iter().zip(&means)) {
            let start = out.len();
            out.resize(start + c, 0);
            let orow = &mut out[start..];
            let root = i128::from(super::vector::isqrt_u64(u64::try_from(var).ok()?));
            // The definition's `root << shift` in 64-bit words, refused where it would wrap.
            if shift >= 63 || root << shift >= 1 << 63 {
                return None;
            }
            let std = (root << shift) as i64;
            if std == 0 {
                cond.add(Condition::ZeroVariance);
                orow.copy_from_slice(bias);
                continue;
            }
            let factor = (1i64 << 31) / std;
            if factor == 0 {
                cond.add(Condition::FactorUnderflow);
            }
            if !ln.affine(row, st, mean, factor, bias, orow) {
                let y: Vec<i64> = row.iter().map(|&q| q - mean).collect();
                ln_scale_row(&y, factor, bias, orow, &mut NoProbe);
            }
        }
        Some((out, cond))
    }

    /// Both modes; with `fast` the Integer mode runs the row kernels at that level where they apply.
    fn run_with<P: Probe>(&self, x: &QTensor, aux: &Aux, mode: Mode, p: &mut P, fast: Option<Level>) -> Result<UnitOutput, UnitError> {
        let u = "layernorm_ibert";
        check_bits(u, x, 2, 32, Some(true))?;
        x.scale.per_tensor().ok_or_else(|| UnitError::Aux { unit: u, what: "IntLayerNorm needs a per-tensor input scale".into() })?;
        let (c, _) = rows(x);
        let (gamma, beta) = affine(u, aux, c)?;
        let mut cond = Conditions::default();
        let (bias, scale) = ln_bias_and_scale(gamma, beta, c, &mut cond);
        let data = x.data();
        if let (Mode::Integer, Some(level)) = (mode, fast) {
            if let Some((values, cond)) = self.integer_fast(level, x, &bias, cond.clone()) {
                let (shape, scale, conditions) = (x.shape().to_vec(), Scale::PerChannel(scale), cond.into_vec());
                return Ok(UnitOutput { values, shape, scale, encoding: Encoding::Linear, conditions });
            }
        }
        // Pass 1: centre every row (the shift rule needs every row's variance first).
        let mut y = vec![0i64; data.len()];
        for (row, yrow) in data.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
            let sum: i64 = row.iter().sum();
            p.see(sum as i128);
            let mean = div_round(sum as i128, c as i128, Rounding::HalfEven) as i64;
            for (yi, &q) in yrow.iter_mut().zip(row) {
                *yi = q - mean;
                p.see(*yi as i128);
            }
        }
        let var_of = |yrow: &[i64], sh: u32| -> i128 { yrow.iter().map(|&v| ((v >> sh) as i128).pow(2)).sum() };
        let mut shift = match self.shift {
            ShiftRule::Dynamic(s) | ShiftRule::Frozen(s) => s,
            ShiftRule::Static => Self::static_shift(x.bits, c),
        };
        let mut vars: Vec<i128> = y.chunks_exact(c).map(|r| var_of(r, shift)).collect();
        let limit = 1i128 << 32;
        if matches!(self.shift, ShiftRule::Dynamic(_)) && vars.iter().any(|&v| v >= limit) {
            let t = y
                .chunks_exact(c)
                .map(|r| {
                    let v = var_of(r, 0);
                    match mode {
                        // ⌈log2(sqrt(V / 2^32))⌉ in float64, as the reference computes it.
                        Mode::Reference => ((v as f64) / 2f64.powi(32)).sqrt().log2().ceil() as i64,
                        // Smallest t with V ≤ 2^(32+2t).
                        Mode::Integer => (0..64).find(|t| v <= 1i128 << (32 + 2 * t)).unwrap_or(64),
                    }
                })
                .max()
                .unwrap_or(0);
            shift = shift.max(t.max(0) as u32);
            vars = y.chunks_exact(c).map(|r| var_of(r, shift)).collect();
        }
        cond.add_n(Condition::VarianceOverflow, vars.iter().filter(|&&v| v >= limit).count());
        let mut out = vec![0i64; data.len()];
        for ((yrow, orow), &var) in y.chunks_exact(c).zip(out.chunks_exact_mut(c)).zip(&vars) {
            p.see(var);
            let root = match mode {
                Mode::Integer => isqrt(var as u128) as i64,
                Mode::Reference => (var as f64).sqrt().floor() as i64,
            };
            let std = root << shift;
            p.see(std as i128);
            if std == 0 {
                // Reference: 2^31 / 0 = inf, then NaN. Defined here as y = 0: the output is the bias.
                cond.add(Condition::ZeroVariance);
                orow.copy_from_slice(&bias);
                continue;
            }
            let factor = match mode {
                Mode::Integer => (1i64 << 31) / std,
                Mode::Reference => rdiv(2f64.powi(31), std as f64).floor() as i64,
            };
            p.see(factor as i128);
            if factor == 0 {
                cond.add(Condition::FactorUnderflow);
            }
            ln_scale_row(yrow, factor, &bias, orow, p);
        }
        Ok(UnitOutput {
            values: out,
            shape: x.shape().to_vec(),
            scale: Scale::PerChannel(scale),
            encoding: Encoding::Linear,
            conditions: cond.into_vec(),
        })
    }
}

impl Unit for LayerNorm {
    fn name(&self) -> &'static str {
        "layernorm_ibert"
    }
    fn op(&self) -> Op {
        Op::LayerNorm
    }
    fn method(&self) -> Method {
        Method::IBert
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 32, Some(true))
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![ParamInfo {
            name: "shift",
            value: match self.shift {
                ShiftRule::Dynamic(s) => format!("dynamic:{s}"),
                ShiftRule::Frozen(s) => format!("frozen:{s}"),
                ShiftRule::Static => "static".into(),
            },
            doc: "variance shift: dynamic:S (reference training mode, starts at S), frozen:S (after fix()), static (adapted: from input bits, var < 2^32 always)",
        }]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        let u = "layernorm_ibert";
        if name != "shift" {
            return Err(unknown_param(u, name, &self.params()));
        }
        self.shift = match value.split_once(':') {
            Some(("dynamic", s)) => ShiftRule::Dynamic(parse_param(u, "shift", s)?),
            Some(("frozen", s)) => ShiftRule::Frozen(parse_param(u, "shift", s)?),
            None if value == "static" => ShiftRule::Static,
            _ => {
                return Err(UnitError::Param { unit: u, param: "shift", value: value.into(), why: "dynamic:S, frozen:S or static".into() })
            }
        };
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, aux: &Aux) -> Result<u32, UnitError> {
        check_bits("layernorm_ibert", x, 2, 32, Some(true))?;
        let (c, _) = rows(x);
        let (gamma, beta) = affine("layernorm_ibert", aux, c)?;
        let (bias, _) = ln_bias_and_scale(gamma, beta, c, &mut Conditions::default());
        let span = 1i128 << x.bits;
        let bmax = bias.iter().map(|b| i128::from(*b).abs()).max().unwrap_or(0);
        let prod = span * (1i128 << 31);
        Ok([signed_width(span * c as i128), signed_width(span * span * c as i128), signed_width(prod), signed_width((prod >> 1) + bmax)]
            .into_iter()
            .max()
            .unwrap())
    }
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, aux, mode, &mut NoProbe, Some(Level::detect())))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, aux, Mode::Integer, probe, None))
    }
}

#[cfg(test)]
mod tests {
    use super::super::vector::cases;
    use super::*;

    /// IntSoftmax's fast runs (`run`, and the kernel at every level this CPU has) against the
    /// definition (`lut = false`, every exponential computed) and the table run.
    fn fast_softmax_equals_definition(sm: &Softmax, x: &QTensor, aux: &Aux) -> Result<(), String> {
        let def = |lut, level| checked_output("softmax_ibert", sm.run_with(x, aux, Mode::Integer, &mut NoProbe, lut, level));
        // The definition without the table; every CPU level with it.
        let runs = vec![("table".to_string(), def(true, None)), ("run".to_string(), sm.run(x, aux, Mode::Integer))];
        cases::levels_same_as_definition(|level| def(level.is_some(), level), runs)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// The fast Integer paths equal the definition: the whole output or the same error,
        /// for every input width, both presets and perturbed parameters, masked rows included.
        #[test]
        fn fast_integer_path_equals_reference(
            bits in proptest::prop_oneof![2u32..=16, 2u32..=24],
            signed in proptest::bool::ANY,
            c in proptest::prop_oneof![1usize..=16, 1usize..=1024],
            nrows in 1usize..=4,
            adapted in proptest::bool::ANY,
            tweak in 0u32..6,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut sm = Softmax::preset(if adapted { Preset::Adapted } else { Preset::Reference });
            match tweak {
                1 => sm.out_bits = 2 + (seed % 23) as u32,
                2 => sm.n = 1 + (seed % 40) as u32,
                3 => sm.upshift = Some((seed % 25) as u32),
                4 => sm.clamp_out = !sm.clamp_out,
                _ => {}
            }
            let x = cases::rows(bits, signed, c, nrows, seed);
            let aux = cases::mask(&x, seed);
            if let Err(e) = fast_softmax_equals_definition(&sm, &x, &aux) {
                proptest::prop_assert!(false, "{}", e);
            }
        }
    }

    /// Every two-element row of 8-bit codes, signed and unsigned, both presets, at scales from
    /// fine to coarse (c_int = 0 at the coarsest without the adapted upshift).
    #[test]
    fn fast_integer_path_exhaustive_8bit_pairs() {
        for preset in [Preset::Reference, Preset::Adapted] {
            let sm = Softmax::preset(preset);
            for signed in [false, true] {
                for s in [1e-4, 2f64.powi(-7), 0.0371, 0.25, 1.5] {
                    let x = cases::all_pairs(8, signed, s);
                    fast_softmax_equals_definition(&sm, &x, &Aux::default()).unwrap();
                }
            }
        }
    }

    /// i-GELU's fast runs (`run`, and the kernel at every level this CPU has) against the definition.
    fn fast_gelu_equals_definition(g: &Gelu, x: &QTensor) -> Result<(), String> {
        let def = |level| checked_output("gelu_ibert", g.run_with(x, Mode::Integer, &mut NoProbe, level));
        cases::levels_same_as_definition(def, vec![("run".to_string(), g.run(x, &Aux::default(), Mode::Integer))])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// i-GELU's vector path equals the definition for 2..=16-bit inputs and the int32
        /// accumulator (per-channel scales), both presets and perturbed `n`/`k`.
        #[test]
        fn gelu_fast_integer_path_equals_reference(
            bits in proptest::prop_oneof![2u32..=16, 17u32..=32, proptest::strategy::Just(32u32)],
            c in proptest::prop_oneof![1usize..=16, 1usize..=1024],
            nrows in 1usize..=4,
            adapted in proptest::bool::ANY,
            channel in proptest::bool::ANY,
            tweak in 0u32..4,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut g = Gelu::preset(if adapted { Preset::Adapted } else { Preset::Reference });
            match tweak {
                1 => g.n = Some((seed % 61) as u32),
                2 => g.k = 1.0 + (seed % 1000) as f64 / 1000.0,
                _ => {}
            }
            let x = cases::rows(bits, true, c, nrows, seed);
            // Accumulator-like scales for wide inputs (inputs of about ±8), random ones otherwise.
            let top = 8.0 / f64::from(1u32 << (bits - 1).min(31));
            let x = if channel { cases::per_channel(x, top.log2() - 4.0, top.log2() + 2.0, seed) } else { x };
            if let Err(e) = fast_gelu_equals_definition(&g, &x) {
                proptest::prop_assert!(false, "{}", e);
            }
        }
    }

    /// Every 8-bit code, both presets, scales from fine to coarse (erf collapsed at the coarsest).
    #[test]
    fn gelu_fast_integer_path_exhaustive_8bit() {
        for preset in [Preset::Reference, Preset::Adapted] {
            let g = Gelu::preset(preset);
            for s in [1e-4, 2f64.powi(-7), 8.0 / 127.0, 0.25, 1.5] {
                fast_gelu_equals_definition(&g, &cases::all_codes(8, true, s)).unwrap();
            }
        }
    }

    /// The bench input (8-bit) and the model's int32 accumulator take the kernel.
    #[test]
    fn gelu_bench_input_takes_the_fast_path() {
        use crate::sensitivity::{sample, Dist};
        for preset in [Preset::Reference, Preset::Adapted] {
            let g = Gelu::preset(preset);
            let s = sample(&g, 8, Dist::Gelu, 197, 1).unwrap();
            let consts = [g.consts(s.q.scale.per_tensor().unwrap())];
            assert!(Gelu::integer_fast(Level::detect(), &s.q, &consts).is_some());
            fast_gelu_equals_definition(&g, &s.q).unwrap();
        }
        let x = cases::per_channel(cases::rows(32, true, 64, 3, 5), -20.0, -14.0, 5);
        let g = Gelu::preset(Preset::Adapted);
        let consts: Vec<GeluConsts> = x.scale.values().iter().map(|s| g.consts(*s)).collect();
        assert!(Gelu::integer_fast(Level::detect(), &x, &consts).is_some());
    }

    /// IntLayerNorm's fast runs (`run`, and the row kernels at every level this CPU has) against the definition.
    fn fast_ln_equals_definition(ln: &LayerNorm, x: &QTensor, aux: &Aux) -> Result<(), String> {
        let def = |level| checked_output("layernorm_ibert", ln.run_with(x, aux, Mode::Integer, &mut NoProbe, level));
        cases::levels_same_as_definition(def, vec![("run".to_string(), ln.run(x, aux, Mode::Integer))])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// The LayerNorm's vector path equals the definition: widths 2..=32 (the 16- and 22-bit
        /// residuals included), rows 1..=1024, per-channel γ/β, both presets, perturbed parameters.
        #[test]
        fn ln_fast_integer_path_equals_reference(
            bits in proptest::prop_oneof![2u32..=16, 2u32..=32, proptest::strategy::Just(16u32), proptest::strategy::Just(22u32)],
            c in proptest::prop_oneof![1usize..=16, 1usize..=1024],
            nrows in 1usize..=4,
            adapted in proptest::bool::ANY,
            tweak in 0u32..5,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut ln = LayerNorm::preset(if adapted { Preset::Adapted } else { Preset::Reference });
            match tweak {
                1 => ln.shift = ShiftRule::Dynamic((seed % 12) as u32),
                2 => ln.shift = ShiftRule::Frozen((seed % 20) as u32),
                _ => {}
            }
            let x = cases::rows(bits, true, c, nrows, seed);
            let aux = cases::ln_affine(c, seed);
            if let Err(e) = fast_ln_equals_definition(&ln, &x, &aux) {
                proptest::prop_assert!(false, "{}", e);
            }
        }
    }

    /// Every two-element row of 8-bit codes, both presets, three affine parameter sets.
    #[test]
    fn ln_fast_integer_path_exhaustive_8bit_pairs() {
        for preset in [Preset::Reference, Preset::Adapted] {
            let ln = LayerNorm::preset(preset);
            for seed in 0..3 {
                fast_ln_equals_definition(&ln, &cases::all_pairs(8, true, 0.05), &cases::ln_affine(2, seed)).unwrap();
            }
        }
    }

    /// The bench input (8-bit) and a 16-bit residual take the row kernels.
    #[test]
    fn ln_bench_input_takes_the_fast_path() {
        use crate::sensitivity::{sample, Dist};
        for preset in [Preset::Reference, Preset::Adapted] {
            let ln = LayerNorm::preset(preset);
            for bits in [8, 16] {
                let s = sample(&ln, bits, Dist::Layernorm, 197, 1).unwrap();
                let (g, b) = affine("t", &s.aux, s.q.row_len()).unwrap();
                let (bias, _) = ln_bias_and_scale(g, b, s.q.row_len(), &mut Conditions::default());
                assert!(ln.integer_fast(Level::detect(), &s.q, &bias, Conditions::default()).is_some(), "{preset} {bits}");
                fast_ln_equals_definition(&ln, &s.q, &s.aux).unwrap();
            }
        }
    }

    /// The DeiT-shaped bench input takes the kernel on every row (none refused).
    #[test]
    fn bench_input_takes_the_fast_path() {
        use crate::sensitivity::{sample, Dist};
        for preset in [Preset::Reference, Preset::Adapted] {
            let sm = Softmax::preset(preset);
            let s = sample(&sm, 8, Dist::Attention, 6 * 197, 1).unwrap();
            fast_softmax_equals_definition(&sm, &s.q, &s.aux).unwrap();
            let k = sm.consts(&s.q).unwrap();
            let d = Dyadic::from_ratio(32767.0 / k.e_max() as f64);
            let (lo, hi) = int_range(s.q.bits, s.q.signed);
            // The unit's table, as its Integer mode builds it.
            let table: Vec<i64> = (0..=hi - lo)
                .map(|dd| {
                    let (z, sh) = k.exp_parts(-dd, &mut NoProbe);
                    let net = d.e - sh as i32;
                    let prod = z as i128 * d.m as i128;
                    let v = if net >= 0 { crate::fixed::shift_round(prod, net as u32, Rounding::HalfEven) } else { prod << (-net) as u32 };
                    v.clamp(-32768, 32767) as i64
                })
                .collect();
            let (c, _) = rows(&s.q);
            let top = if sm.clamp_out { (1i64 << sm.out_bits) - 1 } else { 1i64 << sm.out_bits };
            let kr = LutSoftmax::new(Level::detect(), &table, c, 32 - sm.out_bits, top).unwrap();
            for row in s.q.data().chunks_exact(c) {
                let (mut e, mut o) = (vec![0; c], vec![0; c]);
                assert!(kr.row(row, None, &mut e, &mut o, |sum| Some(((1i64 << 32) / sum, None)), &mut Conditions::default()));
            }
        }
    }
}
