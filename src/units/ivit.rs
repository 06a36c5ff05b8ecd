//! I-ViT units (zkkli/I-ViT @ 380ba99): Shiftmax, ShiftGELU, I-LayerNorm and the dyadic
//! requantiser (`kernels.md` §0.2, §2).
//!
//! Reference and Integer modes agree on every input for Shiftmax, ShiftGELU and I-LayerNorm:
//! the only float steps of the reference are per-row divisions `⌊rdiv(2^31−1, S)⌋`, which the
//! Reference mode replays in float64 and the Integer mode computes as exact integer division;
//! `tests/modes.rs` measures that they agree. The requantiser differs where `|z·m| ≥ 2^53`
//! (float64 product rounded) and where the reference casts its output to float32.

use super::vector::{lut_map, min_max, Level, LnRows, LutSoftmax};
use super::{
    affine, below, check_bits, check_scale, check_upshift, checked_output, mask_row, masked, no_mask, parse_param, row_max, rows,
    softmax_mask, unknown_param, Aux, Condition, Conditions, Encoding, Method, Mode, NoProbe, Op, ParamInfo, Preset, Probe, Unit,
    UnitError, UnitOutput, WidthProbe,
};
use crate::fixed::{bit_length, fl32, int_range, rdiv, signed_width, ClampList, Dyadic, QTensor, Scale};

