//! Cycle model of `hdl::softmax_ivit`: Shiftmax with one row buffer and four phases.
//!
//! ```text
//!  LOAD  in_ready = 1: each beat is written to the row RAM (nb = ⌈N/LANES⌉ words) and the
//!        running maximum m is updated over the valid lanes.                      nb cycles
//!  SUM   the RAM is read word by word (registered read, one cycle late); for every valid
//!        lane E = exp_shift(m − q) by comparators against k·x0 (k = 1..15), S += ΣE.  nb + 1 cycles
//!  DIV   factor = ⌊(2^K−1)/min(S, 2^K−1)⌋ by a restoring divider, one quotient bit a cycle.  K cycles
//!  OUT   the RAM is read again, E recomputed, out = (E·factor) >> (K+1−OB) into the output
//!        register; a read is issued whenever the register is free or being emptied.  nb + 1 cycles
//! ```
//! With no gaps and no back-pressure, and nb = ⌈N/LANES⌉: latency (first input beat to first
//! output beat) 2·nb + K + 3 = 2·nb + 34 cycles, row period 3·nb + K + 3 = 3·nb + 34 cycles
//! (measured by `mnq cosim`: 428 and 625 for N = 197, LANES = 1). One row at a time.
//!
//! Configuration registers: 0 upshift p, 1 x0, 2 n·x0, 3 n, 5 ⌈N/LANES⌉ (the row length N is a
//! per-layer constant), 6 valid lanes of the last beat, 16 + k: k·x0 for k = 1..15.

use super::{sext, Clocked, Outs, Pins, MAX_LANES};

/// Sum width K (the reference's 2^31 − 1).
pub const K: u32 = 31;
/// Largest row the buffer holds.
pub const NMAX: usize = 1024;
/// Thresholds k·x0 for k = 1..=NQ.
pub const NQ: usize = 15;

/// Width of the exponent's input datapath for B-bit inputs.
pub fn xw(bits: u32) -> u32 {
    bits + 20
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Load,
    Sum,
    Div,
    Out,
}

/// Configuration registers.
#[derive(Debug, Clone, Copy)]
struct Cfg {
    up: u32,
    x0: i64,
    lim: i64,
    n: i64,
    nbeats: usize,
    lastn: usize,
    thr: [i64; NQ + 1],
}

/// Every register but the row RAM (copied whole each cycle: the next state is computed from it).
#[derive(Debug, Clone, Copy)]
struct Regs {
    phase: Phase,
    wptr: usize,
    m: i64,
    rptr: usize,
    raddr: usize,
    rdata: [i64; MAX_LANES],
    rvalid: bool,
    rdi: usize,
    sum: i64,
    rem: i64,
    quo: i64,
    div: i64,
    cnt: u32,
    factor: i64,
    ov: bool,
    olast: bool,
    odata: [i64; MAX_LANES],
}

/// The cycle model.
#[derive(Debug, Clone)]
pub struct SoftmaxIvit {
    bits: u32,
    lanes: usize,
    ob: u32,
    cfg: Cfg,
    r: Regs,
    ram: Vec<[i64; MAX_LANES]>,
}

impl SoftmaxIvit {
    /// A unit for `bits`-bit inputs, `lanes` lanes and `ob` output bits, registers cleared.
    pub fn new(bits: u32, lanes: usize, ob: u32) -> SoftmaxIvit {
        SoftmaxIvit {
            bits,
            lanes,
            ob,
            cfg: Cfg { up: 0, x0: 0, lim: 0, n: 0, nbeats: 0, lastn: 0, thr: [0; NQ + 1] },
            r: Regs {
                phase: Phase::Load,
                wptr: 0,
                m: 0,
                rptr: 0,
                raddr: 0,
                rdata: [0; MAX_LANES],
                rvalid: false,
                rdi: 0,
                sum: 0,
                rem: 0,
                quo: 0,
                div: 0,
                cnt: 0,
                factor: 0,
                ov: false,
                olast: false,
                odata: [0; MAX_LANES],
            },
            ram: vec![[0; MAX_LANES]; NMAX / lanes],
        }
    }

