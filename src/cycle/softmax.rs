//! The row-buffer softmax microarchitecture shared by `softmax_ivit` (Shiftmax),
//! `softmax_ibert` (i-exp) and `softmax_fqvit` (LIS, no divider): one row buffer with a mask
//! bit per lane and four phases; only the exponent, the divider's numerator and the output
//! stage differ (a [`Kernel`]).
//!
//! ```text
//!  LOAD  in_ready = 1: each beat is written to the row RAM (nb = ⌈N/LANES⌉ words), its lane
//!        mask flags to the mask RAM beside it (one bit per lane), and the running maximum m
//!        is updated over the live lanes (valid and unmasked).                    nb cycles
//!  SUM   the RAM is read word by word (registered read, one cycle late); for every live
//!        lane E = exp_shift(m − q) by comparators against k·x0 (k = 1..15), S += ΣE.  nb + 1 cycles
//!  DIV   factor = ⌊numerator / S⌋ by a restoring divider, one quotient bit a cycle.  D cycles
//!  OUT   the RAM is read again, E recomputed, out = kernel(E, factor) into the output
//!        register (a masked lane: kernel(0, factor), probability zero); a read is issued
//!        whenever the register is free or being emptied.                        nb + 1 cycles
//! ```
//! Masks (Swin's shifted windows) are the golden models' (`units::Aux::mask`): a masked
//! element is left out of its row's maximum and sum and gets probability exactly zero (code
//! 0, or the LIS zero flag −1); a row with every element masked gives all zeros (its sum is
//! 0, the divider's quotient is then meaningless and multiplied only by masked lanes' zeros).
//! With no gaps and no back-pressure, and nb = ⌈N/LANES⌉: latency (first input beat to first
//! output beat) 2·nb + D + 3 cycles, row period 3·nb + D + 3 cycles (Shiftmax, D = 31: 428 and
//! 625 for N = 197, LANES = 1, measured by `mnq cosim`). One row at a time.
//!
//! Configuration registers common to both kernels: 0 upshift p, 1 x0, 2 lim = n·x0, 3 n,
//! 5 ⌈N/LANES⌉ (the row length N is a per-layer constant), 6 valid lanes of the last beat,
//! 32 + k − 1: k·x0 for k = 1..NQ; the kernels add their own (see each).

use super::{sext, Clocked, Outs, Pins, MAX_LANES};
use crate::units::Method;

/// Largest row the buffer holds.
pub const NMAX: usize = 1024;
/// Most exponent comparators (k·x0 for k = 1..=NQ_MAX).
pub const NQ_MAX: usize = 30;
/// First configuration address of the thresholds k·x0.
pub const THR_ADDR: u32 = 32;

/// Width of the exponent's input datapath for B-bit inputs.
pub fn xw(bits: u32) -> u32 {
    bits + 20
}

/// What distinguishes one softmax from another on the shared microarchitecture.
pub trait Kernel: Clone + std::fmt::Debug {
    /// Exponent comparators used (k·x0 for k = 1..=NQ).
    fn nq(&self) -> usize;
    /// Divider width D: the numerator has D bits, one quotient bit per cycle (0: no divider).
    fn div_bits(&self) -> u32;
    /// Numerator bit `i` (i = D−1 first).
    fn numerator_bit(&self, i: u32) -> bool;
    /// A kernel-specific configuration write.
    fn configure(&mut self, addr: u32, data: u64);
    /// The exponent of `q` in a row with maximum `m` (common registers in `c`).
    fn exp(&self, c: &Common, m: i64, q: i64) -> i64;
    /// The divisor from the row sum.
    fn divisor(&self, sum: i64) -> i64;
    /// The output of one lane.
    fn out(&self, e: i64, factor: i64) -> i64;
}

/// The shared configuration registers.
#[derive(Debug, Clone, Copy)]
pub struct Common {
    /// Upshift p.
    pub up: u32,
    /// x0.
    pub x0: i64,
    /// n·x0.
    pub lim: i64,
    /// n.
    pub n: i64,
    /// Beats per row.
    pub nbeats: usize,
    /// Valid lanes of the last beat.
    pub lastn: usize,
    /// k·x0 (index k; entry 0 is 0).
    pub thr: [i64; NQ_MAX + 1],
}

impl Common {
    /// ⌊xc/x0⌋ by comparators and the remainder xc − qq·x0, for `nq` comparators.
    pub fn divide(&self, xc: i64, nq: usize) -> (i64, i64) {
        let qq = (1..=nq).filter(|&k| xc <= self.thr[k]).count();
        (qq as i64, xc - self.thr[qq])
    }
}

