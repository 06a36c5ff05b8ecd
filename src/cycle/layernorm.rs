//! The row-buffer LayerNorm microarchitecture shared by `layernorm_ivit` (I-LayerNorm, Newton
//! square root) and `layernorm_ibert` (IntLayerNorm, digit-by-digit integer square root): one
//! row buffer, one shared restoring divider and six phases; only the square-root engine (a
//! [`Sqrt`]) and two configuration values (the variance shift and the factor numerator) differ.
//!
//! ```text
//!  LOAD  in_ready = 1: each beat is written to the row RAM (nb = ⌈N/LANES⌉ words of LANES
//!        codes) and S += Σ q over the valid lanes.                                     nb cycles
//!  MEAN  the shared divider forms ⌊|S| / N⌋ and its remainder, one quotient bit a cycle
//!        (B + 10 bits); the last cycle rounds half to even and applies the sign: mean.  B + 10 cycles
//!  VAR   the RAM is read word by word (registered read, one cycle late); per valid lane
//!        y = q − mean, V += (y >>> shift)² (one (B+1)×(B+1) multiplier per lane).      nb + 1 cycles
//!  SQRT  the square-root engine takes V (W = 2B + 10 bits) and returns std:
//!          Newton (I-ViT): k₀ = start or 2^⌈bitlen(V)/2⌉, then S steps k = max((k + ⌊V/k⌋) >> 1, 1),
//!                          each a W-cycle restoring division of its own          1 + S·W + 1 cycles
//!          digit (I-BERT): ⌊√V⌋, two radicand bits per cycle                       1 + W/2 + 1 cycles
//!  FACT  the shared divider forms factor = ⌊num / std⌋ (num = 2^31 − 1, or 2^(31−shift)
//!        for I-BERT so that ⌊2^31 / (std << shift)⌋ needs no wide divisor); std = 0 gives 0. 32 cycles
//!  OUT   the row RAM and the per-channel bias RAMs are read together; per valid lane
//!        out = ((y · factor) >>> 1) + bias[c] into the output register; a read is issued
//!        whenever the register is free or being emptied (back-pressure holds it).        nb + 1 cycles
//! ```
//! One row at a time. With no gaps and no back-pressure, nb = ⌈N/LANES⌉ and T the engine's
//! cycles (Newton S·W + 2, digit W/2 + 2): latency (first input beat to first output beat)
//! 2·nb + B + T + 45 cycles and row period 3·nb + B + T + 45 cycles; the formulas are checked
//! against the model in the tests below and against the RTL by `mnq cosim`.
//!
//! Configuration registers: 7 row length N (11 bits; ⌈N/LANES⌉ and the last beat's valid
//! lanes are derived on the write), 8 variance shift (5 bits), 9 factor numerator (32 bits),
//! the engine's own (Newton: 10 steps S, 11 start, 0 = bit-length start), and
//! 1024 + c: bias_int[c] (32 bits, c < 1024) — so the configuration address is 12 bits wide
//! for the LayerNorms. The per-channel biases live in LANES RAMs of 1024/LANES words (lane
//! c mod LANES, word c / LANES), read alongside the row buffer.

use super::{sext, Clocked, Outs, Pins, MAX_LANES};

/// Largest row (channels) the buffer holds.
pub const NMAX: usize = 1024;
/// Configuration address of bias_int[0].
pub const BIAS_ADDR: u32 = 1024;
/// Width of the LayerNorms' configuration address (registers below 64, biases at 1024 + c).
pub const CFG_ADDR_BITS: u32 = 12;

/// Width W of the variance for B-bit inputs: |y| < 2^B over at most 1024 channels.
pub fn var_bits(bits: u32) -> u32 {
    2 * bits + 10
}

/// Width of the magnitude of the row sum, and the quotient bits of the mean division.
pub fn mean_len(bits: u32) -> u32 {
    bits + 10
}

/// Output bits per lane: |(y·factor) >> 1| < 2^(B+30) plus a 32-bit bias.
pub fn out_bits(bits: u32) -> u32 {
    bits + 32
}

/// Cycles of the factor division (32-bit numerator).
pub const FACT_LEN: u32 = 32;