/// Floor division for a negative divisor (`torch.floor(a / b)` on integers).
#[inline(always)]
pub(crate) fn floor_div(a: i64, b: i64) -> i64 {
    let q = a / b;
    if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

/// `int_exp_shift` (`kernels.md` §2.1) of one element `x` with `x0 = ⌊−1/s⌋`.
/// Results above `cap` saturate to `cap` (only reachable for `x > 0`, where the caller clamps anyway).
#[inline(always)]
pub(crate) fn exp_shift<P: Probe>(x: i64, x0: i64, n: i64, cap: i64, p: &mut P) -> i64 {
    let xe = x + (x >> 1) - (x >> 4);
    p.see(xe as i128);
    let lim = n * x0;
    p.see(lim as i128);
    let xc = xe.max(lim);
    let qq = floor_div(xc, x0);
    let x0qq = x0 * qq;
    p.see(x0qq as i128);
    let r = xc - x0qq;
    let base = r - 2 * x0; // = 2·(r/2 − x0) > 0: the half bit of r/2 is kept
    p.see(base as i128);
    let sh = n - qq - 1;
    let e = if sh < 0 {
        base >> 1
    } else if i64::from(bit_length(base as u128)) + sh > 62 || (base << sh) > cap {
        cap
    } else {
        base << sh
    };
    p.see(e as i128);
    e
}

/// `x0_int = ⌊−fl(1/s)⌋` of int_exp_shift.
pub fn shift_x0(s: f64) -> i64 {
    rdiv(-1.0, s).floor() as i64
}

/// Upshift `p` so that `|x0|` of `s/2^p` is at least 16: fixes the coarse-scale slope error (§2.2).
pub fn auto_upshift(s: f64) -> u32 {
    let mut p = 0;
    while shift_x0(s / 2f64.powi(p as i32)).abs() < 16 && p < 16 {
        p += 1;
    }
    p
}

/// `⌊(2^K − 1) / S⌋`: exact integer division, or the reference's `⌊fl(fl(1/S)·(2^K−1))⌋`.
#[inline]
fn recip_factor(k: u32, s: i64, mode: Mode) -> i64 {
    let num = (1i64 << k) - 1;
    match mode {
        Mode::Integer => num / s,
        Mode::Reference => rdiv(num as f64, s as f64).floor() as i64,
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

/// Shiftmax: I-ViT's integer softmax (`kernels.md` §2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Softmax {
    /// Output bits `ob`: output in `[0, 2^(ob−1)−1]`, scale `2^−(ob−1)`.
    pub out_bits: u32,
    /// `n` of int_exp_shift (exp clamped below `2^−n`); 15 in the reference.
    pub n: u32,
    /// Sum width `K`: sum clamped at and numerator `2^K − 1`; 31 in the reference; `None` = wide enough for the row.
    pub sum_bits: Option<u32>,
    /// Left shift of the input before the exponent (finer x0); 0 in the reference; `None` = auto.
    pub upshift: Option<u32>,
}

impl Softmax {
    /// Build from a preset.
    pub fn preset(p: Preset) -> Softmax {
        match p {
            Preset::Reference => Softmax { out_bits: 16, n: 15, sum_bits: Some(31), upshift: Some(0) },
            Preset::Adapted => Softmax { out_bits: 16, n: 15, sum_bits: None, upshift: None },
        }
    }

    /// Per-tensor constants: (x0, upshift, K).
    fn constants(&self, s: f64, row: usize) -> (i64, u32, u32) {
        let p = self.upshift.unwrap_or_else(|| auto_upshift(s));
        let x0 = shift_x0(s / 2f64.powi(p as i32));
        // Auto: the sum never saturates and ⌊(2^K−1)/S⌋ keeps at least out_bits bits even for a
        // uniform row (the reference's K = 31 leaves 5 bits for 197 tokens at 8-bit scales).
        let k = self.sum_bits.unwrap_or_else(|| {
            let max_sum = ((row.max(1) as u128) * (x0.unsigned_abs() as u128)) << (self.n + 1);
            (bit_length(max_sum) + self.out_bits).max(31)
        });
        (x0, p, k)
    }

    fn check(&self, x: &QTensor) -> Result<f64, UnitError> {
        check_bits("softmax_ivit", x, 2, 24, None)?;
        if !(2..=32).contains(&self.out_bits) || self.n > 40 {
            return Err(UnitError::Param {
                unit: "softmax_ivit",
                param: "out_bits/n",
                value: format!("{}/{}", self.out_bits, self.n),
                why: "out_bits must be 2..=32 and n at most 40".into(),
            });
        }
        check_upshift("softmax_ivit", self.upshift)?;
        let s = x
            .scale
            .per_tensor()
            .ok_or_else(|| UnitError::Aux { unit: "softmax_ivit", what: "softmax needs a per-tensor input scale".into() })?;
        check_scale(self, x, &Aux::default())?;
        Ok(s)
    }

    /// Whether a row of `row` exponentials (each up to `|x0|·2^n`) at input scale `s` sums
    /// without overflowing the 64-bit accumulator (with a factor 2 to spare).
    fn fits(&self, s: f64, row: usize) -> Result<(), String> {
        let p = self.upshift.unwrap_or_else(|| auto_upshift(s));
        let x0 = rdiv(-1.0, s / 2f64.powi(p as i32)).floor().abs();
        let sum = x0 * 2f64.powi(self.n as i32 + 1) * row.max(1) as f64;
        if !below(sum, 2f64.powi(62)) {
            return Err(format!(
                "x0 = ⌊−1/s⌋ = −{x0:.3e}: a row of {row} exponentials of up to |x0|·2^n sums to {sum:.3e}, beyond the 64-bit accumulator"
            ));
        }
        Ok(())
    }

    /// Both modes; with `lut` the exponentials come from a table, and with `fast` too the
    /// Integer mode's rows go through the vector kernel at that level where it accepts them.
    fn run_with<P: Probe>(
        &self,
        x: &QTensor,
        aux: &Aux,
        mode: Mode,
        p: &mut P,
        lut: bool,
        fast: Option<Level>,
    ) -> Result<UnitOutput, UnitError> {
        let s = self.check(x)?;
        let mask = softmax_mask("softmax_ivit", x, aux)?;
        let (c, _) = rows(x);
        let (x0, up, k) = self.constants(s, c);
        let k = k.min(62);
        if k + 1 < self.out_bits {
            return Err(UnitError::Param {
                unit: "softmax_ivit",
                param: "sum_bits",
                value: k.to_string(),
                why: "must be at least out_bits − 1".into(),
            });
        }
        let n = i64::from(self.n);
        let cap = i64::MAX >> 1;
        let (lo, hi) = int_range(x.bits, x.signed);
        let span = (hi - lo) as usize;
        let data = x.data();
        // The exponent depends only on max − q: tabulate it when that is cheaper.
        let table: Vec<i64> = if lut && data.len() > span {
            (0..=span as i64).map(|d| exp_shift(-(d << up), x0, n, cap, &mut NoProbe)).collect()
        } else {
            Vec::new()
        };
        let shift = k + 1 - self.out_bits;
        let limit = (1i64 << k) - 1;
        // Filled row by row just before each row is written (one pass over memory, not two).
        let mut out = Vec::with_capacity(data.len());
        let mut e = vec![0i64; c];
        let mut cond = Conditions::default();
        // The kernel's 64-bit products equal the definition's 128-bit ones: e ≤ Σe, so
        // e·⌊(2^K−1)/Σe⌋ < 2^K, and a saturated row has factor 1 (the kernel checks the bound).
        let kernel = fast.filter(|_| mode == Mode::Integer).and_then(|l| LutSoftmax::new(l, &table, c, shift, i64::MAX));
        for (r, row) in data.chunks_exact(c).enumerate() {
            let start = out.len();
            out.resize(start + c, 0);
            let orow = &mut out[start..];
            let mrow = mask_row(mask, r, c);
            if let Some(kr) = &kernel {
                if kr.row(
                    row,
                    mrow,
                    &mut e,
                    orow,
                    |sum| {
                        let sat = (sum > limit).then_some(Condition::SumSaturated);
                        let sc = sum.min(limit);
                        (sc > 0).then(|| (recip_factor(k, sc, mode), sat))
                    },
                    &mut cond,
                ) {
                    continue;
                }
            }
            let Some(m) = row_max(row, mrow) else {
                cond.add(Condition::MaskedRow);
                continue;
            };
            let mut sum: i64 = 0;
            for (j, (ei, &q)) in e.iter_mut().zip(row).enumerate() {
                *ei = if masked(mrow, j) {
                    0
                } else if table.is_empty() {
                    let xv = (q - m) << up;
                    p.see(xv as i128);
                    exp_shift(xv, x0, n, cap, p)
                } else {
                    table[(m - q) as usize]
                };
                sum += *ei;
            }
            p.see(sum as i128);
            if sum > limit {
                cond.add(Condition::SumSaturated);
            }
            let sc = sum.min(limit);
            let factor = recip_factor(k, sc, mode);
            p.see(factor as i128);
            for (o, &ei) in orow.iter_mut().zip(&e) {
                let prod = ei as i128 * factor as i128;
                p.see(prod);
                *o = (prod >> shift) as i64;
            }
            if orow.iter().all(|&o| o == 0) {
                cond.add(Condition::AllZeroRow);
            }
        }
        Ok(UnitOutput {
            values: out,
            shape: x.shape().to_vec(),
            scale: Scale::PerTensor(f64::from(2f32.powi(-(self.out_bits as i32 - 1)))),
            encoding: Encoding::Linear,
            conditions: cond.into_vec(),
        })
    }
}

impl Unit for Softmax {
    fn name(&self) -> &'static str {
        "softmax_ivit"
    }
    fn op(&self) -> Op {
        Op::Softmax
    }
    fn method(&self) -> Method {
        Method::IVit
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 24, None)
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo { name: "out_bits", value: self.out_bits.to_string(), doc: "output bits ob: range [0, 2^(ob-1)-1], scale 2^-(ob-1)" },
            ParamInfo { name: "n", value: self.n.to_string(), doc: "exp clamp: e^x floored at 2^-n (reference 15)" },
            ParamInfo {
                name: "sum_bits",
                value: opt_param(self.sum_bits),
                doc: "K: row sum clamped at 2^K-1, numerator 2^K-1 (reference 31; auto = no saturation and an out_bits-bit factor)",
            },
            ParamInfo {
                name: "upshift",
                value: opt_param(self.upshift),
                doc: "input left shift before exp so x0=floor(-1/s) is accurate (reference 0; auto = |x0| >= 16)",
            },
        ]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        let u = "softmax_ivit";
        match name {
            "out_bits" => self.out_bits = parse_param(u, "out_bits", value)?,
            "n" => self.n = parse_param(u, "n", value)?,
            "sum_bits" => self.sum_bits = parse_opt(u, "sum_bits", value)?,
            "upshift" => self.upshift = parse_opt(u, "upshift", value)?,
            _ => return Err(unknown_param(u, name, &self.params())),
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, _aux: &Aux) -> Result<u32, UnitError> {
        let s = self.check(x)?;
        let (c, _) = rows(x);
        let (x0, up, k) = self.constants(s, c);
        let (lo, hi) = int_range(x.bits, x.signed);
        let xmin = -(i128::from(hi - lo) << up);
        let emax = i128::from(x0.unsigned_abs() as i64) << (self.n + 1);
        let widths = [
            signed_width(xmin * 3 / 2 - 2),
            signed_width(i128::from(self.n) * i128::from(x0) * 2),
            signed_width(emax),
            signed_width(emax * c as i128),
            signed_width(emax.max((1i128 << k) - 1)),
        ];
        Ok(widths.into_iter().max().unwrap())
    }
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError> {
        checked_output(self.name(), self.run_with(x, aux, mode, &mut NoProbe, true, Some(Level::detect())))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        checked_output(self.name(), self.run_with(x, aux, Mode::Integer, probe, false, None))
    }
    fn scale_fits(&self, s: f64, _bits: u32, row_len: usize, _aux: &Aux) -> Result<(), String> {
        self.fits(s, row_len)
    }
}

