//! Latency and throughput from the cycle models: each configuration is configured for a layer
//! with rows of N elements (`cosim::layer_config`, the same writes the co-simulation uses),
//! fed back-to-back rows of the operation's standard input distribution with no input gaps
//! and no back-pressure, and its output beats are timed. The figures are fitted as affine
//! functions of nb = ⌈N/LANES⌉ (the fit must be exact at every measured N, probes included)
//! and compared with the formulas of the RTL manifest.

use super::CostError;
use crate::cycle::{self, Stimulus};
use crate::hdl::RtlConfig;
use crate::sensitivity::{draw, Dist};
use crate::units::{self, Op, Preset};
use serde::{Deserialize, Serialize};

/// Rows streamed per measurement (the row period is averaged over the last three).
pub const ROWS: usize = 4;
/// Extra row lengths measured only to check the affine fit.
pub const PROBES: [usize; 2] = [1, 100];

/// The row lengths reported by default for an operation: ViT/DeiT-Small attention rows (197)
/// and Swin windows (49); hidden sizes 192/384/768 (Tiny/Small/Base) for GELU and LayerNorm.
pub fn default_row_lengths(op: Op) -> Vec<usize> {
    match op {
        Op::Softmax => vec![197, 49],
        _ => vec![192, 384, 768],
    }
}

/// Timing of one configuration at one row length.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RowTiming {
    /// Row length N.
    pub row_len: usize,
    /// Beats per row, ⌈N/LANES⌉.
    pub beats: usize,
    /// Cycles from the first input beat moving to the first output beat moving.
    pub latency: u64,
    /// Cycles between consecutive row ends in steady state (cycles per row).
    pub row_period: u64,
    /// Cycles from the first input beat of a row to its last output beat, inclusive, for a
    /// lone row.
    pub first_row_cycles: u64,
    /// Elements per cycle in steady state, N / row period.
    pub elements_per_cycle: f64,
}

impl RowTiming {
    /// Cycles to stream `rows` rows back to back, first input beat to last output beat inclusive.
    pub fn cycles(&self, rows: u64) -> u64 {
        if rows == 0 {
            0
        } else {
            self.first_row_cycles + (rows - 1) * self.row_period
        }
    }
}

/// `a + b·nb`, exact at every measured row length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affine {
    /// Constant term.
    pub a: i64,
    /// Cycles per beat of the row.
    pub b: i64,
}

impl Affine {
    /// Value at `nb` beats per row.
    pub fn at(&self, nb: usize) -> i64 {
        self.a + self.b * nb as i64
    }
}

/// Timing of a configuration as functions of the beats per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimingModel {
    /// Latency.
    pub latency: Affine,
    /// Row period.
    pub row_period: Affine,
    /// Cycles of a lone row.
    pub first_row_cycles: Affine,
    /// Row lengths the model was fitted to and checked at.
    pub checked_at: Vec<usize>,
}

impl TimingModel {
    /// Timing at row length `n` with `lanes` lanes.
    pub fn at(&self, n: usize, lanes: usize) -> RowTiming {
        let nb = n.div_ceil(lanes);
        let period = self.row_period.at(nb).max(1) as u64;
        RowTiming {
            row_len: n,
            beats: nb,
            latency: self.latency.at(nb).max(0) as u64,
            row_period: period,
            first_row_cycles: self.first_row_cycles.at(nb).max(0) as u64,
            elements_per_cycle: n as f64 / period as f64,
        }
    }
}

fn quantise(x: &[f64], s: f64, bits: u32) -> Vec<i64> {
    let hi = (1i64 << (bits - 1)) - 1;
    x.iter().map(|v| (v / s).round_ties_even().clamp((-hi - 1) as f64, hi as f64) as i64).collect()
}

/// Stream `ROWS` rows of `n` elements through the cycle model of `cfg` and time them.
pub fn measure(cfg: &RtlConfig, n: usize) -> Result<RowTiming, CostError> {
    measure_mode(cfg, n, None)
}

