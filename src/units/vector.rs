//! Vector kernels of the units' Integer-mode fast paths, with runtime CPU detection.
//!
//! Each kernel has a portable body (also compiled with AVX2 enabled, where LLVM vectorises
//! it) and, on x86-64 CPUs with AVX-512F/DQ/CD, an explicit AVX-512 version. Every kernel
//! computes exactly what the units' scalar definitions compute on the inputs it accepts; a
//! unit checks the kernel's preconditions and falls back to its definition otherwise.

use super::{Condition, Conditions};

/// Which instruction set the fast paths use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Plain 64-bit code.
    Scalar,
    /// The portable bodies compiled with AVX2 (LLVM's vectorisation).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Explicit AVX-512F/DQ/CD kernels.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Level {
    /// The best level this CPU runs.
    pub(crate) fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512() {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Scalar
    }

    /// Every level this CPU runs (tests check each against the definition).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Level> {
        let mut v = vec![Level::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                v.push(Level::Avx2);
            }
            if avx512() {
                v.push(Level::Avx512);
            }
        }
        v
    }
}

/// Whether the CPU has the AVX-512 subsets the kernels use (every AVX-512 CPU has CD beside F).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") && is_x86_feature_detected!("avx512cd")
}

/// A softmax whose exponentials come from a table indexed by `max − q` (I-ViT's Shiftmax and
/// I-BERT's IntSoftmax in Integer mode): `e_j = T[max − q_j]`, a per-row factor from `Σe`,
/// `out_j = min((e_j · factor) >> shift, top)`.
pub(crate) struct LutSoftmax<'a> {
    level: Level,
    table: &'a [i64],
    tmax: i64,
    shift: u32,
    top: i64,
    /// The table as a formula, where one reproduces every entry (AVX-512 computes it instead of gathering).
    form: Option<ShiftForm>,
}

/// A table of exponentials that halve every `m` codes: `T[d] = T[d' mod m] >> (k·⌊d'/m⌋)` with
/// `d' = min(d, cap)` (`m ≤ 16`; an i-exp at input upshift 0 is one). The quotient is
/// `(d'·mul) >> 31` and a shift of 64 or more gives 0, exactly as the vector code computes it;
/// [`ShiftForm::find`] keeps a form only when it gives every entry of the table.
#[derive(Debug, Clone, Copy)]
struct ShiftForm {
    m: u32,
    k: u32,
    cap: i64,
    mul: u32,
    /// `T[0..m]`, zero-padded.
    base: [i64; 16],
}

impl ShiftForm {
    /// Tables longer than this are not searched (the check reads every entry for each `m`).
    const MAX_LEN: usize = 1 << 12;

    /// The entry at `d ≥ 0`, computed as the AVX-512 kernel does (u64 lanes, 32-bit multiplies).
    fn value(&self, d: u64) -> i64 {
        let dd = d.min(self.cap as u64);
        let q = ((dd & 0xffff_ffff) * u64::from(self.mul)) >> 31;
        let r = dd.wrapping_sub((q & 0xffff_ffff) * u64::from(self.m));
        let sh = (q & 0xffff_ffff) * u64::from(self.k);
        let u = self.base[(r & 15) as usize] as u64;
        u.checked_shr(u32::try_from(sh).unwrap_or(64)).unwrap_or(0) as i64
    }

    /// The first form (smallest `m`) that gives every entry of `table`, if any.
    fn find(table: &[i64]) -> Option<ShiftForm> {
        let len = table.len();
        if len == 0 || len > Self::MAX_LEN || table.iter().any(|&t| t < 0) {
            return None;
        }
        // Past `cap` the table is constant (the exponent's clamp).
        let last = table[len - 1];
        let cap = table.iter().rposition(|&t| t != last).map_or(0, |i| i + 1);
        (1..=16u32).find_map(|m| {
            let mm = m as usize;
            if mm > len || table[0] == 0 {
                return None;
            }
            let mut base = [0i64; 16];
            base[..mm].copy_from_slice(&table[..mm]);
            // k from the first entry of the second period (or any k when the table is one period).
            let k = if mm < len { (0..64).find(|&k| table[0] >> k == table[mm])? } else { 0 };
            let f = ShiftForm { m, k, cap: cap as i64, mul: (1u32 << 31).div_ceil(m), base };
            (0..len).all(|d| f.value(d as u64) == table[d]).then_some(f)
        })
    }
}