/// ShiftGELU: I-ViT's integer GELU `x·σ(1.702x)` (`kernels.md` §2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Gelu {
    /// Output bits `ob` of the sigmoid: σ in `[0, 2^(ob−1)−1]`.
    pub out_bits: u32,
    /// `n` of int_exp_shift; 23 in the reference; `None` = auto (adapted).
    pub n: Option<u32>,
    /// Subtract the row maximum (reference) or `max(x, 0)` per element (adapted: element-wise, no saturation).
    ///
    /// The adapted preset also picks `n` so that `⌊(2^31−1)/S⌋` keeps `out_bits` bits: element-wise,
    /// one of e^(x−m) and e^(−m) is always e^0 = |x0|·2^n, and with n = 23 the sum is ≈ 2^27 at
    /// 8 bits, leaving the factor 4 bits (σ steps of up to 8 %, more at finer scales).
    pub row_max: bool,
    /// Left shift of the input before the exponent; 0 in the reference; `None` = auto.
    pub upshift: Option<u32>,
}

impl Gelu {
    /// Build from a preset.
    pub fn preset(p: Preset) -> Gelu {
        match p {
            Preset::Reference => Gelu { out_bits: 8, n: Some(23), row_max: true, upshift: Some(0) },
            Preset::Adapted => Gelu { out_bits: 8, n: None, row_max: false, upshift: None },
        }
    }

    fn check(&self, x: &QTensor) -> Result<f64, UnitError> {
        check_bits("gelu_ivit", x, 2, 16, Some(true))?;
        if !(2..=24).contains(&self.out_bits) || self.n.is_some_and(|n| n > 40) {
            return Err(UnitError::Param {
                unit: "gelu_ivit",
                param: "out_bits/n",
                value: format!("{}/{:?}", self.out_bits, self.n),
                why: "out_bits must be 2..=24 and n at most 40".into(),
            });
        }
        check_upshift("gelu_ivit", self.upshift)?;
        let s = x
            .scale
            .per_tensor()
            .ok_or_else(|| UnitError::Aux { unit: "gelu_ivit", what: "ShiftGELU needs a per-tensor input scale".into() })?;
        check_scale(self, x, &Aux::default())?;
        Ok(s)
    }

    /// Whether input scale `s` gives a float32 output scale that is a normal number (the
    /// reference keeps scales in float32) and an `x0` whose clamp `n·x0` fits 62 bits.
    fn fits(&self, s: f64) -> Result<(), String> {
        let so = f64::from(s as f32) * f64::from(2f32.powi(-(self.out_bits as i32 - 1)));
        if !(so.is_finite() && so >= f64::from(f32::MIN_POSITIVE) && so <= f64::from(f32::MAX)) {
            return Err(format!("the output scale f32(s)·2^−(ob−1) = {so:e} is not a normal float32 (I-ViT keeps scales in float32)"));
        }
        let s_sig = s * 1.702;
        let up = self.upshift.unwrap_or_else(|| auto_upshift(s_sig));
        let x0 = rdiv(-1.0, s_sig / 2f64.powi(up as i32)).floor().abs();
        if !below(x0 * 64.0, 2f64.powi(62)) {
            return Err(format!("x0 = ⌊−1/(1.702·s)⌋ = −{x0:.3e}: its clamp n·x0 does not fit 62 bits"));
        }
        Ok(())
    }

    /// (x0, upshift, n) for input scale `s`.
    pub fn constants(&self, s: f64) -> (i64, u32, u32) {
        let s_sig = s * 1.702;
        let up = self.upshift.unwrap_or_else(|| auto_upshift(s_sig));
        let x0 = shift_x0(s_sig / 2f64.powi(up as i32));
        // S ≤ 2·|x0|·2^n must stay below 2^(31−out_bits) for an out_bits-bit factor.
        let n = self
            .n
            .unwrap_or_else(|| (29i64 - i64::from(self.out_bits) - i64::from(bit_length(x0.unsigned_abs() as u128))).clamp(8, 23) as u32);
        (x0, up, n)
    }

