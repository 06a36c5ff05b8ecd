//! Exact integer kernels of the integer forward: i16 × i16 → i32 GEMM, attention·V products
//! (linear probabilities, or FQ-ViT log2 codes as shift-and-add) and the dyadic requantiser's
//! 64-bit fast path.
//!
//! Exactness: every kernel accumulates in integers, so there is nothing to round; the only risk
//! is overflow, and each caller proves the bound before choosing the i32 kernels
//! ([`gemm_fits_i32`], [`av_fits_i32`]); otherwise the i64 kernels run. The GEMM's SIMD kernel
//! (AVX2 `vpmaddwd`, selected at run time, with a portable kernel on the same packed layout as
//! fallback) adds the same products in another order, which changes nothing for integers that
//! cannot overflow. Tests compare every kernel with plain i64 loops.
//! Where the CPU has AVX-512 VNNI, `vpdpwssd` (the same pairwise products, added in one
//! instruction, wrapping like `vpaddd`) runs a whole 16-channel panel per register.

use crate::fixed::{shift_round, Dyadic, Rounding};

/// Whether `k` products of operands bounded by `max_x` and `max_w` in magnitude always sum within i32.
pub fn gemm_fits_i32(k: usize, max_x: i64, max_w: i64) -> bool {
    (k as i128) * i128::from(max_x) * i128::from(max_w) < (1i128 << 31)
}

/// Output channels per packed panel.
const PANEL: usize = 16;

/// A weight matrix `[n, k]` packed for the GEMM kernels: panels of 16 output channels, each
/// holding for every pair of inputs `(2j, 2j+1)` the 16 channels' two weights side by side
/// (zero-padded to whole panels and an even k), so two 32-byte loads feed `vpmaddwd`.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    data: Vec<i16>,
    /// Output channels.
    pub n: usize,
    /// Inputs per channel.
    pub k: usize,
    k2: usize,
}

impl Packed {
    /// Pack row-major `w` `[n, k]`.
    pub fn new(w: &[i16], n: usize, k: usize) -> Packed {
        assert_eq!(w.len(), n * k, "Packed::new: w is not [n, k]");
        let k2 = k.div_ceil(2);
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0i16; panels * k2 * 2 * PANEL];
        for o in 0..n {
            let (p, lane) = (o / PANEL, o % PANEL);
            for i in 0..k {
                data[(p * k2 + i / 2) * 2 * PANEL + 2 * lane + i % 2] = w[o * k + i];
            }
        }
        Packed { data, n, k, k2 }
    }

    fn panel(&self, p: usize) -> &[i16] {
        &self.data[p * self.k2 * 2 * PANEL..(p + 1) * self.k2 * 2 * PANEL]
    }
}

/// `out[t][o] = Σ_k x[t][k]·w[o][k]`: x `[rows, k]` row-major, w packed, i32 accumulators.
///
/// The caller guarantees `gemm_fits_i32(k, max|x|, max|w|)`, so the exact sum fits in i32.
/// (The kernels add in a different order than a plain loop; with wrapping i32 arithmetic every
/// order gives the same result modulo 2^32, which is the exact sum when it fits.)
pub fn gemm_i16(x: &[i16], rows: usize, w: &Packed, out: &mut [i32]) {
    let k = w.k;
    assert!(x.len() == rows * k && out.len() == rows * w.n, "gemm_i16: inconsistent sizes");
    // Input pairs are read as one i32: rows need an even length.
    let padded;
    let (xs, ks) = if k % 2 == 1 {
        let mut p = vec![0i16; rows * (k + 1)];
        for t in 0..rows {
            p[t * (k + 1)..t * (k + 1) + k].copy_from_slice(&x[t * k..(t + 1) * k]);
        }
        padded = p;
        (&padded[..], k + 1)
    } else {
        (x, k)
    };
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_vnni() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { x86::gemm_vnni(xs, ks, rows, w, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the feature the function is compiled for.
            unsafe { x86::gemm_avx2(xs, ks, rows, w, out) };
            return;
        }
    }
    gemm_scalar(xs, ks, rows, w, out);
}

/// Portable kernel on the packed layout (reference for the SIMD kernels).
fn gemm_scalar(x: &[i16], ks: usize, rows: usize, w: &Packed, out: &mut [i32]) {
    for t in 0..rows {
        let xr = &x[t * ks..(t + 1) * ks];
        for p in 0..w.n.div_ceil(PANEL) {
            let pan = w.panel(p);
            let mut acc = [0i32; PANEL];
            for j in 0..w.k2 {
                let (a, b) = (i32::from(xr[2 * j]), i32::from(xr[2 * j + 1]));
                let wv = &pan[j * 2 * PANEL..(j + 1) * 2 * PANEL];
                for (l, acc) in acc.iter_mut().enumerate() {
                    *acc = acc.wrapping_add(a * i32::from(wv[2 * l])).wrapping_add(b * i32::from(wv[2 * l + 1]));
                }
            }
            let o0 = p * PANEL;
            let m = PANEL.min(w.n - o0);
            out[t * w.n + o0..t * w.n + o0 + m].copy_from_slice(&acc[..m]);
        }
    }
}

/// Output channels per panel of the u8 × i8 kernel (one zmm of i32 sums).
const PANEL8: usize = 16;

/// A weight matrix `[n, k]` of i8 values packed for the u8 × i8 kernel (`vpdpbusd`): panels of
/// 16 output channels, each holding for every quad of inputs `(4j..4j+3)` the 16 channels'
/// four weights side by side (zero-padded to whole panels and k a multiple of 4), so one
/// 64-byte load feeds a panel step; with each channel's weight sum for the offset correction.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed8 {
    data: Vec<i8>,
    /// `Σ_k w[o][k]` per output channel (padded to whole panels).
    colsum: Vec<i32>,
    /// Output channels.
    pub n: usize,
    /// Inputs per channel.
    pub k: usize,
    k4: usize,
}

