//! Vector kernels of the units' Integer-mode fast paths, with runtime CPU detection.
//!
//! Each kernel has a portable body (also compiled with AVX2 enabled, where LLVM vectorises
//! it) and, on x86-64 CPUs with AVX-512F/DQ, an explicit AVX-512 version. Every kernel
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
    /// Explicit AVX-512F/DQ kernels.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Level {
    /// The best level this CPU runs.
    pub(crate) fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
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
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
                v.push(Level::Avx512);
            }
        }
        v
    }
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
        Some(LutSoftmax { level, table, tmax, shift, top })
    }

    /// One row into `out` (the same length as `row`; `e` is scratch of that length).
    /// `factor(Σe)` gives the row's factor and a condition to count, or `None` to refuse the
    /// row. Returns false, having written nothing and counted nothing, when the row spans more
    /// codes than the table or `max T · factor` does not fit 63 bits; the caller then runs its
    /// definition on the row. Counts [`Condition::AllZeroRow`] after `factor`'s condition.
    pub(crate) fn row(
        &self,
        row: &[i64],
        e: &mut [i64],
        out: &mut [i64],
        factor: impl FnOnce(i64) -> Option<(i64, Option<Condition>)>,
        cond: &mut Conditions,
    ) -> bool {
        assert!(e.len() == row.len() && out.len() == row.len());
        let Some(sum) = self.exp(row, e) else { return false };
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

    /// `e_j = T[max − q_j]` and `Σe`, or `None` when `max − min` is beyond the table.
    fn exp(&self, row: &[i64], e: &mut [i64]) -> Option<i64> {
        match self.level {
            Level::Scalar => exp_portable(row, self.table, e),
            // SAFETY: the level was detected (or listed as available) on this CPU.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { exp_avx2(row, self.table, e) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::lut_exp(row, self.table, e) },
        }
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

#[inline(always)]
fn exp_portable(row: &[i64], table: &[i64], e: &mut [i64]) -> Option<i64> {
    let mx = row.iter().copied().fold(i64::MIN, i64::max);
    let mn = row.iter().copied().fold(i64::MAX, i64::min);
    // Also keeps every index `max − q` inside the table.
    if i128::from(mx) - i128::from(mn) >= table.len() as i128 {
        return None;
    }
    let mut sum = 0i64;
    for (ei, &q) in e.iter_mut().zip(row) {
        *ei = table[(mx - q) as usize];
        sum += *ei;
    }
    Some(sum)
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
fn exp_avx2(row: &[i64], table: &[i64], e: &mut [i64]) -> Option<i64> {
    exp_portable(row, table, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scale_avx2(e: &[i64], f: i64, shift: u32, top: i64, out: &mut [i64]) -> bool {
    scale_portable(e, f, shift, top, out)
}

/// The AVX-512F/DQ kernels: eight 64-bit lanes, the last `len mod 8` elements in scalar code.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::exp_portable`], the table read by gathers.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn lut_exp(row: &[i64], table: &[i64], e: &mut [i64]) -> Option<i64> {
        let c = row.len();
        assert!(e.len() == c);
        let full = c / 8 * 8;
        let (mut vmx, mut vmn) = (_mm512_set1_epi64(i64::MIN), _mm512_set1_epi64(i64::MAX));
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ c.
            let q = unsafe { _mm512_loadu_si512(row.as_ptr().add(i).cast()) };
            vmx = _mm512_max_epi64(vmx, q);
            vmn = _mm512_min_epi64(vmn, q);
        }
        let mut mx = _mm512_reduce_max_epi64(vmx);
        let mut mn = _mm512_reduce_min_epi64(vmn);
        for &q in &row[full..] {
            mx = mx.max(q);
            mn = mn.min(q);
        }
        // Every index max − q is then in 0..table.len(): the gathers stay inside the table.
        if i128::from(mx) - i128::from(mn) >= table.len() as i128 {
            return None;
        }
        let m = _mm512_set1_epi64(mx);
        let mut vs = _mm512_setzero_si512();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ c = e.len(); the indices are inside the table (checked above).
            unsafe {
                let q = _mm512_loadu_si512(row.as_ptr().add(i).cast());
                let v = _mm512_i64gather_epi64::<8>(_mm512_sub_epi64(m, q), table.as_ptr());
                _mm512_storeu_si512(e.as_mut_ptr().add(i).cast(), v);
                vs = _mm512_add_epi64(vs, v);
            }
        }
        let mut sum = _mm512_reduce_add_epi64(vs);
        for (ei, &q) in e[full..].iter_mut().zip(&row[full..]) {
            *ei = table[(mx - q) as usize];
            sum += *ei;
        }
        Some(sum)
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

    /// Every level's table softmax equals the plain scalar loops, rows spanning the table
    /// exactly or one code more (refused), factors up to the 63-bit bound.
    #[test]
    fn lut_softmax_levels_agree() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let span = r.gen_range(1usize..300);
            let tmax = 1i64 << r.gen_range(0..40);
            let table: Vec<i64> = (0..=span).map(|_| r.gen_range(0..=tmax)).collect();
            let c = r.gen_range(1usize..70);
            let lo = r.gen_range(-1000i64..1000);
            let wide = r.gen_bool(0.1);
            let row: Vec<i64> = (0..c).map(|_| lo + r.gen_range(0..=span as i64 + i64::from(wide))).collect();
            let shift = r.gen_range(0..40);
            let top = if r.gen_bool(0.5) { i64::MAX } else { r.gen_range(0..1000) };
            let tm = *table.iter().max().unwrap();
            let cut = r.gen_range(0..40);
            let f = r.gen_range(0..=(i64::MAX / tm.max(1)) >> cut);
            let mut want = None;
            for level in Level::available() {
                let k = LutSoftmax::new(level, &table, c, shift, top).unwrap();
                let (mut e, mut out, mut cond) = (vec![0; c], vec![0; c], Conditions::default());
                let ok = k.row(&row, &mut e, &mut out, |s| Some((f, (s > 5).then_some(Condition::SumSaturated))), &mut cond);
                let got = (ok, out, cond.into_vec());
                let w = want.get_or_insert_with(|| got.clone());
                assert_eq!(&got, w, "{level:?}");
            }
        }
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
