//! FQ-ViT units (megvii-research/FQ-ViT @ 5daf591): Log-Int-Softmax, the PTF integer
//! LayerNorm and the float-path log2 quantiser (`kernels.md` §3).
//!
//! LIS is integer-exact: Reference and Integer modes agree while the row sum stays below
//! 2^53 (beyond that the reference's float64 division rounds). The PTF LayerNorm computes its
//! statistics and per-token multipliers in float64 in the reference; the Integer mode replaces
//! them by an integer square root, integer dividers and per-channel fixed-point constants with
//! `frac_bits` fractional bits, and differs in rounding (measured in `tests/modes.rs`).

use super::ibert::ExpConsts;
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

    fn run_with<P: Probe>(&self, x: &QTensor, aux: &Aux, mode: Mode, p: &mut P, lut: bool) -> Result<UnitOutput, UnitError> {
        let k = self.consts(x)?;
        let mask = softmax_mask("softmax_fqvit", x, aux)?;
        let (c, _) = rows(x);
        let data = x.data();
        let mut out = vec![-1i64; data.len()];
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
            underflow_rows(mask, data.len(), c, &mut cond);
        } else {
            let mut e = vec![0i64; c];
            let mut thr = vec![0u128; levels as usize];
            // The exponent depends only on max − q: tabulate it when that is cheaper.
            let (lo, hi) = int_range(x.bits, x.signed);
            let span = (hi - lo) as usize;
            let table: Vec<i64> =
                if lut && data.len() > span { (0..=span as i64).map(|d| k.exp(-d, &mut NoProbe)).collect() } else { Vec::new() };
            for (r, (row, orow)) in data.chunks_exact(c).zip(out.chunks_exact_mut(c)).enumerate() {
                let mrow = mask_row(mask, r, c);
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
                        for (j, th) in thr.iter_mut().enumerate() {
                            let t: u128 = if j == 0 { 2 } else { 3u128 << (j - 1) };
                            let d = 2 * t - 1;
                            // v ≥ t ⇔ 2S > (2t−1)·E, or equality with t even (RNE's tie goes to even t).
                            *th = if t.is_multiple_of(2) && two_s.is_multiple_of(d) { two_s / d } else { (two_s - 1) / d };
                        }
                        // Thresholds never exceed 2S/3 < 2^63 for realistic rows: compare in 64 bits.
                        let narrow: Vec<u64> = thr.iter().map(|&t| t.min(u64::MAX as u128) as u64).collect();
                        for (o, &ei) in orow.iter_mut().zip(&e) {
                            if ei == 0 {
                                continue; // S / 0 = inf: the zero flag
                            }
                            let k = narrow.partition_point(|&th| ei as u64 <= th) as u32;
                            *o = if k >= levels { -1 } else { i64::from(k) };
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
        checked_output(self.name(), self.run_with(x, aux, mode, &mut NoProbe, true))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        checked_output(self.name(), self.run_with(x, aux, Mode::Integer, probe, false))
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

    fn run_with<P: Probe>(&self, x: &QTensor, aux: &Aux, mode: Mode, p: &mut P) -> Result<UnitOutput, UnitError> {
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
                let f = self.frac_bits;
                let IntConsts { kf, gq, hq, bq } = self.integer_consts(&sc, gamma, beta, &so);
                for (row, orow) in data.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
                    let mut sum: i128 = 0;
                    let mut ssq: i128 = 0;
                    for ((xi, &q), &k) in xq.iter_mut().zip(row).zip(&kf) {
                        *xi = (q - zp) * k;
                        p.see(*xi as i128);
                        sum += *xi as i128;
                        ssq += (*xi as i128) * (*xi as i128);
                    }
                    p.see(ssq * c as i128);
                    let d = isqrt((c as i128 * ssq - sum * sum) as u128) as i128;
                    p.see(d);
                    if d == 0 {
                        cond.add(Condition::ZeroVariance);
                        for (o, &bb) in orow.iter_mut().zip(&bq) {
                            *o = shift_round(bb, f, Rounding::HalfEven) as i64;
                        }
                        continue;
                    }
                    for (i, o) in orow.iter_mut().enumerate() {
                        let g = gq[i].abs();
                        // A = g / (D·2^F); N = clamp(7 − ⌊log2 A⌋, 0, 31), from bit lengths and one compare.
                        let (n, m) = if g == 0 {
                            (31u32, 0i128)
                        } else {
                            let (bg, bd) = (bit_length(g as u128) as i64, bit_length(d as u128) as i64);
                            let ge = if bg >= bd { g >= d << (bg - bd) } else { g << (bd - bg) >= d };
                            let l = bg - bd - f as i64 - i64::from(!ge);
                            let n = (7 - l).clamp(0, 31) as u32;
                            let m = div_round(g << n, d << f, Rounding::Floor).clamp(0, 255);
                            (n, m)
                        };
                        p.see(g << n);
                        let num = (bq[i] * d - sum * hq[i]) << n;
                        p.see(num);
                        let bb = div_round(num, d << f, Rounding::HalfEven);
                        let sm = if gq[i] < 0 { -m } else { m };
                        let acc = sm * xq[i] as i128 + bb;
                        p.see(acc);
                        *o = shift_round(acc, n, Rounding::HalfEven) as i64;
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
        checked_output(self.name(), self.run_with(x, aux, mode, &mut NoProbe))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, aux, Mode::Integer, probe))
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
    fn exact_log2_rounding() {
        // p = q / 2^15: −log2 p = 15 − log2 q
        assert_eq!(log2_round_exact(1 << 15, 15), 0);
        assert_eq!(log2_round_exact(1 << 14, 15), 1);
        // 23170/2^15 = 0.70709 < 2^-0.5 = 0.707107: rounds to 1; 23171 rounds to 0.
        assert_eq!(log2_round_exact(23170, 15), 1);
        assert_eq!(log2_round_exact(23171, 15), 0);
    }
}