    /// σ of one element given the exponent of its max: `(σ_int, saturated)`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn sigma<P: Probe>(&self, q: i64, m: i64, em: i64, x0: i64, n: i64, up: u32, mode: Mode, p: &mut P) -> (i64, bool) {
        let k = 31u32;
        let limit = (1i64 << k) - 1;
        let e = exp_shift((q - m) << up, x0, n, 1i64 << k, p);
        let sum = e + em;
        p.see(sum as i128);
        let factor = recip_factor(k, sum.min(limit), mode);
        p.see(factor as i128);
        let prod = e as i128 * factor as i128;
        p.see(prod);
        ((prod >> (k + 1 - self.out_bits)) as i64, sum > limit)
    }

    /// σ of element `q` in a row with maximum `rmax` (whose e^−max is `em_row`).
    #[inline(always)]
    fn element<P: Probe>(&self, q: i64, (rmax, em_row, x0, n, up, mode): (i64, i64, i64, i64, u32, Mode), p: &mut P) -> (i64, bool) {
        let cap = 1i64 << 31;
        let (m, em) = if self.row_max {
            (rmax, em_row)
        } else if q > 0 {
            (q, exp_shift(-q << up, x0, n, cap, p))
        } else {
            (0, exp_shift(0, x0, n, cap, p))
        };
        self.sigma(q, m, em, x0, n, up, mode, p)
    }

    /// The outputs `q·σ` of codes `lo..=hi` in a row with maximum `rmax` (ignored element-wise),
    /// each from [`Gelu::element`], and whether each saturated.
    fn table(&self, lo: i64, hi: i64, rmax: i64, (x0, n, up, mode): (i64, i64, u32, Mode)) -> (Vec<i64>, Vec<bool>) {
        let em_row = exp_shift(-rmax << up, x0, n, 1i64 << 31, &mut NoProbe);
        (lo..=hi)
            .map(|q| {
                let (sig, sat) = self.element(q, (rmax, em_row, x0, n, up, mode), &mut NoProbe);
                (q * sig, sat)
            })
            .unzip()
    }

    /// The outputs and saturated-element count through tables built by the definition itself
    /// (σ depends only on q element-wise, or on (row max, q)) and read by the vector kernel at
    /// `level`; `None` when building the tables would cost more element steps than the tensor has.
    fn tabulated(&self, level: Level, data: &[i64], c: usize, k: (i64, i64, u32, Mode)) -> Option<(Vec<i64>, usize)> {
        if data.is_empty() || c == 0 {
            return None;
        }
        // Filled a chunk (or row) at a time just before it is written (one pass over memory, not two).
        let mut out = Vec::with_capacity(data.len());
        let mut sat = 0;
        let count = |row: &[i64], lo: i64, flags: &[bool]| row.iter().filter(|&&q| flags[(q - lo) as usize]).count();
        if !self.row_max {
            let (lo, hi) = min_max(level, data);
            if (hi - lo) as usize >= data.len() {
                return None;
            }
            let (t, flags) = self.table(lo, hi, 0, k);
            for chunk in data.chunks(4096) {
                let start = out.len();
                out.resize(start + chunk.len(), 0);
                if !lut_map(level, chunk, lo, &t, &mut out[start..]) {
                    return None;
                }
            }
            if flags.contains(&true) {
                sat = count(data, lo, &flags);
            }
            return Some((out, sat));
        }
        let ranges: Vec<(i64, i64)> = data.chunks_exact(c).map(|r| min_max(level, r)).collect();
        let lo = ranges.iter().map(|r| r.0).min()?;
        let mut maxima: Vec<i64> = ranges.iter().map(|r| r.1).collect();
        maxima.sort_unstable();
        maxima.dedup();
        // One table per distinct row maximum m, over lo..=m.
        if maxima.iter().map(|&m| (m - lo + 1) as usize).sum::<usize>() > data.len() {
            return None;
        }
        let mut tables: Vec<Option<(Vec<i64>, Vec<bool>)>> = vec![None; maxima.len()];
        for (row, &(_, m)) in data.chunks_exact(c).zip(&ranges) {
            let start = out.len();
            out.resize(start + c, 0);
            let orow = &mut out[start..];
            let slot = maxima.binary_search(&m).ok()?;
            let (t, flags) = tables[slot].get_or_insert_with(|| self.table(lo, m, m, k));
            if !lut_map(level, row, lo, t, orow) {
                return None;
            }
            if flags.contains(&true) {
                sat += count(row, lo, flags);
            }
        }
        Some((out, sat))
    }

    /// Both modes; `memo` memoises σ of narrow inputs, and with `fast` the Integer mode reads
    /// tables built by the definition through the vector kernel at that level.
    fn run_with<P: Probe>(&self, x: &QTensor, mode: Mode, p: &mut P, memo: bool, fast: Option<Level>) -> Result<UnitOutput, UnitError> {
        let s = self.check(x)?;
        let (x0, up, n) = self.constants(s);
        let (c, _) = rows(x);
        let n = i64::from(n);
        let cap = 1i64 << 31;
        let data = x.data();
        let s_out = fl32(f64::from(s as f32) * f64::from(2f32.powi(-(self.out_bits as i32 - 1))));
        let output = |values: Vec<i64>, cond: Conditions| UnitOutput {
            values,
            shape: x.shape().to_vec(),
            scale: Scale::PerTensor(s_out),
            encoding: Encoding::Linear,
            conditions: cond.into_vec(),
        };
        let mut cond = Conditions::default();
        if let (Mode::Integer, Some(level)) = (mode, fast) {
            if let Some((out, sat)) = self.tabulated(level, data, c, (x0, n, up, mode)) {
                cond.add_n(Condition::SumSaturated, sat);
                return Ok(output(out, cond));
            }
        }
        let mut out = vec![0i64; data.len()];
        let (lo, hi) = int_range(x.bits, true);
        let span = (hi - lo + 1) as usize;
        // σ depends only on (row max, q) — or on q alone element-wise — so narrow inputs are
        // memoised: each distinct pair costs one divider operation, as a lookup table would.
        let memo = memo && x.bits <= 12 && data.len() > span;
        let mut tables: Vec<Vec<i64>> = if memo { vec![Vec::new(); if self.row_max { span } else { 1 }] } else { Vec::new() };
        const SAT: i64 = 1 << 40;
        for (row, orow) in data.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let rmax = *row.iter().max().unwrap();
            let em_row = exp_shift(-rmax << up, x0, n, cap, p);
            let table = if memo {
                let t = &mut tables[if self.row_max { (rmax - lo) as usize } else { 0 }];
                if t.is_empty() {
                    t.resize(span, -1);
                }
                Some(t)
            } else {
                None
            };
            let mut table = table;
            for (o, &q) in orow.iter_mut().zip(row) {
                let consts = (rmax, em_row, x0, n, up, mode);
                let (sig, sat) = match table.as_deref_mut() {
                    Some(t) => {
                        let slot = &mut t[(q - lo) as usize];
                        if *slot < 0 {
                            let (sig, sat) = self.element(q, consts, &mut NoProbe);
                            *slot = sig | if sat { SAT } else { 0 };
                        }
                        (*slot & (SAT - 1), *slot & SAT != 0)
                    }
                    None => self.element(q, consts, p),
                };
                if sat {
                    cond.add(Condition::SumSaturated);
                }
                let v = q * sig;
                p.see(v as i128);
                *o = v;
            }
        }
        Ok(output(out, cond))
    }
}

