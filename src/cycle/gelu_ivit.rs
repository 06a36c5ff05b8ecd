//! Cycle model of `hdl::gelu_ivit`: element-wise ShiftGELU (the adapted preset's max(x, 0)
//! form) with a pipelined divider.
//!
//! ```text
//!  S1: v = exp_shift(−|q|), E = q > 0 ? K0 : v, S = E + (q > 0 ? v : K0)     (K0 = exp_shift(0) = −x0·2^n)
//!  D1..D31: restoring division of 2^31 − 1 by S, one quotient bit per stage
//!  O: out = q · ((E · factor) >> 24)
//!  advance = !v_out | out_ready (stall-all)
//! ```
//! Latency 33 cycles, one beat per cycle, row period ⌈N/LANES⌉. The row-wise reference
//! (subtract the row maximum) needs a row buffer and is not built. Configuration registers:
//! 0 upshift p, 1 x0, 2 n·x0, 3 n, 4 K0, 32 + k − 1: k·x0 for k = 1..23.

use super::softmax::{shift_exp, Common, NQ_MAX};
use super::{sext, Clocked, Outs, Pins, MAX_LANES};

/// Divider stages.
pub const DIV: usize = 31;
/// Exponent comparators.
pub const NQ: usize = 23;
/// Width of the exponent datapath for B-bit inputs.
pub fn xw(bits: u32) -> u32 {
    bits + 20
}

/// Pipeline registers S1, D1..D31 and O: 33 stages.
const DEPTH: usize = DIV + 2;

/// One stage's contents. The divider stages only delay a result that is a pure function of
/// the S1 registers, so the model computes it on entry and moves it along a ring buffer.
#[derive(Debug, Clone, Copy, Default)]
struct Stage {
    v: bool,
    l: bool,
    out: [i64; MAX_LANES],
}

/// The cycle model.
#[derive(Debug, Clone)]
pub struct GeluIvit {
    bits: u32,
    lanes: usize,
    c: Common,
    k0: i64,
    ring: [Stage; DEPTH],
    head: usize, // index of the O stage
}

impl GeluIvit {
    /// A unit for `bits`-bit inputs and `lanes` lanes, registers cleared.
    pub fn new(bits: u32, lanes: usize) -> GeluIvit {
        GeluIvit {
            bits,
            lanes,
            c: Common { up: 0, x0: 0, lim: 0, n: 0, nbeats: 0, lastn: 0, thr: [0; NQ_MAX + 1] },
            k0: 0,
            ring: [Stage::default(); DEPTH],
            head: 0,
        }
    }

    fn adv(&self, pins: &Pins) -> bool {
        !self.ring[self.head].v || pins.out_ready
    }
}

impl Clocked for GeluIvit {
    fn eval(&self, pins: &Pins) -> Outs {
        let o_stage = &self.ring[self.head];
        let mut o = Outs { in_ready: self.adv(pins), out_valid: o_stage.v, out_last: o_stage.l, ..Outs::default() };
        o.out_data[..self.lanes].copy_from_slice(&o_stage.out[..self.lanes]);
        o
    }

    fn tick(&mut self, pins: &Pins) {
        if self.adv(pins) && !pins.reset {
            // The ring turns: the old O stage's slot becomes the new S1 stage.
            self.head = (self.head + DEPTH - 1) % DEPTH;
            let mut s0 = Stage { v: pins.in_valid, l: pins.in_last, ..Stage::default() };
            for i in 0..self.lanes {
                let q = sext(pins.in_data[i] as u64, self.bits);
                let v = shift_exp(&self.c, -(q.abs() << self.c.up), NQ);
                let (e, em) = if q > 0 { (self.k0, v) } else { (v, self.k0) };
                // A restoring divider by 0 (unconfigured unit) yields all ones, as the RTL does.
                let factor = ((1i64 << 31) - 1).checked_div(e + em).unwrap_or((1 << 31) - 1);
                s0.out[i] = q * ((e * factor) >> 24);
            }
            self.ring[(self.head + 1) % DEPTH] = s0;
        }
        if pins.reset {
            for s in &mut self.ring {
                s.v = false;
            }
        }
        if pins.cfg_we {
            let d = u64::from(pins.cfg_data);
            let w = xw(self.bits).min(32);
            match pins.cfg_addr {
                0 => self.c.up = (d & 31) as u32,
                1 => self.c.x0 = sext(d, w),
                2 => self.c.lim = sext(d, w),
                3 => self.c.n = (d & 31) as i64,
                4 => self.k0 = (d & 0xffff_ffff) as i64,
                a if (32..32 + NQ as u32).contains(&a) => self.c.thr[(a - 31) as usize] = sext(d, w),
                _ => {}
            }
        }
    }
}

/// Configuration for input scale `s`, or why the hardware cannot take it.
pub fn config(bits: u32, unit: &crate::units::ivit::Gelu, s: f64) -> Result<Vec<(u32, u32)>, String> {
    if unit.row_max || unit.out_bits != 8 {
        return Err("gelu_ivit hardware is the element-wise form (the adapted preset's max(x, 0)) with 8-bit σ; the row-wise reference needs a row buffer, not built yet".into());
    }
    let (x0, up, n) = unit.constants(s);
    let w = xw(bits).min(32);
    let k0 = x0.unsigned_abs() << n;
    if n as usize > NQ || 2 * k0 >= 1 << 31 || (NQ as u64) * x0.unsigned_abs() >= 1 << (w - 1) || ((1u64 << bits) << up) * 2 >= 1 << (w - 1)
    {
        return Err(format!("scale {s}: x0 = {x0}, n = {n}, upshift {up} do not fit the {w}-bit exponent datapath or the 31-bit divider"));
    }
    let mut v = vec![(0, up), (1, x0 as u32), (2, (i64::from(n) * x0) as u32), (3, n), (4, k0 as u32)];
    v.extend((1..=NQ).map(|k| (31 + k as u32, (k as i64 * x0) as u32)));
    Ok(v)
}