impl<'a> LutSoftmax<'a> {
    /// The kernel for rows of `c` elements, or `None` when its 64-bit words are not proven
    /// wide enough: table entries must be non-negative and a row's sum `c·max T` below 2^62
    /// (so neither the vector nor the scalar sum wraps), and `shift` below 64.
    pub(crate) fn new(level: Level, table: &'a [i64], c: usize, shift: u32, top: i64) -> Option<LutSoftmax<'a>> {
        let tmin = *table.iter().min()?;
        let tmax = *table.iter().max()?;
        if tmin < 0 || c == 0 || (c as u128) * (tmax as u128) >= 1 << 62 || shift >= 64 {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        let form = if level == Level::Avx512 { ShiftForm::find(table) } else { None };
        #[cfg(not(target_arch = "x86_64"))]
        let form = None;
        Some(LutSoftmax { level, table, tmax, shift, top, form })
    }

    /// Whether the AVX-512 exponentials are computed from a [`ShiftForm`] rather than gathered.
    #[cfg(test)]
    pub(crate) fn computes_table(&self) -> bool {
        self.form.is_some()
    }

    /// One row into `out` (the same length as `row`; `e` is scratch of that length), the
    /// elements flagged in `mask` (if any) left out of max and sum, with output 0 (as the
    /// definitions' `e = 0` gives). `factor(Σe)` gives the row's factor and a condition to
    /// count, or `None` to refuse the row. Returns false, having written nothing and counted
    /// nothing, when every element is masked, the row spans more codes than the table or
    /// `max T · factor` does not fit 63 bits; the caller then runs its definition on the row.
    /// Counts [`Condition::AllZeroRow`] after `factor`'s condition.
    pub(crate) fn row(
        &self,
        row: &[i64],
        mask: Option<&[bool]>,
        e: &mut [i64],
        out: &mut [i64],
        factor: impl FnOnce(i64) -> Option<(i64, Option<Condition>)>,
        cond: &mut Conditions,
    ) -> bool {
        assert!(e.len() == row.len() && out.len() == row.len());
        let Some(sum) = self.exp(row, mask, e) else { return false };
        let Some((f, c)) = factor(sum) else { return false };
        if f < 0 || (self.tmax as u128) * (f as u128) >= 1 << 63 {
            return false;
        }
        if let Some(c) = c {
            cond.add(c);
        }
        if !self.scale(e, f, out) {
            cond.add(Condition::AllZeroRow);
        }
        true
    }

    /// `e_j = T[max − q_j]` (0 where `mask` flags `j`; max and min over the others) and `Σe`,
    /// or `None` when every element is masked or `max − min` is beyond the table.
    pub(crate) fn exp(&self, row: &[i64], mask: Option<&[bool]>, e: &mut [i64]) -> Option<i64> {
        assert!(e.len() == row.len() && mask.is_none_or(|m| m.len() == row.len()));
        match self.level {
            Level::Scalar => exp_portable(row, mask, self.table, e),
            // SAFETY: the level was detected (or listed as available) on this CPU.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { exp_avx2(row, mask, self.table, e) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe {
                match &self.form {
                    Some(f) => avx512::form_exp(row, mask, f, self.table.len(), e),
                    None => avx512::lut_exp(row, mask, self.table, e),
                }
            },
        }
    }

    /// FQ-ViT's log2 codes of a row whose exponentials `e` (from [`LutSoftmax::exp`]) sum to
    /// `sum`: [`log2_code`] of each, at the kernel's level. `None`, having written nothing, where
    /// `sum` is outside `1..2^60` (the bound under which the 64-bit steps are exact); otherwise
    /// whether any code is not the zero flag.
    pub(crate) fn log2_codes(&self, e: &[i64], sum: i64, levels: u32, out: &mut [i64]) -> Option<bool> {
        assert!(out.len() == e.len());
        if !(1..1 << 60).contains(&sum) || !(1..=64).contains(&levels) {
            return None;
        }
        let levels = i64::from(levels);
        Some(match self.level {
            Level::Scalar => log2_codes_portable(e, 2 * sum, levels, out),
            // SAFETY: the level was detected (or listed as available) on this CPU.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { log2_codes_avx2(e, 2 * sum, levels, out) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::log2_codes(e, 2 * sum, levels, out) },
        })
    }

    /// `out_j = min((e_j·f) >> shift, top)`; whether any output is non-zero.
    fn scale(&self, e: &[i64], f: i64, out: &mut [i64]) -> bool {
        match self.level {
            Level::Scalar => scale_portable(e, f, self.shift, self.top, out),
            // SAFETY: the level was detected (or listed as available) on this CPU.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { scale_avx2(e, f, self.shift, self.top, out) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::scale(e, f, self.shift, self.top, out) },
        }
    }
}

/// `(min, max)` of `q` (`(i64::MAX, i64::MIN)` when empty).
pub(crate) fn min_max(level: Level, q: &[i64]) -> (i64, i64) {
    match level {
        Level::Scalar => min_max_portable(q),
        // SAFETY: the level was detected (or listed as available) on this CPU.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { min_max_avx2(q) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { avx512::min_max(q) },
    }
}

#[inline(always)]
fn min_max_portable(q: &[i64]) -> (i64, i64) {
    (q.iter().copied().fold(i64::MAX, i64::min), q.iter().copied().fold(i64::MIN, i64::max))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn min_max_avx2(q: &[i64]) -> (i64, i64) {
    min_max_portable(q)
}

/// `(min, max)` of the elements of `q` not flagged in `mask` (`(i64::MAX, i64::MIN)` when none).
#[inline(always)]
fn min_max_masked_portable(q: &[i64], mask: &[bool]) -> (i64, i64) {
    let (mut mn, mut mx) = (i64::MAX, i64::MIN);
    for (&v, &k) in q.iter().zip(mask) {
        mn = mn.min(if k { i64::MAX } else { v });
        mx = mx.max(if k { i64::MIN } else { v });
    }
    (mn, mx)
}

#[inline(always)]
fn exp_portable(row: &[i64], mask: Option<&[bool]>, table: &[i64], e: &mut [i64]) -> Option<i64> {
    let (mn, mx) = match mask {
        None => min_max_portable(row),
        Some(m) => min_max_masked_portable(row, m),
    };
    // Refuses the all-masked row; the span check also keeps every index `max − q` inside the table.
    if mx < mn || i128::from(mx) - i128::from(mn) >= table.len() as i128 {
        return None;
    }
    let mut sum = 0i64;
    match mask {
        None => {
            for (ei, &q) in e.iter_mut().zip(row) {
                *ei = table[(mx - q) as usize];
                sum += *ei;
            }
        }
        Some(m) => {
            for ((ei, &q), &k) in e.iter_mut().zip(row).zip(m) {
                *ei = if k { 0 } else { table[(mx - q) as usize] };
                sum += *ei;
            }
        }
    }
    Some(sum)
}

/// FQ-ViT's Integer-mode log2 code of an exponential `e` in a row summing to `S`, for
/// `0 ≤ e ≤ S < 2^60`, `two_s = 2S`: the number of thresholds `t = 2, 3, 6, 12, …` (the first
/// `levels`) with `RNE(S/e) ≥ t`, or −1 (the zero flag) when `e = 0` or all `levels` are met.
/// `RNE(S/e) ≥ t` is `(2t−1)·e ≤ 2S`, strictly for odd t (the tie rounds to even); with
/// `2t − 1 = 3·2^j − 1` for `j ≥ 1` it holds for `j ≥ 2` iff `3e·2^j ≤ 2S + e`, i.e. `j ≤ ⌊log2 A/B⌋`
/// (`A = 2S + e`, `B = 3e`), which the leading-zero counts give to within one. Hence the
/// count `⌊log2 A/B⌋ + 1`, less one where `3e > 2S` (t = 2 fails) or `5e = 2S` (t = 3's tie).
#[inline(always)]
pub(crate) fn log2_code(e: i64, two_s: i64, levels: i64) -> i64 {
    let (a, b) = (two_s + e, 3 * e);
    // e ≤ S gives A ≥ B, so p ≥ 0 and B << p has A's bit length: ⌊log2 A/B⌋ is p or p − 1.
    let p = b.leading_zeros().wrapping_sub(a.leading_zeros()) & 63;
    let fl = i64::from(p) - i64::from(a < b << p);
    let k = fl + 1 - i64::from(b > two_s) - i64::from(b + 2 * e == two_s);
    if e == 0 || k >= levels {
        -1
    } else {
        k
    }
}

#[inline(always)]
fn log2_codes_portable(e: &[i64], two_s: i64, levels: i64, out: &mut [i64]) -> bool {
    let mut any = false;
    for (o, &ei) in out.iter_mut().zip(e) {
        *o = log2_code(ei, two_s, levels);
        any |= *o >= 0;
    }
    any
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn log2_codes_avx2(e: &[i64], two_s: i64, levels: i64, out: &mut [i64]) -> bool {
    log2_codes_portable(e, two_s, levels, out)
}

#[inline(always)]
fn scale_portable(e: &[i64], f: i64, shift: u32, top: i64, out: &mut [i64]) -> bool {
    let mut any = 0i64;
    for (o, &ei) in out.iter_mut().zip(e) {
        let v = ((ei * f) >> shift).min(top);
        any |= v;
        *o = v;
    }
    any != 0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn exp_avx2(row: &[i64], mask: Option<&[bool]>, table: &[i64], e: &mut [i64]) -> Option<i64> {
    exp_portable(row, mask, table, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scale_avx2(e: &[i64], f: i64, shift: u32, top: i64, out: &mut [i64]) -> bool {
    scale_portable(e, f, shift, top, out)
}

/// i-GELU's integer constants (`kernels.md` §1.1) in 64-bit lanes: each slice holds one value
/// (a per-tensor scale) or one per element of the rows it is applied to (per-channel scales).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IbertGelu<'a> {
    level: Level,
    b: &'a [i64],
    c: &'a [i64],
    shift: &'a [i64],
    n: &'a [i64],
}

impl<'a> IbertGelu<'a> {
    /// The kernel for `bits`-bit inputs, or `None` when 64-bit words are not proven wide enough
    /// for every step. `|t| = |min(|q|, −b) + b| ≤ |b|`, so `|y| ≤ Y = b² + |c|`; required:
    /// `Y < 2^63`, shifts `n ≤ 62`, and `2^(bits−1)·((Y >> n) + 1 + |shift|) < 2^63` (so neither
    /// the erf sum nor the output product wraps: the definition's 128-bit values are these).
    pub(crate) fn new(level: Level, bits: u32, b: &'a [i64], c: &'a [i64], shift: &'a [i64], n: &'a [i64]) -> Option<IbertGelu<'a>> {
        let len = b.len();
        if len == 0 || c.len() != len || shift.len() != len || n.len() != len || !(1..=62).contains(&bits) {
            return None;
        }
        let ok = (0..len).all(|i| {
            let (bi, ci, si, ni) = (i128::from(b[i]), i128::from(c[i]), i128::from(shift[i]), n[i]);
            let y = bi * bi + ci.abs();
            if y >= 1 << 63 || !(0..=62).contains(&ni) {
                return false;
            }
            let sum = (y >> ni) + 1 + si.abs();
            (sum << (bits - 1)) < 1 << 63
        });
        ok.then_some(IbertGelu { level, b, c, shift, n })
    }

    /// Whether the constants are one per element (per-channel) rather than one for all.
    pub(crate) fn per_element(&self) -> bool {
        self.b.len() != 1
    }

    /// `out_j = q_j · ((±(min(|q_j|, −b) + b)² + c) >> n) + shift)`, the definition's element
    /// step; with per-element constants `q` must be as long as them.
    pub(crate) fn run(&self, q: &[i64], out: &mut [i64]) {
        assert!(out.len() == q.len() && (!self.per_element() || self.b.len() == q.len()));
        match self.level {
            Level::Scalar => gelu_ibert_portable(self, q, out),
            // SAFETY: the level was detected (or listed as available) on this CPU.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { gelu_ibert_avx2(self, q, out) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::gelu_ibert(self, q, out) },
        }
    }

    /// The constants of elements `from..` (the same one where it is per-tensor).
    fn tail(&self, from: usize) -> IbertGelu<'a> {
        if !self.per_element() {
            return *self;
        }
        IbertGelu { level: self.level, b: &self.b[from..], c: &self.c[from..], shift: &self.shift[from..], n: &self.n[from..] }
    }
}

#[inline(always)]
fn gelu_ibert_element(q: i64, b: i64, c: i64, shift: i64, n: i64) -> i64 {
    let t = q.abs().min(-b) + b;
    let y = t * t + c;
    // q = 0 gives 0 whatever the sign of y, as the definition's y = 0 does.
    let y = if q < 0 { -y } else { y };
    q * ((y >> n) + shift)
}

#[inline(always)]
fn gelu_ibert_portable(k: &IbertGelu, q: &[i64], out: &mut [i64]) {
    if k.per_element() {
        for (((((o, &x), &b), &c), &s), &n) in out.iter_mut().zip(q).zip(k.b).zip(k.c).zip(k.shift).zip(k.n) {
            *o = gelu_ibert_element(x, b, c, s, n);
        }
    } else {
        let (b, c, s, n) = (k.b[0], k.c[0], k.shift[0], k.n[0]);
        for (o, &x) in out.iter_mut().zip(q) {
            *o = gelu_ibert_element(x, b, c, s, n);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gelu_ibert_avx2(k: &IbertGelu, q: &[i64], out: &mut [i64]) {
    gelu_ibert_portable(k, q, out)
}

/// `out_j = table[q_j − lo]` (an element-wise unit tabulated over its input codes by its own
/// definition); false, with `out` partly written, when some `q_j` is outside the table.
pub(crate) fn lut_map(level: Level, q: &[i64], lo: i64, table: &[i64], out: &mut [i64]) -> bool {
    assert!(out.len() == q.len());
    match level {
        Level::Scalar => lut_map_portable(q, lo, table, out),
        // SAFETY: the level was detected (or listed as available) on this CPU.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { lut_map_avx2(q, lo, table, out) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { avx512::lut_map(q, lo, table, out) },
    }
}

#[inline(always)]
fn lut_map_portable(q: &[i64], lo: i64, table: &[i64], out: &mut [i64]) -> bool {
    let mut ok = true;
    for (o, &x) in out.iter_mut().zip(q) {
        // The wrapping difference of an out-of-range code is a huge index: one compare refuses both sides.
        let i = x.wrapping_sub(lo) as u64;
        ok &= i < table.len() as u64;
        *o = table.get(i as usize).copied().unwrap_or(0);
    }
    ok
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lut_map_avx2(q: &[i64], lo: i64, table: &[i64], out: &mut [i64]) -> bool {
    lut_map_portable(q, lo, table, out)
}

/// Sums of one LayerNorm row: `Σq`, `Σq²`, min and max.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowStats {
    /// `Σq`.
    pub sum: i64,
    /// `Σq²`.
    pub sumsq: i64,
    /// Smallest element.
    pub min: i64,
    /// Largest element.
    pub max: i64,
}

impl RowStats {
    /// `Σ(q − m)² = Σq² − 2mΣq + c·m²`, exactly (the definition sums the centred squares).
    pub(crate) fn centred_sumsq(&self, m: i64, c: usize) -> i128 {
        let m = i128::from(m);
        i128::from(self.sumsq) - 2 * m * i128::from(self.sum) + c as i128 * m * m
    }
}

/// The row kernels of the integer LayerNorms (I-BERT, I-ViT): sums, shifted sums of squares
/// and the normalising multiply, for rows of `c` elements of at most `bits` bits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LnRows {
    level: Level,
    /// The largest `|bias|` the rows are given (capped at 2^62).
    bmax: i64,
}

impl LnRows {
    /// The kernels for rows given the per-channel `bias`, or `None` when `c·2^(2·bits) ≥ 2^63`:
    /// below it `Σq²` and every shifted sum of squares of centred values (`|q − m| < 2^bits`)
    /// are exact 64-bit sums.
    pub(crate) fn new(level: Level, bits: u32, c: usize, bias: &[i64]) -> Option<LnRows> {
        let ok = (1..=32).contains(&bits) && c > 0 && (c as u128) << (2 * bits) < 1 << 63;
        let bmax = bias.iter().map(|b| b.unsigned_abs()).max().unwrap_or(0).min(1 << 62) as i64;
        ok.then_some(LnRows { level, bmax })
    }

    /// `Σq`, `Σq²`, min and max of a non-empty row of the width given to [`LnRows::new`].
    pub(crate) fn stats(&self, row: &[i64]) -> RowStats {
        match self.level {
            Level::Scalar => stats_portable(row),
            // SAFETY: the level was detected (or listed as available) on this CPU.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { stats_avx2(row) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::stats(row) },
        }
    }

    /// `Σ((q − m) >> sh)²` for a row whose elements and `m` lie in `[s.min, s.max]` (`s` its
    /// stats): `|(q − m) >> sh| ≤ s.max − s.min < 2^bits`, so the 64-bit sum is exact.
    pub(crate) fn sumsq_shifted(&self, row: &[i64], m: i64, sh: u32) -> i64 {
        let sh = sh.min(63);
        match self.level {
            Level::Scalar => sumsq_shifted_portable(row, m, sh),
            // SAFETY: the level was detected (or listed as available) on this CPU.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { sumsq_shifted_avx2(row, m, sh) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::sumsq_shifted(row, m, sh) },
        }
    }

    /// `out_j = (((q_j − m)·factor) >> 1) + bias_j` (`ivit::ln_scale_row` on the centred row),
    /// or false, having written nothing, when 64-bit words do not hold it: with `s` the row's
    /// stats, `max|q − m|·factor` must be below 2^62 and that plus `max|bias|` too.
    pub(crate) fn affine(&self, row: &[i64], s: &RowStats, m: i64, factor: i64, bias: &[i64], out: &mut [i64]) -> bool {
        assert!(bias.len() == row.len() && out.len() == row.len());
        let dev = (i128::from(s.max) - i128::from(m)).max(i128::from(m) - i128::from(s.min));
        let prod = dev * i128::from(factor).abs();
        if factor < 0 || prod >= 1 << 62 || (prod >> 1) + i128::from(self.bmax) >= 1 << 62 {
            return false;
        }
        match self.level {
            Level::Scalar => affine_portable(row, m, factor, bias, out),
            // SAFETY: the level was detected (or listed as available) on this CPU.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { affine_avx2(row, m, factor, bias, out) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::affine(row, m, factor, bias, out) },
        }
        true
    }
}

#[inline(always)]
fn stats_portable(row: &[i64]) -> RowStats {
    let (mut sum, mut sumsq, mut min, mut max) = (0i64, 0i64, i64::MAX, i64::MIN);
    for &q in row {
        sum += q;
        sumsq += q * q;
        min = min.min(q);
        max = max.max(q);
    }
    RowStats { sum, sumsq, min, max }
}

#[inline(always)]
fn sumsq_shifted_portable(row: &[i64], m: i64, sh: u32) -> i64 {
    row.iter().map(|&q| ((q - m) >> sh).pow(2)).sum()
}

#[inline(always)]
fn affine_portable(row: &[i64], m: i64, factor: i64, bias: &[i64], out: &mut [i64]) {
    for ((o, &q), &b) in out.iter_mut().zip(row).zip(bias) {
        *o = (((q - m) * factor) >> 1) + b;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn stats_avx2(row: &[i64]) -> RowStats {
    stats_portable(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sumsq_shifted_avx2(row: &[i64], m: i64, sh: u32) -> i64 {
    sumsq_shifted_portable(row, m, sh)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn affine_avx2(row: &[i64], m: i64, factor: i64, bias: &[i64], out: &mut [i64]) {
    affine_portable(row, m, factor, bias, out)
}

/// `⌊√v⌋`, exactly (as [`crate::fixed::isqrt`]), from the float64 root corrected both ways.
#[inline]
pub(crate) fn isqrt_u64(v: u64) -> u64 {
    let mut r = (v as f64).sqrt() as u64;
    // The float root is within one of the true one for every u64; the checks make it exact.
    while u128::from(r) * u128::from(r) > u128::from(v) {
        r -= 1;
    }
    while u128::from(r + 1) * u128::from(r + 1) <= u128::from(v) {
        r += 1;
    }
    r
}

/// The AVX-512F/DQ kernels: eight 64-bit lanes, the last `len mod 8` elements in scalar code.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The lanes of `mask[i..i + 8]` that are not flagged.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `i + 8 ≤ mask.len()`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn kept(mask: &[bool], i: usize) -> __mmask8 {
        debug_assert!(i + 8 <= mask.len());
        // SAFETY: eight flags from i are inside the mask; a bool is one byte, 0 or 1.
        let v = unsafe { _mm512_cvtepu8_epi64(_mm_loadl_epi64(mask.as_ptr().add(i).cast())) };
        _mm512_testn_epi64_mask(v, v)
    }

    /// [`super::exp_portable`], the table read by gathers (masked lanes read nothing).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn lut_exp(row: &[i64], mask: Option<&[bool]>, table: &[i64], e: &mut [i64]) -> Option<i64> {
        let c = row.len();
        assert!(e.len() == c && mask.is_none_or(|m| m.len() == c));
        let full = c / 8 * 8;
        // SAFETY: the caller's CPU has AVX-512F/DQ.
        let (mn, mx) = unsafe {
            match mask {
                None => min_max(row),
                Some(m) => min_max_masked(row, m),
            }
        };
        // Every index max − q of a kept lane is then in 0..table.len(): the gathers stay inside the table.
        if mx < mn || i128::from(mx) - i128::from(mn) >= table.len() as i128 {
            return None;
        }
        let m = _mm512_set1_epi64(mx);
        let mut vs = _mm512_setzero_si512();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ c = e.len() = mask.len(); the kept lanes' indices are inside the table (checked above).
            unsafe {
                let keep = match mask {
                    None => 0xff,
                    Some(k) => kept(k, i),
                };
                let q = _mm512_loadu_si512(row.as_ptr().add(i).cast());
                let v = _mm512_mask_i64gather_epi64::<8>(_mm512_setzero_si512(), keep, _mm512_sub_epi64(m, q), table.as_ptr());
                _mm512_storeu_si512(e.as_mut_ptr().add(i).cast(), v);
                vs = _mm512_add_epi64(vs, v);
            }
        }
        let mut sum = _mm512_reduce_add_epi64(vs);
        for (j, (ei, &q)) in e.iter_mut().zip(row).enumerate().skip(full) {
            *ei = if super::super::masked(mask, j) { 0 } else { table[(mx - q) as usize] };
            sum += *ei;
        }
        Some(sum)
    }

    /// [`super::exp_portable`] for a table that has a [`super::ShiftForm`]: the entries
    /// computed by the form (equal to the table's, checked when the form was found), no gathers.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn form_exp(row: &[i64], mask: Option<&[bool]>, f: &super::ShiftForm, len: usize, e: &mut [i64]) -> Option<i64> {
        let c = row.len();
        assert!(e.len() == c && mask.is_none_or(|m| m.len() == c) && f.m <= 16);
        let full = c / 8 * 8;
        // SAFETY: the caller's CPU has AVX-512F/DQ.
        let (mn, mx) = unsafe {
            match mask {
                None => min_max(row),
                Some(m) => min_max_masked(row, m),
            }
        };
        // Every kept lane's d = max − q is then in 0..len, where the form equals the table.
        if mx < mn || i128::from(mx) - i128::from(mn) >= len as i128 {
            return None;
        }
        let (vmx, cap) = (_mm512_set1_epi64(mx), _mm512_set1_epi64(f.cap));
        let (mul, m, k) = (_mm512_set1_epi64(i64::from(f.mul)), _mm512_set1_epi64(i64::from(f.m)), _mm512_set1_epi64(i64::from(f.k)));
        // SAFETY: base has 16 entries.
        let (b0, b1) = unsafe { (_mm512_loadu_si512(f.base.as_ptr().cast()), _mm512_loadu_si512(f.base.as_ptr().add(8).cast())) };
        let mut vs = _mm512_setzero_si512();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ c = e.len() = mask.len().
            unsafe {
                let keep = match mask {
                    None => 0xff,
                    Some(km) => kept(km, i),
                };
                let q = _mm512_loadu_si512(row.as_ptr().add(i).cast());
                let dd = _mm512_min_epu64(_mm512_sub_epi64(vmx, q), cap);
                let qt = _mm512_srli_epi64::<31>(_mm512_mul_epu32(dd, mul));
                let r = _mm512_sub_epi64(dd, _mm512_mul_epu32(qt, m));
                let u = _mm512_permutex2var_epi64(b0, r, b1);
                let v = _mm512_maskz_mov_epi64(keep, _mm512_srlv_epi64(u, _mm512_mul_epu32(qt, k)));
                _mm512_storeu_si512(e.as_mut_ptr().add(i).cast(), v);
                vs = _mm512_add_epi64(vs, v);
            }
        }
        let mut sum = _mm512_reduce_add_epi64(vs);
        for (j, (ei, &q)) in e.iter_mut().zip(row).enumerate().skip(full) {
            *ei = if super::super::masked(mask, j) { 0 } else { f.value((mx - q) as u64) };
            sum += *ei;
        }
        Some(sum)
    }

    /// [`super::min_max_masked_portable`] in eight lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn min_max_masked(q: &[i64], mask: &[bool]) -> (i64, i64) {
        assert!(mask.len() == q.len());
        let full = q.len() / 8 * 8;
        let (mut vmn, mut vmx) = (_mm512_set1_epi64(i64::MAX), _mm512_set1_epi64(i64::MIN));
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ q.len() = mask.len().
            unsafe {
                let keep = kept(mask, i);
                let v = _mm512_loadu_si512(q.as_ptr().add(i).cast());
                vmx = _mm512_mask_max_epi64(vmx, keep, vmx, v);
                vmn = _mm512_mask_min_epi64(vmn, keep, vmn, v);
            }
        }
        let (tn, tx) = super::min_max_masked_portable(&q[full..], &mask[full..]);
        (_mm512_reduce_min_epi64(vmn).min(tn), _mm512_reduce_max_epi64(vmx).max(tx))
    }

    /// [`super::log2_codes_portable`] in eight lanes (`vplzcntq`, `vpsllvq`).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, AVX-512DQ and AVX-512CD.
    #[target_feature(enable = "avx512f,avx512dq,avx512cd")]
    pub(super) unsafe fn log2_codes(e: &[i64], two_s: i64, levels: i64, out: &mut [i64]) -> bool {
        let c = e.len();
        assert!(out.len() == c);
        let full = c / 8 * 8;
        let (vs, vl, one, flag) = (_mm512_set1_epi64(two_s), _mm512_set1_epi64(levels), _mm512_set1_epi64(1), _mm512_set1_epi64(-1));
        // The largest code so far (−1: all zero flags); a mask register would chain each step on the last.
        let mut top = flag;
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ c = out.len().
            unsafe {
                let v = _mm512_loadu_si512(e.as_ptr().add(i).cast());
                let v2 = _mm512_add_epi64(v, v);
                let (a, b) = (_mm512_add_epi64(vs, v), _mm512_add_epi64(v2, v));
                let p = _mm512_sub_epi64(_mm512_lzcnt_epi64(b), _mm512_lzcnt_epi64(a));
                // p ≥ 0 for e ≤ S (and masked off below for e = 0).
                let k = _mm512_mask_sub_epi64(
                    _mm512_add_epi64(p, one),
                    _mm512_cmplt_epi64_mask(a, _mm512_sllv_epi64(b, p)),
                    p,
                    _mm512_setzero_si512(),
                );
                let k = _mm512_mask_sub_epi64(k, _mm512_cmpgt_epi64_mask(b, vs), k, one);
                let k = _mm512_mask_sub_epi64(k, _mm512_cmpeq_epi64_mask(_mm512_add_epi64(b, v2), vs), k, one);
                let good = _mm512_cmplt_epi64_mask(k, vl) & _mm512_test_epi64_mask(v, v);
                let o = _mm512_mask_mov_epi64(flag, good, k);
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), o);
                top = _mm512_max_epi64(top, o);
            }
        }
        super::log2_codes_portable(&e[full..], two_s, levels, &mut out[full..]) || _mm512_reduce_max_epi64(top) >= 0
    }

    /// [`super::min_max_portable`] in eight lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn min_max(q: &[i64]) -> (i64, i64) {
        let full = q.len() / 8 * 8;
        let (mut vmn, mut vmx) = (_mm512_set1_epi64(i64::MAX), _mm512_set1_epi64(i64::MIN));
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ q.len().
            let v = unsafe { _mm512_loadu_si512(q.as_ptr().add(i).cast()) };
            vmx = _mm512_max_epi64(vmx, v);
            vmn = _mm512_min_epi64(vmn, v);
        }
        let (tn, tx) = super::min_max_portable(&q[full..]);
        (_mm512_reduce_min_epi64(vmn).min(tn), _mm512_reduce_max_epi64(vmx).max(tx))
    }

    /// [`super::gelu_ibert_portable`] in eight lanes (`vpmullq`, `vpsravq`).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn gelu_ibert(k: &super::IbertGelu, q: &[i64], out: &mut [i64]) {
        let len = q.len();
        assert!(out.len() == len && (!k.per_element() || k.b.len() == len));
        let full = len / 8 * 8;
        let per = k.per_element();
        let zero = _mm512_setzero_si512();
        let lane = |v: &[i64], i: usize| {
            if per {
                // SAFETY: i + 8 ≤ len = v.len() for per-element constants.
                unsafe { _mm512_loadu_si512(v.as_ptr().add(i).cast()) }
            } else {
                _mm512_set1_epi64(v[0])
            }
        };
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ len = q.len() = out.len().
            unsafe {
                let x = _mm512_loadu_si512(q.as_ptr().add(i).cast());
                let b = lane(k.b, i);
                let t = _mm512_add_epi64(_mm512_min_epi64(_mm512_abs_epi64(x), _mm512_sub_epi64(zero, b)), b);
                let y = _mm512_add_epi64(_mm512_mullo_epi64(t, t), lane(k.c, i));
                let y = _mm512_mask_sub_epi64(y, _mm512_cmplt_epi64_mask(x, zero), zero, y);
                let s = _mm512_add_epi64(_mm512_srav_epi64(y, lane(k.n, i)), lane(k.shift, i));
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), _mm512_mullo_epi64(x, s));
            }
        }
        super::gelu_ibert_portable(&k.tail(full), &q[full..], &mut out[full..]);
    }

    /// [`super::lut_map_portable`]: gathers masked to the lanes whose index is inside the table.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn lut_map(q: &[i64], lo: i64, table: &[i64], out: &mut [i64]) -> bool {
        let len = q.len();
        assert!(out.len() == len);
        let full = len / 8 * 8;
        let (vlo, vlen) = (_mm512_set1_epi64(lo), _mm512_set1_epi64(table.len() as i64));
        let mut bad: __mmask8 = 0;
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ len = out.len(); only lanes with 0 ≤ index < table.len() are read.
            unsafe {
                let idx = _mm512_sub_epi64(_mm512_loadu_si512(q.as_ptr().add(i).cast()), vlo);
                let inside = _mm512_cmplt_epu64_mask(idx, vlen);
                bad |= !inside;
                let v = _mm512_mask_i64gather_epi64::<8>(_mm512_setzero_si512(), inside, idx, table.as_ptr());
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), v);
            }
        }
        super::lut_map_portable(&q[full..], lo, table, &mut out[full..]) && bad == 0
    }

    /// [`super::stats_portable`] in eight lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn stats(row: &[i64]) -> super::RowStats {
        let full = row.len() / 8 * 8;
        let (mut s, mut ss) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let (mut mn, mut mx) = (_mm512_set1_epi64(i64::MAX), _mm512_set1_epi64(i64::MIN));
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ row.len().
            let q = unsafe { _mm512_loadu_si512(row.as_ptr().add(i).cast()) };
            s = _mm512_add_epi64(s, q);
            ss = _mm512_add_epi64(ss, _mm512_mullo_epi64(q, q));
            mn = _mm512_min_epi64(mn, q);
            mx = _mm512_max_epi64(mx, q);
        }
        let t = super::stats_portable(&row[full..]);
        super::RowStats {
            sum: _mm512_reduce_add_epi64(s) + t.sum,
            sumsq: _mm512_reduce_add_epi64(ss) + t.sumsq,
            min: _mm512_reduce_min_epi64(mn).min(t.min),
            max: _mm512_reduce_max_epi64(mx).max(t.max),
        }
    }

    /// [`super::sumsq_shifted_portable`] in eight lanes (arithmetic shifts, as `>>` on i64).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn sumsq_shifted(row: &[i64], m: i64, sh: u32) -> i64 {
        let full = row.len() / 8 * 8;
        let (vm, vsh) = (_mm512_set1_epi64(m), _mm_cvtsi64_si128(i64::from(sh)));
        let mut ss = _mm512_setzero_si512();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ row.len().
            let q = unsafe { _mm512_loadu_si512(row.as_ptr().add(i).cast()) };
            let y = _mm512_sra_epi64(_mm512_sub_epi64(q, vm), vsh);
            ss = _mm512_add_epi64(ss, _mm512_mullo_epi64(y, y));
        }
        _mm512_reduce_add_epi64(ss) + super::sumsq_shifted_portable(&row[full..], m, sh)
    }

    /// [`super::affine_portable`] in eight lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn affine(row: &[i64], m: i64, factor: i64, bias: &[i64], out: &mut [i64]) {
        let len = row.len();
        assert!(bias.len() == len && out.len() == len);
        let full = len / 8 * 8;
        let (vm, vf) = (_mm512_set1_epi64(m), _mm512_set1_epi64(factor));
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ len = bias.len() = out.len().
            unsafe {
                let q = _mm512_loadu_si512(row.as_ptr().add(i).cast());
                let b = _mm512_loadu_si512(bias.as_ptr().add(i).cast());
                let v = _mm512_srai_epi64::<1>(_mm512_mullo_epi64(_mm512_sub_epi64(q, vm), vf));
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), _mm512_add_epi64(v, b));
            }
        }
        super::affine_portable(&row[full..], m, factor, &bias[full..], &mut out[full..]);
    }

    /// [`super::scale_portable`] for `0 ≤ e_j·f < 2^63` (so the logical shift is the arithmetic one).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn scale(e: &[i64], f: i64, shift: u32, top: i64, out: &mut [i64]) -> bool {
        let c = e.len();
        assert!(out.len() == c);
        let full = c / 8 * 8;
        let (vf, vt) = (_mm512_set1_epi64(f), _mm512_set1_epi64(top));
        let sh = _mm_cvtsi64_si128(i64::from(shift));
        let mut any = _mm512_setzero_si512();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ c = out.len().
            unsafe {
                let v = _mm512_loadu_si512(e.as_ptr().add(i).cast());
                let v = _mm512_min_epi64(_mm512_srl_epi64(_mm512_mullo_epi64(v, vf), sh), vt);
                _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), v);
                any = _mm512_or_si512(any, v);
            }
        }
        let mut nz = _mm512_test_epi64_mask(any, any) != 0;
        for (o, &ei) in out[full..].iter_mut().zip(&e[full..]) {
            *o = ((ei * f) >> shift).min(top);
            nz |= *o != 0;
        }
        nz
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The float-seeded root equals the exact one around every square and at random points.
    #[test]
    fn isqrt_u64_is_exact() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(3);
        let check = |v: u64| assert_eq!(u128::from(isqrt_u64(v)), crate::fixed::isqrt(u128::from(v)), "{v}");
        for k in (0u64..70_000).chain((0..2000).map(|i| (1u64 << 32) - 1 - i)) {
            for d in [-1i64, 0, 1] {
                check((k * k).wrapping_add_signed(d));
            }
        }
        for _ in 0..100_000 {
            check(r.gen::<u64>() >> r.gen_range(0..64));
        }
        check(u64::MAX);
    }

    /// Every level's table softmax equals the plain scalar loops, rows spanning the table
    /// exactly or one code more (refused), factors up to the 63-bit bound, masks from none to
    /// every element; random tables and tables that halve every m codes (AVX-512 computes
    /// those from their [`ShiftForm`]).
    #[test]
    fn lut_softmax_levels_agree() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(7);
        let mut forms = 0;
        for _ in 0..300 {
            let span = r.gen_range(1usize..300);
            let tmax = 1i64 << r.gen_range(0..40);
            let table: Vec<i64> = if r.gen_bool(0.5) {
                (0..=span).map(|_| r.gen_range(0..=tmax)).collect()
            } else {
                // Halving every m codes up to a clamp: the tables a ShiftForm computes.
                let (m, k, cap) = (r.gen_range(1usize..=16), r.gen_range(0u32..4), r.gen_range(0..=span + 2));
                let base: Vec<i64> = (0..m).map(|_| r.gen_range(1..=tmax)).collect();
                let t: Vec<i64> =
                    (0..=span).map(|d| d.min(cap)).map(|d| base[d % m].checked_shr(k * (d / m) as u32).unwrap_or(0)).collect();
                forms += usize::from(ShiftForm::find(&t).is_some());
                t
            };
            let c = r.gen_range(1usize..70);
            let lo = r.gen_range(-1000i64..1000);
            let wide = r.gen_bool(0.1);
            let row: Vec<i64> = (0..c).map(|_| lo + r.gen_range(0..=span as i64 + i64::from(wide))).collect();
            let shift = r.gen_range(0..40);
            let top = if r.gen_bool(0.5) { i64::MAX } else { r.gen_range(0..1000) };
            let tm = *table.iter().max().unwrap();
            let cut = r.gen_range(0..40);
            let f = r.gen_range(0..=(i64::MAX / tm.max(1)) >> cut);
            let p = [0.0, 0.0, 0.2, 0.9, 1.0][r.gen_range(0..5)];
            let mask: Vec<bool> = (0..c).map(|_| r.gen_bool(p)).collect();
            let mask = (p > 0.0).then_some(&mask[..]);
            let mut want = None;
            for level in Level::available() {
                let k = LutSoftmax::new(level, &table, c, shift, top).unwrap();
                let (mut e, mut out, mut cond) = (vec![0; c], vec![0; c], Conditions::default());
                let ok = k.row(&row, mask, &mut e, &mut out, |s| Some((f, (s > 5).then_some(Condition::SumSaturated))), &mut cond);
                let got = (ok, out, cond.into_vec());
                let w = want.get_or_insert_with(|| got.clone());
                assert_eq!(&got, w, "{level:?}");
            }
        }
        assert!(forms > 50, "{forms} of the halving tables have a form");
    }
}

