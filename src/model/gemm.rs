//! Exact integer kernels of the integer forward: i16 × i16 → i32 GEMM, attention·V products
//! (linear probabilities, or FQ-ViT log2 codes as shift-and-add) and the dyadic requantiser's
//! 64-bit fast path.
//!
//! Exactness: every kernel accumulates in integers, so there is nothing to round; the only risk
//! is overflow, and each caller proves the bound before choosing the i32 kernels
//! ([`gemm_fits_i32`], [`av_fits_i32`]); otherwise the i64 kernels run. The SIMD versions are
//! the same Rust loops compiled with AVX2 / AVX-512 enabled (selected at run time): LLVM turns
//! the sign-extended i16 products summed in i32 into `vpmaddwd`/`vpdpwssd`, which compute
//! exactly the same sums (integer addition is associative).

use crate::fixed::{shift_round, Dyadic, Rounding};

/// Whether `k` products of operands bounded by `max_x` and `max_w` in magnitude always sum within i32.
pub fn gemm_fits_i32(k: usize, max_x: i64, max_w: i64) -> bool {
    (k as i128) * i128::from(max_x) * i128::from(max_w) < (1i128 << 31)
}

/// `out[t][o] = Σ_k x[t][k]·w[o][k]`: x `[rows, k]`, w `[n, k]` row-major, i32 accumulators.
///
/// The caller guarantees `gemm_fits_i32(k, max|x|, max|w|)`, so no partial sum overflows.
pub fn gemm_i16(x: &[i16], rows: usize, w: &[i16], n: usize, out: &mut [i32]) {
    let k = if rows == 0 { 0 } else { x.len() / rows };
    assert!(x.len() == rows * k && w.len() == n * k && out.len() == rows * n, "gemm_i16: inconsistent sizes");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vnni") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { gemm_avx512(x, rows, w, n, k, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            unsafe { gemm_avx2(x, rows, w, n, k, out) };
            return;
        }
    }
    gemm_body(x, rows, w, n, k, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_avx512(x: &[i16], rows: usize, w: &[i16], n: usize, k: usize, out: &mut [i32]) {
    gemm_body(x, rows, w, n, k, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2(x: &[i16], rows: usize, w: &[i16], n: usize, k: usize, out: &mut [i32]) {
    gemm_body(x, rows, w, n, k, out);
}

/// Plain dot products, four weight rows per pass over an input row (the input row stays in
/// registers/L1); LLVM vectorises each reduction.
#[inline(always)]
fn gemm_body(x: &[i16], rows: usize, w: &[i16], n: usize, k: usize, out: &mut [i32]) {
    for t in 0..rows {
        let xr = &x[t * k..(t + 1) * k];
        let orow = &mut out[t * n..(t + 1) * n];
        let mut o = 0;
        while o + 4 <= n {
            let w0 = &w[o * k..(o + 1) * k];
            let w1 = &w[(o + 1) * k..(o + 2) * k];
            let w2 = &w[(o + 2) * k..(o + 3) * k];
            let w3 = &w[(o + 3) * k..(o + 4) * k];
            let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
            for i in 0..k {
                let xv = i32::from(xr[i]);
                a0 += xv * i32::from(w0[i]);
                a1 += xv * i32::from(w1[i]);
                a2 += xv * i32::from(w2[i]);
                a3 += xv * i32::from(w3[i]);
            }
            orow[o] = a0;
            orow[o + 1] = a1;
            orow[o + 2] = a2;
            orow[o + 3] = a3;
            o += 4;
        }
        while o < n {
            let wr = &w[o * k..(o + 1) * k];
            orow[o] = xr.iter().zip(wr).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
            o += 1;
        }
    }
}

/// The same product with i64 accumulators (operands of any i16 value, any length).
pub fn gemm_i16_wide(x: &[i16], rows: usize, w: &[i16], n: usize, out: &mut [i64]) {
    let k = if rows == 0 { 0 } else { x.len() / rows };
    assert!(x.len() == rows * k && w.len() == n * k && out.len() == rows * n, "gemm_i16_wide: inconsistent sizes");
    for t in 0..rows {
        let xr = &x[t * k..(t + 1) * k];
        for o in 0..n {
            let wr = &w[o * k..(o + 1) * k];
            out[t * n + o] = xr.iter().zip(wr).map(|(&a, &b)| i64::from(a) * i64::from(b)).sum();
        }
    }
}

/// Whether `t` products of a probability ≤ `max_p` and a value ≤ `max_v` in magnitude sum within i32.
pub fn av_fits_i32(t: usize, max_p: i64, max_v: i64) -> bool {
    gemm_fits_i32(t, max_p, max_v)
}

/// Probabilities times values for one head: `out[i][:] = Σ_j p[i][j]·v[j][:]`.
///
/// `p` is `[t, t]` (row i = query i), `v` rows of `hd` values at stride `v_stride` starting at
/// `v_off`; `out` rows of `hd` at stride `o_stride` from `o_off`. Accumulates in `A` (i32 when
/// [`av_fits_i32`] holds, else i64).
#[allow(clippy::too_many_arguments)]
pub fn attn_v<A: Acc>(
    p: &[i32],
    t: usize,
    v: &[i16],
    v_stride: usize,
    v_off: usize,
    hd: usize,
    out: &mut [A],
    o_stride: usize,
    o_off: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            unsafe { attn_v_avx2(p, t, v, v_stride, v_off, hd, out, o_stride, o_off) };
            return;
        }
    }
    attn_v_body(p, t, v, v_stride, v_off, hd, out, o_stride, o_off);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn attn_v_avx2<A: Acc>(p: &[i32], t: usize, v: &[i16], vs: usize, vo: usize, hd: usize, out: &mut [A], os: usize, oo: usize) {
    attn_v_body(p, t, v, vs, vo, hd, out, os, oo);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attn_v_body<A: Acc>(p: &[i32], t: usize, v: &[i16], vs: usize, vo: usize, hd: usize, out: &mut [A], os: usize, oo: usize) {
    for i in 0..t {
        let o = &mut out[i * os + oo..i * os + oo + hd];
        o.iter_mut().for_each(|x| *x = A::ZERO);
        for (j, &pj) in p[i * t..(i + 1) * t].iter().enumerate() {
            if pj == 0 {
                continue;
            }
            let pj = A::from_i32(pj);
            let vr = &v[j * vs + vo..j * vs + vo + hd];
            for (x, &vv) in o.iter_mut().zip(vr) {
                *x = x.add(pj.mul(A::from_i16(vv)));
            }
        }
    }
}

/// FQ-ViT's attention·V with log2 probabilities, as shift-and-add: `out[i][:] = Σ_j v[j][:]·2^(top − k_ij)`,
/// codes `k < 0` (the zero flag) skipped. Same layout as [`attn_v`]; i64 accumulators.
#[allow(clippy::too_many_arguments)]
pub fn attn_v_log2(codes: &[i32], t: usize, top: u32, v: &[i16], vs: usize, vo: usize, hd: usize, out: &mut [i64], os: usize, oo: usize) {
    for i in 0..t {
        let o = &mut out[i * os + oo..i * os + oo + hd];
        o.iter_mut().for_each(|x| *x = 0);
        for (j, &k) in codes[i * t..(i + 1) * t].iter().enumerate() {
            if k < 0 || k as u32 > top {
                continue; // zero flag (or a code below the expansion's resolution: exactly 0 there)
            }
            let sh = top - k as u32;
            let vr = &v[j * vs + vo..j * vs + vo + hd];
            for (x, &vv) in o.iter_mut().zip(vr) {
                *x += i64::from(vv) << sh;
            }
        }
    }
}

/// Accumulator type of the attention·V kernel.
pub trait Acc: Copy + Send + Sync + 'static {
    /// Zero.
    const ZERO: Self;
    /// From a probability.
    fn from_i32(v: i32) -> Self;
    /// From a value.
    fn from_i16(v: i16) -> Self;
    /// Sum.
    fn add(self, o: Self) -> Self;
    /// Product.
    fn mul(self, o: Self) -> Self;
    /// As i64.
    fn to_i64(self) -> i64;
}

impl Acc for i32 {
    const ZERO: Self = 0;
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v
    }
    #[inline(always)]
    fn from_i16(v: i16) -> Self {
        i32::from(v)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
}

impl Acc for i64 {
    const ZERO: Self = 0;
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        i64::from(v)
    }
    #[inline(always)]
    fn from_i16(v: i16) -> Self {
        i64::from(v)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        self
    }
}

/// A dyadic requantiser prepared for the 64-bit fast path: `RNE(z·m / 2^e)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requant {
    /// The multiplier from [`Dyadic::from_ratio`].
    pub d: Dyadic,
}