impl Packed8 {
    /// Pack row-major `w` `[n, k]`; None when a weight is outside i8.
    pub fn new(w: &[i16], n: usize, k: usize) -> Option<Packed8> {
        assert_eq!(w.len(), n * k, "Packed8::new: w is not [n, k]");
        if w.iter().any(|&v| i8::try_from(v).is_err()) {
            return None;
        }
        let k4 = k.div_ceil(4);
        let panels = n.div_ceil(PANEL8);
        let mut data = vec![0i8; panels * k4 * 4 * PANEL8];
        let mut colsum = vec![0i32; panels * PANEL8];
        for o in 0..n {
            let (p, lane) = (o / PANEL8, o % PANEL8);
            for i in 0..k {
                data[(p * k4 + i / 4) * 4 * PANEL8 + 4 * lane + i % 4] = w[o * k + i] as i8;
            }
            colsum[o] = w[o * k..(o + 1) * k].iter().map(|&v| i32::from(v)).fold(0i32, i32::wrapping_add);
        }
        Some(Packed8 { data, colsum, n, k, k4 })
    }

    fn panel(&self, p: usize) -> &[i8] {
        &self.data[p * self.k4 * 4 * PANEL8..(p + 1) * self.k4 * 4 * PANEL8]
    }
}

/// Whether the u8 × i8 kernel runs natively here (AVX-512 VNNI); elsewhere [`gemm_i8`] runs a
/// portable loop and callers should prefer [`gemm_i16`].
pub fn has_u8_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::has_vnni()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[t][o] = Σ_k x[t][k]·w[o][k]` with the u8 × i8 kernel, for `x + offset` in `0..=255`
/// (`offset` 128 for signed 8-bit codes, 0 for probabilities up to 255); false, with `out`
/// untouched, when some `x + offset` is outside that range.
///
/// The kernel sums `(x + offset)·w` and subtracts `offset·Σ_k w`; in wrapping i32 arithmetic
/// the result is the exact sum modulo 2^32, so it is the exact sum when the caller guarantees
/// `gemm_fits_i32(k, max|x|, max|w|)`, whatever the intermediate values. `xbuf` is scratch.
pub fn gemm_i8(x: &[i16], rows: usize, offset: i32, w: &Packed8, xbuf: &mut Vec<u8>, out: &mut [i32]) -> bool {
    let k = w.k;
    assert!(x.len() == rows * k && out.len() == rows * w.n, "gemm_i8: inconsistent sizes");
    let ks = w.k4 * 4;
    // Every byte is written below or is padding, which meets zero weights: the buffer is only
    // zeroed when it grows.
    if xbuf.len() < rows * ks {
        xbuf.resize(rows * ks, 0);
    }
    let xbuf = &mut xbuf[..rows * ks];
    let mut bad = false;
    for (xr, br) in x.chunks_exact(k.max(1)).zip(xbuf.chunks_exact_mut(ks.max(1))) {
        for (b, &v) in br.iter_mut().zip(xr) {
            let u = i32::from(v) + offset;
            bad |= !(0..=255).contains(&u);
            *b = u as u8;
        }
    }
    if bad {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_vnni() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { x86::gemm_u8_vnni(xbuf, ks, rows, offset, w, out) };
            return true;
        }
    }
    gemm_u8_scalar(xbuf, ks, rows, offset, w, out);
    true
}

/// Portable kernel on the [`Packed8`] layout (reference for the VNNI kernel).
fn gemm_u8_scalar(x: &[u8], ks: usize, rows: usize, offset: i32, w: &Packed8, out: &mut [i32]) {
    for t in 0..rows {
        let xr = &x[t * ks..(t + 1) * ks];
        for p in 0..w.n.div_ceil(PANEL8) {
            let pan = w.panel(p);
            let mut acc = [0i32; PANEL8];
            for j in 0..w.k4 {
                let wv = &pan[j * 4 * PANEL8..(j + 1) * 4 * PANEL8];
                for (l, acc) in acc.iter_mut().enumerate() {
                    for q in 0..4 {
                        *acc = acc.wrapping_add(i32::from(xr[4 * j + q]) * i32::from(wv[4 * l + q]));
                    }
                }
            }
            let o0 = p * PANEL8;
            let m = PANEL8.min(w.n - o0);
            for (l, &a) in acc.iter().enumerate().take(m) {
                out[t * w.n + o0 + l] = a.wrapping_sub(offset.wrapping_mul(w.colsum[o0 + l]));
            }
        }
    }
}

/// Run one named u8 × i8 kernel path (`scalar`, `avx512vnni`) for tests; None when the CPU lacks it.
#[doc(hidden)]
pub fn gemm_i8_path(path: &str, x: &[u8], rows: usize, offset: i32, w: &Packed8, out: &mut [i32]) -> Option<()> {
    assert_eq!(x.len(), rows * w.k4 * 4, "gemm_i8_path takes rows padded to a multiple of 4");
    match path {
        "scalar" => gemm_u8_scalar(x, w.k4 * 4, rows, offset, w, out),
        #[cfg(target_arch = "x86_64")]
        "avx512vnni" if x86::has_vnni() => unsafe { x86::gemm_u8_vnni(x, w.k4 * 4, rows, offset, w, out) },
        _ => return None,
    }
    Some(())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Packed, Packed8, PANEL, PANEL8};
    use std::arch::x86_64::*;

    /// Rows per micro-tile.
    const MR: usize = 4;

    #[inline(always)]
    unsafe fn pair(x: &[i16], at: usize) -> i32 {
        // SAFETY (caller): at + 1 < x.len().
        std::ptr::read_unaligned(x.as_ptr().add(at) as *const i32)
    }

    /// AVX2: the same tiles on 256-bit halves of a panel, `vpmaddwd` + `vpaddd`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gemm_avx2(x: &[i16], ks: usize, rows: usize, w: &Packed, out: &mut [i32]) {
        let mut t = 0;
        while t + MR <= rows {
            tile256::<MR>(x, ks, t, w, out);
            t += MR;
        }
        while t < rows {
            tile256::<1>(x, ks, t, w, out);
            t += 1;
        }
    }

    #[inline(always)]
    unsafe fn tile256<const R: usize>(x: &[i16], ks: usize, t: usize, w: &Packed, out: &mut [i32]) {
        for p in 0..w.n.div_ceil(PANEL) {
            let pa = w.panel(p).as_ptr();
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            for j in 0..w.k2 {
                let b0 = _mm256_loadu_si256(pa.add(j * 2 * PANEL) as *const __m256i);
                let b1 = _mm256_loadu_si256(pa.add(j * 2 * PANEL + PANEL) as *const __m256i);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_epi32(pair(x, (t + r) * ks + 2 * j));
                    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(xv, b0));
                    a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(xv, b1));
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let o0 = p * PANEL;
                let m = PANEL.min(w.n - o0);
                let mut tmp = [0i32; PANEL];
                _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, a[0]);
                _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut __m256i, a[1]);
                out[(t + r) * w.n + o0..(t + r) * w.n + o0 + m].copy_from_slice(&tmp[..m]);
            }
        }
    }

    /// Whether AVX-512 VNNI (with the AVX-512F it extends) is present.
    pub fn has_vnni() -> bool {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// AVX-512 VNNI: a panel step (16 channels × 2 inputs) is one zmm; tiles of 4 rows × 2 panels.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn gemm_vnni(x: &[i16], ks: usize, rows: usize, w: &Packed, out: &mut [i32]) {
        let mut t = 0;
        while t + MR <= rows {
            tile512::<MR>(x, ks, t, w, out);
            t += MR;
        }
        while t < rows {
            tile512::<1>(x, ks, t, w, out);
            t += 1;
        }
    }

    #[inline(always)]
    unsafe fn tile512<const R: usize>(x: &[i16], ks: usize, t: usize, w: &Packed, out: &mut [i32]) {
        let panels = w.n.div_ceil(PANEL);
        let mut p = 0;
        while p < panels {
            let two = p + 1 < panels;
            let pa = w.panel(p).as_ptr();
            let pb = if two { w.panel(p + 1).as_ptr() } else { pa };
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            for j in 0..w.k2 {
                let b0 = _mm512_loadu_si512(pa.add(j * 2 * PANEL) as *const _);
                let b1 = _mm512_loadu_si512(pb.add(j * 2 * PANEL) as *const _);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_epi32(pair(x, (t + r) * ks + 2 * j));
                    a[0] = _mm512_dpwssd_epi32(a[0], xv, b0);
                    if two {
                        a[1] = _mm512_dpwssd_epi32(a[1], xv, b1);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for (h, v) in a.iter().enumerate().take(if two { 2 } else { 1 }) {
                    let o0 = (p + h) * PANEL;
                    let m = PANEL.min(w.n - o0);
                    let mut tmp = [0i32; PANEL];
                    _mm512_storeu_si512(tmp.as_mut_ptr() as *mut _, *v);
                    out[(t + r) * w.n + o0..(t + r) * w.n + o0 + m].copy_from_slice(&tmp[..m]);
                }
            }
            p += if two { 2 } else { 1 };
        }
    }

    /// AVX-512 VNNI u8 × i8: tiles of up to 4 rows × 4 panels (16 zmm sums), `vpdpbusd`; a
    /// group of panels runs over every row so its weights stay in cache.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn gemm_u8_vnni(x: &[u8], ks: usize, rows: usize, offset: i32, w: &Packed8, out: &mut [i32]) {
        let panels = w.n.div_ceil(PANEL8);
        let mut p = 0;
        while p < panels {
            let np = (panels - p).min(4);
            match np {
                4 => rows_u8::<4>(x, ks, rows, offset, w, p, out),
                3 => rows_u8::<3>(x, ks, rows, offset, w, p, out),
                2 => rows_u8::<2>(x, ks, rows, offset, w, p, out),
                _ => rows_u8::<1>(x, ks, rows, offset, w, p, out),
            }
            p += np;
        }
    }

    #[inline(always)]
    unsafe fn rows_u8<const P: usize>(x: &[u8], ks: usize, rows: usize, offset: i32, w: &Packed8, p0: usize, out: &mut [i32]) {
        let mut t = 0;
        while t + MR <= rows {
            tile_u8::<MR, P>(x, ks, t, offset, w, p0, out);
            t += MR;
        }
        while t < rows {
            tile_u8::<1, P>(x, ks, t, offset, w, p0, out);
            t += 1;
        }
    }

    #[inline(always)]
    unsafe fn tile_u8<const R: usize, const P: usize>(x: &[u8], ks: usize, t: usize, offset: i32, w: &Packed8, p0: usize, out: &mut [i32]) {
        let base: [*const i8; P] = std::array::from_fn(|i| w.panel(p0 + i).as_ptr());
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        for j in 0..w.k4 {
            let b: [__m512i; P] = std::array::from_fn(|i| _mm512_loadu_si512(base[i].add(j * 4 * PANEL8) as *const _));
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY (caller): rows are ks = 4·k4 bytes long.
                let xv = _mm512_set1_epi32(std::ptr::read_unaligned(x.as_ptr().add((t + r) * ks + 4 * j) as *const i32));
                for (ai, bi) in a.iter_mut().zip(&b) {
                    *ai = _mm512_dpbusd_epi32(*ai, xv, *bi);
                }
            }
        }
        let off = _mm512_set1_epi32(offset);
        for i in 0..P {
            let o0 = (p0 + i) * PANEL8;
            let m = PANEL8.min(w.n - o0);
            let corr = _mm512_mullo_epi32(off, _mm512_loadu_si512(w.colsum.as_ptr().add(o0) as *const _));
            let mask: __mmask16 = if m == PANEL8 { 0xFFFF } else { (1u16 << m) - 1 };
            for (r, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_epi32(out.as_mut_ptr().add((t + r) * w.n + o0), mask, _mm512_sub_epi32(a[i], corr));
            }
        }
    }

    /// Whether AVX-512F is present (the fused requantiser).
    pub fn has_avx512f() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// [`super::Requants::apply_acc`] eight lanes at a time on rows of `acc` (+ `bias`); false
    /// for a row with some `|z| ≥ 2^31`, which the caller then computes exactly.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn requant_acc_row<A: super::Sum, T: super::Code>(
        acc: &[A],
        bias: Option<&[i64]>,
        r: &super::Requants,
        lo: i64,
        hi: i64,
        out: &mut [T],
    ) -> bool {
        let c = acc.len();
        let (vlo, vhi) = (_mm512_set1_epi64(lo), _mm512_set1_epi64(hi));
        let (top, bot) = (_mm512_set1_epi64((1 << 31) - 1), _mm512_set1_epi64(-((1 << 31) - 1)));
        let one = _mm512_set1_epi64(1);
        let mut bad: __mmask8 = 0;
        let mut i = 0;
        while i + 8 <= c {
            let mut z = A::load8(acc.as_ptr().add(i));
            if let Some(b) = bias {
                z = _mm512_add_epi64(z, _mm512_loadu_si512(b.as_ptr().add(i) as *const _));
            }
            bad |= _mm512_cmpgt_epi64_mask(z, top) | _mm512_cmpgt_epi64_mask(bot, z);
            let mv = _mm512_loadu_si512(r.m.as_ptr().add(i) as *const _);
            let ev = _mm512_loadu_si512(r.e.as_ptr().add(i) as *const _);
            let hv = _mm512_loadu_si512(r.hm1.as_ptr().add(i) as *const _);
            // The low 32 bits of z and m are the values themselves (|z|, |m| < 2^31): exact product.
            let p = _mm512_mul_epi32(z, mv);
            let q = _mm512_srav_epi64(p, ev);
            let t = _mm512_add_epi64(_mm512_add_epi64(p, hv), _mm512_and_si512(q, one));
            let v = _mm512_min_epi64(_mm512_max_epi64(_mm512_srav_epi64(t, ev), vlo), vhi);
            T::store8(out.as_mut_ptr().add(i), v);
            i += 8;
        }
        while i < c {
            let z = acc[i].to_i64() + bias.map_or(0, |b| b[i]);
            if z.unsigned_abs() >= 1 << 31 {
                return false;
            }
            out[i] = T::from_i64(r.one(i, z).clamp(lo, hi));
            i += 1;
        }
        bad == 0
    }

    /// `x >> e` (arithmetic, per 64-bit lane) from logical shifts: `((x ^ s) >>> e) ^ s`, `s` = sign.
    #[inline(always)]
    unsafe fn sra64(x: __m256i, e: __m256i) -> __m256i {
        let s = _mm256_cmpgt_epi64(_mm256_setzero_si256(), x);
        _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(x, s), e), s)
    }

    /// [`super::Requants::apply_rows`] four lanes at a time; false (output incomplete) when some
    /// `|z| ≥ 2^31`, so the caller falls back to the exact path.
    #[target_feature(enable = "avx2")]
    pub unsafe fn requant_avx2(z: &[i64], r: &super::Requants, lo: i64, hi: i64, out: &mut [i64]) -> bool {
        let c = r.len();
        let (vlo, vhi) = (_mm256_set1_epi64x(lo), _mm256_set1_epi64x(hi));
        let (top, bot) = (_mm256_set1_epi64x((1 << 31) - 1), _mm256_set1_epi64x(-((1 << 31) - 1)));
        let one = _mm256_set1_epi64x(1);
        let mut bad = _mm256_setzero_si256();
        let mut scalar_bad = false;
        for (zr, or) in z.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let mut i = 0;
            while i + 4 <= c {
                let zv = _mm256_loadu_si256(zr.as_ptr().add(i) as *const __m256i);
                bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpgt_epi64(zv, top), _mm256_cmpgt_epi64(bot, zv)));
                let mv = _mm256_loadu_si256(r.m.as_ptr().add(i) as *const __m256i);
                let ev = _mm256_loadu_si256(r.e.as_ptr().add(i) as *const __m256i);
                let hv = _mm256_loadu_si256(r.hm1.as_ptr().add(i) as *const __m256i);
                // The low 32 bits of z and m are the values themselves (|z|, |m| < 2^31): exact product.
                let p = _mm256_mul_epi32(zv, mv);
                let q = sra64(p, ev);
                let t = _mm256_add_epi64(_mm256_add_epi64(p, hv), _mm256_and_si256(q, one));
                let mut v = sra64(t, ev);
                v = _mm256_blendv_epi8(v, vlo, _mm256_cmpgt_epi64(vlo, v));
                v = _mm256_blendv_epi8(v, vhi, _mm256_cmpgt_epi64(v, vhi));
                _mm256_storeu_si256(or.as_mut_ptr().add(i) as *mut __m256i, v);
                i += 4;
            }
            while i < c {
                scalar_bad |= zr[i].unsigned_abs() >= 1 << 31;
                if !scalar_bad {
                    or[i] = r.one(i, zr[i]).clamp(lo, hi);
                }
                i += 1;
            }
        }
        !scalar_bad && _mm256_testz_si256(bad, bad) == 1
    }

    /// Whether the packed-kernel paths can run here (for tests that compare every path).
    pub fn paths() -> Vec<&'static str> {
        let mut v = Vec::new();
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push("avx2");
        }
        if has_vnni() {
            v.push("avx512vnni");
        }
        v
    }
}

/// Run one named kernel path (`scalar`, `avx2`, `avx512vnni`) for tests; None when the CPU lacks it.
#[doc(hidden)]
pub fn gemm_path(path: &str, x: &[i16], rows: usize, w: &Packed, out: &mut [i32]) -> Option<()> {
    assert!(w.k.is_multiple_of(2), "gemm_path takes even k");
    match path {
        "scalar" => gemm_scalar(x, w.k, rows, w, out),
        #[cfg(target_arch = "x86_64")]
        "avx2" if x86::paths().contains(&"avx2") => unsafe { x86::gemm_avx2(x, w.k, rows, w, out) },
        #[cfg(target_arch = "x86_64")]
        "avx512vnni" if x86::has_vnni() => unsafe { x86::gemm_vnni(x, w.k, rows, w, out) },
        _ => return None,
    }
    Some(())
}

/// The same product with i64 accumulators (operands of any i16 value, any length).
pub fn gemm_i16_wide(x: &[i16], rows: usize, w: &[i16], n: usize, out: &mut [i64]) {
    let k = x.len().checked_div(rows).unwrap_or(0);
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
/// codes `k < 0` (the zero flag) skipped. Same layout as [`attn_v`]; accumulates in `A` (i32
/// when [`av_fits_i32`] holds for `2^top`, else i64).
#[allow(clippy::too_many_arguments)]
pub fn attn_v_log2<A: Acc>(
    codes: &[i32],
    t: usize,
    top: u32,
    v: &[i16],
    vs: usize,
    vo: usize,
    hd: usize,
    out: &mut [A],
    os: usize,
    oo: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            unsafe { log2_avx2(codes, t, top, v, vs, vo, hd, out, os, oo) };
            return;
        }
    }
    log2_body(codes, t, top, v, vs, vo, hd, out, os, oo);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn log2_avx2<A: Acc>(
    codes: &[i32],
    t: usize,
    top: u32,
    v: &[i16],
    vs: usize,
    vo: usize,
    hd: usize,
    out: &mut [A],
    os: usize,
    oo: usize,
) {
    log2_body(codes, t, top, v, vs, vo, hd, out, os, oo);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn log2_body<A: Acc>(codes: &[i32], t: usize, top: u32, v: &[i16], vs: usize, vo: usize, hd: usize, out: &mut [A], os: usize, oo: usize) {
    for i in 0..t {
        let o = &mut out[i * os + oo..i * os + oo + hd];
        o.iter_mut().for_each(|x| *x = A::ZERO);
        for (j, &k) in codes[i * t..(i + 1) * t].iter().enumerate() {
            if k < 0 || k as u32 > top {
                continue; // zero flag (or a code below the expansion's resolution: exactly 0 there)
            }
            let sh = top - k as u32;
            let vr = &v[j * vs + vo..j * vs + vo + hd];
            for (x, &vv) in o.iter_mut().zip(vr) {
                *x = x.add(A::from_i16(vv).shl(sh));
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
    /// Left shift.
    fn shl(self, sh: u32) -> Self;
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
    #[inline(always)]
    fn shl(self, sh: u32) -> Self {
        self << sh
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
    #[inline(always)]
    fn shl(self, sh: u32) -> Self {
        self << sh
    }
}

/// Input element of [`Requants::apply_acc`]: i32 GEMM sums or i64 values.
pub trait Sum: Copy {
    /// As i64.
    fn to_i64(self) -> i64;
    /// Load eight elements at `p` as i64 lanes.
    ///
    /// # Safety
    /// `p` must be valid for eight elements and the CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m512i;
}

impl Sum for i32 {
    #[inline(always)]
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        _mm512_cvtepi32_epi64(_mm256_loadu_si256(p as *const __m256i))
    }
}

impl Sum for i64 {
    #[inline(always)]
    fn to_i64(self) -> i64 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m512i {
        std::arch::x86_64::_mm512_loadu_si512(p as *const _)
    }
}

/// Output element of the fused requantiser [`Requants::apply_acc`]: i16 activation codes or
/// i64 values (scores, residuals), each already clamped to its range by the caller's bounds.
pub trait Code: Copy + Default {
    /// The clamped value (within the type's range).
    fn from_i64(v: i64) -> Self;
    /// Store eight i64 lanes (already clamped) at `p`.
    ///
    /// # Safety
    /// `p` must be valid for eight elements and the CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn store8(p: *mut Self, v: std::arch::x86_64::__m512i);
}

impl Code for i16 {
    #[inline(always)]
    fn from_i64(v: i64) -> Self {
        v as i16
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store8(p: *mut Self, v: std::arch::x86_64::__m512i) {
        use std::arch::x86_64::*;
        _mm_storeu_si128(p as *mut __m128i, _mm512_cvtepi64_epi16(v));
    }
}

impl Code for i64 {
    #[inline(always)]
    fn from_i64(v: i64) -> Self {
        v
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store8(p: *mut Self, v: std::arch::x86_64::__m512i) {
        std::arch::x86_64::_mm512_storeu_si512(p as *mut _, v);
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

/// Dyadic requantisers for rows of per-channel (or one per-tensor) values, computed with the
/// branch-free form of `RNE(z·m / 2^e)`: `(p + 2^(e−1) − 1 + ((p >> e) & 1)) >> e`, `p = z·m`.
///
/// That form equals round-half-to-even: with `p = q·2^e + r`, `0 ≤ r < 2^e`, it adds one to
/// `q` exactly when `r > 2^(e−1)`, or `r = 2^(e−1)` and `q` is odd. It is used when every
/// `1 ≤ e ≤ 62` and every `|z| < 2^31`; a multiplier `m = ±2^31` is replaced by `±2^30` with
/// `e − 1` (the same ratio, so the same rounding), so `|m| < 2^31`, `|p| < 2^62` and nothing
/// overflows. Otherwise the exact [`Requant::apply`] runs. The AVX2 kernel multiplies with
/// `vpmuldq` (signed 32 × 32 → 64 bits, exact) and builds the arithmetic shift from logical ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Requants {
    m: Vec<i64>,
    e: Vec<i64>,
    /// `2^(e−1) − 1` per channel.
    hm1: Vec<i64>,
    each: Vec<Requant>,
    fast: bool,
}

impl Requants {
    /// One requantiser per channel for the ratios `s_in[c] / s_out`.
    pub fn new(ratios: impl IntoIterator<Item = f64>) -> Requants {
        let each: Vec<Requant> = ratios.into_iter().map(Requant::new).collect();
        let (mut m, mut e) = (Vec::with_capacity(each.len()), Vec::with_capacity(each.len()));
        for r in &each {
            let (mut mm, mut ee) = (r.d.m, i64::from(r.d.e));
            if mm.unsigned_abs() == 1 << 31 && ee >= 2 {
                mm /= 2;
                ee -= 1;
            }
            m.push(mm);
            e.push(ee);
        }
        let fast = m.iter().zip(&e).all(|(m, e)| (1..=62).contains(e) && m.unsigned_abs() < 1 << 31);
        let hm1 = e.iter().map(|&e| if (1..=62).contains(&e) { (1i64 << (e - 1)) - 1 } else { 0 }).collect();
        Requants { m, e, hm1, each, fast }
    }

    /// Channels (row length).
    pub fn len(&self) -> usize {
        self.each.len()
    }

    /// Whether there are no channels.
    pub fn is_empty(&self) -> bool {
        self.each.is_empty()
    }

    /// The requantiser of channel `c`.
    pub fn get(&self, c: usize) -> &Requant {
        &self.each[c]
    }

    /// [`Requants::apply_rows`] computed element by element with [`Requant::apply`] (reference path).
    pub fn apply_rows_plain(&self, z: &[i64], lo: i64, hi: i64, out: &mut Vec<i64>) {
        let c = self.len();
        assert!(c > 0 && z.len().is_multiple_of(c), "Requants::apply_rows_plain: ragged rows");
        out.extend(z.chunks_exact(c).flat_map(|zr| zr.iter().zip(&self.each).map(|(&v, r)| r.apply(v).clamp(lo, hi))));
    }

    /// Requantise rows of `self.len()` values, clamping to `[lo, hi]`, into `out` (appended).
    pub fn apply_rows(&self, z: &[i64], lo: i64, hi: i64, out: &mut Vec<i64>) {
        let c = self.len();
        assert!(c > 0 && z.len().is_multiple_of(c), "Requants::apply_rows: ragged rows");
        let start = out.len();
        out.resize(start + z.len(), 0);
        let dst = &mut out[start..];
        if self.fast {
            #[cfg(target_arch = "x86_64")]
            {
                if x86::has_avx512f() {
                    for (zr, or) in z.chunks_exact(c).zip(dst.chunks_exact_mut(c)) {
                        // SAFETY: the CPU has the feature the function is compiled for.
                        if !unsafe { x86::requant_acc_row(zr, None, self, lo, hi, or) } {
                            self.acc_row_exact(zr, None, lo, hi, or);
                        }
                    }
                    return;
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the feature the function is compiled for.
                    if unsafe { x86::requant_avx2(z, self, lo, hi, dst) } {
                        return;
                    }
                }
            }
            if z.iter().fold(0u64, |a, v| a.max(v.unsigned_abs())) < (1u64 << 31) {
                for (zr, or) in z.chunks_exact(c).zip(dst.chunks_exact_mut(c)) {
                    for i in 0..c {
                        or[i] = self.one(i, zr[i]).clamp(lo, hi);
                    }
                }
                return;
            }
        }
        for (zr, or) in z.chunks_exact(c).zip(dst.chunks_exact_mut(c)) {
            for ((o, &v), r) in or.iter_mut().zip(zr).zip(&self.each) {
                *o = r.apply(v).clamp(lo, hi);
            }
        }
    }

    /// `RNE((acc + bias)·m / 2^e)` per channel for rows of i32 accumulators plus an optional
    /// per-channel i64 bias, clamped to `[lo, hi]`, appended to `out`: the values
    /// [`Requants::apply_rows`] gives on the i64 sums, without building them.
    pub fn apply_acc<A: Sum, T: Code>(&self, acc: &[A], bias: Option<&[i64]>, lo: i64, hi: i64, out: &mut Vec<T>) {
        let c = self.len();
        assert!(c > 0 && acc.len().is_multiple_of(c), "Requants::apply_acc: ragged rows");
        assert!(bias.is_none_or(|b| b.len() == c), "Requants::apply_acc: bias is not one per channel");
        let start = out.len();
        out.resize(start + acc.len(), T::default());
        let dst = &mut out[start..];
        #[cfg(target_arch = "x86_64")]
        {
            if self.fast && x86::has_avx512f() {
                for (ar, or) in acc.chunks_exact(c).zip(dst.chunks_exact_mut(c)) {
                    // SAFETY: the CPU has the feature the function is compiled for.
                    if !unsafe { x86::requant_acc_row(ar, bias, self, lo, hi, or) } {
                        self.acc_row_exact(ar, bias, lo, hi, or);
                    }
                }
                return;
            }
        }
        for (ar, or) in acc.chunks_exact(c).zip(dst.chunks_exact_mut(c)) {
            self.acc_row_exact(ar, bias, lo, hi, or);
        }
    }

    /// One row of [`Requants::apply_acc`] with [`Requant::apply`] (any `z`).
    fn acc_row_exact<A: Sum, T: Code>(&self, acc: &[A], bias: Option<&[i64]>, lo: i64, hi: i64, out: &mut [T]) {
        for (i, (o, &a)) in out.iter_mut().zip(acc).enumerate() {
            let z = a.to_i64() + bias.map_or(0, |b| b[i]);
            *o = T::from_i64(self.each[i].apply(z).clamp(lo, hi));
        }
    }

    /// The branch-free form for channel `i` (`self.fast` and `|z| < 2^31`).
    #[inline(always)]
    fn one(&self, i: usize, z: i64) -> i64 {
        let p = z * self.m[i];
        let sh = self.e[i];
        (p + self.hm1[i] + ((p >> sh) & 1)) >> sh
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
        for &(rows, k, n, lim) in &[
            (1, 1, 1, 127),
            (3, 7, 5, 127),
            (17, 96, 43, 128),
            (9, 768, 13, 128),
            (5, 3, 9, 32),
            (197, 192, 10, 128),
            (6, 64, 33, 128),
            (7, 49, 96, 128),
            (4, 2, 16, 128),
            (5, 4, 32, 100),
        ] {
            let x: Vec<i16> = (0..rows * k).map(|_| rng.gen_range(-lim..lim) as i16).collect();
            let w: Vec<i16> = (0..n * k).map(|_| rng.gen_range(-lim..lim) as i16).collect();
            assert!(gemm_fits_i32(k, lim as i64, lim as i64));
            let mut out = vec![0i32; rows * n];
            let pw = Packed::new(&w, n, k);
            gemm_i16(&x, rows, &pw, &mut out);
            let r = reference(&x, rows, &w, n);
            assert_eq!(out.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), r, "{rows}x{k}x{n}");
            if k % 2 == 0 {
                for path in ["scalar", "avx2", "avx512vnni"] {
                    let mut o = vec![0i32; rows * n];
                    if gemm_path(path, &x, rows, &pw, &mut o).is_some() {
                        assert_eq!(o.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), r, "{path} {rows}x{k}x{n}");
                    }
                }
            }
            let mut wide = vec![0i64; rows * n];
            gemm_i16_wide(&x, rows, &w, n, &mut wide);
            assert_eq!(wide, r);
        }
    }

    #[test]
    fn gemm_u8_matches_i64_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &(rows, k, n) in
            &[(1, 1, 1), (3, 7, 5), (17, 96, 43), (9, 768, 13), (5, 3, 9), (197, 192, 70), (6, 64, 33), (7, 49, 96), (4, 4, 16), (8, 5, 65)]
        {
            for (offset, xlo, xhi) in [(128, -128i16, 127i16), (0, 0, 255), (0, 0, 127)] {
                let mut x: Vec<i16> = (0..rows * k).map(|_| rng.gen_range(xlo..=xhi)).collect();
                let mut w: Vec<i16> = (0..n * k).map(|_| rng.gen_range(-128..=127)).collect();
                // The extremes on purpose: every product at its largest magnitude somewhere.
                x[0] = xlo;
                w[0] = -128;
                *x.last_mut().unwrap() = xhi;
                *w.last_mut().unwrap() = 127;
                let pw = Packed8::new(&w, n, k).expect("i8 weights");
                let r = reference(&x, rows, &w, n);
                let mut out = vec![0i32; rows * n];
                assert!(gemm_i8(&x, rows, offset, &pw, &mut Vec::new(), &mut out));
                assert_eq!(out.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), r, "{rows}x{k}x{n} offset {offset}");
                let ks = k.div_ceil(4) * 4;
                let mut xu = vec![0u8; rows * ks];
                for t in 0..rows {
                    for i in 0..k {
                        xu[t * ks + i] = (i32::from(x[t * k + i]) + offset) as u8;
                    }
                }
                for path in ["scalar", "avx512vnni"] {
                    let mut o = vec![0i32; rows * n];
                    if gemm_i8_path(path, &xu, rows, offset, &pw, &mut o).is_some() {
                        assert_eq!(o.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), r, "{path} {rows}x{k}x{n} offset {offset}");
                    }
                }
            }
        }
        // Out of range: refused, the output untouched.
        let pw = Packed8::new(&[1, 2], 1, 2).unwrap();
        let mut o = vec![7i32; 1];
        assert!(!gemm_i8(&[-129, 0], 1, 128, &pw, &mut Vec::new(), &mut o));
        assert!(!gemm_i8(&[128, 0], 1, 128, &pw, &mut Vec::new(), &mut o));
        assert!(!gemm_i8(&[256, 0], 1, 0, &pw, &mut Vec::new(), &mut o));
        assert_eq!(o, [7]);
        assert!(Packed8::new(&[128, 0], 1, 2).is_none());
    }

    #[test]
    fn gemm_u8_offset_sums_wrap_back_to_the_exact_sum() {
        // (x + 128)·w overflows i32 long before Σ x·w does: the wrapping correction is exact.
        let k = (1usize << 17) - 1;
        assert!(gemm_fits_i32(k, 128, 128));
        let x = vec![-128i16; k];
        let w = vec![-128i16; 2 * k];
        let mut out = vec![0i32; 2];
        assert!(gemm_i8(&x, 1, 128, &Packed8::new(&w, 2, k).unwrap(), &mut Vec::new(), &mut out));
        assert_eq!(i64::from(out[0]), (k as i64) << 14);
        let x = vec![127i16; k];
        assert!(gemm_i8(&x, 1, 128, &Packed8::new(&w, 2, k).unwrap(), &mut Vec::new(), &mut out));
        assert_eq!(i64::from(out[1]), -(k as i64) * 127 * 128);
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
        gemm_i16(&x, 1, &Packed::new(&w, 2, k), &mut out);
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
            let mut ol32 = vec![0i32; t * os];
            attn_v(&p, t, &v, vs, vo, hd, &mut o32, os, h * hd);
            attn_v(&p, t, &v, vs, vo, hd, &mut o64, os, h * hd);
            attn_v_log2(&codes, t, 15, &v, vs, vo, hd, &mut ol, os, h * hd);
            attn_v_log2(&codes, t, 15, &v, vs, vo, hd, &mut ol32, os, h * hd);
            assert!(ol.iter().zip(&ol32).all(|(a, b)| *a == i64::from(*b)));
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

    #[test]
    fn requant_rows_at_the_edges() {
        // m = 2^31 (mantissa rounds up), ties, the largest fast-path inputs and beyond.
        let ratios = [1.0 - 2f64.powi(-40), 0.5, -0.75, 3.0, 2f64.powi(-30), -(1.0 - 2f64.powi(-40)), 1e-9, 0.999];
        let r = Requants::new(ratios);
        assert_eq!(r.get(0).d.m, 1 << 31);
        let edge = [(1i64 << 31) - 1, -(1i64 << 31) + 1, 1, -1, 3, -3, 0, 12345];
        for big in [false, true] {
            let mut z: Vec<i64> = edge.iter().chain(edge.iter().rev()).copied().collect();
            if big {
                z[5] = 1 << 31; // forces the exact fallback for the whole call
            }
            let mut out = Vec::new();
            r.apply_rows(&z, i64::MIN, i64::MAX, &mut out);
            for (i, (&v, &o)) in z.iter().zip(&out).enumerate() {
                assert_eq!(o, r.get(i % 8).d.apply(v) as i64, "z {v} ratio {}", ratios[i % 8]);
            }
        }
    }

    proptest! {
        #[test]
        fn fused_requant_is_apply_rows(acc in proptest::collection::vec(any::<i32>(), 1..90), bias in proptest::collection::vec(any::<i64>(), 12), ratios in proptest::collection::vec(1e-9f64..1e3, 1..12), shift in 0u32..64, bshift in 0u32..64, neg in any::<bool>(), with_bias in any::<bool>()) {
            let c = ratios.len();
            let n = acc.len() / c * c;
            prop_assume!(n > 0);
            let acc: Vec<i32> = acc[..n].iter().map(|v| v >> (shift % 32)).collect();
            let bias: Vec<i64> = bias[..c].iter().map(|v| v >> (bshift.max(20))).collect();
            let r = Requants::new(ratios.iter().map(|x| if neg { -x } else { *x }));
            let b = with_bias.then_some(&bias[..]);
            let z: Vec<i64> = acc.iter().enumerate().map(|(i, &a)| i64::from(a) + b.map_or(0, |b| b[i % c])).collect();
            let mut want = Vec::new();
            r.apply_rows(&z, -1000, 1 << 40, &mut want);
            let mut got: Vec<i64> = vec![5];
            r.apply_acc(&acc, b, -1000, 1 << 40, &mut got);
            prop_assert_eq!(&got[1..], &want[..]);
            let mut w16 = Vec::new();
            r.apply_rows(&z, -128, 127, &mut w16);
            let mut g16: Vec<i16> = Vec::new();
            r.apply_acc(&acc, b, -128, 127, &mut g16);
            prop_assert_eq!(g16.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), w16);
        }

        #[test]
        fn requant_rows_are_dyadic_apply(zs in proptest::collection::vec(any::<i64>(), 1..80), ratios in proptest::collection::vec(1e-9f64..1e3, 1..12), shift in 0u32..64, neg in any::<bool>()) {
            let c = ratios.len();
            let n = zs.len() / c * c;
            prop_assume!(n > 0);
            let z: Vec<i64> = zs[..n].iter().map(|v| v >> shift).collect();
            let r = Requants::new(ratios.iter().map(|x| if neg { -x } else { *x }));
            let mut out = Vec::new();
            r.apply_rows(&z, -1000, 1 << 40, &mut out);
            for (i, (&v, &o)) in z.iter().zip(&out).enumerate() {
                let want = r.get(i % c).d.apply(v).clamp(-1000, 1 << 40) as i64;
                prop_assert_eq!(o, want, "z {} ratio {}", v, ratios[i % c]);
            }
            // The AVX2 kernel too (apply_rows takes the AVX-512 one where the CPU has it).
            #[cfg(target_arch = "x86_64")]
            if r.fast && std::arch::is_x86_feature_detected!("avx2") {
                let mut o2 = vec![0i64; n];
                // SAFETY: the CPU has AVX2.
                if unsafe { x86::requant_avx2(&z, &r, -1000, 1 << 40, &mut o2) } {
                    prop_assert_eq!(&o2, &out);
                }
            }
        }

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