impl Unit for Gelu {
    fn name(&self) -> &'static str {
        "gelu_ivit"
    }
    fn op(&self) -> Op {
        Op::Gelu
    }
    fn method(&self) -> Method {
        Method::IVit
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 16, Some(true))
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "out_bits",
                value: self.out_bits.to_string(),
                doc: "sigmoid bits ob: sigma in [0, 2^(ob-1)-1] (reference 8)",
            },
            ParamInfo {
                name: "n",
                value: opt_param(self.n),
                doc: "exp clamp 2^-n (reference 23; auto keeps an out_bits-bit divider factor)",
            },
            ParamInfo {
                name: "row_max",
                value: self.row_max.to_string(),
                doc: "subtract the row max (reference, row-wise) or max(x,0) per element (adapted)",
            },
            ParamInfo {
                name: "upshift",
                value: opt_param(self.upshift),
                doc: "input left shift before exp (reference 0; auto = |x0| >= 16)",
            },
        ]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        let u = "gelu_ivit";
        match name {
            "out_bits" => self.out_bits = parse_param(u, "out_bits", value)?,
            "n" => self.n = parse_opt(u, "n", value)?,
            "row_max" => self.row_max = parse_param(u, "row_max", value)?,
            "upshift" => self.upshift = parse_opt(u, "upshift", value)?,
            _ => return Err(unknown_param(u, name, &self.params())),
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, _aux: &Aux) -> Result<u32, UnitError> {
        let s = self.check(x)?;
        let (x0, up, n) = self.constants(s);
        let span = i128::from(int_range(x.bits, true).1) * 2 + 1;
        let xmin = -(span << up);
        let widths = [
            signed_width(xmin * 3 / 2 - 2),
            signed_width(-(span << up) * 3 / 2 - 2),
            signed_width(i128::from(n) * i128::from(x0) * 2),
            signed_width((1i128 << 31) * 2),
            signed_width(i128::from(x0.unsigned_abs() as i64) << (n + 1)),
            signed_width(-(1i128 << (x.bits - 1)) << (self.out_bits - 1)),
        ];
        Ok(widths.into_iter().max().unwrap())
    }
    fn run(&self, x: &QTensor, aux: &Aux, mode: Mode) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, mode, &mut NoProbe, true, Some(Level::detect())))
    }
    fn run_probed(&self, x: &QTensor, aux: &Aux, probe: &mut WidthProbe) -> Result<UnitOutput, UnitError> {
        no_mask(self.name(), aux)?;
        checked_output(self.name(), self.run_with(x, Mode::Integer, probe, false, None))
    }
    fn scale_fits(&self, s: f64, _bits: u32, _row_len: usize, _aux: &Aux) -> Result<(), String> {
        self.fits(s)
    }
}

/// How I-LayerNorm starts its Newton square root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewtonStart {
    /// A fixed start value (the reference: 2^16).
    Fixed(u64),
    /// `2^⌈bitlen(var)/2⌉`, at or above the root (a leading-zero count in hardware).
    BitLength,
}

/// `dsq/2^30` of I-BERT/I-ViT LayerNorm: `fl32(fl32(sqrt(fl32(C))) / 2^30)`.
pub(crate) fn ln_out_unit(c: usize) -> f64 {
    let dsq = (c as f32).sqrt();
    f64::from(dsq / 2f32.powi(30))
}

/// Per-channel `bias_int = ⌊fl(fl(β/γ) / sf)⌋` and output scale `sf·γ`, shared with I-BERT.
pub(crate) fn ln_bias_and_scale(gamma: &[f32], beta: &[f32], c: usize, cond: &mut Conditions) -> (Vec<i64>, Vec<f64>) {
    let sf = ln_out_unit(c);
    let mut bias = Vec::with_capacity(c);
    let mut scale = Vec::with_capacity(c);
    for (&g, &b) in gamma.iter().zip(beta) {
        let g = f64::from(g);
        if g == 0.0 {
            cond.add(Condition::ZeroGamma);
            bias.push(0);
        } else {
            let v = ((f64::from(b) / g) / sf).floor();
            bias.push(v.clamp(-9.0e18, 9.0e18) as i64);
        }
        scale.push(sf * g);
    }
    (bias, scale)
}

/// `out = ((y · factor) >> 1) + bias_int[c]`: the normalising multiply shared by I-BERT and I-ViT.
#[inline]
pub(crate) fn ln_scale_row<P: Probe>(y: &[i64], factor: i64, bias: &[i64], out: &mut [i64], p: &mut P) {
    for ((o, &yi), &b) in out.iter_mut().zip(y).zip(bias) {
        let prod = yi as i128 * factor as i128;
        p.see(prod);
        let v = (prod >> 1) as i64 + b;
        p.see(v as i128);
        *o = v;
    }
}

/// I-LayerNorm: I-ViT's integer LayerNorm with a fixed-step Newton square root (`kernels.md` §2.4).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// Number of Newton steps (reference 10, no convergence test).
    pub newton_steps: u32,
    /// Start value of the Newton iteration.
    pub start: NewtonStart,
}

impl LayerNorm {
    /// Build from a preset.
    pub fn preset(p: Preset) -> LayerNorm {
        match p {
            Preset::Reference => LayerNorm { newton_steps: 10, start: NewtonStart::Fixed(1 << 16) },
            Preset::Adapted => LayerNorm { newton_steps: 10, start: NewtonStart::BitLength },
        }
    }

    /// The Newton root of the definition for `var < 2^62` (then every step fits 64-bit words:
    /// `k + var/k < 2^63` while `k < 2^62`), or `None`.
    fn newton64(&self, var: i128) -> Option<i64> {
        let start = match self.start {
            NewtonStart::Fixed(v) => v,
            NewtonStart::BitLength => 1u64 << bit_length(var as u128).div_ceil(2),
        };
        if !(0..1 << 62).contains(&var) || start >= 1 << 62 {
            return None;
        }
        let (var, mut k) = (var as u64, start);
        for _ in 0..self.newton_steps {
            let next = ((k + var / k.max(1)) >> 1).max(1);
            // A step is a function of k alone: at a fixed point the remaining steps change nothing.
            if next == k {
                break;
            }
            k = next;
        }
        Some(k as i64)
    }

