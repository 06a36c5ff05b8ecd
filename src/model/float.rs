//! The float executor of the layer graph: timm's eval-mode forward (ViT, DeiT, Swin) in f32 or
//! f64, as a step machine that stops at every non-linear layer ([`FloatRun::next_tap`]).

use super::graph::{Node, PointId, Pool};
use super::quant::IntModel;
use super::{Model, ModelError, Output, Tap};
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

/// A float type the float forward runs in (f32 like PyTorch, or f64).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
    + 'static
{
    /// From a float32 weight.
    fn from_f32(v: f32) -> Self;
    /// From an f64 constant.
    fn from_f64(v: f64) -> Self;
    /// To f64 (taps, logits).
    fn to_f64(self) -> f64;
    /// e^x.
    fn exp(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Error function.
    fn erf(self) -> Self;
    /// Name for reports.
    fn name() -> &'static str;
    /// The slice as f32 when `Self` is f32 (lets the forward pick a type-specific kernel).
    fn as_f32(v: &[Self]) -> Option<&[f32]> {
        let _ = v;
        None
    }
    /// Mutable [`Real::as_f32`].
    fn as_f32_mut(v: &mut [Self]) -> Option<&mut [f32]> {
        let _ = v;
        None
    }
    /// The slice as f64 when `Self` is f64.
    fn as_f64(v: &[Self]) -> Option<&[f64]> {
        let _ = v;
        None
    }
    /// Mutable [`Real::as_f64`].
    fn as_f64_mut(v: &mut [Self]) -> Option<&mut [f64]> {
        let _ = v;
        None
    }
}

impl Real for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f32::exp(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn name() -> &'static str {
        "f32"
    }
    fn as_f32(v: &[f32]) -> Option<&[f32]> {
        Some(v)
    }
    fn as_f32_mut(v: &mut [f32]) -> Option<&mut [f32]> {
        Some(v)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn name() -> &'static str {
        "f64"
    }
    fn as_f64(v: &[f64]) -> Option<&[f64]> {
        Some(v)
    }
    fn as_f64_mut(v: &mut [f64]) -> Option<&mut [f64]> {
        Some(v)
    }
}

/// Observer of every quantisation point's float values (calibration): the point's index in
/// [`Graph::points`](super::graph::Graph::points) and its values.
pub type Observer<'o, F> = &'o mut (dyn FnMut(PointId, &[F]) + 'o);

/// Attention logits `q·kᵀ·scale (+ relative position bias)` of `groups` windows × `nh` heads of
/// `n` tokens from the fused `[t, 3d]` qkv rows, into `o` `[groups, nh, n, n]`.
#[allow(clippy::too_many_arguments)]
fn scores<F: Real>(qkv: &[F], groups: usize, nh: usize, n: usize, d: usize, scale: F, table: Option<(&[f32], &[usize])>, o: &mut [F]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2; the same operations in the same order.
            unsafe { scores_avx2(qkv, groups, nh, n, d, scale, table, o) };
            return;
        }
    }
    scores_body(qkv, groups, nh, n, d, scale, table, o);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_avx2<F: Real>(
    qkv: &[F],
    groups: usize,
    nh: usize,
    n: usize,
    d: usize,
    scale: F,
    table: Option<(&[f32], &[usize])>,
    o: &mut [F],
) {
    scores_body(qkv, groups, nh, n, d, scale, table, o);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scores_body<F: Real>(qkv: &[F], groups: usize, nh: usize, n: usize, d: usize, scale: F, table: Option<(&[f32], &[usize])>, o: &mut [F]) {
    let hd = d / nh;
    let mut qh = vec![F::default(); hd];
    // The keys transposed ([hd][n]): each logit is still `Σ_a q_a·k_a` summed in order
    // a = 0, 1, … from zero, as `scores_plain` does, but n logits advance together, so the loop
    // vectorises across keys instead of waiting on one sum's chain of additions.
    let mut kt = vec![F::default(); hd * n];
    for g in 0..groups {
        for h in 0..nh {
            for j in 0..n {
                let k = &qkv[(g * n + j) * 3 * d + d + h * hd..][..hd];
                for (a, &v) in k.iter().enumerate() {
                    kt[a * n + j] = v;
                }
            }
            for i in 0..n {
                let q = &qkv[(g * n + i) * 3 * d + h * hd..][..hd];
                for (a, &v) in qh.iter_mut().zip(q) {
                    *a = v * scale;
                }
                let row = &mut o[((g * nh + h) * n + i) * n..][..n];
                row.fill(F::default());
                for (&qa, kr) in qh.iter().zip(kt.chunks_exact(n)) {
                    for (r, &kv) in row.iter_mut().zip(kr) {
                        *r += qa * kv;
                    }
                }
                if let Some((tab, index)) = table {
                    for (j, r) in row.iter_mut().enumerate() {
                        *r += F::from_f32(tab[index[i * n + j] * nh + h]);
                    }
                }
            }
        }
    }
}

/// Attention context `Σ_j p_ij·v_j` of `groups` windows × `nh` heads from the probabilities
/// `[groups, nh, n, n]` and the fused qkv rows, into `o` `[t, d]` (zeroed by the caller).
fn context<F: Real>(probs: &[F], qkv: &[F], groups: usize, nh: usize, n: usize, d: usize, o: &mut [F]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2; the same operations in the same order.
            unsafe { context_avx2(probs, qkv, groups, nh, n, d, o) };
            return;
        }
    }
    context_body(probs, qkv, groups, nh, n, d, o);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn context_avx2<F: Real>(probs: &[F], qkv: &[F], groups: usize, nh: usize, n: usize, d: usize, o: &mut [F]) {
    context_body(probs, qkv, groups, nh, n, d, o);
}

