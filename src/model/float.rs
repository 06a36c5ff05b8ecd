//! The float forward: timm's eval-mode VisionTransformer / VisionTransformerDistilled in f32 or f64,
//! as a step machine that stops at every non-linear layer ([`FloatRun::next_tap`]).

use super::{Layer, Model, Output, Tap};
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

/// A quantisation point of the integer model: where an activation scale is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// The normalised input image.
    Input,
    /// Patch embedding output (before the position embedding).
    PatchEmbed,
    /// Tokens plus position embedding: the residual stream entering block 0 (16-bit).
    PosEmbed,
    /// LayerNorm 1 output of a block.
    Norm1(usize),
    /// qkv projection output.
    Qkv(usize),
    /// Scaled attention scores `q·kᵀ·head_dim^−½` (the softmax input).
    MatmulQk(usize),
    /// Attention probabilities times V (the proj input).
    MatmulAv(usize),
    /// Attention projection output (LayerScale applied).
    Proj(usize),
    /// Residual after attention (16-bit).
    Residual1(usize),
    /// LayerNorm 2 output.
    Norm2(usize),
    /// fc1 output (the GELU input).
    Fc1(usize),
    /// GELU output (the fc2 input).
    Act(usize),
    /// fc2 output (LayerScale applied).
    Fc2(usize),
    /// Residual after the MLP (16-bit).
    Residual2(usize),
    /// Final LayerNorm output (the head input).
    Norm,
}

impl Point {
    /// Name in the manifest's `act_scales`.
    pub fn name(&self) -> String {
        match self {
            Point::Input => "input".into(),
            Point::PatchEmbed => "patch_embed".into(),
            Point::PosEmbed => "pos_embed".into(),
            Point::Norm1(b) => format!("blocks.{b}.norm1"),
            Point::Qkv(b) => format!("blocks.{b}.attn.qkv"),
            Point::MatmulQk(b) => format!("blocks.{b}.attn.matmul_qk"),
            Point::MatmulAv(b) => format!("blocks.{b}.attn.matmul_av"),
            Point::Proj(b) => format!("blocks.{b}.attn.proj"),
            Point::Residual1(b) => format!("blocks.{b}.residual1"),
            Point::Norm2(b) => format!("blocks.{b}.norm2"),
            Point::Fc1(b) => format!("blocks.{b}.mlp.fc1"),
            Point::Act(b) => format!("blocks.{b}.mlp.act"),
            Point::Fc2(b) => format!("blocks.{b}.mlp.fc2"),
            Point::Residual2(b) => format!("blocks.{b}.residual2"),
            Point::Norm => "norm".into(),
        }
    }

    /// Whether the point is a 16-bit residual (its scale does not follow the activation width).
    pub fn is_residual(&self) -> bool {
        matches!(self, Point::PosEmbed | Point::Residual1(_) | Point::Residual2(_))
    }

    /// Every point of a model with `depth` blocks, in execution order.
    pub fn all(depth: usize) -> Vec<Point> {
        let mut v = vec![Point::Input, Point::PatchEmbed, Point::PosEmbed];
        for b in 0..depth {
            v.extend([
                Point::Norm1(b),
                Point::Qkv(b),
                Point::MatmulQk(b),
                Point::MatmulAv(b),
                Point::Proj(b),
                Point::Residual1(b),
                Point::Norm2(b),
                Point::Fc1(b),
                Point::Act(b),
                Point::Fc2(b),
                Point::Residual2(b),
            ]);
        }
        v.push(Point::Norm);
        v
    }

    /// The residual point feeding LayerNorm layer `layer_name`'s input (for PTF calibration).
    pub fn ln_input(layer_name: &str, depth: usize) -> Option<Point> {
        if layer_name == "norm" {
            return Some(if depth == 0 { Point::PosEmbed } else { Point::Residual2(depth - 1) });
        }
        let rest = layer_name.strip_prefix("blocks.")?;
        let (b, what) = rest.split_once('.')?;
        let b: usize = b.parse().ok()?;
        match what {
            "norm1" if b == 0 => Some(Point::PosEmbed),
            "norm1" => Some(Point::Residual2(b - 1)),
            "norm2" => Some(Point::Residual1(b)),
            _ => None,
        }
    }
}

/// Observer of every quantisation point's float values (calibration).
pub type Observer<'o, F> = &'o mut (dyn FnMut(Point, &[F]) + 'o);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Start,
    Norm1(usize),
    Softmax(usize),
    Norm2(usize),
    Gelu(usize),
    Final,
    Done,
}

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