/// As [`measure`], every row of a multi-method softmax in `mode` (its first method for `None`).
pub fn measure_mode(cfg: &RtlConfig, n: usize, mode: Option<units::Method>) -> Result<RowTiming, CostError> {
    let name = cfg.name();
    let cerr = |why: String| CostError::Cycle { name: name.clone(), why };
    let (config, s) = crate::cosim::layer_config(cfg, Preset::Adapted, 1, n).map_err(|e| cerr(format!("row length {n}: {e}")))?;
    let op = match cfg.methods() {
        Some(_) => Op::Softmax,
        None => units::build(&cfg.unit, Preset::Reference).map_err(|e| cerr(e.to_string()))?.op(),
    };
    let code = mode.map_or(0, crate::cycle::softmax::mode_code);
    let dist = Dist::for_op(op).ok_or_else(|| cerr(format!("{} has no standard input distribution", cfg.unit)))?;
    let need = ROWS * n;
    let x = draw(dist, need.div_ceil(dist.row_len()), 7);
    let q = quantise(&x[..need], s, cfg.bits);
    let nb = n.div_ceil(cfg.lanes);
    let rows: Vec<&[i64]> = q.chunks(n).collect();
    let beats = cycle::beats_of(&rows, cfg.lanes);
    let total = beats.len();
    let modes = vec![code; beats.len()];
    let stim = Stimulus { lanes: cfg.lanes, config, beats, masks: Vec::new(), modes, in_allow: vec![true], out_ready: vec![true] };
    let max_cycles = 10_000 + 200 * total as u64;
    let tr = cycle::run(cycle::model(cfg).as_mut(), &stim, total, max_cycles);
    if tr.beats.len() < total {
        return Err(cerr(format!(
            "row length {n}: the cycle model gave {} of {total} output beats in {max_cycles} cycles",
            tr.beats.len()
        )));
    }
    let first_in = tr.first_in.ok_or_else(|| cerr("no input beat moved".into()))?;
    let t = cycle::timing(&tr).ok_or_else(|| cerr("no output".into()))?;
    let ends: Vec<u64> = tr.beats.iter().filter(|b| b.last).map(|b| b.cycle).collect();
    if ends.len() != ROWS {
        return Err(cerr(format!("row length {n}: {} row ends for {ROWS} rows", ends.len())));
    }
    // Steady state: the gaps between row ends after the first must all be equal.
    let gaps: Vec<u64> = ends.windows(2).map(|w| w[1] - w[0]).collect();
    let period = gaps[gaps.len() - 1];
    if gaps[1..].iter().any(|&g| g != period) {
        return Err(cerr(format!("row length {n}: row periods {gaps:?} do not settle")));
    }
    let first_row_cycles = ends[0] - first_in + 1;
    if ends[ROWS - 1] - first_in + 1 != first_row_cycles + (ROWS as u64 - 1) * period {
        return Err(cerr(format!(
            "row length {n}: {ROWS} rows take {} cycles, not first row + {} periods",
            ends[ROWS - 1] - first_in + 1,
            ROWS - 1
        )));
    }
    Ok(RowTiming {
        row_len: n,
        beats: nb,
        latency: t.latency,
        row_period: period,
        first_row_cycles,
        elements_per_cycle: n as f64 / period as f64,
    })
}

/// Fit the affine model through measurements at two or more distinct beat counts and check it
/// is exact at all of them.
pub fn fit(name: &str, ms: &[RowTiming]) -> Result<TimingModel, CostError> {
    let cerr = |why: String| CostError::Cycle { name: name.to_string(), why };
    let lo = ms.iter().min_by_key(|m| m.beats).ok_or_else(|| cerr("no measurements".into()))?;
    let hi = ms.iter().max_by_key(|m| m.beats).unwrap();
    if lo.beats == hi.beats {
        return Err(cerr("the measured row lengths have one beat count: nothing to fit".into()));
    }
    let line = |f: fn(&RowTiming) -> u64, what: &str| -> Result<Affine, CostError> {
        let (y0, y1) = (f(lo) as i64, f(hi) as i64);
        let dn = (hi.beats - lo.beats) as i64;
        if (y1 - y0) % dn != 0 {
            return Err(cerr(format!("{what} is not affine in the beats per row: {y0} at {} beats, {y1} at {}", lo.beats, hi.beats)));
        }
        let b = (y1 - y0) / dn;
        let model = Affine { a: y0 - b * lo.beats as i64, b };
        for m in ms {
            if model.at(m.beats) != f(m) as i64 {
                return Err(cerr(format!(
                    "{what} is not affine in the beats per row: {} + {}·nb predicts {} at N = {}, the cycle model gives {}",
                    model.a,
                    model.b,
                    model.at(m.beats),
                    m.row_len,
                    f(m)
                )));
            }
        }
        Ok(model)
    };
    let mut checked_at: Vec<usize> = ms.iter().map(|m| m.row_len).collect();
    checked_at.sort_unstable();
    checked_at.dedup();
    Ok(TimingModel {
        latency: line(|m| m.latency, "latency")?,
        row_period: line(|m| m.row_period, "row period")?,
        first_row_cycles: line(|m| m.first_row_cycles, "lone-row cycles")?,
        checked_at,
    })
}