/// Random inputs of the fast-path equivalence tests.
#[cfg(test)]
pub(crate) mod cases {
    use super::super::Aux;
    use crate::fixed::{int_range, QTensor, Scale};
    use rand::{Rng, SeedableRng};

    /// The fast runs `runs` (named) against the definition's result `want`: the first that
    /// differs, with both results (compared through `Debug`, errors included).
    pub(crate) fn same_as_definition<T: std::fmt::Debug>(want: &T, runs: Vec<(String, T)>) -> Result<(), String> {
        let want = format!("{want:?}");
        for (what, got) in runs {
            if format!("{got:?}") != want {
                return Err(format!("{what} differs from the definition: {got:?} vs {want}"));
            }
        }
        Ok(())
    }

    /// [`same_as_definition`] of `def(None)` (the definition) against `runs` and then
    /// `def(Some(level))` at every CPU level this machine has.
    pub(crate) fn levels_same_as_definition<T: std::fmt::Debug>(
        def: impl Fn(Option<super::Level>) -> T,
        mut runs: Vec<(String, T)>,
    ) -> Result<(), String> {
        runs.extend(super::Level::available().into_iter().map(|l| (format!("{l:?}"), def(Some(l)))));
        same_as_definition(&def(None), runs)
    }

    /// `nrows` rows of `c` random `bits`-bit codes (uniform, narrow around a centre, two-valued,
    /// constant, or spanning the whole format), the whole tensor at one scale `2^[−14, 3)`.
    pub(crate) fn rows(bits: u32, signed: bool, c: usize, nrows: usize, seed: u64) -> QTensor {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let (lo, hi) = int_range(bits, signed);
        let mut q = Vec::with_capacity(nrows * c);
        for _ in 0..nrows {
            let centre = r.gen_range(lo..=hi);
            let spread = r.gen_range(0..=(hi - lo));
            match r.gen_range(0..6) {
                0 => q.extend((0..c).map(|_| r.gen_range(lo..=hi))),
                1 | 2 => q.extend((0..c).map(|_| (centre + r.gen_range(-spread / 8..=spread / 8)).clamp(lo, hi))),
                3 => {
                    let other = r.gen_range(lo..=hi);
                    q.extend((0..c).map(|_| if r.gen_bool(0.5) { centre } else { other }))
                }
                4 => q.extend((0..c).map(|j| if j % 2 == 0 { lo } else { hi })),
                _ => q.extend(std::iter::repeat_n(centre, c)),
            }
        }
        let s = 2f64.powf(r.gen_range(-14.0..3.0));
        QTensor::new(q, &[nrows, c], Scale::PerTensor(s), bits, signed).unwrap()
    }