impl Requant {
    /// Requantiser for the real ratio `s_in / s_out` (I-ViT `batch_frexp`).
    pub fn new(ratio: f64) -> Requant {
        Requant { d: Dyadic::from_ratio(ratio) }
    }

    /// Exactly [`Dyadic::apply`]: in i64 when `|z| < 2^31` (then `|z·m| ≤ 2^62`), else in i128.
    #[inline(always)]
    pub fn apply(&self, z: i64) -> i64 {
        let Dyadic { m, e } = self.d;
        if (1..=62).contains(&e) && z.unsigned_abs() < (1u64 << 31) {
            let p = z * m; // |m| ≤ 2^31, |z| < 2^31: no overflow
            let q = p >> e;
            let r = p - (q << e); // 0 ≤ r < 2^e
            let half = 1i64 << (e - 1);
            q + i64::from(r > half || (r == half && q & 1 == 1))
        } else {
            let v = if e >= 0 {
                shift_round(i128::from(z) * i128::from(m), e as u32, Rounding::HalfEven)
            } else {
                (i128::from(z) * i128::from(m)) << (-e) as u32
            };
            v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn reference(x: &[i16], rows: usize, w: &[i16], n: usize) -> Vec<i64> {
        let k = x.len() / rows;
        let mut o = vec![0i64; rows * n];
        for t in 0..rows {
            for j in 0..n {
                for i in 0..k {
                    o[t * n + j] += i64::from(x[t * k + i]) * i64::from(w[j * k + i]);
                }
            }
        }
        o
    }

    #[test]
    fn gemm_matches_i64_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for &(rows, k, n, lim) in
            &[(1, 1, 1, 127), (3, 7, 5, 127), (17, 96, 43, 128), (9, 768, 13, 128), (5, 3, 9, 32), (197, 192, 10, 128)]
        {
            let x: Vec<i16> = (0..rows * k).map(|_| rng.gen_range(-lim..lim) as i16).collect();
            let w: Vec<i16> = (0..n * k).map(|_| rng.gen_range(-lim..lim) as i16).collect();
            assert!(gemm_fits_i32(k, lim as i64, lim as i64));
            let mut out = vec![0i32; rows * n];
            gemm_i16(&x, rows, &w, n, &mut out);
            let r = reference(&x, rows, &w, n);
            assert_eq!(out.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), r, "{rows}x{k}x{n}");
            let mut wide = vec![0i64; rows * n];
            gemm_i16_wide(&x, rows, &w, n, &mut wide);
            assert_eq!(wide, r);
        }
    }