/// A square-root engine: started with the variance, it raises `done` with `root` after a fixed
/// number of cycles. `done` and `root` are registers (read before the clock edge).
pub trait Sqrt: Clone + std::fmt::Debug {
    /// A configuration write addressed to the engine.
    fn configure(&mut self, addr: u32, data: u64);
    /// One clock edge: `start` loads `var` and begins (and clears `done`); `reset` stops.
    fn clock(&mut self, reset: bool, start: bool, var: u64);
    /// The result is ready.
    fn done(&self) -> bool;
    /// The result.
    fn root(&self) -> u64;
}

/// I-ViT's Newton square root: `steps` iterations `k = max((k + ⌊V/k⌋) >> 1, 1)` from a
/// configured start (or `2^⌈bitlen(V)/2⌉` when the start register is 0), each division a
/// W-cycle restoring divider. S·W cycles from start to done (at least one).
#[derive(Debug, Clone, Default)]
pub struct Newton {
    /// Variance width W.
    pub w: u32,
    /// Configured steps.
    pub steps: u32,
    /// Configured start (0 = bit-length start).
    pub start: u64,
    var: u64,
    k: u64,
    sh: u64,
    rem: u64,
    quo: u64,
    cnt: u32,
    step: u32,
    busy: bool,
    done: bool,
}

impl Newton {
    /// An engine for a W-bit variance.
    pub fn new(w: u32) -> Newton {
        Newton { w, ..Newton::default() }
    }
}

impl Sqrt for Newton {
    fn configure(&mut self, addr: u32, data: u64) {
        match addr {
            10 => self.steps = (data & 31) as u32,
            11 => self.start = data & ((1u64 << self.w.min(32)) - 1),
            _ => {}
        }
    }
    fn clock(&mut self, reset: bool, start: bool, var: u64) {
        if reset {
            self.busy = false;
            self.done = false;
        } else if start {
            self.var = var;
            self.k = if self.start == 0 { 1u64 << (64 - var.leading_zeros()).div_ceil(2) } else { self.start };
            self.sh = var;
            self.rem = 0;
            self.quo = 0;
            self.cnt = 0;
            self.step = 0;
            self.busy = self.steps > 0;
            self.done = self.steps == 0;
        } else if self.busy {
            // One quotient bit of ⌊V/k⌋ a cycle, V's bits MSB first from a shift register.
            let rr = (self.rem << 1) | ((self.sh >> (self.w - 1)) & 1);
            let bit = rr >= self.k;
            self.rem = if bit { rr - self.k } else { rr };
            let q = (self.quo << 1) | u64::from(bit);
            self.sh = (self.sh << 1) & ((1u64 << self.w) - 1);
            if self.cnt + 1 == self.w {
                self.k = ((self.k + q) >> 1).max(1);
                self.sh = self.var;
                self.rem = 0;
                self.quo = 0;
                self.cnt = 0;
                self.step += 1;
                if self.step == self.steps {
                    self.busy = false;
                    self.done = true;
                }
            } else {
                self.quo = q;
                self.cnt += 1;
            }
        }
    }
    fn done(&self) -> bool {
        self.done
    }
    fn root(&self) -> u64 {
        self.k
    }
}

/// I-BERT's integer square root ⌊√V⌋, digit by digit: two radicand bits per cycle, W/2 cycles.
#[derive(Debug, Clone, Default)]
pub struct Digit {
    /// Variance width W (even).
    pub w: u32,
    sh: u64,
    rem: u64,
    root: u64,
    cnt: u32,
    busy: bool,
    done: bool,
}

impl Digit {
    /// An engine for a W-bit variance.
    pub fn new(w: u32) -> Digit {
        assert!(w.is_multiple_of(2), "the digit square root takes an even width");
        Digit { w, ..Digit::default() }
    }
}