    /// The Integer mode through the row kernels at `level` (`cond` holds the conditions counted
    /// so far), or `None` where they do not prove 64-bit words wide enough (the definition runs).
    fn integer_fast(&self, level: Level, x: &QTensor, bias: &[i64], mut cond: Conditions) -> Option<(Vec<i64>, Conditions)> {
        let (c, _) = rows(x);
        let ln = LnRows::new(level, x.bits, c, bias)?;
        let data = x.data();
        // Filled row by row just before each row is written (one pass over memory, not two).
        let mut out = Vec::with_capacity(data.len());
        for row in data.chunks_exact(c) {
            let start = out.len();
            out.resize(start + c, 0);
            let orow = &mut out[start..];
            let st = ln.stats(row);
            let mean = crate::fixed::div_round(i128::from(st.sum), c as i128, crate::fixed::Rounding::HalfEven) as i64;
            let var = st.centred_sumsq(mean, c);
            if var == 0 {
                cond.add(Condition::ZeroVariance);
            }
            let factor = ((1i64 << 31) - 1) / self.newton64(var)?;
            if factor == 0 {
                cond.add(Condition::FactorUnderflow);
            }
            if !ln.affine(row, &st, mean, factor, bias, orow) {
                let y: Vec<i64> = row.iter().map(|&q| q - mean).collect();
                ln_scale_row(&y, factor, bias, orow, &mut NoProbe);
            }
        }
        Some((out, cond))
    }

    /// Both modes; with `fast` the Integer mode runs the row kernels at that level where they apply.
    fn run_with<P: Probe>(&self, x: &QTensor, aux: &Aux, mode: Mode, p: &mut P, fast: Option<Level>) -> Result<UnitOutput, UnitError> {
        let u = "layernorm_ivit";
        check_bits(u, x, 2, 32, Some(true))?;
        x.scale.per_tensor().ok_or_else(|| UnitError::Aux { unit: u, what: "I-LayerNorm needs a per-tensor input scale".into() })?;
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
        let mut out = vec![0i64; data.len()];
        let mut y = vec![0i64; c];
        for (row, orow) in data.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let sum: i64 = row.iter().sum();
            p.see(sum as i128);
            let mean = crate::fixed::div_round(sum as i128, c as i128, crate::fixed::Rounding::HalfEven) as i64;
            let mut var: i128 = 0;
            for (yi, &q) in y.iter_mut().zip(row) {
                *yi = q - mean;
                p.see(*yi as i128);
                var += (*yi as i128) * (*yi as i128);
            }
            p.see(var);
            if var == 0 {
                cond.add(Condition::ZeroVariance);
            }
            let mut k: i128 = match self.start {
                NewtonStart::Fixed(v) => v as i128,
                NewtonStart::BitLength => 1i128 << bit_length(var as u128).div_ceil(2),
            };
            for _ in 0..self.newton_steps {
                // k >= 1 always in the reference; the guard only matters for custom starts.
                k = ((k + var / k.max(1)) >> 1).max(1);
                p.see(k);
            }
            let std = k as i64;
            let factor = match mode {
                Mode::Integer => ((1i64 << 31) - 1) / std,
                Mode::Reference => rdiv(((1i64 << 31) - 1) as f64, std as f64).floor() as i64,
            };
            p.see(factor as i128);
            if factor == 0 {
                cond.add(Condition::FactorUnderflow);
            }
            ln_scale_row(&y, factor, &bias, orow, p);
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
        "layernorm_ivit"
    }
    fn op(&self) -> Op {
        Op::LayerNorm
    }
    fn method(&self) -> Method {
        Method::IVit
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 32, Some(true))
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "newton_steps",
                value: self.newton_steps.to_string(),
                doc: "Newton iterations of the integer sqrt (reference 10)",
            },
            ParamInfo {
                name: "start",
                value: match self.start {
                    NewtonStart::Fixed(v) => v.to_string(),
                    NewtonStart::BitLength => "bitlength".into(),
                },
                doc: "Newton start: a fixed value (reference 65536) or 'bitlength' = 2^ceil(bitlen(var)/2) (adapted)",
            },
        ]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        let u = "layernorm_ivit";
        match name {
            "newton_steps" => self.newton_steps = parse_param(u, "newton_steps", value)?,
            "start" => {
                self.start = if value == "bitlength" {
                    NewtonStart::BitLength
                } else {
                    let v: u64 = parse_param(u, "start", value)?;
                    if v == 0 {
                        return Err(UnitError::Param { unit: u, param: "start", value: value.into(), why: "must be at least 1".into() });
                    }
                    NewtonStart::Fixed(v)
                }
            }
            _ => return Err(unknown_param(u, name, &self.params())),
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, aux: &Aux) -> Result<u32, UnitError> {
        check_bits("layernorm_ivit", x, 2, 32, Some(true))?;
        let (c, _) = rows(x);
        let (gamma, beta) = affine("layernorm_ivit", aux, c)?;
        let (bias, _) = ln_bias_and_scale(gamma, beta, c, &mut Conditions::default());
        let span = 1i128 << x.bits; // |q - mean| < 2^bits
        let var = span * span * c as i128;
        let bmax = bias.iter().map(|b| i128::from(*b).abs()).max().unwrap_or(0);
        let kmax = match self.start {
            NewtonStart::Fixed(v) => i128::from(v).max(var),
            NewtonStart::BitLength => 2 * var.max(1),
        };
        let prod = span * (1i128 << 31);
        let widths =
            [signed_width(span * c as i128), signed_width(var), signed_width(kmax), signed_width(prod), signed_width((prod >> 1) + bmax)];
        Ok(widths.into_iter().max().unwrap())
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

/// Dyadic requantisation `fixedpoint_mul` of I-ViT / I-BERT (`kernels.md` §0.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Requant {
    /// Output bits.
    pub out_bits: u32,
    /// Which output widths are clamped.
    pub clamp: ClampList,
    family: Method,
}