    /// Valid lanes of beat `b`.
    fn valid_lanes(&self, b: usize) -> usize {
        if b + 1 == self.cfg.nbeats {
            self.cfg.lastn
        } else {
            self.lanes
        }
    }

    /// exp_shift(m − q) as the comparator datapath computes it.
    fn exp(&self, m: i64, q: i64) -> i64 {
        let c = &self.cfg;
        let x = -((m - q) << c.up);
        let xe = x + (x >> 1) - (x >> 4);
        let xc = xe.max(c.lim);
        let qq = (1..=NQ).filter(|&k| xc <= c.thr[k]).count();
        let r = xc - c.thr[qq];
        let base = r - 2 * c.x0;
        let sh = c.n - qq as i64 - 1;
        if sh < 0 {
            base >> 1
        } else {
            base << sh
        }
    }

    /// Whether a RAM read is issued this cycle (SUM and OUT).
    fn issue(&self, pins: &Pins) -> bool {
        let r = &self.r;
        match r.phase {
            Phase::Sum => r.rptr < self.cfg.nbeats,
            Phase::Out => r.rptr < self.cfg.nbeats && (!r.rvalid || !r.ov || pins.out_ready),
            _ => false,
        }
    }
}

impl Clocked for SoftmaxIvit {
    fn eval(&self, _pins: &Pins) -> Outs {
        let r = &self.r;
        let mut o = Outs { in_ready: r.phase == Phase::Load, out_valid: r.ov, out_last: r.olast, ..Outs::default() };
        o.out_data[..self.lanes].copy_from_slice(&r.odata[..self.lanes]);
        o
    }