/// I-ViT's exp_shift of `x ≤ 0` with `nq` comparators against k·x0 (shared with ShiftGELU).
pub fn shift_exp(c: &Common, x: i64, nq: usize) -> i64 {
    let xe = x + (x >> 1) - (x >> 4);
    let (qq, r) = c.divide(xe.max(c.lim), nq);
    let base = r - 2 * c.x0;
    let sh = c.n - qq - 1;
    if sh < 0 {
        base >> 1
    } else {
        base << sh
    }
}

/// Shiftmax (I-ViT): exp_shift, numerator 2^31 − 1, out = (E·factor) >> (32 − OB).
#[derive(Debug, Clone)]
pub struct Shift {
    /// Output bits OB.
    pub ob: u32,
}

impl Shift {
    /// Exponent comparators.
    pub const NQ: usize = 15;
}

impl Kernel for Shift {
    fn nq(&self) -> usize {
        Self::NQ
    }
    fn div_bits(&self) -> u32 {
        31
    }
    fn numerator_bit(&self, _i: u32) -> bool {
        true
    }
    fn configure(&mut self, _addr: u32, _data: u64) {}
    fn exp(&self, c: &Common, m: i64, q: i64) -> i64 {
        shift_exp(c, -((m - q) << c.up), Self::NQ)
    }
    fn divisor(&self, sum: i64) -> i64 {
        sum.min((1 << 31) - 1)
    }
    fn out(&self, e: i64, factor: i64) -> i64 {
        (e * factor) >> (32 - self.ob)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Load,
    Sum,
    Div,
    Out,
}

/// Every register but the row RAM (copied whole each cycle: the next state is computed from it).
#[derive(Debug, Clone, Copy)]
struct Regs {
    phase: Phase,
    /// Bank (method) of the row in flight, taken from `in_mode` with the row's first beat.
    mode: usize,
    wptr: usize,
    m: i64,
    /// Some live lane of the row has been loaded (m holds a maximum).
    seen: bool,
    rptr: usize,
    raddr: usize,
    rdata: [i64; MAX_LANES],
    rmask: u32,
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

/// One method of a row-buffer softmax: its kernel, its configuration bank, and the mode code
/// (`in_mode`, and bits 7:6 of the configuration address) that selects it.
#[derive(Debug, Clone)]
struct Bank<K: Kernel> {
    code: u32,
    kernel: K,
    cfg: Common,
}

/// The cycle model of a row-buffer softmax with kernel `K`; a multi-method unit holds one
/// kernel and one configuration bank per method and computes each row with the bank its first
/// beat selects.
#[derive(Debug, Clone)]
pub struct RowSoftmax<K: Kernel> {
    bits: u32,
    lanes: usize,
    banks: Vec<Bank<K>>,
    r: Regs,
    ram: Vec<[i64; MAX_LANES]>,
    /// The mask RAM beside the row RAM: one flag per lane of each word.
    mram: Vec<u32>,
}

/// Configuration address bits of one bank of a multi-method unit (bank = address >> 6).
pub const BANK_ADDR_BITS: u32 = 6;

impl<K: Kernel> RowSoftmax<K> {
    /// A unit for `bits`-bit inputs and `lanes` lanes, registers cleared.
    pub fn new(bits: u32, lanes: usize, kernel: K) -> RowSoftmax<K> {
        Self::with_banks(bits, lanes, vec![(0, kernel)])
    }

    /// A multi-method unit: one kernel per mode code (the first is taken for a code none has).
    pub fn multi(bits: u32, lanes: usize, kernels: Vec<(u32, K)>) -> RowSoftmax<K> {
        assert!(kernels.len() > 1, "a multi-method unit has several kernels");
        Self::with_banks(bits, lanes, kernels)
    }

