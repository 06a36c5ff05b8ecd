//! `layernorm_fqvit`: FQ-ViT's PTF integer LayerNorm (`units::fqvit::LayerNorm`, Integer mode,
//! `kernels.md` §3.3) as a row-buffer unit with one serial element engine. The row statistics
//! are formed once per row (sum, square sum, D = ⌊√(C·ssq − sum²)⌋ by the digit square root of
//! `cycle::layernorm`); then every element needs two divisions by the row's D — the PTF
//! multiplier m = ⌊(g≪n)/(D≪F)⌋ and the bias bb = RNE(((bq·D − sum·hq)≪n)/(D≪F)) — done by two
//! restoring dividers (8 and Q quotient bits, one bit a cycle) that step together. Because
//! D≪F has F zero low bits, both divide ⌊X/2^F⌋ by D (nested floors; the bias's half-even
//! rounding also looks at the F dropped bits), so each divider is only D's width.
//!
//! ```text
//!  LOAD  in_ready = 1: each beat is written to the row RAM (nb = ⌈N/LANES⌉ words).    nb cycles
//!  STAT  the row RAM and the per-channel RAMs are read word by word (registered read);
//!        per valid lane xq = (q − zp)·2^e_c, S += xq, SS += xq² (LANES squarers).  nb + 1 cycles
//!  SQRT  V = N·SS − S² (one multiplier, one squarer) into the digit square root:
//!        D = ⌊√V⌋, two radicand bits a cycle.                                 1 + (B+13) + 1 cycles
//!  per beat b:
//!   RD   read word b of every RAM.                                                       1 cycle
//!   per lane (serial; padded lanes of the last beat too, their outputs dropped), Q + 3 cycles:
//!    P1  g = |gq| with gq = N·hq + δ; n from bit lengths of g and D and one compare of their
//!        normalised mantissas (the golden model's rule); P = bq·D − S·hq.           1 cycle
//!    P2  G = g≪n and X = |P|≪n (barrel shifters); the dividers start from
//!        ⌊G/2^(F+8)⌋ and ⌊X/2^(F+Q)⌋ (each < D) and shift in the next 8 and Q bits.  1 cycle
//!    DIV one quotient bit of each a cycle (the 8-bit one stops after 8).             Q cycles
//!    FIN bb = ±RNE from the remainder, D and the F dropped bits of X; m = 255 when
//!        ⌊log2 A⌋ ≥ 8, else the quotient; acc = ±m·xq + bb; out = RNE(acc / 2^n);
//!        a zero-variance row (D = 0) gives RNE(bq / 2^F) instead.                   1 cycle
//!   XFER the beat's outputs into the output register when it is free.             1 cycle
//! ```
//! One row at a time, one element at a time: with Q = 2B + 24, no input gaps and no
//! back-pressure, latency (first input beat to first output beat) is
//! 2·nb + LANES·(Q + 3) + B + 18 cycles and the row period
//! nb·(LANES·(Q + 3) + 4) + B + 16 cycles (checked below and against the RTL by `mnq cosim`).
//!
//! Widths for B-bit inputs, F = 20, N ≤ 1024 and e_c ≤ 3 (k_c ∈ {1, 2, 4, 8}), zp a B-bit code:
//! q − zp B+1 bits, xq B+4, S B+14 (signed); SS 2B+16, V 2B+26, D B+13 (unsigned);
//! |hq|, |bq| < 2^31 and δ = gq − N·hq (|δ| ≤ (N+1)/2) 11 bits, so g < 2^42 and G < 2^73;
//! |P| < 2^(B+45), X < 2^(B+76); the bias quotient |bb| < 2^Q and the output |out| < 2^31
//! are checked per layer by [`config`] from the constants (the bound uses D ≥ ⌊√(N−1)⌋ on
//! rows that are not constant and n at most its value for the largest D = N·xmax).
//!
//! Configuration registers: 7 row length N (11 bits), 8 zero point zp (B bits, two's
//! complement), and per channel c < 1024: 1024 + c hq (32 bits), 2048 + c bq (32 bits),
//! 3072 + c {e_c (bits 12:11), δ_c (bits 10:0, two's complement)}. Each per-channel table is
//! LANES RAMs of 1024/LANES words (lane c mod LANES, word c / LANES), read with the row RAM.