/// timm's eval-mode forward of one image, stopping at every non-linear layer.
pub struct FloatRun<'m, 'o, F: Real> {
    model: &'m Model,
    stage: Stage,
    taps: bool,
    obs: Option<Observer<'o, F>>,
    image: Vec<F>,
    /// Residual stream `[T, D]`.
    x: Vec<F>,
    /// LayerNorm output `[T, D]`.
    h: Vec<F>,
    qkv: Vec<F>,
    /// Scores, then probabilities `[heads, T, T]`.
    att: Vec<F>,
    /// Attention context `[T, D]`, reused for proj / fc2 outputs.
    ctx: Vec<F>,
    tmp: Vec<F>,
    /// fc1 output and GELU output `[T, H]`.
    mid: Vec<F>,
    act: Vec<F>,
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
            stage: Stage::Start,
            taps,
            obs: None,
            image: image.iter().map(|&v| F::from_f32(v)).collect(),
            x: Vec::new(),
            h: Vec::new(),
            qkv: Vec::new(),
            att: Vec::new(),
            ctx: Vec::new(),
            tmp: Vec::new(),
            mid: Vec::new(),
            act: Vec::new(),
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

    fn observe(&mut self, p: Point, which: Buf) {
        if let Some(o) = self.obs.as_mut() {
            let v = match which {
                Buf::Image => &self.image,
                Buf::X => &self.x,
                Buf::H => &self.h,
                Buf::Qkv => &self.qkv,
                Buf::Att => &self.att,
                Buf::Ctx => &self.ctx,
                Buf::Tmp => &self.tmp,
                Buf::Mid => &self.mid,
                Buf::Act => &self.act,
            };
            o(p, v);
        }
    }

    fn set_tap(&mut self, a: Buf, b: Buf) {
        if !self.taps {
            return;
        }
        let get = |s: &Self, w: Buf| -> Vec<f64> {
            let v = match w {
                Buf::X => &s.x,
                Buf::H => &s.h,
                Buf::Att => &s.att,
                Buf::Mid => &s.mid,
                Buf::Act => &s.act,
                _ => unreachable!("not a tap buffer"),
            };
            v.iter().map(|x| x.to_f64()).collect()
        };
        self.tap_in = get(self, a);
        self.tap_out = get(self, b);
    }

    fn embed(&mut self) {
        let m = &self.model.manifest;
        let (d, t) = (m.embed_dim, m.tokens());
        self.observe(Point::Input, Buf::Image);
        let pt = patches(&self.image, m.in_chans, m.img_size, m.patch_size);
        let np = m.num_patches();
        linear(&pt, np, &self.model.patch.w, &self.model.patch.b, d, &mut self.tmp);
        self.observe(Point::PatchEmbed, Buf::Tmp);
        let pre = t - np;
        self.x.clear();
        self.x.extend(self.model.cls_token.iter().map(|&v| F::from_f32(v)));
        if let Some(dt) = &self.model.dist_token {
            self.x.extend(dt.iter().map(|&v| F::from_f32(v)));
        }
        self.x.extend_from_slice(&self.tmp);
        debug_assert_eq!(self.x.len(), t * d);
        for (v, &p) in self.x.iter_mut().zip(&self.model.pos_embed) {
            *v += F::from_f32(p);
        }
        let _ = pre;
        self.observe(Point::PosEmbed, Buf::X);
    }

    fn norm1(&mut self, b: usize) {
        let blk = &self.model.blocks[b];
        layer_norm(&self.x, &blk.norm1.w, &blk.norm1.b, self.model.manifest.ln_eps, &mut self.h);
        self.observe(Point::Norm1(b), Buf::H);
        self.set_tap(Buf::X, Buf::H);
    }