impl Requant {
    /// Build from a preset for the I-ViT or I-BERT flavour (they differ in the clamp list).
    pub fn preset(p: Preset, family: Method) -> Requant {
        let clamp = match (p, family) {
            (Preset::Adapted, _) => ClampList::Always,
            (Preset::Reference, Method::IBert) => ClampList::IBert,
            (Preset::Reference, _) => ClampList::IVit,
        };
        Requant { out_bits: 8, clamp, family }
    }

    /// The dyadic multiplier for one input scale: `frexp(fl64(s_in / f64(f32(s_out))))`.
    pub fn dyadic(s_in: f64, s_out: f64) -> Dyadic {
        Dyadic::from_ratio(s_in / fl32(s_out))
    }

    fn name_of(&self) -> &'static str {
        if self.family == Method::IBert {
            "requant_ibert"
        } else {
            "requant_ivit"
        }
    }

    fn run_with<P: Probe>(&self, x: &QTensor, aux: &Aux, mode: Mode, p: &mut P) -> Result<UnitOutput, UnitError> {
        let u = self.name_of();
        check_bits(u, x, 2, 48, Some(true))?;
        if !(2..=32).contains(&self.out_bits) {
            return Err(UnitError::Param { unit: u, param: "out_bits", value: self.out_bits.to_string(), why: "must be 2..=32".into() });
        }
        let s_out = match &aux.out_scale {
            Some(Scale::PerTensor(s)) if s.is_finite() && *s > 0.0 => *s,
            _ => return Err(UnitError::Aux { unit: u, what: "requantiser needs a positive per-tensor output scale (--out-scale)".into() }),
        };
        let s32 = fl32(s_out);
        if !(s32.is_finite() && s32 >= f64::from(f32::MIN_POSITIVE)) {
            return Err(UnitError::Aux {
                unit: u,
                what: format!("output scale {s_out:e} is not a normal float32 number (the requantiser casts it to float32)"),
            });
        }
        check_scale(self, x, aux)?;
        if let Some(t) = &aux.identity {
            check_scale(self, t, aux)?;
        }
        let c = x.row_len();
        let dy: Vec<Dyadic> = (0..c).map(|i| Self::dyadic(x.scale.at(i), s_out)).collect();
        let id = match &aux.identity {
            Some(t) => {
                if t.shape() != x.shape() {
                    return Err(UnitError::Aux {
                        unit: u,
                        what: format!("identity branch shape {:?} differs from input shape {:?}", t.shape(), x.shape()),
                    });
                }
                let d: Vec<Dyadic> = (0..c).map(|i| Self::dyadic(t.scale.at(i), s_out)).collect();
                Some((t.data(), d))
            }
            None => None,
        };
        let clamp = self.clamp.clamps(self.out_bits);
        let (lo, hi) = int_range(self.out_bits, true);
        let mut cond = Conditions::default();
        let out: Vec<i64> = x
            .data()
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let ch = i % c;
                let mut v = match mode {
                    Mode::Integer => {
                        p.see(i128::from(z) * i128::from(dy[ch].m));
                        let mut v = dy[ch].apply(z);
                        if let Some((idq, idd)) = &id {
                            p.see(i128::from(idq[i]) * i128::from(idd[ch].m));
                            v += idd[ch].apply(idq[i]);
                        }
                        v
                    }
                    Mode::Reference => {
                        if (i128::from(z) * i128::from(dy[ch].m)).unsigned_abs() >= 1u128 << 53 {
                            cond.add(Condition::InexactFloat);
                        }
                        let mut f = dy[ch].apply_f64(z as f64);
                        if let Some((idq, idd)) = &id {
                            f += idd[ch].apply_f64(idq[i] as f64);
                        }
                        f64::from(f as f32) as i128
                    }
                };
                p.see(v);
                if clamp {
                    v = v.clamp(i128::from(lo), i128::from(hi));
                }
                v as i64
            })
            .collect();
        Ok(UnitOutput {
            values: out,
            shape: x.shape().to_vec(),
            scale: Scale::PerTensor(fl32(s_out)),
            encoding: Encoding::Linear,
            conditions: cond.into_vec(),
        })
    }
}

