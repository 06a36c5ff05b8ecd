//! The float executor of the layer graph: timm's eval-mode forward (ViT, DeiT, Swin) in f32 or
//! f64, as a step machine that stops at every non-linear layer ([`FloatRun::next_tap`]).

use super::graph::{Node, PointId, Pool};
use super::{Model, Output, Tap};
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
}

/// Observer of every quantisation point's float values (calibration): the point's index in
/// [`Graph::points`](super::graph::Graph::points) and its values.
pub type Observer<'o, F> = &'o mut (dyn FnMut(PointId, &[F]) + 'o);

/// `out[t][o] = b[o] + Σ_k x[t][k]·w[o][k]` with eight partial sums per dot product.
pub(crate) fn linear<F: Real>(x: &[F], rows: usize, w: &[f32], b: &[f32], out_f: usize, out: &mut Vec<F>) {
    let k = w.len() / out_f;
    debug_assert_eq!(x.len(), rows * k);
    out.clear();
    out.resize(rows * out_f, F::default());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2. Same operations in the same order, wider registers
            // (Rust never contracts a·b + c into an FMA, so results are identical).
            unsafe { linear_avx2(x, k, w, b, out_f, out) };
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
                let mut qh = vec![F::default(); hd];
                let table = bias.as_ref().map(|b| (p(b.table), &b.index));
                for g in 0..groups {
                    for h in 0..nh {
                        for i in 0..n {
                            let q = &qkv[(g * n + i) * 3 * d + h * hd..][..hd];
                            for (a, &v) in qh.iter_mut().zip(q) {
                                *a = v * scale;
                            }
                            let row = &mut o[((g * nh + h) * n + i) * n..][..n];
                            for (j, r) in row.iter_mut().enumerate() {
                                let k = &qkv[(g * n + j) * 3 * d + d + h * hd..][..hd];
                                let mut s = F::default();
                                for (a, &bb) in qh.iter().zip(k) {
                                    s += *a * bb;
                                }
                                if let Some((tab, index)) = table {
                                    s += F::from_f32(tab[index[i * n + j] * nh + h]);
                                }
                                *r = s;
                            }
                        }
                    }
                }
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
                self.tap(*layer, &xv, &o);
                self.vals[*x] = xv;
                self.vals[*out] = o;
                Some(*layer)
            }
            Node::Context { p: pr, qkv, out, heads, n, d, point } => {
                let (nh, n, d) = (*heads, *n, *d);
                let hd = d / nh;
                let probs = &self.vals[*pr];
                let qkv = &self.vals[*qkv];
                let t = qkv.len() / (3 * d);
                let mut o = self.spare.pop().unwrap_or_default();
                o.clear();
                o.resize(t * d, F::default());
                for g in 0..t / n {
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
                self.observe(*point, &o);
                self.vals[*out] = o;
                None
            }
            Node::Gelu { x, out, layer, point, .. } => {
                let xv = std::mem::take(&mut self.vals[*x]);
                let mut o = self.fresh();
                o.extend(xv.iter().map(|&v| gelu(v)));
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
                return Some(Tap { layer: &g.layers[layer], input: &self.tap_in, output: &self.tap_out, conditions: &[] });
            }
        }
        None
    }

    /// Run to the end and return the logits (features for a head-less model).
    pub fn finish(mut self) -> Output {
        while self.next_tap().is_some() {}
        Output { logits: std::mem::take(&mut self.logits), int_logits: Vec::new() }
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