#[inline(always)]
fn context_body<F: Real>(probs: &[F], qkv: &[F], groups: usize, nh: usize, n: usize, d: usize, o: &mut [F]) {
    let hd = d / nh;
    for g in 0..groups {
        for h in 0..nh {
            for i in 0..n {
                let pp = &probs[((g * nh + h) * n + i) * n..][..n];
                let c = &mut o[(g * n + i) * d + h * hd..][..hd];
                for (j, &pj) in pp.iter().enumerate() {
                    let v = &qkv[(g * n + j) * 3 * d + 2 * d + h * hd..][..hd];
                    for (cc, &vv) in c.iter_mut().zip(v) {
                        *cc += pj * vv;
                    }
                }
            }
        }
    }
}

/// The plain definition of [`scores`]: one logit at a time (tests compare the kernel with it).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn scores_plain<F: Real>(qkv: &[F], groups: usize, nh: usize, n: usize, d: usize, scale: F, table: Option<(&[f32], &[usize])>) -> Vec<F> {
    let hd = d / nh;
    let mut o = vec![F::default(); groups * nh * n * n];
    let mut qh = vec![F::default(); hd];
    for g in 0..groups {
        for h in 0..nh {
            for i in 0..n {
                let q = &qkv[(g * n + i) * 3 * d + h * hd..][..hd];
                for (a, &v) in qh.iter_mut().zip(q) {
                    *a = v * scale;
                }
                for j in 0..n {
                    let k = &qkv[(g * n + j) * 3 * d + d + h * hd..][..hd];
                    let mut s = F::default();
                    for (a, &bb) in qh.iter().zip(k) {
                        s += *a * bb;
                    }
                    if let Some((tab, index)) = table {
                        s += F::from_f32(tab[index[i * n + j] * nh + h]);
                    }
                    o[((g * nh + h) * n + i) * n + j] = s;
                }
            }
        }
    }
    o
}

/// `out[t][o] = b[o] + Σ_k x[t][k]·w[o][k]` with eight partial sums per dot product.
pub(crate) fn linear<F: Real>(x: &[F], rows: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut Vec<F>) {
    let k = w.len() / out_f;
    debug_assert_eq!(x.len(), rows * k);
    out.clear();
    out.resize(rows * out_f, F::default());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && !forced_avx2() {
            // SAFETY: the CPU supports AVX-512F (and DQ for f32); the same products and sums
            // per dot product.
            if let (Some(xf), Some(of), true) = (F::as_f32(x), F::as_f32_mut(out), std::arch::is_x86_feature_detected!("avx512dq")) {
                unsafe { tiled::linear_f32_avx512(xf, k, w, b, out_f, of) };
                return;
            } else if let (Some(xf), Some(of)) = (F::as_f64(x), F::as_f64_mut(out)) {
                unsafe { tiled::linear_f64_avx512(xf, k, w, b, out_f, of) };
                return;
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY (all three): the CPU supports AVX2. Same operations in the same order,
            // wider registers (Rust never contracts a·b + c into an FMA, so results are identical).
            if let (Some(xf), Some(of)) = (F::as_f32(x), F::as_f32_mut(out)) {
                unsafe { tiled::linear_f32(xf, k, w, b, out_f, of) };
            } else if let (Some(xf), Some(of)) = (F::as_f64(x), F::as_f64_mut(out)) {
                unsafe { tiled::linear_f64(xf, k, w, b, out_f, of) };
            } else {
                unsafe { linear_avx2(x, k, w, b, out_f, out) };
            }
            return;
        }
    }
    linear_body(x, k, w, b, out_f, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn linear_avx2<F: Real>(x: &[F], k: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut [F]) {
    linear_body(x, k, w, b, out_f, out);
}

#[inline(always)]
fn linear_body<F: Real>(x: &[F], k: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut [F]) {
    // Four input rows share each pass over a weight row (weights stream from L2 once per four
    // tokens); every dot product is still computed alone, in the same order.
    for (xs, os) in x.chunks(4 * k).zip(out.chunks_mut(4 * out_f)) {
        for (o, (wr, bb)) in w.chunks_exact(k).zip(b).enumerate() {
            for (xr, orow) in xs.chunks_exact(k).zip(os.chunks_exact_mut(out_f)) {
                orow[o] = dot(xr, wr) + F::from_f32(*bb);
            }
        }
    }
}

/// Whether the AVX2 kernels are forced on an AVX-512 CPU (`MNQ_FLOAT_KERNEL=avx2`, read once):
/// lets the tests and benchmarks compare both kernels on one machine.
#[cfg(target_arch = "x86_64")]
fn forced_avx2() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("MNQ_FLOAT_KERNEL").is_ok_and(|v| v == "avx2"))
}