    fn tick(&mut self, pins: &Pins) {
        let cur = self.r;
        let mut nx = cur;
        // The RAM's registered read port samples its address every cycle.
        let issue = self.issue(pins);
        nx.raddr = if issue { cur.rptr } else { cur.raddr };
        nx.rdata = self.ram[nx.raddr.min(self.ram.len() - 1)];
        let mut write = None;
        if pins.reset {
            nx.phase = Phase::Load;
            nx.wptr = 0;
            nx.ov = false;
            nx.rvalid = false;
        } else {
            match cur.phase {
                Phase::Load => {
                    if pins.in_valid {
                        let mut w = [0i64; MAX_LANES];
                        let mut m = if cur.wptr == 0 { i64::MIN } else { cur.m };
                        for (i, wi) in w.iter_mut().enumerate().take(self.lanes) {
                            *wi = sext(pins.in_data[i] as u64, self.bits);
                            if i < self.valid_lanes(cur.wptr) {
                                m = m.max(*wi);
                            }
                        }
                        write = Some((cur.wptr, w));
                        nx.m = m;
                        nx.wptr = cur.wptr + 1;
                        if cur.wptr + 1 == self.cfg.nbeats {
                            nx.phase = Phase::Sum;
                            nx.rptr = 0;
                            nx.rvalid = false;
                            nx.sum = 0;
                        }
                    }
                }
                Phase::Sum => {
                    if issue {
                        nx.rptr = cur.rptr + 1;
                        nx.rdi = cur.rptr;
                    }
                    nx.rvalid = issue;
                    if cur.rvalid {
                        let e: i64 = (0..self.valid_lanes(cur.rdi)).map(|i| self.exp(cur.m, cur.rdata[i])).sum();
                        nx.sum = cur.sum + e;
                        if cur.rdi + 1 == self.cfg.nbeats {
                            nx.phase = Phase::Div;
                            nx.div = nx.sum.min((1 << K) - 1);
                            nx.rem = 0;
                            nx.quo = 0;
                            nx.cnt = 0;
                        }
                    }
                }
                Phase::Div => {
                    // Restoring division of 2^K − 1 (all ones): one quotient bit per cycle.
                    let rr = (cur.rem << 1) | 1;
                    let (rr, bit) = if rr >= cur.div { (rr - cur.div, 1) } else { (rr, 0) };
                    nx.rem = rr;
                    nx.quo = (cur.quo << 1) | bit;
                    nx.cnt = cur.cnt + 1;
                    if cur.cnt + 1 == K {
                        nx.factor = nx.quo;
                        nx.phase = Phase::Out;
                        nx.rptr = 0;
                        nx.rvalid = false;
                    }
                }
                Phase::Out => {
                    let consume = cur.ov && pins.out_ready;
                    let free = !cur.ov || consume;
                    if issue {
                        nx.rptr = cur.rptr + 1;
                        nx.rdi = cur.rptr;
                    }
                    nx.rvalid = issue || (cur.rvalid && !free);
                    if cur.rvalid && free {
                        let sh = K + 1 - self.ob;
                        let mut o = [0i64; MAX_LANES];
                        for (i, oi) in o.iter_mut().enumerate().take(self.valid_lanes(cur.rdi)) {
                            *oi = (self.exp(cur.m, cur.rdata[i]) * cur.factor) >> sh;
                        }
                        nx.odata = o;
                        nx.ov = true;
                        nx.olast = cur.rdi + 1 == self.cfg.nbeats;
                    } else if consume {
                        nx.ov = false;
                        if cur.olast {
                            nx.phase = Phase::Load;
                            nx.wptr = 0;
                        }
                    }
                }
            }
        }
        if pins.cfg_we {
            let d = u64::from(pins.cfg_data);
            let w = xw(self.bits).min(32);
            let c = &mut self.cfg;
            match pins.cfg_addr {
                0 => c.up = (d & 31) as u32,
                1 => c.x0 = sext(d, w),
                2 => c.lim = sext(d, w),
                3 => c.n = (d & 31) as i64,
                5 => c.nbeats = (d & 0x7ff) as usize,
                6 => c.lastn = (d & 0x1f) as usize,
                a if (17..=16 + NQ as u32).contains(&a) => c.thr[(a - 16) as usize] = sext(d, w),
                _ => {}
            }
        }
        if let Some((a, w)) = write {
            self.ram[a] = w;
        }
        self.r = nx;
    }
}

/// Configuration writes for input scale `s` and rows of `row` elements, or why the
/// generated hardware cannot take them.
pub fn config(bits: u32, lanes: usize, s: f64, up: u32, n: u32, row: usize) -> Result<Vec<(u32, u32)>, String> {
    if row == 0 || row > NMAX {
        return Err(format!("row length {row} is outside 1..={NMAX} (the row buffer)"));
    }
    if n as usize > NQ {
        return Err(format!("n = {n} exceeds the {NQ} exponent comparators"));
    }
    let x0 = crate::units::ivit::shift_x0(s / 2f64.powi(up as i32));
    let w = xw(bits).min(32);
    let emax = (x0.unsigned_abs() as u128) << (n + 1);
    let xmin = ((1u128 << bits) << up) * 2;
    if (NQ as u128) * (x0.unsigned_abs() as u128) >= 1 << (w - 1) || xmin >= 1 << (w - 1) || emax * (row as u128) >= 1 << K {
        return Err(format!(
            "scale {s} with upshift {up} needs x0 = {x0}: the exponent or the row sum would overflow the {w}-bit datapath or reach the 2^{K} sum clamp"
        ));
    }
    let nbeats = row.div_ceil(lanes);
    let lastn = row - (nbeats - 1) * lanes;
    let mut v = vec![(0, up), (1, x0 as u32), (2, (i64::from(n) * x0) as u32), (3, n), (5, nbeats as u32), (6, lastn as u32)];
    v.extend((1..=NQ).map(|k| (16 + k as u32, (k as i64 * x0) as u32)));
    Ok(v)
}