/// Evaluate a manifest formula such as `2*ceil(N/LANES) + 34`: a sum of products of integers,
/// `ceil(N/LANES)`, `N`, `LANES`, and constants bound in a trailing note such as
/// `2*ceil(N/LANES) + 26*S + 55 (S = 10: 2*ceil(N/LANES) + 315)`.
pub fn eval_formula(f: &str, n: usize, lanes: usize) -> Result<i64, String> {
    let (expr, note) = match f.split_once(" (") {
        Some((e, rest)) => (e, Some(rest)),
        None => (f, None),
    };
    // `(S = 10: …)` binds S; the text after the colon is the same formula with S filled in.
    let mut vars: Vec<(String, i64)> = Vec::new();
    if let Some(note) = note {
        let binds = note.split(':').next().unwrap_or("");
        for b in binds.split(',') {
            let (k, v) = b.split_once('=').ok_or_else(|| format!("'{b}' in '{f}' is not a binding"))?;
            let v = v.trim().trim_end_matches(')').parse::<i64>().map_err(|_| format!("'{b}' in '{f}' is not a binding"))?;
            vars.push((k.trim().to_string(), v));
        }
    }
    let s: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
    if s.is_empty() {
        return Err("empty formula".into());
    }
    s.split('+')
        .map(|term| {
            term.split('*')
                .map(|fac| match fac {
                    "ceil(N/LANES)" => Ok(n.div_ceil(lanes) as i64),
                    "N" => Ok(n as i64),
                    "LANES" => Ok(lanes as i64),
                    v => v
                        .parse::<i64>()
                        .ok()
                        .or_else(|| vars.iter().find(|(k, _)| k == v).map(|(_, x)| *x))
                        .ok_or_else(|| format!("'{v}' in '{f}' is not understood")),
                })
                .product::<Result<i64, String>>()
        })
        .sum()
}

/// Whether the manifest's latency and row-period formulas equal the measured figures; the
/// reason when not.
pub fn check_manifest(cfg: &RtlConfig, ms: &[RowTiming]) -> Result<(), String> {
    let m = cfg.manifest();
    for t in ms {
        for (what, f, got) in [("latency", &m.latency_cycles, t.latency), ("row period", &m.row_period_cycles, t.row_period)] {
            let want = eval_formula(f, t.row_len, cfg.lanes)?;
            if want != got as i64 {
                return Err(format!("{what} at N = {}: manifest '{f}' gives {want}, the cycle model {got}", t.row_len));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas() {
        assert_eq!(eval_formula("2*ceil(N/LANES) + 34", 197, 4), Ok(2 * 50 + 34));
        assert_eq!(eval_formula("33", 197, 4), Ok(33));
        assert_eq!(eval_formula("ceil(N/LANES)", 197, 1), Ok(197));
        assert!(eval_formula("log2(N)", 197, 1).is_err());
        let ln = "2*ceil(N/LANES) + 26*S + 55 (S = 10: 2*ceil(N/LANES) + 315)";
        assert_eq!(eval_formula(ln, 384, 4), Ok(2 * 96 + 315));
        assert!(eval_formula("2*ceil(N/LANES) + 26*T + 55 (S = 10: x)", 384, 4).is_err());
    }

    #[test]
    fn fit_rejects_non_affine() {
        let t = |n: usize, lat: u64| RowTiming {
            row_len: n,
            beats: n,
            latency: lat,
            row_period: n as u64,
            first_row_cycles: lat + n as u64,
            elements_per_cycle: 1.0,
        };
        let m = fit("x", &[t(1, 3), t(10, 3), t(100, 3)]).unwrap();
        assert_eq!(m.latency, Affine { a: 3, b: 0 });
        assert_eq!(m.row_period, Affine { a: 0, b: 1 });
        assert!(fit("x", &[t(1, 3), t(10, 5), t(100, 3)]).unwrap_err().to_string().contains("not affine"));
        assert!(fit("x", &[t(5, 3)]).is_err());
    }

    #[test]
    fn default_set_timing_matches_the_manifest_and_is_affine() {
        for cfg in crate::hdl::default_set() {
            // A multi-method softmax is checked mode by mode against its single units' formulas.
            let modes: Vec<Option<units::Method>> = cfg.methods().map_or(vec![None], |ms| ms.into_iter().map(Some).collect());
            for mode in modes {
                let formulas = mode.map_or_else(|| cfg.clone(), |m| cfg.single(m));
                let op = units::build(&formulas.unit, Preset::Reference).unwrap().op();
                let mut ms: Vec<RowTiming> =
                    default_row_lengths(op).into_iter().chain(PROBES).map(|n| measure_mode(&cfg, n, mode).unwrap()).collect();
                check_manifest(&formulas, &ms).unwrap_or_else(|e| panic!("{} {mode:?}: {e}", cfg.name()));
                let model = fit(&cfg.name(), &ms).unwrap();
                ms.iter_mut().for_each(|m| assert_eq!(model.at(m.row_len, cfg.lanes), *m, "{}", cfg.name()));
            }
        }
    }
}
