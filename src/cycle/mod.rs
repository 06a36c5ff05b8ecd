//! Cycle-accurate models of the streaming units: the same ports as the RTL, one `step()` per
//! clock, and the stream driver shared with the Verilator harness (same stimulus, same
//! handshake pattern, same cycle numbering).
//!
//! Protocol, identical in `testbenches/harness.cpp`: cycle 0 asserts `reset`; cycles 1..=K
//! write the K configuration registers (`cfg_we`); from cycle K+1 on, cycle `K+1+j` offers the
//! next input beat iff `in_allow[j mod P]` and drives `out_ready = out_ready[j mod P]`. A beat
//! moves when valid and ready are both high at the rising edge ending that cycle.

pub mod gelu_ibert;
pub mod gelu_ivit;
pub mod layernorm;
pub mod layernorm_fqvit;
pub mod softmax;

/// Most lanes a unit may have.
pub const MAX_LANES: usize = 16;

/// Input pins for one cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pins {
    /// Synchronous reset.
    pub reset: bool,
    /// Configuration write enable.
    pub cfg_we: bool,
    /// Configuration register address.
    pub cfg_addr: u32,
    /// Configuration value (two's complement).
    pub cfg_data: u32,
    /// Input beat valid.
    pub in_valid: bool,
    /// Input lanes.
    pub in_data: [i64; MAX_LANES],
    /// Per-lane mask flags of the input beat, bit i for lane i (1 = masked; only the softmaxes read it).
    pub in_mask: u32,
    /// Mode of the row that starts with this beat (multi-method softmaxes read it on a row's first beat).
    pub in_mode: u32,
    /// Last beat of a row.
    pub in_last: bool,
    /// Downstream ready.
    pub out_ready: bool,
}

/// Output pins for one cycle (before the clock edge).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outs {
    /// The unit accepts a valid input beat this cycle.
    pub in_ready: bool,
    /// Output beat valid.
    pub out_valid: bool,
    /// Output lanes.
    pub out_data: [i64; MAX_LANES],
    /// Last beat of a row.
    pub out_last: bool,
}

/// A clocked model: outputs are a function of state and inputs; `tick` is the rising edge.
pub trait Clocked {
    /// Combinational outputs for these inputs in the current state.
    fn eval(&self, pins: &Pins) -> Outs;
    /// Rising clock edge.
    fn tick(&mut self, pins: &Pins);
    /// One clock cycle: outputs, then the edge.
    fn step(&mut self, pins: &Pins) -> Outs {
        let o = self.eval(pins);
        self.tick(pins);
        o
    }
}

/// Rows as input beats of `lanes` elements, the last beat of each row zero-padded and flagged.
pub fn beats_of<R: AsRef<[i64]>>(rows: &[R], lanes: usize) -> Vec<(Vec<i64>, bool)> {
    let mut beats = Vec::new();
    for r in rows {
        let r = r.as_ref();
        let n = r.len().div_ceil(lanes);
        for b in 0..n {
            let mut d: Vec<i64> = r[b * lanes..((b + 1) * lanes).min(r.len())].to_vec();
            d.resize(lanes, 0);
            beats.push((d, b + 1 == n));
        }
    }
    beats
}

/// Per-element mask flags of rows as one lane mask per beat (bit i = lane i masked), laid out
/// as [`beats_of`] lays out the rows; padding lanes are unmasked.
pub fn masks_of<R: AsRef<[bool]>>(rows: &[R], lanes: usize) -> Vec<u32> {
    let mut masks = Vec::new();
    for r in rows {
        for chunk in r.as_ref().chunks(lanes) {
            masks.push(chunk.iter().enumerate().filter(|(_, &m)| m).fold(0u32, |a, (i, _)| a | 1 << i));
        }
    }
    masks
}

/// What to stream through a unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Stimulus {
    /// Lanes per beat.
    pub lanes: usize,
    /// Configuration writes (address, value), one per cycle after reset.
    pub config: Vec<(u32, u32)>,
    /// Input beats: (lane values, last).
    pub beats: Vec<(Vec<i64>, bool)>,
    /// Per-beat lane mask flags (bit i = lane i masked), parallel to `beats`; empty = nothing masked.
    pub masks: Vec<u32>,
    /// Per-beat mode (`in_mode`), parallel to `beats`; empty = mode 0. Read on a row's first beat.
    pub modes: Vec<u32>,
    /// Input-valid pattern (repeats).
    pub in_allow: Vec<bool>,
    /// Output-ready pattern (repeats).
    pub out_ready: Vec<bool>,
}

/// One output beat and the cycle it moved on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutBeat {
    /// Cycle number (0 = the reset cycle).
    pub cycle: u64,
    /// Last beat of a row.
    pub last: bool,
    /// Lane values.
    pub data: Vec<i64>,
}

/// Result of streaming a stimulus through a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Output beats in order.
    pub beats: Vec<OutBeat>,
    /// Cycles simulated.
    pub cycles: u64,
    /// Cycle on which the first input beat moved.
    pub first_in: Option<u64>,
}