    #[test]
    fn gemm_extreme_operands_at_the_bound() {
        // All operands -128: every product is +2^14, the sum the largest the bound allows.
        let k = (1usize << 17) - 1;
        assert!(gemm_fits_i32(k, 128, 128));
        assert!(!gemm_fits_i32(k + 1, 128, 128));
        let x = vec![-128i16; k];
        let w = vec![-128i16; 2 * k];
        let mut out = vec![0i32; 2];
        gemm_i16(&x, 1, &w, 2, &mut out);
        assert_eq!(i64::from(out[0]), (k as i64) << 14);
    }

    #[test]
    fn attention_kernels_match_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (t, hd, heads) = (13, 8, 2);
        let vs = 3 * heads * hd;
        let v: Vec<i16> = (0..t * vs).map(|_| rng.gen_range(-128..128)).collect();
        let p: Vec<i32> = (0..t * t).map(|_| rng.gen_range(0..=32768)).collect();
        let codes: Vec<i32> = (0..t * t).map(|_| rng.gen_range(-1..16)).collect();
        let os = heads * hd;
        for h in 0..heads {
            let vo = 2 * heads * hd + h * hd;
            let mut o32 = vec![0i32; t * os];
            let mut o64 = vec![0i64; t * os];
            let mut ol = vec![0i64; t * os];
            attn_v(&p, t, &v, vs, vo, hd, &mut o32, os, h * hd);
            attn_v(&p, t, &v, vs, vo, hd, &mut o64, os, h * hd);
            attn_v_log2(&codes, t, 15, &v, vs, vo, hd, &mut ol, os, h * hd);
            for i in 0..t {
                for d in 0..hd {
                    let mut s = 0i64;
                    let mut sl = 0i64;
                    for j in 0..t {
                        let vv = i64::from(v[j * vs + vo + d]);
                        s += i64::from(p[i * t + j]) * vv;
                        if codes[i * t + j] >= 0 {
                            sl += vv * (1i64 << (15 - codes[i * t + j]));
                        }
                    }
                    assert_eq!(i64::from(o32[i * os + h * hd + d]), s);
                    assert_eq!(o64[i * os + h * hd + d], s);
                    assert_eq!(ol[i * os + h * hd + d], sl);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn requant_fast_path_is_dyadic_apply(z in any::<i64>(), ratio in 1e-9f64..1e3, neg in any::<bool>(), small in any::<bool>()) {
            let z = if small { z % (1i64 << 31) } else { z >> 20 };
            let r = Requant::new(if neg { -ratio } else { ratio });
            let want = r.d.apply(z);
            let want = want.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
            prop_assert_eq!(r.apply(z), want);
        }
    }
}