/// Register-tiled AVX2 kernels of [`linear`]: a tile of input rows × output channels keeps each
/// of its dot products' eight partial sums in one (f32) or two (f64) registers, so every load of
/// x or w feeds several products. Each dot product is still `dot`'s: the same eight partial
/// sums, accumulated with separate multiplies and adds (no FMA), the same reduction tree and
/// tail, so the result is bit-identical to the plain loop (tested).
#[cfg(target_arch = "x86_64")]
mod tiled {
    use super::reduce8;
    use std::arch::x86_64::*;

    /// Rows and output channels per f32 tile (8 accumulators).
    const R: usize = 4;
    const C: usize = 2;

    /// f32 `out = x·wᵀ + b`; the caller has checked AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn linear_f32(x: &[f32], k: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut [f32]) {
        let rows = x.len() / k;
        let k8 = k - k % 8;
        let (full_r, full_c) = (rows - rows % R, out_f - out_f % C);
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        for r0 in (0..full_r).step_by(R) {
            for o0 in (0..full_c).step_by(C) {
                let mut acc = [[_mm256_setzero_ps(); C]; R];
                let mut i = 0;
                while i < k8 {
                    // SAFETY: i + 8 <= k8 <= k, rows r0..r0+R < rows and channels o0..o0+C < out_f.
                    let w0 = _mm256_loadu_ps(wp.add(o0 * k + i));
                    let w1 = _mm256_loadu_ps(wp.add((o0 + 1) * k + i));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp.add((r0 + r) * k + i));
                        a[0] = _mm256_add_ps(a[0], _mm256_mul_ps(xv, w0));
                        a[1] = _mm256_add_ps(a[1], _mm256_mul_ps(xv, w1));
                    }
                    i += 8;
                }
                for (r, a) in acc.iter().enumerate() {
                    for (c, v) in a.iter().enumerate() {
                        let mut lanes = [0f32; 8];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), *v);
                        let (t, o) = (r0 + r, o0 + c);
                        let s = reduce8(&lanes, &x[t * k + k8..(t + 1) * k], &w[o * k + k8..(o + 1) * k]);
                        out[t * out_f + o] = s + b[o];
                    }
                }
            }
        }
        super::linear_rest(x, k, w, b, out_f, out, full_r, full_c);
    }

    /// Rows and channel pairs per AVX-512 f32 tile: one zmm holds the eight partial sums of
    /// two channels' dot products (16 accumulators of the 32 registers).
    const R5: usize = 4;
    const P5: usize = 4;

    /// f32 `out = x·wᵀ + b` on AVX-512; the caller has checked AVX-512F and DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn linear_f32_avx512(x: &[f32], k: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut [f32]) {
        let rows = x.len() / k;
        let k8 = k - k % 8;
        let (full_r, full_c) = (rows - rows % R5, out_f - out_f % (2 * P5));
        let xp = x.as_ptr();
        // Channel pairs interleaved per 8 inputs ([c0 i..i+8, c1 i..i+8], …), so each pair's
        // slice is one aligned-size load instead of two loads and a shuffle.
        let steps = k8 / 8;
        let mut packed = vec![0f32; (full_c / 2) * steps * 16];
        for q in 0..full_c / 2 {
            for st in 0..steps {
                let dst = &mut packed[(q * steps + st) * 16..][..16];
                dst[..8].copy_from_slice(&w[2 * q * k + 8 * st..][..8]);
                dst[8..].copy_from_slice(&w[(2 * q + 1) * k + 8 * st..][..8]);
            }
        }
        let pp = packed.as_ptr();
        for r0 in (0..full_r).step_by(R5) {
            for o0 in (0..full_c).step_by(2 * P5) {
                let mut acc = [[_mm512_setzero_ps(); P5]; R5];
                let mut i = 0;
                while i < k8 {
                    // SAFETY: i + 8 <= k, rows r0..r0+R5 < rows, channels o0..o0+2·P5 < out_f.
                    let wv: [__m512; P5] = std::array::from_fn(|q| _mm512_loadu_ps(pp.add(((o0 / 2 + q) * steps + i / 8) * 16)));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(xp.add((r0 + r) * k + i)));
                        for (ac, wq) in a.iter_mut().zip(&wv) {
                            *ac = _mm512_add_ps(*ac, _mm512_mul_ps(xv, *wq));
                        }
                    }
                    i += 8;
                }
                for (r, a) in acc.iter().enumerate() {
                    for (q, v) in a.iter().enumerate() {
                        let mut lanes = [0f32; 16];
                        _mm512_storeu_ps(lanes.as_mut_ptr(), *v);
                        let t = r0 + r;
                        for (h, part) in lanes.chunks_exact(8).enumerate() {
                            let o = o0 + 2 * q + h;
                            let part: &[f32; 8] = part.try_into().expect("8 lanes");
                            let s = reduce8(part, &x[t * k + k8..(t + 1) * k], &w[o * k + k8..(o + 1) * k]);
                            out[t * out_f + o] = s + b[o];
                        }
                    }
                }
            }
        }
        super::linear_rest(x, k, w, b, out_f, out, full_r, full_c);
    }

    /// f64 `out = x·wᵀ + b` on AVX-512: one zmm is one dot product's eight partial sums; the
    /// caller has checked AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn linear_f64_avx512(x: &[f64], k: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut [f64]) {
        const R: usize = 4;
        const C: usize = 4;
        let rows = x.len() / k;
        let k8 = k - k % 8;
        let (full_r, full_c) = (rows - rows % R, out_f - out_f % C);
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        for r0 in (0..full_r).step_by(R) {
            for o0 in (0..full_c).step_by(C) {
                let mut acc = [[_mm512_setzero_pd(); C]; R];
                let mut i = 0;
                while i < k8 {
                    // SAFETY: as in linear_f32_avx512.
                    let wv: [__m512d; C] = std::array::from_fn(|c| _mm512_cvtps_pd(_mm256_loadu_ps(wp.add((o0 + c) * k + i))));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_pd(xp.add((r0 + r) * k + i));
                        for (ac, wc) in a.iter_mut().zip(&wv) {
                            *ac = _mm512_add_pd(*ac, _mm512_mul_pd(xv, *wc));
                        }
                    }
                    i += 8;
                }
                for (r, a) in acc.iter().enumerate() {
                    for (c, v) in a.iter().enumerate() {
                        let mut lanes = [0f64; 8];
                        _mm512_storeu_pd(lanes.as_mut_ptr(), *v);
                        let (t, o) = (r0 + r, o0 + c);
                        let s = reduce8(&lanes, &x[t * k + k8..(t + 1) * k], &w[o * k + k8..(o + 1) * k]);
                        out[t * out_f + o] = s + f64::from(b[o]);
                    }
                }
            }
        }
        super::linear_rest(x, k, w, b, out_f, out, full_r, full_c);
    }

    /// Rows per f64 tile (two registers per partial-sum set: 2 × 2 × 2 = 8 accumulators).
    const R64: usize = 2;

    /// f64 `out = x·wᵀ + b` (weights widened from f32 as `dot` does); the caller has checked AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn linear_f64(x: &[f64], k: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut [f64]) {
        let rows = x.len() / k;
        let k8 = k - k % 8;
        let (full_r, full_c) = (rows - rows % R64, out_f - out_f % C);
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        for r0 in (0..full_r).step_by(R64) {
            for o0 in (0..full_c).step_by(C) {
                let mut acc = [[[_mm256_setzero_pd(); 2]; C]; R64];
                let mut i = 0;
                while i < k8 {
                    // SAFETY: as in linear_f32.
                    let wv: [[__m256d; 2]; C] = std::array::from_fn(|c| {
                        let p = wp.add((o0 + c) * k + i);
                        [_mm256_cvtps_pd(_mm_loadu_ps(p)), _mm256_cvtps_pd(_mm_loadu_ps(p.add(4)))]
                    });
                    for (r, a) in acc.iter_mut().enumerate() {
                        let p = xp.add((r0 + r) * k + i);
                        let xv = [_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))];
                        for (ac, wc) in a.iter_mut().zip(&wv) {
                            ac[0] = _mm256_add_pd(ac[0], _mm256_mul_pd(xv[0], wc[0]));
                            ac[1] = _mm256_add_pd(ac[1], _mm256_mul_pd(xv[1], wc[1]));
                        }
                    }
                    i += 8;
                }
                for (r, a) in acc.iter().enumerate() {
                    for (c, v) in a.iter().enumerate() {
                        let mut lanes = [0f64; 8];
                        _mm256_storeu_pd(lanes.as_mut_ptr(), v[0]);
                        _mm256_storeu_pd(lanes.as_mut_ptr().add(4), v[1]);
                        let (t, o) = (r0 + r, o0 + c);
                        let s = reduce8(&lanes, &x[t * k + k8..(t + 1) * k], &w[o * k + k8..(o + 1) * k]);
                        out[t * out_f + o] = s + f64::from(b[o]);
                    }
                }
            }
        }
        super::linear_rest(x, k, w, b, out_f, out, full_r, full_c);
    }
}