impl Sqrt for Digit {
    fn configure(&mut self, _addr: u32, _data: u64) {}
    fn clock(&mut self, reset: bool, start: bool, var: u64) {
        if reset {
            self.busy = false;
            self.done = false;
        } else if start {
            self.sh = var;
            self.rem = 0;
            self.root = 0;
            self.cnt = 0;
            self.busy = true;
            self.done = false;
        } else if self.busy {
            let rr = (self.rem << 2) | ((self.sh >> (self.w - 2)) & 3);
            let trial = (self.root << 2) | 1;
            if rr >= trial {
                self.rem = rr - trial;
                self.root = (self.root << 1) | 1;
            } else {
                self.rem = rr;
                self.root <<= 1;
            }
            self.sh = (self.sh << 2) & ((1u64 << self.w) - 1);
            self.cnt += 1;
            if self.cnt == self.w / 2 {
                self.busy = false;
                self.done = true;
            }
        }
    }
    fn done(&self) -> bool {
        self.done
    }
    fn root(&self) -> u64 {
        self.root
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Load,
    Mean,
    Var,
    Sqrt,
    Fact,
    Out,
}

/// Every register of the core but the RAMs.
#[derive(Debug, Clone, Copy)]
struct Regs {
    phase: Phase,
    wptr: usize,
    sum: i64,
    rptr: usize,
    raddr: usize,
    rdata: [i64; MAX_LANES],
    bdata: [i64; MAX_LANES],
    rvalid: bool,
    rdi: usize,
    acc: u64,
    mean: i64,
    neg: bool,
    dnum: u64,
    dden: u64,
    drem: u64,
    dquo: u64,
    dcnt: u32,
    go: bool,
    factor: i64,
    ov: bool,
    olast: bool,
    odata: [i64; MAX_LANES],
}

/// Configuration registers of the core.
#[derive(Debug, Clone, Copy, Default)]
struct Cfg {
    n: u64,
    nbeats: usize,
    lastn: usize,
    shift: u32,
    num: u64,
}

/// The cycle model of a row-buffer LayerNorm with square-root engine `S`.
#[derive(Debug, Clone)]
pub struct RowLayerNorm<S: Sqrt> {
    bits: u32,
    lanes: usize,
    sqrt: S,
    cfg: Cfg,
    r: Regs,
    ram: Vec<[i64; MAX_LANES]>,
    bias: Vec<[i64; MAX_LANES]>,
}

impl<S: Sqrt> RowLayerNorm<S> {
    /// A unit for `bits`-bit inputs and `lanes` lanes, registers cleared.
    pub fn new(bits: u32, lanes: usize, sqrt: S) -> RowLayerNorm<S> {
        RowLayerNorm {
            bits,
            lanes,
            sqrt,
            cfg: Cfg::default(),
            r: Regs {
                phase: Phase::Load,
                wptr: 0,
                sum: 0,
                rptr: 0,
                raddr: 0,
                rdata: [0; MAX_LANES],
                bdata: [0; MAX_LANES],
                rvalid: false,
                rdi: 0,
                acc: 0,
                mean: 0,
                neg: false,
                dnum: 0,
                dden: 0,
                drem: 0,
                dquo: 0,
                dcnt: 0,
                go: false,
                factor: 0,
                ov: false,
                olast: false,
                odata: [0; MAX_LANES],
            },
            ram: vec![[0; MAX_LANES]; NMAX / lanes],
            bias: vec![[0; MAX_LANES]; NMAX / lanes],
        }
    }

    fn valid_lanes(&self, b: usize) -> usize {
        if b + 1 == self.cfg.nbeats {
            self.cfg.lastn
        } else {
            self.lanes
        }
    }

    fn issue(&self, pins: &Pins) -> bool {
        let r = &self.r;
        match r.phase {
            Phase::Var => r.rptr < self.cfg.nbeats,
            Phase::Out => r.rptr < self.cfg.nbeats && (!r.rvalid || !r.ov || pins.out_ready),
            _ => false,
        }
    }

    /// One step of the shared restoring divider: (remainder, quotient so far) after this bit.
    fn div_step(cur: &Regs, top: u32) -> (u64, u64) {
        let rr = (cur.drem << 1) | ((cur.dnum >> (top - 1)) & 1);
        let bit = rr >= cur.dden;
        (if bit { rr - cur.dden } else { rr }, (cur.dquo << 1) | u64::from(bit))
    }
}

impl<S: Sqrt> Clocked for RowLayerNorm<S> {
    fn eval(&self, _pins: &Pins) -> Outs {
        let r = &self.r;
        let mut o = Outs { in_ready: r.phase == Phase::Load, out_valid: r.ov, out_last: r.olast, ..Outs::default() };
        o.out_data[..self.lanes].copy_from_slice(&r.odata[..self.lanes]);
        o
    }