    fn with_banks(bits: u32, lanes: usize, kernels: Vec<(u32, K)>) -> RowSoftmax<K> {
        let cfg = Common { up: 0, x0: 0, lim: 0, n: 0, nbeats: 0, lastn: 0, thr: [0; NQ_MAX + 1] };
        RowSoftmax {
            bits,
            lanes,
            banks: kernels.into_iter().map(|(code, kernel)| Bank { code, kernel, cfg }).collect(),
            r: Regs {
                phase: Phase::Load,
                mode: 0,
                wptr: 0,
                m: 0,
                seen: false,
                rptr: 0,
                raddr: 0,
                rdata: [0; MAX_LANES],
                rmask: 0,
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
            mram: vec![0; NMAX / lanes],
        }
    }

    /// The bank a row takes from `in_mode`: the one with that code, else the first.
    fn bank_for(&self, in_mode: u32) -> usize {
        self.banks.iter().position(|b| b.code == in_mode).unwrap_or(0)
    }

    /// Bank and in-bank address of a configuration write (a single-method unit has one bank
    /// and no bank bits).
    fn decode(&self, addr: u32) -> Option<(usize, u32)> {
        if self.banks.len() == 1 {
            return Some((0, addr));
        }
        let code = addr >> BANK_ADDR_BITS;
        self.banks.iter().position(|b| b.code == code).map(|i| (i, addr & ((1 << BANK_ADDR_BITS) - 1)))
    }

    /// Whether lane `i` of beat `b` with mask flags `mask` holds an unmasked element (bank `k`).
    fn live(&self, k: usize, b: usize, mask: u32, i: usize) -> bool {
        i < self.valid_lanes(k, b) && mask >> i & 1 == 0
    }

    /// Valid lanes of beat `b` in bank `k`'s rows.
    fn valid_lanes(&self, k: usize, b: usize) -> usize {
        let c = &self.banks[k].cfg;
        if b + 1 == c.nbeats {
            c.lastn
        } else {
            self.lanes
        }
    }

    /// Whether a RAM read is issued this cycle (SUM and OUT).
    fn issue(&self, pins: &Pins) -> bool {
        let r = &self.r;
        let nbeats = self.banks[r.mode].cfg.nbeats;
        match r.phase {
            Phase::Sum => r.rptr < nbeats,
            Phase::Out => r.rptr < nbeats && (!r.rvalid || !r.ov || pins.out_ready),
            _ => false,
        }
    }
}

impl<K: Kernel> Clocked for RowSoftmax<K> {
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
        nx.rmask = self.mram[nx.raddr.min(self.mram.len() - 1)];
        let (k, bank) = (cur.mode, &self.banks[cur.mode]);
        let (kernel, cfg) = (&bank.kernel, &bank.cfg);
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
                        // The first beat of a row selects the bank the whole row uses.
                        let lk = if cur.wptr == 0 { self.bank_for(pins.in_mode) } else { cur.mode };
                        let mut w = [0i64; MAX_LANES];
                        let (mut m, mut seen) = (cur.m, cur.wptr != 0 && cur.seen);
                        for (i, wi) in w.iter_mut().enumerate().take(self.lanes) {
                            *wi = sext(pins.in_data[i] as u64, self.bits);
                            if self.live(lk, cur.wptr, pins.in_mask, i) && (!seen || *wi > m) {
                                (m, seen) = (*wi, true);
                            }
                        }
                        write = Some((cur.wptr, w, pins.in_mask));
                        nx.mode = lk;
                        nx.m = m;
                        nx.seen = seen;
                        nx.wptr = cur.wptr + 1;
                        if cur.wptr + 1 == self.banks[lk].cfg.nbeats {
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
                        let e: i64 = (0..self.lanes)
                            .filter(|&i| self.live(k, cur.rdi, cur.rmask, i))
                            .map(|i| kernel.exp(cfg, cur.m, cur.rdata[i]))
                            .sum();
                        nx.sum = cur.sum + e;
                        if cur.rdi + 1 == cfg.nbeats && kernel.div_bits() == 0 {
                            // No divider (LIS): the output stage compares against the sum itself.
                            nx.factor = nx.sum;
                            nx.phase = Phase::Out;
                            nx.rptr = 0;
                            nx.rvalid = false;
                        } else if cur.rdi + 1 == cfg.nbeats {
                            nx.phase = Phase::Div;
                            nx.div = kernel.divisor(nx.sum);
                            nx.rem = 0;
                            nx.quo = 0;
                            nx.cnt = 0;
                        }
                    }
                }
                Phase::Div => {
                    // Restoring division: one quotient bit per cycle, numerator MSB first.
                    let d = kernel.div_bits();
                    let rr = (cur.rem << 1) | i64::from(kernel.numerator_bit(d - 1 - cur.cnt));
                    let (rr, bit) = if rr >= cur.div { (rr - cur.div, 1) } else { (rr, 0) };
                    nx.rem = rr;
                    nx.quo = (cur.quo << 1) | bit;
                    nx.cnt = cur.cnt + 1;
                    if cur.cnt + 1 == d {
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
                        let mut o = [0i64; MAX_LANES];
                        for (i, oi) in o.iter_mut().enumerate().take(self.valid_lanes(k, cur.rdi)) {
                            let e = if self.live(k, cur.rdi, cur.rmask, i) { kernel.exp(cfg, cur.m, cur.rdata[i]) } else { 0 };
                            *oi = kernel.out(e, cur.factor);
                        }
                        nx.odata = o;
                        nx.ov = true;
                        nx.olast = cur.rdi + 1 == cfg.nbeats;
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
            if let Some((b, addr)) = self.decode(pins.cfg_addr) {
                let d = u64::from(pins.cfg_data);
                let w = xw(self.bits).min(32);
                let bank = &mut self.banks[b];
                let nq = bank.kernel.nq() as u32;
                let c = &mut bank.cfg;
                match addr {
                    0 => c.up = (d & 31) as u32,
                    1 => c.x0 = sext(d, w),
                    2 => c.lim = sext(d, w),
                    3 => c.n = (d & 31) as i64,
                    5 => c.nbeats = (d & 0x7ff) as usize,
                    6 => c.lastn = (d & 0x1f) as usize,
                    a if (THR_ADDR..THR_ADDR + nq).contains(&a) => c.thr[(a - THR_ADDR + 1) as usize] = sext(d, w),
                    a => bank.kernel.configure(a, d),
                }
            }
        }
        if let Some((a, w, mask)) = write {
            self.ram[a] = w;
            self.mram[a] = mask;
        }
        self.r = nx;
    }
}

/// Writes of the common registers for a row of `row` elements.
pub fn common_config(bits: u32, lanes: usize, up: u32, x0: i64, n: u32, nq: usize, row: usize) -> Result<Vec<(u32, u32)>, String> {
    if row == 0 || row > NMAX {
        return Err(format!("row length {row} is outside 1..={NMAX} (the row buffer)"));
    }
    let w = xw(bits).min(32);
    let xmin = ((1u128 << bits) << up) * 2;
    if (nq as u128) * (x0.unsigned_abs() as u128) >= 1 << (w - 1) || xmin >= 1 << (w - 1) {
        return Err(format!("upshift {up} and x0 = {x0} overflow the {w}-bit exponent datapath"));
    }
    let nbeats = row.div_ceil(lanes);
    let lastn = row - (nbeats - 1) * lanes;
    let mut v = vec![(0, up), (1, x0 as u32), (2, (i64::from(n) * x0) as u32), (3, n), (5, nbeats as u32), (6, lastn as u32)];
    v.extend((1..=nq).map(|k| (THR_ADDR + k as u32 - 1, (k as i64 * x0) as u32)));
    Ok(v)
}

/// Shiftmax configuration for input scale `s`, or why the generated hardware cannot take it.
pub fn shift_config(bits: u32, lanes: usize, s: f64, up: u32, n: u32, row: usize) -> Result<Vec<(u32, u32)>, String> {
    if n as usize > Shift::NQ {
        return Err(format!("n = {n} exceeds the {} exponent comparators", Shift::NQ));
    }
    let x0 = crate::units::ivit::shift_x0(s / 2f64.powi(up as i32));
    let emax = (x0.unsigned_abs() as u128) << (n + 1);
    if emax * (row as u128) >= 1 << 31 {
        return Err(format!("scale {s} with upshift {up}: the row sum could reach the 2^31 clamp (the reference's saturation), which the hardware does not reproduce"));
    }
    common_config(bits, lanes, up, x0, n, Shift::NQ, row)
}

/// I-BERT's i-exp softmax: polynomial exponent, dyadic 16-bit requantiser, numerator 2^32,
/// out = min((E16·factor) >> (32 − OB), top). Registers: 7 b_int, 8 c_int, 9 m16, 10 e16, 11 top.
#[derive(Debug, Clone, Default)]
pub struct Poly {
    /// Output bits OB.
    pub ob: u32,
    /// b_int.
    pub b: i64,
    /// c_int.
    pub c: i64,
    /// Mantissa of the 16-bit requantiser.
    pub m16: i64,
    /// Shift of the 16-bit requantiser.
    pub e16: i64,
    /// Largest output (2^OB in the reference, 2^OB − 1 adapted).
    pub top: i64,
}

impl Poly {
    /// Exponent comparators.
    pub const NQ: usize = 30;
}

impl Kernel for Poly {
    fn nq(&self) -> usize {
        Self::NQ
    }
    fn div_bits(&self) -> u32 {
        33
    }
    fn numerator_bit(&self, i: u32) -> bool {
        i == 32
    }
    fn configure(&mut self, addr: u32, data: u64) {
        match addr {
            7 => self.b = sext(data, 32),
            8 => self.c = sext(data, 32),
            9 => self.m16 = data as i64,
            10 => self.e16 = (data & 63) as i64,
            11 => self.top = (data & 0x3ff) as i64,
            _ => {}
        }
    }
    fn exp(&self, c: &Common, m: i64, q: i64) -> i64 {
        let x = -((m - q) << c.up);
        let (qq, r) = c.divide(x.max(c.lim), Self::NQ);
        let z = (r * (r + self.b) + self.c).max(0);
        let net = (self.e16 - (c.n - qq)) as u32;
        let p = i128::from(z) * i128::from(self.m16);
        (crate::fixed::shift_round(p, net, crate::fixed::Rounding::HalfEven) as i64).min(32767)
    }
    fn divisor(&self, sum: i64) -> i64 {
        sum
    }
    fn out(&self, e: i64, factor: i64) -> i64 {
        ((e * factor) >> (32 - self.ob)).min(self.top)
    }
}

/// I-BERT softmax configuration for input scale `s`, or why the generated hardware cannot take it.
pub fn poly_config(bits: u32, lanes: usize, unit: &crate::units::ibert::Softmax, s: f64, row: usize) -> Result<Vec<(u32, u32)>, String> {
    let up = unit.upshift.unwrap_or_else(|| crate::units::ibert::ExpConsts::auto_upshift(s));
    let k = crate::units::ibert::ExpConsts::new(s, unit.n, up);
    if unit.n as usize != Poly::NQ {
        return Err(format!("the hardware has {} exponent comparators; n = {} is not supported", Poly::NQ, unit.n));
    }
    // r·(r + b) is formed in 34 bits: |x0| < 2^14 and |b| < 2^16 keep it exact.
    if k.c <= 0 || k.c >= 1 << 30 || k.b.unsigned_abs() >= 1 << 16 || k.x0.unsigned_abs() >= 1 << 14 {
        return Err(format!(
            "scale {s} gives c_int = {}, b_int = {}, x0 = {}: outside the hardware's ranges (c in 1..2^30, |b| < 2^16, |x0| < 2^14)",
            k.c, k.b, k.x0
        ));
    }
    let d = crate::fixed::Dyadic::from_ratio(32767.0 / k.e_max() as f64);
    if d.e < 31 || d.e > 63 {
        return Err(format!("the 16-bit requantiser shift {} is outside 31..=63", d.e));
    }
    let top = if unit.clamp_out { (1i64 << unit.out_bits) - 1 } else { 1i64 << unit.out_bits };
    let mut v = common_config(bits, lanes, up, k.x0, unit.n, Poly::NQ, row)?;
    v.extend([(7, k.b as u32), (8, k.c as u32), (9, d.m as u32), (10, d.e as u32), (11, top as u32)]);
    Ok(v)
}

/// FQ-ViT Log-Int-Softmax: I-BERT's i-exp without requantisation, no divider; each output is
/// the log2 code of RNE(S/E) found by 2^bits comparisons (2t_j − 1)·E against 2S with
/// t_1 = 2, t_j = 3·2^(j−2) — shifts and a subtraction, no multiplier. Code −1 = zero flag.
/// Registers: 7 b_int, 8 c_int.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// Code bits.
    pub bits: u32,
    /// b_int.
    pub b: i64,
    /// c_int.
    pub c: i64,
}

impl Log {
    /// Exponent comparators.
    pub const NQ: usize = 30;
}

impl Kernel for Log {
    fn nq(&self) -> usize {
        Self::NQ
    }
    fn div_bits(&self) -> u32 {
        0
    }
    fn numerator_bit(&self, _i: u32) -> bool {
        false
    }
    fn configure(&mut self, addr: u32, data: u64) {
        match addr {
            7 => self.b = sext(data, 32),
            8 => self.c = sext(data, 32),
            _ => {}
        }
    }
    fn exp(&self, c: &Common, m: i64, q: i64) -> i64 {
        let x = -((m - q) << c.up);
        let (qq, r) = c.divide(x.max(c.lim), Self::NQ);
        let z = (r * (r + self.b) + self.c).max(0);
        z << (c.n - qq)
    }
    fn divisor(&self, sum: i64) -> i64 {
        sum
    }
    fn out(&self, e: i64, s: i64) -> i64 {
        if e == 0 {
            return -1;
        }
        let levels = 1i64 << self.bits;
        let k = (1..=levels)
            .filter(|&j| {
                let p = if j == 1 { 3 * e } else { ((3 * e) << (j - 1)) - e }; // (2t_j − 1)·E
                let t_even = j != 2;
                p < 2 * s || (p == 2 * s && t_even)
            })
            .count() as i64;
        if k >= levels {
            -1
        } else {
            k
        }
    }
}

/// LIS configuration for input scale `s` (asymmetric input: codes minus the zero point), or why
/// the generated hardware cannot take it.
pub fn log_config(bits: u32, lanes: usize, unit: &crate::units::fqvit::Softmax, s: f64, row: usize) -> Result<Vec<(u32, u32)>, String> {
    let up = unit.upshift.unwrap_or_else(|| crate::units::ibert::ExpConsts::auto_upshift(s));
    let k = crate::units::ibert::ExpConsts::new(s, unit.n, up);
    if unit.n as usize != Log::NQ || unit.bits != 4 {
        return Err(format!(
            "the hardware has {} exponent comparators and 4-bit codes; n = {}, bits = {} are not supported",
            Log::NQ,
            unit.n,
            unit.bits
        ));
    }
    // E < 2^44 keeps (2t_16 − 1)·E = 3E·2^15 − E below 2^62, and the row sum below 2^54.
    if k.c <= 0 || k.c >= 1 << 13 || k.b.unsigned_abs() >= 1 << 16 || k.x0.unsigned_abs() >= 1 << 14 {
        return Err(format!(
            "scale {s} gives c_int = {}, b_int = {}, x0 = {}: outside the hardware's ranges (c in 1..2^13, |b| < 2^16, |x0| < 2^14)",
            k.c, k.b, k.x0
        ));
    }
    let mut v = common_config(bits, lanes, up, k.x0, unit.n, Log::NQ, row)?;
    v.extend([(7, k.b as u32), (8, k.c as u32)]);
    Ok(v)
}

/// The mode code of a method in a multi-method softmax: its `in_mode` value and the bank bits
/// (7:6) of its configuration addresses.
pub fn mode_code(m: Method) -> u32 {
    match m {
        Method::IBert => 0,
        Method::FqVit => 1,
        Method::IVit => 2,
    }
}

/// A kernel of any of the three families, so one [`RowSoftmax`] can hold several (each call
/// goes to the family's own kernel).
#[derive(Debug, Clone)]
pub enum AnyKernel {
    /// Shiftmax (I-ViT).
    Shift(Shift),
    /// i-exp softmax (I-BERT).
    Poly(Poly),
    /// Log-Int-Softmax (FQ-ViT).
    Log(Log),
}

impl AnyKernel {
    /// The hardware kernel of a method, with the output widths of its single-method unit.
    pub fn of(m: Method) -> AnyKernel {
        match m {
            Method::IVit => AnyKernel::Shift(Shift { ob: 16 }),
            Method::IBert => AnyKernel::Poly(Poly { ob: 8, ..Default::default() }),
            Method::FqVit => AnyKernel::Log(Log { bits: 4, ..Default::default() }),
        }
    }
}

macro_rules! any_kernel {
    ($s:expr, $k:ident => $e:expr) => {
        match $s {
            AnyKernel::Shift($k) => $e,
            AnyKernel::Poly($k) => $e,
            AnyKernel::Log($k) => $e,
        }
    };
}

impl Kernel for AnyKernel {
    fn nq(&self) -> usize {
        any_kernel!(self, k => k.nq())
    }
    fn div_bits(&self) -> u32 {
        any_kernel!(self, k => k.div_bits())
    }
    fn numerator_bit(&self, i: u32) -> bool {
        any_kernel!(self, k => k.numerator_bit(i))
    }
    fn configure(&mut self, addr: u32, data: u64) {
        any_kernel!(self, k => k.configure(addr, data))
    }
    fn exp(&self, c: &Common, m: i64, q: i64) -> i64 {
        any_kernel!(self, k => k.exp(c, m, q))
    }
    fn divisor(&self, sum: i64) -> i64 {
        any_kernel!(self, k => k.divisor(sum))
    }
    fn out(&self, e: i64, factor: i64) -> i64 {
        any_kernel!(self, k => k.out(e, factor))
    }
}

/// The cycle model of a multi-method softmax over `methods` (at least two, distinct).
pub fn multi(bits: u32, lanes: usize, methods: &[Method]) -> RowSoftmax<AnyKernel> {
    RowSoftmax::multi(bits, lanes, methods.iter().map(|&m| (mode_code(m), AnyKernel::of(m))).collect())
}

/// A single-method unit's configuration writes moved into `m`'s bank of a multi-method unit.
pub fn to_bank(m: Method, writes: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    writes.into_iter().map(|(a, d)| (mode_code(m) << BANK_ADDR_BITS | a, d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cycle::{beats_of, masks_of, run, Stimulus};

    /// Outputs of rows of one length, streamed back to back through one Shiftmax model, with
    /// their mask flags.
    fn shiftmax(lanes: usize, rows: &[(&[i64], &[bool])]) -> Vec<Vec<i64>> {
        let n = rows[0].0.len();
        let (codes, flags): (Vec<&[i64]>, Vec<&[bool]>) = rows.iter().copied().unzip();
        let st = Stimulus {
            lanes,
            config: shift_config(8, lanes, 0.05, 0, 15, n).unwrap(),
            beats: beats_of(&codes, lanes),
            masks: masks_of(&flags, lanes),
            modes: Vec::new(),
            in_allow: vec![true],
            out_ready: vec![true],
        };
        let mut m = RowSoftmax::new(8, lanes, Shift { ob: 16 });
        let t = run(&mut m, &st, st.beats.len(), 10_000);
        let out: Vec<i64> = t.beats.iter().flat_map(|b| b.data.clone()).collect();
        out.chunks(n.div_ceil(lanes) * lanes).map(|r| r[..n].to_vec()).collect()
    }

    #[test]
    fn masks_of_packs_lane_flags_per_beat() {
        assert_eq!(masks_of(&[vec![true, false, true, true, false]], 4), vec![0b1101, 0b0]);
        assert_eq!(masks_of(&[vec![false, true], vec![true]], 1), vec![0, 1, 1]);
    }

    #[test]
    fn a_masked_element_is_left_out_of_maximum_and_sum() {
        // The masked 127 in lane 0 of the first beat must neither be the maximum nor take a
        // share of the sum: the unmasked elements get what they get without it.
        for lanes in [1, 2, 4] {
            let with = shiftmax(lanes, &[(&[127, 5, -3, 20, 7], &[true, false, false, false, false])]);
            let without = shiftmax(lanes, &[(&[5, -3, 20, 7], &[false; 4])]);
            assert_eq!(with[0][0], 0, "LANES {lanes}");
            assert_eq!(&with[0][1..], &without[0][..], "LANES {lanes}");
        }
    }

    #[test]
    fn an_all_masked_row_gives_zeros_and_leaves_the_next_row_alone() {
        for lanes in [1, 2, 4] {
            let row: &[i64] = &[9, -4, 100];
            let out = shiftmax(lanes, &[(row, &[true; 3]), (row, &[false; 3]), (row, &[true, true, false])]);
            assert_eq!(out[0], vec![0; 3], "LANES {lanes}");
            assert_eq!(out[1], shiftmax(lanes, &[(row, &[false; 3])])[0], "LANES {lanes}: the row after an all-masked one");
            // A lone unmasked element takes the whole probability, as in a row of its own.
            assert_eq!(out[2], vec![0, 0, shiftmax(lanes, &[(&[100], &[false])])[0][0]], "LANES {lanes}");
        }
    }

    /// Writes of the single-method unit of `m` for rows of `n` at scale `s` (adapted preset).
    fn single_config(m: Method, lanes: usize, s: f64, n: usize) -> Vec<(u32, u32)> {
        let cfg = crate::hdl::RtlConfig::new(&format!("softmax_{}", m.name()), 8, lanes).unwrap();
        crate::cosim::softmax_config(&cfg, crate::units::Preset::Adapted, s, n).unwrap()
    }

    fn stream(lanes: usize, config: Vec<(u32, u32)>, rows: &[Vec<i64>], modes: &[u32], seed: u64) -> Stimulus {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let beats = beats_of(rows, lanes);
        let nb = rows[0].len().div_ceil(lanes);
        Stimulus {
            lanes,
            config,
            modes: modes.iter().flat_map(|&c| std::iter::repeat_n(c, nb)).collect(),
            masks: vec![0; beats.len()],
            beats,
            in_allow: (0..61).map(|_| rng.gen_bool(0.7)).collect(),
            out_ready: (0..67).map(|_| rng.gen_bool(0.6)).collect(),
        }
    }

    #[test]
    fn multi_rows_equal_the_single_units_in_every_mode() {
        use rand::{Rng, SeedableRng};
        let all = [Method::IBert, Method::FqVit, Method::IVit];
        let (s, n) = (0.05, 37);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let rows: Vec<Vec<i64>> = (0..24).map(|_| (0..n).map(|_| rng.gen_range(-128..128)).collect()).collect();
        for lanes in [1, 4] {
            for methods in [&all[..], &all[..2], &all[1..], &[Method::IBert, Method::IVit][..]] {
                let config: Vec<(u32, u32)> = methods.iter().flat_map(|&m| to_bank(m, single_config(m, lanes, s, n))).collect();
                let row_modes: Vec<Method> = rows.iter().map(|_| methods[rng.gen_range(0..methods.len())]).collect();
                let codes: Vec<u32> = row_modes.iter().map(|&m| mode_code(m)).collect();
                let st = stream(lanes, config.clone(), &rows, &codes, 5);
                let t = run(&mut multi(8, lanes, methods), &st, st.beats.len(), 100_000);
                assert_eq!(t.beats.len(), st.beats.len(), "{methods:?} LANES {lanes}: stalled");
                let nb = n.div_ceil(lanes);
                for (r, (row, &m)) in rows.iter().zip(&row_modes).enumerate() {
                    // The row alone through the single-method unit of its mode.
                    let one = stream(lanes, single_config(m, lanes, s, n), std::slice::from_ref(row), &[], 5);
                    let want = run(&mut RowSoftmax::new(8, lanes, AnyKernel::of(m)), &one, nb, 10_000);
                    let got: Vec<&Vec<i64>> = t.beats[r * nb..(r + 1) * nb].iter().map(|b| &b.data).collect();
                    assert_eq!(got, want.beats.iter().map(|b| &b.data).collect::<Vec<_>>(), "{methods:?} LANES {lanes} row {r} ({m:?})");
                }
                for &m in methods {
                    // A stream of one mode is the single-method unit's, cycle for cycle.
                    let codes = vec![mode_code(m); rows.len()];
                    let got =
                        run(&mut multi(8, lanes, methods), &stream(lanes, config.clone(), &rows, &codes, 9), rows.len() * nb, 100_000);
                    let one = stream(lanes, single_config(m, lanes, s, n), &rows, &[], 9);
                    let mut want = run(&mut RowSoftmax::new(8, lanes, AnyKernel::of(m)), &one, rows.len() * nb, 100_000);
                    // The multi-method unit spends one configuration cycle per write of every bank.
                    let shift = (config.len() - one.config.len()) as u64;
                    want.beats.iter_mut().for_each(|b| b.cycle += shift);
                    assert_eq!(got.beats, want.beats, "{methods:?} LANES {lanes}, {m:?} only");
                }
            }
        }
    }

    #[test]
    fn a_multi_unit_that_ignored_the_mode_would_be_caught() {
        // The same rows in I-ViT and in I-BERT mode differ, so a unit computing every row in
        // one mode cannot pass the per-row comparison above.
        let (s, n, lanes) = (0.05, 37, 1);
        let methods = [Method::IBert, Method::IVit];
        let config: Vec<(u32, u32)> = methods.iter().flat_map(|&m| to_bank(m, single_config(m, lanes, s, n))).collect();
        let rows: Vec<Vec<i64>> = vec![(0..n as i64).map(|i| i * 7 % 200 - 100).collect(); 2];
        let st = stream(lanes, config, &rows, &[mode_code(Method::IBert), mode_code(Method::IVit)], 1);
        let t = run(&mut multi(8, lanes, &methods), &st, st.beats.len(), 100_000);
        let (a, b) = t.beats.split_at(n);
        assert_ne!(a.iter().map(|x| &x.data).collect::<Vec<_>>(), b.iter().map(|x| &x.data).collect::<Vec<_>>());
        // A mode outside the subset runs the subset's first method (I-BERT here).
        let st2 = Stimulus { modes: vec![mode_code(Method::FqVit); st.beats.len()], ..st.clone() };
        let t2 = run(&mut multi(8, lanes, &methods), &st2, st2.beats.len(), 100_000);
        assert_eq!(t2.beats[..n].iter().map(|x| &x.data).collect::<Vec<_>>(), a.iter().map(|x| &x.data).collect::<Vec<_>>());
        assert_eq!(t2.beats[n..].iter().map(|x| &x.data).collect::<Vec<_>>(), a.iter().map(|x| &x.data).collect::<Vec<_>>());
    }
}