/// The products a tile kernel left out: channels `full_c..` of rows `..full_r`, and rows `full_r..`.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
fn linear_rest<F: Real>(x: &[F], k: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut [F], full_r: usize, full_c: usize) {
    let rows = x.len() / k;
    for t in 0..rows {
        let from = if t < full_r { full_c } else { 0 };
        for o in from..out_f {
            out[t * out_f + o] = dot(&x[t * k..(t + 1) * k], &w[o * k..(o + 1) * k]) + F::from_f32(b[o]);
        }
    }
}

/// The plain definition of [`linear`]: one dot product at a time (tests compare the kernels with it).
#[cfg(test)]
pub(crate) fn linear_plain<F: Real>(x: &[F], rows: usize, w: &[f32], b: &[f32], out_f: usize) -> Vec<F> {
    let k = w.len() / out_f;
    let mut out = vec![F::default(); rows * out_f];
    for t in 0..rows {
        for o in 0..out_f {
            out[t * out_f + o] = dot(&x[t * k..(t + 1) * k], &w[o * k..(o + 1) * k]) + F::from_f32(b[o]);
        }
    }
    out
}

#[inline(always)]
fn dot<F: Real>(a: &[F], w: &[f32]) -> F {
    let mut acc = [F::default(); 8];
    let ca = a.chunks_exact(8);
    let cw = w.chunks_exact(8);
    let (ra, rw) = (ca.remainder(), cw.remainder());
    for (x, y) in ca.zip(cw) {
        for j in 0..8 {
            acc[j] += x[j] * F::from_f32(y[j]);
        }
    }
    reduce8(&acc, ra, rw)
}