    fn tick(&mut self, pins: &Pins) {
        let cur = self.r;
        let mut nx = cur;
        let issue = self.issue(pins);
        nx.raddr = if issue { cur.rptr } else { cur.raddr };
        let ra = nx.raddr.min(self.ram.len() - 1);
        nx.rdata = self.ram[ra];
        nx.bdata = self.bias[ra];
        let mut write = None;
        let mut start = false;
        let mean_top = mean_len(self.bits);
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
                        let mut s = if cur.wptr == 0 { 0 } else { cur.sum };
                        for (i, wi) in w.iter_mut().enumerate().take(self.lanes) {
                            *wi = sext(pins.in_data[i] as u64, self.bits);
                            if i < self.valid_lanes(cur.wptr) {
                                s += *wi;
                            }
                        }
                        write = Some((cur.wptr, w));
                        nx.sum = s;
                        nx.wptr = cur.wptr + 1;
                        if cur.wptr + 1 == self.cfg.nbeats {
                            nx.phase = Phase::Mean;
                            nx.neg = s < 0;
                            nx.dnum = s.unsigned_abs();
                            nx.dden = self.cfg.n;
                            nx.drem = 0;
                            nx.dquo = 0;
                            nx.dcnt = 0;
                        }
                    }
                }
                Phase::Mean => {
                    let (rem, quo) = Self::div_step(&cur, mean_top);
                    nx.drem = rem;
                    nx.dquo = quo;
                    nx.dnum = (cur.dnum << 1) & ((1u64 << mean_top) - 1);
                    nx.dcnt = cur.dcnt + 1;
                    if cur.dcnt + 1 == mean_top {
                        // Round half to even on the magnitude, then the sign: RNE(S/N).
                        let up = 2 * rem > cur.dden || (2 * rem == cur.dden && quo & 1 == 1);
                        let mag = (quo + u64::from(up)) as i64;
                        nx.mean = if cur.neg { -mag } else { mag };
                        nx.phase = Phase::Var;
                        nx.rptr = 0;
                        nx.rvalid = false;
                        nx.acc = 0;
                    }
                }
                Phase::Var => {
                    if issue {
                        nx.rptr = cur.rptr + 1;
                        nx.rdi = cur.rptr;
                    }
                    nx.rvalid = issue;
                    if cur.rvalid {
                        let v: u64 = (0..self.valid_lanes(cur.rdi))
                            .map(|i| {
                                let y = (cur.rdata[i] - cur.mean) >> self.cfg.shift;
                                (y * y) as u64
                            })
                            .sum();
                        nx.acc = cur.acc + v;
                        if cur.rdi + 1 == self.cfg.nbeats {
                            nx.phase = Phase::Sqrt;
                            nx.go = true;
                        }
                    }
                }
                Phase::Sqrt => {
                    start = cur.go;
                    nx.go = false;
                    if !cur.go && self.sqrt.done() {
                        nx.phase = Phase::Fact;
                        nx.dnum = self.cfg.num;
                        nx.dden = self.sqrt.root();
                        nx.drem = 0;
                        nx.dquo = 0;
                        nx.dcnt = 0;
                    }
                }
                Phase::Fact => {
                    let (rem, quo) = Self::div_step(&cur, FACT_LEN);
                    nx.drem = rem;
                    nx.dquo = quo;
                    nx.dnum = (cur.dnum << 1) & ((1u64 << FACT_LEN) - 1);
                    nx.dcnt = cur.dcnt + 1;
                    if cur.dcnt + 1 == FACT_LEN {
                        // A zero std (I-BERT, zero variance) gives factor 0: the output is the bias.
                        nx.factor = if cur.dden == 0 { 0 } else { quo as i64 };
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
                        let mut o = [0i64; MAX_LANES];
                        for (i, oi) in o.iter_mut().enumerate().take(self.valid_lanes(cur.rdi)) {
                            let y = cur.rdata[i] - cur.mean;
                            *oi = ((y * cur.factor) >> 1) + cur.bdata[i];
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
        self.sqrt.clock(pins.reset, start, cur.acc);
        if pins.cfg_we {
            let d = u64::from(pins.cfg_data);
            let a = pins.cfg_addr & ((1 << CFG_ADDR_BITS) - 1);
            match a {
                7 => {
                    let n = d & 0x7ff;
                    let l = self.lanes as u64;
                    self.cfg.n = n;
                    self.cfg.nbeats = n.div_ceil(l) as usize;
                    self.cfg.lastn = ((n.wrapping_sub(1) & (l - 1)) + 1) as usize;
                }
                8 => self.cfg.shift = (d & 31) as u32,
                9 => self.cfg.num = d,
                a if a >= BIAS_ADDR => {
                    let c = (a - BIAS_ADDR) as usize;
                    self.bias[c / self.lanes][c % self.lanes] = sext(d, 32);
                }
                a => self.sqrt.configure(a, d),
            }
        }
        if let Some((a, w)) = write {
            self.ram[a] = w;
        }
        self.r = nx;
    }
}

/// Writes of the core's registers and the biases for a row of `row` channels.
fn core_config(row: usize, shift: u32, num: u64, bias: &[i64]) -> Result<Vec<(u32, u32)>, String> {
    if row == 0 || row > NMAX {
        return Err(format!("row length {row} is outside 1..={NMAX} (the row buffer)"));
    }
    if let Some((c, b)) = bias.iter().enumerate().find(|(_, b)| b.unsigned_abs() >= 1 << 31) {
        return Err(format!("bias_int[{c}] = {b} does not fit the 32-bit bias register (|beta/gamma| too large for this row length)"));
    }
    let mut v = vec![(7, row as u32), (8, shift), (9, num as u32)];
    v.extend(bias.iter().enumerate().map(|(c, &b)| (BIAS_ADDR + c as u32, b as u32)));
    Ok(v)
}

/// I-LayerNorm configuration: the golden unit's Newton parameters and the per-channel biases
/// of (γ, β), or why the generated hardware cannot take them.
pub fn ivit_config(bits: u32, unit: &crate::units::ivit::LayerNorm, gamma: &[f32], beta: &[f32]) -> Result<Vec<(u32, u32)>, String> {
    use crate::units::ivit::NewtonStart;
    let w = var_bits(bits);
    if unit.newton_steps > 31 {
        return Err(format!("newton_steps = {} exceeds the 5-bit step register (at most 31)", unit.newton_steps));
    }
    let start = match unit.start {
        NewtonStart::BitLength => 0,
        NewtonStart::Fixed(v) => {
            let lim = 1u64 << w.min(32);
            if v == 0 || v >= lim {
                return Err(format!("Newton start {v} is outside 1..2^{} (the start register and the {w}-bit variance)", w.min(32)));
            }
            v
        }
    };
    let mut cond = crate::units::Conditions::default();
    let (bias, _) = crate::units::ivit::ln_bias_and_scale(gamma, beta, gamma.len(), &mut cond);
    let mut v = core_config(gamma.len(), 0, (1u64 << 31) - 1, &bias)?;
    v.extend([(10, unit.newton_steps), (11, start as u32)]);
    Ok(v)
}

/// IntLayerNorm configuration for `bits`-bit inputs: the variance shift the golden unit uses
/// for every row of this width and length, the factor numerator 2^(31 − shift) and the
/// per-channel biases, or why the generated hardware cannot take them.
pub fn ibert_config(bits: u32, unit: &crate::units::ibert::LayerNorm, gamma: &[f32], beta: &[f32]) -> Result<Vec<(u32, u32)>, String> {
    use crate::units::ibert::{LayerNorm, ShiftRule};
    let c = gamma.len();
    let shift = match unit.shift {
        ShiftRule::Static => LayerNorm::static_shift(bits, c),
        ShiftRule::Frozen(s) => s,
        ShiftRule::Dynamic(s) => {
            // The dynamic rule raises the shift only when some row's Σ(y >> s)² reaches 2^32;
            // where no row of this width and length can, the shift stays s for the whole tensor.
            if ((1u128 << (2 * bits)) * c as u128) >> (2 * s) >= 1 << 32 {
                return Err(format!(
                    "the dynamic variance shift depends on every row of the tensor ({bits}-bit rows of {c} can reach 2^32 at shift {s}); the streaming hardware needs a fixed shift: use --param shift=frozen:S or static"
                ));
            }
            s
        }
    };
    if shift > 31 {
        return Err(format!("variance shift {shift} exceeds the hardware's 0..=31"));
    }
    let mut cond = crate::units::Conditions::default();
    let (bias, _) = crate::units::ivit::ln_bias_and_scale(gamma, beta, c, &mut cond);
    core_config(c, shift, 1u64 << (31 - shift), &bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newton_engine_equals_the_golden_iteration() {
        for var in (0u64..3000).chain([1 << 20, (1 << 26) - 1, 12_345_678]) {
            for (start, steps) in [(0u64, 10u32), (1 << 16, 10), (5, 3), (0, 0), (1, 1)] {
                let mut e = Newton::new(26);
                e.configure(10, u64::from(steps));
                e.configure(11, start);
                e.clock(false, true, var);
                let mut cycles = 0;
                while !e.done() {
                    e.clock(false, false, 0);
                    cycles += 1;
                }
                assert_eq!(cycles, steps * 26);
                let mut k: i128 = if start == 0 { 1 << crate::fixed::bit_length(u128::from(var)).div_ceil(2) } else { i128::from(start) };
                for _ in 0..steps {
                    k = ((k + i128::from(var) / k) >> 1).max(1);
                }
                assert_eq!(e.root() as i128, k, "var {var} start {start} steps {steps}");
            }
        }
    }

    use crate::cycle::{run, timing, Stimulus};
    use crate::fixed::{QTensor, Scale};
    use crate::units::{ibert, ivit, Aux, Mode, Unit};
    use rand::{Rng, SeedableRng};

    /// Stream `rows` (all of length c) through a fresh model; outputs per row.
    fn stream<S: Sqrt>(
        bits: u32,
        lanes: usize,
        sq: S,
        config: Vec<(u32, u32)>,
        rows: &[Vec<i64>],
        gaps: bool,
    ) -> (Vec<i64>, crate::cycle::Trace) {
        let beats = crate::cycle::beats_of(rows, lanes);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (in_allow, out_ready) = if gaps {
            ((0..101).map(|_| rng.gen_bool(0.7)).collect(), (0..97).map(|_| rng.gen_bool(0.6)).collect())
        } else {
            (vec![true], vec![true])
        };
        let n = beats.len();
        let st = Stimulus { lanes, config, beats, masks: Vec::new(), modes: Vec::new(), in_allow, out_ready };
        let t = run(&mut RowLayerNorm::new(bits, lanes, sq), &st, n, 200 * n as u64 + 10_000);
        let c = rows[0].len();
        let mut out = Vec::new();
        let mut per_row = Vec::new();
        for b in &t.beats {
            per_row.extend_from_slice(&b.data);
            if b.last {
                per_row.truncate(c);
                out.append(&mut per_row);
            }
        }
        (out, t)
    }

    fn random_rows(rng: &mut rand::rngs::StdRng, bits: u32, c: usize, n: usize) -> Vec<Vec<i64>> {
        let hi = (1i64 << (bits - 1)) - 1;
        let mut rows: Vec<Vec<i64>> = vec![vec![hi; c], vec![-hi - 1; c], (0..c).map(|i| if i % 2 == 0 { hi } else { -hi - 1 }).collect()];
        for _ in 0..n {
            let spread = rng.gen_range(0..=hi);
            let centre = rng.gen_range(-hi - 1..=hi);
            rows.push((0..c).map(|_| (centre + rng.gen_range(-spread..=spread)).clamp(-hi - 1, hi)).collect());
        }
        rows
    }

    #[test]
    fn both_layernorms_equal_golden_on_random_and_corner_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (bits, lanes, c) in [(8u32, 1usize, 1024usize), (8, 4, 37), (6, 2, 384), (4, 16, 5), (12, 8, 100), (16, 1, 64), (8, 16, 1)] {
            let rows = random_rows(&mut rng, bits, c, 6);
            let (g, b) = crate::sensitivity::affine_params(c, u64::from(bits) + c as u64);
            let aux = Aux { gamma: Some(g.clone()), beta: Some(b.clone()), ..Aux::default() };
            let x = QTensor::new(rows.concat(), &[rows.len(), c], Scale::PerTensor(0.05), bits, true).unwrap();
            let w = var_bits(bits);
            for unit in [ivit::LayerNorm::preset(crate::units::Preset::Adapted), ivit::LayerNorm::preset(crate::units::Preset::Reference)] {
                let want = unit.run(&x, &aux, Mode::Integer).unwrap().values;
                let (got, _) = stream(bits, lanes, Newton::new(w), ivit_config(bits, &unit, &g, &b).unwrap(), &rows, true);
                assert_eq!(got, want, "ivit {bits}b L{lanes} C{c} {:?}", unit.start);
            }
            for unit in [ibert::LayerNorm::preset(crate::units::Preset::Adapted), ibert::LayerNorm { shift: ibert::ShiftRule::Frozen(2) }] {
                let want = unit.run(&x, &aux, Mode::Integer).unwrap().values;
                let (got, _) = stream(bits, lanes, Digit::new(w), ibert_config(bits, &unit, &g, &b).unwrap(), &rows, true);
                assert_eq!(got, want, "ibert {bits}b L{lanes} C{c} {:?}", unit.shift);
            }
        }
    }

    #[test]
    fn latency_and_row_period_follow_the_formulas() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (bits, lanes, c) in [(8u32, 1usize, 384usize), (8, 4, 384), (6, 4, 197), (8, 16, 1024), (8, 2, 1)] {
            let rows = random_rows(&mut rng, bits, c, 3);
            let (g, b) = crate::sensitivity::affine_params(c, 1);
            let nb = c.div_ceil(lanes) as u64;
            let w = u64::from(var_bits(bits));
            let unit = ivit::LayerNorm::preset(crate::units::Preset::Adapted);
            let (_, t) = stream(bits, lanes, Newton::new(var_bits(bits)), ivit_config(bits, &unit, &g, &b).unwrap(), &rows, false);
            let tm = timing(&t).unwrap();
            let eng = 10 * w + 2;
            assert_eq!(tm.latency, 2 * nb + u64::from(bits) + eng + 45, "ivit {bits}b L{lanes} C{c}");
            assert_eq!(tm.row_period, (3 * nb + u64::from(bits) + eng + 45) as f64, "ivit {bits}b L{lanes} C{c}");
            let unit = ibert::LayerNorm::preset(crate::units::Preset::Adapted);
            let (_, t) = stream(bits, lanes, Digit::new(var_bits(bits)), ibert_config(bits, &unit, &g, &b).unwrap(), &rows, false);
            let tm = timing(&t).unwrap();
            let eng = w / 2 + 2;
            assert_eq!(tm.latency, 2 * nb + u64::from(bits) + eng + 45, "ibert {bits}b L{lanes} C{c}");
            assert_eq!(tm.row_period, (3 * nb + u64::from(bits) + eng + 45) as f64, "ibert {bits}b L{lanes} C{c}");
        }
    }

    #[test]
    fn impossible_layers_are_refused_with_the_reason() {
        let (g, b) = crate::sensitivity::affine_params(2000, 1);
        assert!(ivit_config(8, &ivit::LayerNorm::preset(crate::units::Preset::Adapted), &g, &b).unwrap_err().contains("outside 1..=1024"));
        let (g, b) = crate::sensitivity::affine_params(16, 1);
        let steps = ivit::LayerNorm { newton_steps: 40, start: ivit::NewtonStart::BitLength };
        assert!(ivit_config(8, &steps, &g, &b).unwrap_err().contains("5-bit step register"));
        let start = ivit::LayerNorm { newton_steps: 10, start: ivit::NewtonStart::Fixed(1 << 30) };
        assert!(ivit_config(8, &start, &g, &b).unwrap_err().contains("outside 1..2^26"));
        let mut big = b.clone();
        big[3] = 100.0;
        assert!(ivit_config(8, &ivit::LayerNorm::preset(crate::units::Preset::Adapted), &g, &big).unwrap_err().contains("bias_int[3]"));
        let dynamic = ibert::LayerNorm::preset(crate::units::Preset::Reference);
        assert!(ibert_config(16, &dynamic, &g, &b).unwrap_err().contains("dynamic variance shift"));
        assert!(ibert_config(8, &dynamic, &g, &b).is_ok());
    }

    #[test]
    fn digit_engine_is_isqrt() {
        for var in (0u64..5000).chain([(1 << 26) - 1, 1 << 25, 60_000_000]) {
            let mut e = Digit::new(26);
            e.clock(false, true, var);
            let mut cycles = 0;
            while !e.done() {
                e.clock(false, false, 0);
                cycles += 1;
            }
            assert_eq!(cycles, 13);
            assert_eq!(u128::from(e.root()), crate::fixed::isqrt(u128::from(var)), "var {var}");
        }
    }
}