    /// `x` with one random scale `2^[lo, hi)` per channel instead of its per-tensor scale.
    pub(crate) fn per_channel(x: QTensor, lo: f64, hi: f64, seed: u64) -> QTensor {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ 0xc4a7);
        let s: Vec<f64> = (0..x.row_len()).map(|_| 2f64.powf(r.gen_range(lo..hi))).collect();
        let shape = x.shape().to_vec();
        let (bits, signed) = (x.bits, x.signed);
        QTensor::new(x.data().to_vec(), &shape, Scale::PerChannel(s), bits, signed).unwrap()
    }

    /// Every `bits`-bit code once, as one row, at scale `s`.
    pub(crate) fn all_codes(bits: u32, signed: bool, s: f64) -> QTensor {
        let (lo, hi) = int_range(bits, signed);
        let q: Vec<i64> = (lo..=hi).collect();
        let n = q.len();
        QTensor::new(q, &[1, n], Scale::PerTensor(s), bits, signed).unwrap()
    }

    /// Per-channel LayerNorm parameters for rows of `c`: γ and β each zero, tiny, huge or
    /// ordinary, either sign.
    pub(crate) fn ln_affine(c: usize, seed: u64) -> Aux {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ 0x1a7e);
        let mut value = || -> f32 {
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
        let gamma = (0..c).map(|_| value()).collect();
        let beta = (0..c).map(|_| value()).collect();
        Aux { gamma: Some(gamma), beta: Some(beta), ..Aux::default() }
    }

    /// With probability 1/4 a softmax mask for `x`: per row none, some or every element masked.
    pub(crate) fn mask(x: &QTensor, seed: u64) -> Aux {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        if !r.gen_bool(0.25) {
            return Aux::default();
        }
        let c = x.row_len();
        let rows = x.data().len() / c.max(1);
        let mut m = Vec::with_capacity(rows * c);
        for _ in 0..rows {
            let p = [0.0, 0.3, 1.0][r.gen_range(0..3)];
            m.extend((0..c).map(|_| r.gen_bool(p)));
        }
        Aux { mask: Some(m.into()), ..Aux::default() }
    }

    /// Every pair `[a, b]` of `bits`-bit codes as rows of two (exhaustive two-element rows).
    pub(crate) fn all_pairs(bits: u32, signed: bool, s: f64) -> QTensor {
        let (lo, hi) = int_range(bits, signed);
        let q: Vec<i64> = (lo..=hi).flat_map(|a| (lo..=hi).flat_map(move |b| [a, b])).collect();
        let n = q.len() / 2;
        QTensor::new(q, &[n, 2], Scale::PerTensor(s), bits, signed).unwrap()
    }
}