use super::layernorm::{Digit, Sqrt, NMAX};
use super::{sext, Clocked, Outs, Pins, MAX_LANES};
use crate::fixed::{bit_length, isqrt};

/// Fractional bits of the constants (the golden preset's frac_bits).
pub const FRAC: u32 = 20;
/// Output bits per lane.
pub const OUT_BITS: u32 = 32;
/// Bits of δ_c = gq_c − N·hq_c.
pub const DELTA_BITS: u32 = 11;

/// Quotient bits Q of the bias division for B-bit inputs.
pub fn q_bits(bits: u32) -> u32 {
    2 * bits + 24
}

/// Width of V = N·SS − S² (even, the digit square root's radicand).
pub fn var_bits(bits: u32) -> u32 {
    2 * bits + 26
}

/// Width of D = ⌊√V⌋.
pub fn d_bits(bits: u32) -> u32 {
    bits + 13
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Load,
    Stat,
    Sqrt,
    Rd,
    P1,
    P2,
    Div,
    Fin,
    Xfer,
}

/// Every register of the core but the RAMs.
#[derive(Debug, Clone, Copy)]
struct Regs {
    phase: Phase,
    wptr: usize,
    rptr: usize,
    raddr: usize,
    rvalid: bool,
    rdi: usize,
    sum: i64,
    ssq: u64,
    go: bool,
    d: u64,
    lane: usize,
    xq: i64,
    gneg: bool,
    gz: bool,
    msat: bool,
    g: u64,
    n: u32,
    p: i128,
    bq: i64,
    mrem: u64,
    msh: u64,
    mquo: u64,
    brem: u64,
    bsh: u128,
    bquo: u64,
    pneg: bool,
    xnz: bool,
    xgt: bool,
    xeq: bool,
    cnt: u32,
    stg: [i64; MAX_LANES],
    ov: bool,
    olast: bool,
    odata: [i64; MAX_LANES],
}

/// One word of the per-channel RAMs: (hq, bq, e, δ) per lane.
type ConstWord = [(i64, i64, u32, i64); MAX_LANES];

/// The cycle model of `layernorm_fqvit`.
#[derive(Debug, Clone)]
pub struct LayerNormFqvit {
    bits: u32,
    lanes: usize,
    q: u32,
    sqrt: Digit,
    n: u64,
    nbeats: usize,
    lastn: usize,
    zp: i64,
    r: Regs,
    rdata: [i64; MAX_LANES],
    cdata: ConstWord,
    ram: Vec<[i64; MAX_LANES]>,
    consts: Vec<ConstWord>,
}

impl LayerNormFqvit {
    /// A unit for `bits`-bit inputs and `lanes` lanes, registers cleared.
    pub fn new(bits: u32, lanes: usize) -> LayerNormFqvit {
        LayerNormFqvit {
            bits,
            lanes,
            q: q_bits(bits),
            sqrt: Digit::new(var_bits(bits)),
            n: 0,
            nbeats: 0,
            lastn: 0,
            zp: 0,
            r: Regs {
                phase: Phase::Load,
                wptr: 0,
                rptr: 0,
                raddr: 0,
                rvalid: false,
                rdi: 0,
                sum: 0,
                ssq: 0,
                go: false,
                d: 0,
                lane: 0,
                xq: 0,
                gneg: false,
                gz: false,
                msat: false,
                g: 0,
                n: 0,
                p: 0,
                bq: 0,
                mrem: 0,
                msh: 0,
                mquo: 0,
                brem: 0,
                bsh: 0,
                bquo: 0,
                pneg: false,
                xnz: false,
                xgt: false,
                xeq: false,
                cnt: 0,
                stg: [0; MAX_LANES],
                ov: false,
                olast: false,
                odata: [0; MAX_LANES],
            },
            rdata: [0; MAX_LANES],
            cdata: [(0, 0, 0, 0); MAX_LANES],
            ram: vec![[0; MAX_LANES]; NMAX / lanes],
            consts: vec![[(0, 0, 0, 0); MAX_LANES]; NMAX / lanes],
        }
    }