/// The fixed reduction of eight partial sums, then the tail of fewer than eight products.
#[inline(always)]
fn reduce8<F: Real>(acc: &[F; 8], ra: &[F], rw: &[f32]) -> F {
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rw) {
        s += *x * F::from_f32(*y);
    }
    s
}

/// timm LayerNorm over rows of `w.len()`: biased variance, `eps` inside the square root.
pub(crate) fn layer_norm<F: Real>(x: &[F], w: &[f32], b: &[f32], eps: f64, out: &mut Vec<F>) {
    let d = w.len();
    out.clear();
    out.resize(x.len(), F::default());
    let n = F::from_f64(d as f64);
    let eps = F::from_f64(eps);
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut s = F::default();
        for &v in xr {
            s += v;
        }
        let mean = s / n;
        let mut ss = F::default();
        for &v in xr {
            let c = v - mean;
            ss += c * c;
        }
        let inv = F::from_f64(1.0) / (ss / n + eps).sqrt();
        for (((o, &v), &g), &bb) in or.iter_mut().zip(xr).zip(w).zip(b) {
            *o = (v - mean) * inv * F::from_f32(g) + F::from_f32(bb);
        }
    }
}

/// Exact (erf) GELU.
#[inline]
pub(crate) fn gelu<F: Real>(x: F) -> F {
    x * F::from_f64(0.5) * (F::from_f64(1.0) + (x * F::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// Flatten non-overlapping `P×P` patches of a `[C, S, S]` image into rows `[C·P·P]`, tokens row-major.
pub(crate) fn patches<T: Copy>(img: &[T], c: usize, s: usize, p: usize) -> Vec<T> {
    let g = s / p;
    let mut out = Vec::with_capacity(c * s * s);
    for py in 0..g {
        for px in 0..g {
            for ch in 0..c {
                for ky in 0..p {
                    let row = ch * s * s + (py * p + ky) * s + px * p;
                    out.extend_from_slice(&img[row..row + p]);
                }
            }
        }
    }
    out
}

/// timm's eval-mode forward of one image through the layer graph, stopping at every non-linear layer.
pub struct FloatRun<'m, 'o, F: Real> {
    model: &'m Model,
    /// Next node to run.
    pc: usize,
    taps: bool,
    obs: Option<Observer<'o, F>>,
    image: Vec<F>,
    /// Value of each slot (empty once dead).
    vals: Vec<Vec<F>>,
    /// Buffers of dead slots, reused.
    spare: Vec<Vec<F>>,
    tap_layer: usize,
    tap_in: Vec<f64>,
    tap_out: Vec<f64>,
    logits: Vec<f64>,
    /// Non-linear layers through this integer model's units instead of in float (the reverse
    /// split of the attribution); the first error stops using them and is kept.
    units: Option<&'m IntModel>,
    err: Option<ModelError>,
}

impl<'m, 'o, F: Real> FloatRun<'m, 'o, F> {
    /// Start a forward of `image` (normalised, `[C, H, W]`); `taps` = fill tap values.
    pub fn new(model: &'m Model, image: &[f32], taps: bool) -> FloatRun<'m, 'o, F> {
        assert_eq!(image.len(), model.manifest.image_len(), "image length must match the manifest (checked by Images)");
        FloatRun {
            model,
            pc: 0,
            taps,
            obs: None,
            image: image.iter().map(|&v| F::from_f32(v)).collect(),
            vals: vec![Vec::new(); model.graph.slots],
            spare: Vec::new(),
            tap_layer: 0,
            tap_in: Vec::new(),
            tap_out: Vec::new(),
            logits: Vec::new(),
            units: None,
            err: None,
        }
    }

    /// Run every non-linear layer through `qm`'s unit on its quantised float input
    /// ([`IntModel::unit_on_float`]), the linear layers in float.
    pub fn with_units(mut self, qm: &'m IntModel) -> Self {
        self.units = Some(qm);
        self
    }

    /// The non-linear layer's output through the integer unit, when [`FloatRun::with_units`] asked for it.
    fn through_unit(&mut self, layer: usize, x: &[F], o: &mut Vec<F>) {
        let Some(qm) = self.units else { return };
        if self.err.is_some() {
            return;
        }
        let xf: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
        match qm.unit_on_float(layer, &xf) {
            Ok(y) => {
                o.clear();
                o.extend(y.into_iter().map(F::from_f64));
            }
            Err(e) => self.err = Some(e),
        }
    }

    /// Also call `obs` with the float values at every quantisation point.
    pub fn with_observer(mut self, obs: Observer<'o, F>) -> Self {
        self.obs = Some(obs);
        self
    }

    fn observe(&mut self, p: PointId, v: &[F]) {
        if let Some(o) = self.obs.as_mut() {
            o(p, v);
        }
    }

    fn fresh(&mut self) -> Vec<F> {
        let mut v = self.spare.pop().unwrap_or_default();
        v.clear();
        v
    }

    fn tap(&mut self, layer: usize, x: &[F], y: &[F]) {
        self.tap_layer = layer;
        if self.taps {
            self.tap_in.clear();
            self.tap_in.extend(x.iter().map(|v| v.to_f64()));
            self.tap_out.clear();
            self.tap_out.extend(y.iter().map(|v| v.to_f64()));
        }
    }

    /// Run node `i`; Some(layer) when it is a non-linear layer (a tap).
    fn exec(&mut self, i: usize) -> Option<usize> {
        let model = self.model;
        let p = |id: usize| model.param(id);
        let node = &model.graph.nodes[i];
        match node {
            Node::PatchEmbed { out, lin, chans, img, patch, input_point, point } => {
                let image = std::mem::take(&mut self.image);
                self.observe(*input_point, &image);
                let pt = patches(&image, *chans, *img, *patch);
                self.image = image;
                let mut o = self.fresh();
                linear(&pt, pt.len() / lin.inp, p(lin.w), p(lin.b.expect("patch bias")), lin.out, &mut o);
                self.observe(*point, &o);
                self.vals[*out] = o;
                None
            }
            Node::Tokens { x, out, pre, pos, point } => {
                let mut o = self.fresh();
                for &t in pre {
                    o.extend(p(t).iter().map(|&v| F::from_f32(v)));
                }
                o.extend_from_slice(&self.vals[*x]);
                for (v, &q) in o.iter_mut().zip(p(*pos)) {
                    *v += F::from_f32(q);
                }
                self.observe(*point, &o);
                self.vals[*out] = o;
                None
            }
            Node::LayerNorm { x, out, norm, layer, point, .. } => {
                let mut o = self.fresh();
                let xv = std::mem::take(&mut self.vals[*x]);
                layer_norm(&xv, p(norm.w), p(norm.b), model.manifest.ln_eps, &mut o);
                self.through_unit(*layer, &xv, &mut o);
                self.observe(*point, &o);
                self.tap(*layer, &xv, &o);
                self.vals[*x] = xv;
                self.vals[*out] = o;
                Some(*layer)
            }
            Node::Linear { x, out, lin, point, .. } => {
                let mut o = self.fresh();
                let xv = &self.vals[*x];
                let zeros;
                let b = match lin.b {
                    Some(b) => p(b),
                    None => {
                        zeros = vec![0.0f32; lin.out];
                        &zeros
                    }
                };
                linear(xv, xv.len() / lin.inp, p(lin.w), b, lin.out, &mut o);
                scale_channels(&mut o, lin.ls.map(p));
                self.observe(*point, &o);
                self.vals[*out] = o;
                None
            }
            Node::Scores { qkv: qs, out, heads, n, d, bias, point, .. } => {
                let (nh, n, d) = (*heads, *n, *d);
                let hd = d / nh;
                let qkv = std::mem::take(&mut self.vals[*qs]);
                let t = qkv.len() / (3 * d);
                let groups = t / n;
                let scale = F::from_f64((hd as f64).powf(-0.5));
                let mut o = self.fresh();
                o.resize(groups * nh * n * n, F::default());
                let table = bias.as_ref().map(|b| (p(b.table), &b.index[..]));
                scores(&qkv, groups, nh, n, d, scale, table, &mut o);
                self.observe(*point, &o);
                self.vals[*qs] = qkv;
                self.vals[*out] = o;
                None
            }
            Node::Softmax { x, out, layer, mask } => {
                let xv = std::mem::take(&mut self.vals[*x]);
                let mut o = self.fresh();
                o.extend_from_slice(&xv);
                if let Some(m) = mask {
                    // timm adds −100 to the logits of keys in other regions of the rolled grid.
                    let neg = F::from_f32(-100.0);
                    for (v, &k) in o.iter_mut().zip(m.iter()) {
                        if k {
                            *v += neg;
                        }
                    }
                }
                let c = model.graph.layers[*layer].row_len;
                for row in o.chunks_exact_mut(c) {
                    let mx = row.iter().copied().fold(row[0], |a, v| if v > a { v } else { a });
                    let mut s = F::default();
                    for v in row.iter_mut() {
                        *v = (*v - mx).exp();
                        s += *v;
                    }
                    for v in row.iter_mut() {
                        *v = *v / s;
                    }
                }
                // The unit takes the logits before timm's −100 (it leaves masked keys out itself).
                self.through_unit(*layer, &xv, &mut o);
                self.tap(*layer, &xv, &o);
                self.vals[*x] = xv;
                self.vals[*out] = o;
                Some(*layer)
            }
            Node::Context { p: pr, qkv, out, heads, n, d, point } => {
                let (nh, n, d) = (*heads, *n, *d);
                let probs = &self.vals[*pr];
                let qkv = &self.vals[*qkv];
                let t = qkv.len() / (3 * d);
                let mut o = self.spare.pop().unwrap_or_default();
                o.clear();
                o.resize(t * d, F::default());
                context(probs, qkv, t / n, nh, n, d, &mut o);
                self.observe(*point, &o);
                self.vals[*out] = o;
                None
            }
            Node::Gelu { x, out, layer, point, .. } => {
                let xv = std::mem::take(&mut self.vals[*x]);
                let mut o = self.fresh();
                o.extend(xv.iter().map(|&v| gelu(v)));
                self.through_unit(*layer, &xv, &mut o);
                self.observe(*point, &o);
                self.tap(*layer, &xv, &o);
                self.vals[*x] = xv;
                self.vals[*out] = o;
                Some(*layer)
            }
            Node::Add { x, y, point } => {
                let mut xv = std::mem::take(&mut self.vals[*x]);
                for (a, &b) in xv.iter_mut().zip(&self.vals[*y]) {
                    *a += b;
                }
                self.observe(*point, &xv);
                self.vals[*x] = xv;
                None
            }
            Node::ToResidual { x, out, point } => {
                let mut o = self.fresh();
                o.extend_from_slice(&self.vals[*x]);
                self.observe(*point, &o);
                self.vals[*out] = o;
                None
            }
            Node::Gather { x, out, kind, index } => {
                let mut o = self.fresh();
                gather(&self.vals[*x], index, kind.group(), &mut o);
                self.vals[*out] = o;
                None
            }
            Node::Head { x, d, pool, head, head_dist } => {
                let xv = &self.vals[*x];
                let d = *d;
                let lin = |l: &super::graph::LinearP, row: &[F]| -> Vec<F> {
                    let mut out = Vec::new();
                    linear(row, 1, p(l.w), p(l.b.expect("head bias")), l.out, &mut out);
                    out
                };
                let pooled: Vec<F>;
                let feats: &[F] = match pool {
                    Pool::Mean => {
                        let t = xv.len() / d;
                        let mut s = vec![F::default(); d];
                        for row in xv.chunks_exact(d) {
                            for (a, &v) in s.iter_mut().zip(row) {
                                *a += v;
                            }
                        }
                        let tf = F::from_f64(t as f64);
                        pooled = s.into_iter().map(|v| v / tf).collect();
                        &pooled
                    }
                    _ => &xv[..d],
                };
                self.logits = match (head, head_dist, pool) {
                    (None, _, _) => feats.iter().map(|v| v.to_f64()).collect(),
                    (Some(h), Some(hd), Pool::Distilled) => {
                        let a = lin(h, &xv[..d]);
                        let b = lin(hd, &xv[d..2 * d]);
                        a.iter().zip(&b).map(|(a, b)| ((*a + *b) / F::from_f64(2.0)).to_f64()).collect()
                    }
                    (Some(h), _, _) => lin(h, feats).iter().map(|v| v.to_f64()).collect(),
                };
                None
            }
        }
    }

    /// Run to the next non-linear layer and show its input and output; None when the forward is done.
    pub fn next_tap(&mut self) -> Option<Tap<'_>> {
        let g = &self.model.graph;
        while self.pc < g.nodes.len() {
            let i = self.pc;
            let tapped = self.exec(i);
            for &s in &g.free_after[i] {
                let v = std::mem::take(&mut self.vals[s]);
                self.spare.push(v);
            }
            self.pc += 1;
            if let Some(layer) = tapped {
                return Some(Tap { layer: &g.layers[layer], input: &self.tap_in, output: &self.tap_out, conditions: &[], format: None });
            }
        }
        None
    }

    /// Run to the end and return the logits (features for a head-less model).
    pub fn finish(mut self) -> Output {
        while self.next_tap().is_some() {}
        Output { logits: std::mem::take(&mut self.logits), int_logits: Vec::new() }
    }

    /// [`FloatRun::finish`], or the first error of a unit run by [`FloatRun::with_units`].
    pub fn try_finish(mut self) -> Result<Output, ModelError> {
        while self.next_tap().is_some() {}
        match self.err.take() {
            Some(e) => Err(e),
            None => Ok(Output { logits: std::mem::take(&mut self.logits), int_logits: Vec::new() }),
        }
    }
}

/// Output row `r` = the concatenation of input rows `index[r·group .. (r+1)·group]`.
pub(crate) fn gather<T: Copy>(x: &[T], index: &[usize], group: usize, out: &mut Vec<T>) {
    let w = x.len() / index.len();
    out.clear();
    out.reserve(x.len());
    debug_assert_eq!(index.len() % group, 0);
    for &src in index {
        out.extend_from_slice(&x[src * w..(src + 1) * w]);
    }
}

fn scale_channels<F: Real>(v: &mut [F], g: Option<&[f32]>) {
    if let Some(g) = g {
        for row in v.chunks_exact_mut(g.len()) {
            for (x, &s) in row.iter_mut().zip(g) {
                *x = *x * F::from_f32(s);
            }
        }
    }
}

impl Model {
    /// Float forward of one image, calling `taps` at every non-linear layer.
    pub fn forward_float<F: Real>(&self, image: &[f32], taps: Option<&mut dyn FnMut(&Tap)>) -> Output {
        match taps {
            None => FloatRun::<F>::new(self, image, false).finish(),
            Some(cb) => {
                let mut run = FloatRun::<F>::new(self, image, true);
                while let Some(t) = run.next_tap() {
                    cb(&t);
                }
                run.finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn bits<F: Real>(v: &[F]) -> Vec<u64> {
        v.iter().map(|x| x.to_f64().to_bits()).collect()
    }

    fn linear_case<F: Real>(rng: &mut rand::rngs::StdRng, rows: usize, k: usize, out_f: usize) {
        let x: Vec<F> = (0..rows * k).map(|_| F::from_f32(rng.gen_range(-3.0..3.0))).collect();
        let w: Vec<f32> = (0..out_f * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..out_f).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut got = Vec::new();
        linear(&x, rows, &w, &b, out_f, &mut got);
        let want = bits(&linear_plain(&x, rows, &w, &b, out_f));
        assert_eq!(bits(&got), want, "{} rows {rows} k {k} out {out_f}", F::name());
        // Every kernel this CPU can run, not only the one `linear` picks.
        #[cfg(target_arch = "x86_64")]
        {
            let mut o = vec![F::default(); rows * out_f];
            let has = |f: &str| match f {
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                _ => std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq"),
            };
            for kernel in ["avx2", "avx512"] {
                if !has(kernel) {
                    continue;
                }
                o.fill(F::default());
                // SAFETY: the CPU has the kernel's features (checked just above).
                unsafe {
                    match (kernel, F::as_f32(&x), F::as_f64(&x)) {
                        ("avx2", Some(xf), _) => tiled::linear_f32(xf, k, &w, &b, out_f, F::as_f32_mut(&mut o).unwrap()),
                        ("avx2", _, Some(xf)) => tiled::linear_f64(xf, k, &w, &b, out_f, F::as_f64_mut(&mut o).unwrap()),
                        (_, Some(xf), _) => tiled::linear_f32_avx512(xf, k, &w, &b, out_f, F::as_f32_mut(&mut o).unwrap()),
                        (_, _, Some(xf)) => tiled::linear_f64_avx512(xf, k, &w, &b, out_f, F::as_f64_mut(&mut o).unwrap()),
                        _ => unreachable!("f32 or f64"),
                    }
                }
                assert_eq!(bits(&o), want, "{kernel} {} rows {rows} k {k} out {out_f}", F::name());
            }
        }
    }

    #[test]
    fn tiled_linear_is_bit_identical_to_one_dot_at_a_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // Tile remainders in every dimension (rows vs 4 and 2, outputs vs 3, k vs 8).
        for &(rows, k, out_f) in &[(1, 1, 1), (5, 7, 4), (8, 16, 6), (197, 192, 576), (13, 33, 10), (3, 9, 2), (64, 768, 17)] {
            linear_case::<f32>(&mut rng, rows, k, out_f);
            linear_case::<f64>(&mut rng, rows, k, out_f);
        }
    }

    fn scores_case<F: Real>(rng: &mut rand::rngs::StdRng, groups: usize, nh: usize, n: usize, hd: usize, bias: bool) {
        let d = nh * hd;
        let qkv: Vec<F> = (0..groups * n * 3 * d).map(|_| F::from_f32(rng.gen_range(-2.0..2.0))).collect();
        let tab: Vec<f32> = (0..(2 * n) * nh).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let index: Vec<usize> = (0..n * n).map(|_| rng.gen_range(0..2 * n)).collect();
        let table = bias.then_some((&tab[..], &index[..]));
        let scale = F::from_f64((hd as f64).powf(-0.5));
        let mut got = vec![F::default(); groups * nh * n * n];
        scores(&qkv, groups, nh, n, d, scale, table, &mut got);
        assert_eq!(bits(&got), bits(&scores_plain(&qkv, groups, nh, n, d, scale, table)), "{} {groups}x{nh}x{n}x{hd}", F::name());
    }

    #[test]
    fn transposed_scores_are_bit_identical_to_one_logit_at_a_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for &(groups, nh, n, hd, bias) in
            &[(1, 1, 1, 1, false), (1, 3, 17, 64, false), (4, 2, 16, 8, true), (2, 3, 49, 32, true), (1, 6, 197, 64, false)]
        {
            scores_case::<f32>(&mut rng, groups, nh, n, hd, bias);
            scores_case::<f64>(&mut rng, groups, nh, n, hd, bias);
        }
    }
}