/// Drive `model` with `stim`: reset, configuration, then the stream under the handshake
/// patterns, until `expect_out` output beats have moved or `max_cycles` have passed.
pub fn run<M: Clocked + ?Sized>(model: &mut M, stim: &Stimulus, expect_out: usize, max_cycles: u64) -> Trace {
    let mut pins = Pins { reset: true, ..Pins::default() };
    model.step(&pins);
    pins.reset = false;
    let mut cycle = 1u64;
    for &(a, d) in &stim.config {
        pins.cfg_we = true;
        pins.cfg_addr = a;
        pins.cfg_data = d;
        model.step(&pins);
        cycle += 1;
    }
    pins.cfg_we = false;
    let (pa, pr) = (stim.in_allow.len().max(1), stim.out_ready.len().max(1));
    let mut next = 0usize;
    let mut beats = Vec::with_capacity(expect_out);
    let mut first_in = None;
    let mut j = 0usize;
    while beats.len() < expect_out && cycle < max_cycles {
        let allow = stim.in_allow.get(j % pa).copied().unwrap_or(true);
        pins.in_valid = allow && next < stim.beats.len();
        if pins.in_valid {
            let (d, l) = &stim.beats[next];
            pins.in_data[..d.len()].copy_from_slice(d);
            pins.in_last = *l;
            pins.in_mask = stim.masks.get(next).copied().unwrap_or(0);
            pins.in_mode = stim.modes.get(next).copied().unwrap_or(0);
        } else {
            pins.in_last = false;
            pins.in_mask = 0;
            pins.in_mode = 0;
        }
        pins.out_ready = stim.out_ready.get(j % pr).copied().unwrap_or(true);
        let o = model.step(&pins);
        if pins.in_valid && o.in_ready {
            first_in.get_or_insert(cycle);
            next += 1;
        }
        if o.out_valid && pins.out_ready {
            beats.push(OutBeat { cycle, last: o.out_last, data: o.out_data[..stim.lanes].to_vec() });
        }
        cycle += 1;
        j += 1;
    }
    Trace { beats, cycles: cycle, first_in }
}

/// Timing figures of a trace.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Timing {
    /// Cycles from the first input beat moving to the first output beat moving.
    pub latency: u64,
    /// Cycles between consecutive row ends (last beats) at the output, on average.
    pub row_period: f64,
    /// Output beats per cycle over the stream.
    pub beats_per_cycle: f64,
}

/// Latency, row period and throughput of a trace.
pub fn timing(t: &Trace) -> Option<Timing> {
    let first_out = t.beats.first()?.cycle;
    let latency = first_out - t.first_in?;
    let ends: Vec<u64> = t.beats.iter().filter(|b| b.last).map(|b| b.cycle).collect();
    let row_period = if ends.len() >= 2 { (ends[ends.len() - 1] - ends[0]) as f64 / (ends.len() - 1) as f64 } else { f64::NAN };
    let span = t.beats.last()?.cycle - first_out + 1;
    Some(Timing { latency, row_period, beats_per_cycle: t.beats.len() as f64 / span as f64 })
}

/// A fresh cycle model of a generated configuration (registers cleared, as after power-up).
pub fn model(cfg: &crate::hdl::RtlConfig) -> Box<dyn Clocked> {
    if let Some(methods) = cfg.methods() {
        return Box::new(softmax::multi(cfg.bits, cfg.lanes, &methods));
    }
    match cfg.unit.as_str() {
        "gelu_ibert" => Box::new(gelu_ibert::GeluIbert::new(cfg.bits, cfg.lanes)),
        "gelu_ivit" => Box::new(gelu_ivit::GeluIvit::new(cfg.bits, cfg.lanes)),
        "softmax_ivit" => Box::new(softmax::RowSoftmax::new(cfg.bits, cfg.lanes, softmax::Shift { ob: 16 })),
        "softmax_ibert" => Box::new(softmax::RowSoftmax::new(cfg.bits, cfg.lanes, softmax::Poly { ob: 8, ..Default::default() })),
        "softmax_fqvit" => Box::new(softmax::RowSoftmax::new(cfg.bits, cfg.lanes, softmax::Log { bits: 4, ..Default::default() })),
        "layernorm_ivit" => {
            Box::new(layernorm::RowLayerNorm::new(cfg.bits, cfg.lanes, layernorm::Newton::new(layernorm::var_bits(cfg.bits))))
        }
        "layernorm_ibert" => {
            Box::new(layernorm::RowLayerNorm::new(cfg.bits, cfg.lanes, layernorm::Digit::new(layernorm::var_bits(cfg.bits))))
        }
        "layernorm_fqvit" => Box::new(layernorm_fqvit::LayerNormFqvit::new(cfg.bits, cfg.lanes)),
        other => unreachable!("RtlConfig::new admits only units with hardware, not {other}"),
    }
}

/// Sign-extend the low `bits` bits of `v`.
#[inline]
pub fn sext(v: u64, bits: u32) -> i64 {
    let sh = 64 - bits;
    ((v << sh) as i64) >> sh
}