    fn valid_lanes(&self, b: usize) -> usize {
        if b + 1 == self.nbeats {
            self.lastn
        } else {
            self.lanes
        }
    }

    /// xq = (q − zp)·2^e of lane `i` of the read word.
    fn xq(&self, i: usize) -> i64 {
        (self.rdata[i] - self.zp) << self.cdata[i].2
    }
}

/// n = clamp(7 − ⌊log2(g / (d·2^F))⌋, 0, 31) from bit lengths and one compare, and whether
/// ⌊log2⌋ ≥ 8 (then m saturates at 255). `g > 0`.
fn shift_n(g: u64, d: u64) -> (u32, bool) {
    let (bg, bd) = (i64::from(bit_length(u128::from(g))), i64::from(bit_length(u128::from(d))));
    // Normalised mantissas compare as g ≥ d·2^(bg−bd).
    let ge = (u128::from(g) << (64 - bg)) >= (u128::from(d) << (64 - bd));
    let t = 7 + i64::from(FRAC) + bd + i64::from(!ge);
    if bg >= t {
        (0, bg > t)
    } else {
        ((t - bg).min(31) as u32, false)
    }
}

impl Clocked for LayerNormFqvit {
    fn eval(&self, _pins: &Pins) -> Outs {
        let r = &self.r;
        let mut o = Outs { in_ready: r.phase == Phase::Load, out_valid: r.ov, out_last: r.olast, ..Outs::default() };
        o.out_data[..self.lanes].copy_from_slice(&r.odata[..self.lanes]);
        o
    }