impl Unit for Requant {
    fn name(&self) -> &'static str {
        self.name_of()
    }
    fn op(&self) -> Op {
        Op::Requant
    }
    fn method(&self) -> Method {
        self.family
    }
    fn input_bits(&self) -> (u32, u32, Option<bool>) {
        (2, 48, Some(true))
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo { name: "out_bits", value: self.out_bits.to_string(), doc: "output bits" },
            ParamInfo {
                name: "clamp",
                value: format!("{:?}", self.clamp).to_lowercase(),
                doc: "which widths are clamped: ivit = {4,8,16,32}, ibert = {4,8,16} (reference), always (adapted: 6-bit outputs stay in range)",
            },
        ]
    }
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), UnitError> {
        let u = self.name_of();
        match name {
            "out_bits" => self.out_bits = parse_param(u, "out_bits", value)?,
            "clamp" => {
                self.clamp = match value {
                    "ivit" => ClampList::IVit,
                    "ibert" => ClampList::IBert,
                    "always" => ClampList::Always,
                    _ => {
                        return Err(UnitError::Param {
                            unit: u,
                            param: "clamp",
                            value: value.into(),
                            why: "one of ivit, ibert, always".into(),
                        })
                    }
                }
            }
            _ => return Err(unknown_param(u, name, &self.params())),
        }
        Ok(())
    }
    fn scale_fits(&self, s: f64, bits: u32, _row_len: usize, aux: &Aux) -> Result<(), String> {
        // z·s_in/s_out must stay well inside 64 bits for every z of the input format.
        let Some(so) = aux.out_scale.as_ref().and_then(Scale::per_tensor).map(fl32) else {
            return Ok(());
        };
        let ratio = s / so;
        if !below(ratio * 2f64.powi(bits as i32 - 1), 2f64.powi(61)) {
            return Err(format!("s_in/s_out = {ratio:.3e} takes {bits}-bit inputs beyond 61-bit outputs"));
        }
        Ok(())
    }
    fn declared_width(&self, x: &QTensor, aux: &Aux) -> Result<u32, UnitError> {
        let zmax = 1i128 << (x.bits - 1);
        let mmax = 1i128 << 31;
        let idw = aux.identity.as_ref().map_or(0, |t| signed_width(-(1i128 << (t.bits - 1)) * mmax));
        Ok(signed_width(-zmax * mmax).max(idw) + 1)
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

#[cfg(test)]
mod tests {
    use super::super::vector::cases;
    use super::*;

    /// Shiftmax's fast runs (`run`, and the kernel at every level this CPU has) against the
    /// definition (`lut = false`, every exponential computed) and the table run.
    fn fast_softmax_equals_definition(sm: &Softmax, x: &QTensor, aux: &Aux) -> Result<(), String> {
        let def = |lut, level| checked_output("softmax_ivit", sm.run_with(x, aux, Mode::Integer, &mut NoProbe, lut, level));
        // The definition without the table; every CPU level with it.
        let runs = vec![("table".to_string(), def(true, None)), ("run".to_string(), sm.run(x, aux, Mode::Integer))];
        cases::levels_same_as_definition(|level| def(level.is_some(), level), runs)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// The fast Integer paths equal the definition: the whole output or the same error,
        /// for every input width, both presets and perturbed parameters (saturating sums,
        /// narrow outputs, custom n and upshift), masked rows included.
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
                1 => sm.sum_bits = Some(16 + (seed % 20) as u32),
                2 => sm.out_bits = 2 + (seed % 31) as u32,
                3 => sm.n = (seed % 41) as u32,
                4 => sm.upshift = Some((seed % 25) as u32),
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
    /// fine to coarse (the reference's K = 31 saturates at the finest).
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

    /// ShiftGELU's fast runs (`run`, the memo, and the tables at every level this CPU has)
    /// against the definition (every element computed).
    fn fast_gelu_equals_definition(g: &Gelu, x: &QTensor) -> Result<(), String> {
        let def = |memo, fast| checked_output("gelu_ivit", g.run_with(x, Mode::Integer, &mut NoProbe, memo, fast));
        let runs = vec![("memo".to_string(), def(true, None)), ("run".to_string(), g.run(x, &Aux::default(), Mode::Integer))];
        cases::levels_same_as_definition(|level| def(false, level), runs)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// ShiftGELU's tabulated path equals the definition for 2..=16-bit inputs, both presets
        /// (row-wise and element-wise) and perturbed parameters.
        #[test]
        fn gelu_fast_integer_path_equals_reference(
            bits in 2u32..=16,
            c in proptest::prop_oneof![1usize..=16, 1usize..=1024],
            nrows in proptest::prop_oneof![1usize..=4, 1usize..=64],
            adapted in proptest::bool::ANY,
            tweak in 0u32..6,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut g = Gelu::preset(if adapted { Preset::Adapted } else { Preset::Reference });
            match tweak {
                1 => g.out_bits = 2 + (seed % 23) as u32,
                2 => g.n = Some((seed % 41) as u32),
                3 => g.upshift = Some((seed % 25) as u32),
                4 => g.row_max = !g.row_max,
                _ => {}
            }
            let x = cases::rows(bits, true, c, nrows, seed);
            if let Err(e) = fast_gelu_equals_definition(&g, &x) {
                proptest::prop_assert!(false, "{}", e);
            }
        }
    }

    /// Every 8-bit code (one row) and every two-element 8-bit row, both presets, five scales.
    #[test]
    fn gelu_fast_integer_path_exhaustive_8bit() {
        for preset in [Preset::Reference, Preset::Adapted] {
            let g = Gelu::preset(preset);
            for s in [1e-4, 2f64.powi(-7), 8.0 / 127.0, 0.25, 1.5] {
                fast_gelu_equals_definition(&g, &cases::all_codes(8, true, s)).unwrap();
                fast_gelu_equals_definition(&g, &cases::all_pairs(8, true, s)).unwrap();
            }
        }
    }

    /// The bench input takes the tables (both presets).
    #[test]
    fn gelu_bench_input_takes_the_fast_path() {
        use crate::sensitivity::{sample, Dist};
        for preset in [Preset::Reference, Preset::Adapted] {
            let g = Gelu::preset(preset);
            let s = sample(&g, 8, Dist::Gelu, 197, 1).unwrap();
            let (x0, up, n) = g.constants(s.q.scale.per_tensor().unwrap());
            let k = (x0, i64::from(n), up, Mode::Integer);
            assert!(g.tabulated(Level::detect(), s.q.data(), s.q.row_len(), k).is_some(), "{preset}");
            fast_gelu_equals_definition(&g, &s.q).unwrap();
        }
    }

    /// I-LayerNorm's fast runs (`run`, and the row kernels at every level this CPU has) against the definition.
    fn fast_ln_equals_definition(ln: &LayerNorm, x: &QTensor, aux: &Aux) -> Result<(), String> {
        let def = |level| checked_output("layernorm_ivit", ln.run_with(x, aux, Mode::Integer, &mut NoProbe, level));
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
                1 => ln.newton_steps = (seed % 12) as u32,
                2 => ln.start = NewtonStart::Fixed(1 + seed % (1 << 40)),
                3 => ln.start = NewtonStart::Fixed(1 << 16),
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
            let (c, _) = rows(&s.q);
            let (x0, up, k) = sm.constants(s.q.scale.per_tensor().unwrap(), c);
            let (lo, hi) = int_range(s.q.bits, s.q.signed);
            let table: Vec<i64> = (0..=hi - lo).map(|d| exp_shift(-(d << up), x0, i64::from(sm.n), i64::MAX >> 1, &mut NoProbe)).collect();
            let kr = LutSoftmax::new(Level::detect(), &table, c, k.min(62) + 1 - sm.out_bits, i64::MAX).unwrap();
            let limit = (1i64 << k.min(62)) - 1;
            for row in s.q.data().chunks_exact(c) {
                let (mut e, mut o) = (vec![0; c], vec![0; c]);
                let f = |sum: i64| Some((recip_factor(k.min(62), sum.min(limit), Mode::Integer), None));
                assert!(kr.row(row, None, &mut e, &mut o, f, &mut Conditions::default()));
            }
        }
    }
}