    fn scores(&mut self, b: usize) {
        let m = &self.model.manifest;
        let (d, t, nh, hd) = (m.embed_dim, m.tokens(), m.num_heads, m.head_dim());
        let blk = &self.model.blocks[b];
        linear(&self.h, t, &blk.qkv.w, &blk.qkv.b, 3 * d, &mut self.qkv);
        self.observe(Point::Qkv(b), Buf::Qkv);
        let scale = F::from_f64((hd as f64).powf(-0.5));
        self.att.clear();
        self.att.resize(nh * t * t, F::default());
        let mut qh = vec![F::default(); hd];
        for h in 0..nh {
            for i in 0..t {
                let q = &self.qkv[i * 3 * d + h * hd..][..hd];
                for (a, &v) in qh.iter_mut().zip(q) {
                    *a = v * scale;
                }
                let row = &mut self.att[(h * t + i) * t..][..t];
                for (j, r) in row.iter_mut().enumerate() {
                    let k = &self.qkv[j * 3 * d + d + h * hd..][..hd];
                    let mut s = F::default();
                    for (a, &bb) in qh.iter().zip(k) {
                        s += *a * bb;
                    }
                    *r = s;
                }
            }
        }
        self.observe(Point::MatmulQk(b), Buf::Att);
        if self.taps {
            self.tap_in = self.att.iter().map(|v| v.to_f64()).collect();
        }
        for row in self.att.chunks_exact_mut(t) {
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
        if self.taps {
            self.tap_out = self.att.iter().map(|v| v.to_f64()).collect();
        }
    }

    fn attn_out(&mut self, b: usize) {
        let m = &self.model.manifest;
        let (d, t, nh, hd) = (m.embed_dim, m.tokens(), m.num_heads, m.head_dim());
        let blk = &self.model.blocks[b];
        self.ctx.clear();
        self.ctx.resize(t * d, F::default());
        for h in 0..nh {
            for i in 0..t {
                let p = &self.att[(h * t + i) * t..][..t];
                let c = &mut self.ctx[i * d + h * hd..][..hd];
                for (j, &pj) in p.iter().enumerate() {
                    let v = &self.qkv[j * 3 * d + 2 * d + h * hd..][..hd];
                    for (cc, &vv) in c.iter_mut().zip(v) {
                        *cc += pj * vv;
                    }
                }
            }
        }
        self.observe(Point::MatmulAv(b), Buf::Ctx);
        linear(&self.ctx, t, &blk.proj.w, &blk.proj.b, d, &mut self.tmp);
        scale_channels(&mut self.tmp, blk.ls1.as_deref());
        self.observe(Point::Proj(b), Buf::Tmp);
        for (x, &y) in self.x.iter_mut().zip(&self.tmp) {
            *x += y;
        }
        self.observe(Point::Residual1(b), Buf::X);
        layer_norm(&self.x, &blk.norm2.w, &blk.norm2.b, m.ln_eps, &mut self.h);
        self.observe(Point::Norm2(b), Buf::H);
        self.set_tap(Buf::X, Buf::H);
    }

    fn mlp_in(&mut self, b: usize) {
        let m = &self.model.manifest;
        let (t, hh) = (m.tokens(), m.hidden());
        let blk = &self.model.blocks[b];
        linear(&self.h, t, &blk.fc1.w, &blk.fc1.b, hh, &mut self.mid);
        self.observe(Point::Fc1(b), Buf::Mid);
        self.act.clear();
        self.act.extend(self.mid.iter().map(|&v| gelu(v)));
        self.observe(Point::Act(b), Buf::Act);
        self.set_tap(Buf::Mid, Buf::Act);
    }

    fn mlp_out(&mut self, b: usize) {
        let m = &self.model.manifest;
        let (d, t) = (m.embed_dim, m.tokens());
        let blk = &self.model.blocks[b];
        linear(&self.act, t, &blk.fc2.w, &blk.fc2.b, d, &mut self.tmp);
        scale_channels(&mut self.tmp, blk.ls2.as_deref());
        self.observe(Point::Fc2(b), Buf::Tmp);
        for (x, &y) in self.x.iter_mut().zip(&self.tmp) {
            *x += y;
        }
        self.observe(Point::Residual2(b), Buf::X);
    }

    fn final_norm(&mut self) {
        let n = &self.model.norm;
        layer_norm(&self.x, &n.w, &n.b, self.model.manifest.ln_eps, &mut self.h);
        self.observe(Point::Norm, Buf::H);
        self.set_tap(Buf::X, Buf::H);
    }

    fn head(&mut self) {
        let m = &self.model.manifest;
        let d = m.embed_dim;
        self.logits = match &self.model.head {
            None => self.h[..d].iter().map(|v| v.to_f64()).collect(),
            Some(head) => {
                let mut out = Vec::new();
                linear(&self.h[..d], 1, &head.w, &head.b, head.out, &mut out);
                if let Some(hd) = &self.model.head_dist {
                    let mut o2 = Vec::new();
                    linear(&self.h[d..2 * d], 1, &hd.w, &hd.b, hd.out, &mut o2);
                    out.iter().zip(&o2).map(|(a, b)| ((*a + *b) / F::from_f64(2.0)).to_f64()).collect()
                } else {
                    out.iter().map(|v| v.to_f64()).collect()
                }
            }
        };
    }

    /// Run to the next non-linear layer and show its input and output; None when the forward is done.
    pub fn next_tap(&mut self) -> Option<Tap<'_>> {
        let depth = self.model.manifest.depth;
        let (layer, next) = match self.stage {
            Stage::Start => {
                self.embed();
                self.norm1(0);
                (0, Stage::Norm1(0))
            }
            Stage::Norm1(b) => {
                self.scores(b);
                (4 * b + 1, Stage::Softmax(b))
            }
            Stage::Softmax(b) => {
                self.attn_out(b);
                (4 * b + 2, Stage::Norm2(b))
            }
            Stage::Norm2(b) => {
                self.mlp_in(b);
                (4 * b + 3, Stage::Gelu(b))
            }
            Stage::Gelu(b) => {
                self.mlp_out(b);
                if b + 1 < depth {
                    self.norm1(b + 1);
                    (4 * b + 4, Stage::Norm1(b + 1))
                } else {
                    self.final_norm();
                    (4 * depth, Stage::Final)
                }
            }
            Stage::Final => {
                self.head();
                self.stage = Stage::Done;
                return None;
            }
            Stage::Done => return None,
        };
        self.stage = next;
        let layer: &Layer = &self.model.layers[layer];
        Some(Tap { layer, input: &self.tap_in, output: &self.tap_out, conditions: &[] })
    }

    /// Run to the end and return the logits (features for a head-less model).
    pub fn finish(mut self) -> Output {
        while self.next_tap().is_some() {}
        Output { logits: std::mem::take(&mut self.logits) }
    }
}

#[derive(Clone, Copy)]
enum Buf {
    Image,
    X,
    H,
    Qkv,
    Att,
    Ctx,
    Tmp,
    Mid,
    Act,
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