    fn tick(&mut self, pins: &Pins) {
        let cur = self.r;
        let mut nx = cur;
        let issue = match cur.phase {
            Phase::Stat => cur.rptr < self.nbeats,
            Phase::Rd => true,
            _ => false,
        };
        nx.raddr = if issue { cur.rptr } else { cur.raddr };
        let ra = nx.raddr.min(self.ram.len() - 1);
        let (rdata, cdata) = (self.ram[ra], self.consts[ra]);
        let consume = cur.ov && pins.out_ready;
        if consume {
            nx.ov = false;
        }
        let mut write = None;
        let mut start = false;
        let (q, f) = (self.q, FRAC);
        if pins.reset {
            nx.phase = Phase::Load;
            nx.wptr = 0;
            nx.ov = false;
            nx.rvalid = false;
            nx.go = false;
        } else {
            match cur.phase {
                Phase::Load => {
                    if pins.in_valid {
                        let mut w = [0i64; MAX_LANES];
                        for (i, wi) in w.iter_mut().enumerate().take(self.lanes) {
                            *wi = sext(pins.in_data[i] as u64, self.bits);
                        }
                        write = Some((cur.wptr, w));
                        nx.wptr = cur.wptr + 1;
                        if cur.wptr + 1 == self.nbeats {
                            nx.phase = Phase::Stat;
                            nx.rptr = 0;
                            nx.rvalid = false;
                            nx.sum = 0;
                            nx.ssq = 0;
                        }
                    }
                }
                Phase::Stat => {
                    if issue {
                        nx.rptr = cur.rptr + 1;
                        nx.rdi = cur.rptr;
                    }
                    nx.rvalid = issue;
                    if cur.rvalid {
                        let mut s = cur.sum;
                        let mut ss = cur.ssq;
                        for i in 0..self.valid_lanes(cur.rdi) {
                            let x = self.xq(i);
                            s += x;
                            ss += (x * x) as u64;
                        }
                        nx.sum = s;
                        nx.ssq = ss;
                        if cur.rdi + 1 == self.nbeats {
                            nx.phase = Phase::Sqrt;
                            nx.go = true;
                        }
                    }
                }
                Phase::Sqrt => {
                    start = cur.go;
                    nx.go = false;
                    if !cur.go && self.sqrt.done() {
                        nx.d = self.sqrt.root();
                        nx.phase = Phase::Rd;
                        nx.rptr = 0;
                    }
                }
                Phase::Rd => {
                    nx.rptr = cur.rptr + 1;
                    nx.rdi = cur.rptr;
                    nx.lane = 0;
                    nx.phase = Phase::P1;
                }
                Phase::P1 => {
                    let j = cur.lane;
                    let (hq, bq, _, delta) = self.cdata[j];
                    let gq = self.n as i64 * hq + delta;
                    let g = gq.unsigned_abs();
                    nx.xq = self.xq(j);
                    nx.gneg = gq < 0;
                    nx.gz = g == 0;
                    nx.g = g;
                    let (n, sat) = if g == 0 { (31, false) } else { shift_n(g, cur.d) };
                    nx.n = n;
                    nx.msat = sat;
                    nx.p = i128::from(bq) * i128::from(cur.d) - i128::from(cur.sum) * i128::from(hq);
                    nx.bq = bq;
                    nx.phase = Phase::P2;
                }
                Phase::P2 => {
                    let gs = u128::from(cur.g) << cur.n;
                    let xs = cur.p.unsigned_abs() << cur.n;
                    nx.mrem = (gs >> (f + 8)) as u64;
                    nx.msh = ((gs >> f) & 0xff) as u64;
                    nx.mquo = 0;
                    nx.brem = (xs >> (f + q)) as u64;
                    nx.bsh = (xs >> f) & ((1u128 << q) - 1);
                    nx.bquo = 0;
                    nx.pneg = cur.p < 0;
                    let xr = xs & ((1u128 << f) - 1);
                    nx.xnz = xr != 0;
                    nx.xgt = xr > 1 << (f - 1);
                    nx.xeq = xr == 1 << (f - 1);
                    nx.cnt = 0;
                    nx.phase = Phase::Div;
                }
                Phase::Div => {
                    // Restoring division by D: the next dividend bit into the partial remainder.
                    let rr = (cur.brem << 1) | ((cur.bsh >> (q - 1)) & 1) as u64;
                    let bit = rr >= cur.d;
                    nx.brem = if bit { rr - cur.d } else { rr };
                    nx.bquo = (cur.bquo << 1) | u64::from(bit);
                    nx.bsh = (cur.bsh << 1) & ((1u128 << q) - 1);
                    if cur.cnt < 8 {
                        let rr = (cur.mrem << 1) | ((cur.msh >> 7) & 1);
                        let bit = rr >= cur.d;
                        nx.mrem = if bit { rr - cur.d } else { rr };
                        nx.mquo = (cur.mquo << 1) | u64::from(bit);
                        nx.msh = (cur.msh << 1) & 0xff;
                    }
                    nx.cnt = cur.cnt + 1;
                    if cur.cnt + 1 == q {
                        nx.phase = Phase::Fin;
                    }
                }
                Phase::Fin => {
                    let out = if cur.d == 0 {
                        crate::fixed::shift_round(i128::from(cur.bq), f, crate::fixed::Rounding::HalfEven)
                    } else {
                        // RNE(X / (D·2^F)) from ⌊X/2^F⌋ = quo·D + rem and the F dropped bits xr.
                        let (r2, d) = (2 * cur.brem, cur.d);
                        let odd = cur.bquo & 1 == 1;
                        let up = r2 > d || (r2 == d && (cur.xnz || odd)) || (r2 + 1 == d && (cur.xgt || (cur.xeq && odd)));
                        let bb = i128::from(cur.bquo + u64::from(up));
                        let bb = if cur.pneg { -bb } else { bb };
                        let m = if cur.gz {
                            0
                        } else if cur.msat {
                            255
                        } else {
                            i128::from(cur.mquo)
                        };
                        let m = if cur.gneg { -m } else { m };
                        crate::fixed::shift_round(m * i128::from(cur.xq) + bb, cur.n, crate::fixed::Rounding::HalfEven)
                    };
                    nx.stg[cur.lane] = sext(out as u64, OUT_BITS);
                    // Every lane takes its turn, padded ones too (their outputs are dropped at
                    // XFER), so that latency and row period are affine in the beats per row.
                    if cur.lane + 1 == self.lanes {
                        nx.phase = Phase::Xfer;
                    } else {
                        nx.lane = cur.lane + 1;
                        nx.phase = Phase::P1;
                    }
                }
                Phase::Xfer => {
                    if !cur.ov || pins.out_ready {
                        let vl = self.valid_lanes(cur.rdi);
                        let mut o = [0i64; MAX_LANES];
                        o[..vl].copy_from_slice(&cur.stg[..vl]);
                        nx.odata = o;
                        nx.ov = true;
                        nx.olast = cur.rdi + 1 == self.nbeats;
                        if nx.olast {
                            nx.phase = Phase::Load;
                            nx.wptr = 0;
                        } else {
                            nx.phase = Phase::Rd;
                        }
                    }
                }
            }
        }
        let var = (self.n as u128 * u128::from(cur.ssq)).wrapping_sub((i128::from(cur.sum) * i128::from(cur.sum)) as u128);
        self.sqrt.clock(pins.reset, start, var as u64 & ((1u64 << var_bits(self.bits)) - 1));
        if pins.cfg_we {
            let d = u64::from(pins.cfg_data);
            let a = pins.cfg_addr & 0xfff;
            let l = self.lanes;
            match a {
                7 => {
                    let n = d & 0x7ff;
                    self.n = n;
                    self.nbeats = n.div_ceil(l as u64) as usize;
                    self.lastn = ((n.wrapping_sub(1) & (l as u64 - 1)) + 1) as usize;
                }
                8 => self.zp = sext(d, self.bits),
                a if a >= 1024 => {
                    let c = (a & 1023) as usize;
                    let e = &mut self.consts[c / l][c % l];
                    match a >> 10 {
                        1 => e.0 = sext(d, 32),
                        2 => e.1 = sext(d, 32),
                        _ => {
                            e.2 = ((d >> DELTA_BITS) & 3) as u32;
                            e.3 = sext(d, DELTA_BITS);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some((a, w)) = write {
            self.ram[a] = w;
        }
        self.rdata = rdata;
        self.cdata = cdata;
        self.r = nx;
    }
}

/// The configuration writes of a layer — row length, zero point and the golden unit's
/// per-channel constants for input scales `in_scale`, (γ, β) and output scales `out_scale`
/// (one per channel) — or why the generated hardware cannot take it.
pub fn config(
    bits: u32,
    unit: &crate::units::fqvit::LayerNorm,
    in_scale: &[f64],
    gamma: &[f32],
    beta: &[f32],
    out_scale: &[f64],
    zero_point: i64,
) -> Result<Vec<(u32, u32)>, String> {
    let c = gamma.len();
    if c == 0 || c > NMAX {
        return Err(format!("row length {c} is outside 1..={NMAX} (the row buffer)"));
    }
    if in_scale.len() != c || beta.len() != c || out_scale.len() != c {
        return Err(format!("{c} channels but {} input scales, {} betas, {} output scales", in_scale.len(), beta.len(), out_scale.len()));
    }
    if unit.frac_bits != FRAC {
        return Err(format!("frac_bits = {} but the hardware's constants have {FRAC} fractional bits", unit.frac_bits));
    }
    let half = 1i64 << (bits - 1);
    if !(-half..half).contains(&zero_point) {
        return Err(format!("zero point {zero_point} is not a {bits}-bit code (present unsigned inputs as code − 2^{})", bits - 1));
    }
    if let Some((i, s)) = in_scale.iter().chain(out_scale).enumerate().find(|(_, s)| !(s.is_finite() && **s > 0.0)) {
        return Err(format!("scale {i} = {s} is not a positive finite number"));
    }
    let k = unit.integer_consts(in_scale, gamma, beta, out_scale);
    let mut e = Vec::with_capacity(c);
    for (i, &kf) in k.kf.iter().enumerate() {
        match kf {
            1 | 2 | 4 | 8 => e.push(kf.trailing_zeros()),
            _ => return Err(format!("channel {i}: input factor s_c/min s = {kf} is not a power of two in 1..=8 (PTF scales)")),
        }
    }
    let lim = 1i128 << 31;
    let xmax = ((1i128 << bits) - 1) * i128::from(*k.kf.iter().max().unwrap());
    let cc = c as i128;
    let dmax = cc * xmax;
    // |S|/D on a row that is not constant: N·ssq − S² ≥ N − 1, so D ≥ ⌊√(N−1)⌋.
    let sd = if c >= 2 {
        let dmin = isqrt((cc - 1) as u128) as i128;
        (cc * xmax + dmin - 1) / dmin
    } else {
        0
    };
    let q = q_bits(bits);
    let mut v = vec![(7, c as u32), (8, zero_point as u32)];
    for (i, &ei) in e.iter().enumerate() {
        let (hq, bq, gq) = (k.hq[i], k.bq[i], k.gq[i]);
        if hq.abs() >= lim || bq.abs() >= lim {
            return Err(format!(
                "channel {i}: gamma/out_scale or beta/out_scale times 2^{FRAC} does not fit 32 bits (|gamma|, |beta| < 2048·out_scale)"
            ));
        }
        let delta = gq - cc * hq;
        assert!(delta.abs() <= (cc + 1) / 2, "RNE(C·t) − C·RNE(t) is at most (C+1)/2");
        let g = gq.unsigned_abs() as u64;
        let nmax = if g == 0 || c < 2 { 31 } else { shift_n(g, dmax as u64).0 };
        let t = bq.abs() + hq.abs() * sd;
        // |bb| ≤ t·2^(n−F) + 1 and |out| ≤ 255·xmax + t/2^F + 3.
        let bb = if nmax >= FRAC { t << (nmax - FRAC) } else { t >> (FRAC - nmax) } + 2;
        if c >= 2 && bb >= 1 << q {
            return Err(format!("channel {i}: the bias quotient can reach 2^{} (the hardware's divider has {q} bits): gamma/beta too large for this output scale", 128 - bb.leading_zeros()));
        }
        if 255 * xmax + (t >> FRAC) + 3 >= lim {
            return Err(format!("channel {i}: the output can exceed the {OUT_BITS}-bit output lanes"));
        }
        v.push((1024 + i as u32, hq as u32));
        v.push((2048 + i as u32, bq as u32));
        v.push((3072 + i as u32, (ei << DELTA_BITS) | (delta as u32 & ((1 << DELTA_BITS) - 1))));
    }
    Ok(v)
}

/// The standard output scale of co-simulation and costing: the next quantiser's 8-bit
/// symmetric scale for outputs in ±6.35 (γ·ẑ + β with γ ≤ 1.5, |ẑ| ≲ 4).
pub const STANDARD_OUT_SCALE: f64 = 0.05;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cycle::{run, timing, Stimulus, Trace};
    use crate::fixed::{QTensor, Scale};
    use crate::units::{fqvit, Aux, Mode, Preset, Unit};
    use rand::{Rng, SeedableRng};

    struct Layer {
        scale: Scale,
        aux: Aux,
        config: Vec<(u32, u32)>,
    }

    fn layer(bits: u32, c: usize, seed: u64, per_channel: bool, zp: i64) -> Layer {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut g, b) = crate::sensitivity::affine_params(c, seed);
        if per_channel {
            // A zero gamma: m = 0, n = 31, the output is the bias alone.
            g[c / 3] = 0.0;
        }
        let s = 0.02;
        let sc: Vec<f64> = (0..c).map(|_| if per_channel { s * f64::from(1u32 << rng.gen_range(0..4)) } else { s }).collect();
        let so = vec![STANDARD_OUT_SCALE; c];
        let unit = fqvit::LayerNorm::preset(Preset::Adapted);
        let config = config(bits, &unit, &sc, &g, &b, &so, zp).unwrap();
        let scale = if per_channel { Scale::PerChannel(sc) } else { Scale::PerTensor(s) };
        let aux = Aux {
            gamma: Some(g),
            beta: Some(b),
            zero_point: zp,
            out_scale: Some(Scale::PerTensor(STANDARD_OUT_SCALE)),
            identity: None,
            mask: None,
        };
        Layer { scale, aux, config }
    }

    fn stream(bits: u32, lanes: usize, config: Vec<(u32, u32)>, rows: &[Vec<i64>], gaps: bool) -> (Vec<i64>, Trace) {
        let beats = crate::cycle::beats_of(rows, lanes);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (in_allow, out_ready) = if gaps {
            ((0..101).map(|_| rng.gen_bool(0.7)).collect(), (0..97).map(|_| rng.gen_bool(0.6)).collect())
        } else {
            (vec![true], vec![true])
        };
        let n = beats.len();
        let st = Stimulus { lanes, config, beats, masks: Vec::new(), modes: Vec::new(), in_allow, out_ready };
        let c = rows[0].len() as u64;
        let t = run(&mut LayerNormFqvit::new(bits, lanes), &st, n, 200 * (c + 5) * rows.len() as u64 * 80 + 10_000);
        let mut out = Vec::new();
        let mut per_row = Vec::new();
        for b in &t.beats {
            per_row.extend_from_slice(&b.data);
            if b.last {
                per_row.truncate(c as usize);
                out.append(&mut per_row);
            }
        }
        (out, t)
    }

    fn rows(rng: &mut rand::rngs::StdRng, bits: u32, c: usize, n: usize) -> Vec<Vec<i64>> {
        let hi = (1i64 << (bits - 1)) - 1;
        let lo = -hi - 1;
        let mut rows: Vec<Vec<i64>> = vec![
            vec![hi; c],
            vec![lo; c],
            vec![0; c],
            (0..c).map(|i| if i % 2 == 0 { hi } else { lo }).collect(),
            (0..c).map(|i| if i == c / 2 { hi } else { lo }).collect(),
            (0..c).map(|i| if i == 0 { 1 } else { 0 }).collect(),
            (0..c).map(|i| if i == c - 1 { lo } else { hi }).collect(),
        ];
        for _ in 0..n {
            let spread = rng.gen_range(0..=hi);
            let centre = rng.gen_range(lo..=hi);
            rows.push((0..c).map(|_| (centre + rng.gen_range(-spread..=spread)).clamp(lo, hi)).collect());
        }
        rows
    }

    fn golden(bits: u32, l: &Layer, rows: &[Vec<i64>]) -> Vec<i64> {
        let c = rows[0].len();
        let x = QTensor::new(rows.concat(), &[rows.len(), c], l.scale.clone(), bits, true).unwrap();
        fqvit::LayerNorm::preset(Preset::Adapted).run(&x, &l.aux, Mode::Integer).unwrap().values
    }

    #[test]
    fn equals_golden_on_random_and_corner_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (bits, lanes, c, pc, zp) in [
            (8u32, 1usize, 1024usize, false, 0i64),
            (8, 4, 192, true, 0),
            (6, 4, 37, true, -5),
            (6, 1, 64, false, 31),
            (8, 16, 100, true, -128),
            (16, 2, 48, true, 1000),
            (12, 8, 20, false, 0),
            (8, 4, 5, true, 3),
            (8, 4, 3, false, 0),
            (6, 2, 1, false, 0),
            (8, 1, 2, true, 0),
        ] {
            let l = layer(bits, c, u64::from(bits) * 1000 + c as u64, pc, zp);
            let r = rows(&mut rng, bits, c, 6);
            let (got, _) = stream(bits, lanes, l.config.clone(), &r, true);
            assert_eq!(got, golden(bits, &l, &r), "{bits}b L{lanes} C{c} per-channel {pc} zp {zp}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Any layer the configuration accepts (random γ, β, per-channel factors, zero point,
        /// row length) streams to the golden model's values.
        #[test]
        fn any_accepted_layer_equals_golden(seed in 0u64..1 << 40, b8 in proptest::bool::ANY, li in 0usize..5, c in 1usize..48, pc in proptest::bool::ANY) {
            let bits = if b8 { 8 } else { 6 };
            let lanes = 1usize << li;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let half = 1i64 << (bits - 1);
            let zp = rng.gen_range(-half..half);
            let l = layer(bits, c, seed, pc, zp);
            let r = rows(&mut rng, bits, c, 3);
            let (got, _) = stream(bits, lanes, l.config.clone(), &r, true);
            proptest::prop_assert_eq!(got, golden(bits, &l, &r));
        }
    }

    #[test]
    fn engine_pieces_equal_the_golden_rules() {
        // n and the saturation flag against the golden bit-length rule, over many (g, D).
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for _ in 0..20_000 {
            let (kg, kd) = (rng.gen_range(1..42), rng.gen_range(1..29));
            let g = rng.gen_range(1u64..1 << kg);
            let d = rng.gen_range(1u64..1 << kd);
            let a = (g as f64) / (d as f64) / f64::from(1u32 << FRAC);
            let (n, sat) = shift_n(g, d);
            let l = a.log2().floor() as i64;
            if (a.log2() - a.log2().round()).abs() > 1e-9 {
                assert_eq!(n, (7 - l).clamp(0, 31) as u32, "g {g} d {d}");
                assert_eq!(sat, l >= 8, "g {g} d {d}");
            }
        }
    }

    #[test]
    fn latency_and_row_period_follow_the_formulas() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (bits, lanes, c) in [(8u32, 1usize, 64usize), (8, 4, 192), (6, 4, 37), (6, 1, 3), (8, 16, 20), (8, 4, 1)] {
            let l = layer(bits, c, 9, false, 0);
            let r = rows(&mut rng, bits, c, 2);
            let (_, t) = stream(bits, lanes, l.config, &r, false);
            let tm = timing(&t).unwrap();
            let (nb, q, b, n) = (c.div_ceil(lanes) as u64, u64::from(q_bits(bits)), u64::from(bits), c as u64);
            let l = lanes as u64;
            assert_eq!(tm.latency, 2 * nb + l * (q + 3) + b + 18, "{bits}b L{lanes} C{c} N {n}");
            assert_eq!(tm.row_period, (nb * (l * (q + 3) + 4) + b + 16) as f64, "{bits}b L{lanes} C{c}");
        }
    }

    #[test]
    fn impossible_layers_are_refused_with_the_reason() {
        let unit = fqvit::LayerNorm::preset(Preset::Adapted);
        let (g, b) = crate::sensitivity::affine_params(16, 1);
        let s = vec![0.02; 16];
        let so = vec![STANDARD_OUT_SCALE; 16];
        assert!(config(8, &unit, &s, &g, &b, &so, 200).unwrap_err().contains("not a 8-bit code"));
        let mut s3 = s.clone();
        s3[2] = 0.06;
        assert!(config(8, &unit, &s3, &g, &b, &so, 0).unwrap_err().contains("not a power of two"));
        let tiny = vec![1e-6; 16];
        assert!(config(8, &unit, &s, &g, &b, &tiny, 0).unwrap_err().contains("does not fit 32 bits"));
        let f16 = fqvit::LayerNorm { frac_bits: 16 };
        assert!(config(8, &f16, &s, &g, &b, &so, 0).unwrap_err().contains("frac_bits"));
        let (g, b) = crate::sensitivity::affine_params(2000, 1);
        assert!(config(8, &unit, &[0.02; 2000], &g, &b, &[0.05; 2000], 0).unwrap_err().contains("outside 1..=1024"));
    }
}
