//! Co-simulation: the generated Verilog under Verilator against the cycle model, driven by
//! the same stimulus and handshake patterns, compared value by value and cycle by cycle; and
//! the cycle model against the golden model.

use crate::cycle::{self, OutBeat, Stimulus, Trace};
use crate::fixed::{QTensor, Scale};
use crate::hdl::RtlConfig;
use crate::sensitivity::{draw, Dist};
use crate::units::{self, ibert, ivit, Method, Mode, Preset};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use thiserror::Error;

/// Errors of co-simulation.
#[derive(Debug, Error)]
pub enum CosimError {
    /// A required tool is not installed.
    #[error("{tool} is not installed or not on PATH: install it with `apt-get install -y {package}`")]
    Tool {
        /// Command.
        tool: &'static str,
        /// Debian package.
        package: &'static str,
    },
    /// The Verilator build failed; its log is kept.
    #[error("Verilator build of {name} failed; the log is kept at {log}")]
    Build {
        /// Configuration.
        name: String,
        /// Log path.
        log: PathBuf,
    },
    /// The harness failed.
    #[error("the Verilator harness of {name} failed: {why}")]
    Run {
        /// Configuration.
        name: String,
        /// What happened.
        why: String,
    },
    /// Files.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The configuration cannot hold this layer's constants, or the unit refused the input.
    #[error("{0}")]
    Config(String),
    /// The committed RTL file is missing.
    #[error("{0} does not exist: generate it with `mnq rtl --out {1}`")]
    MissingRtl(PathBuf, PathBuf),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CosimError + '_ {
    move |source| CosimError::Io { path: path.to_path_buf(), source }
}

/// Options of a co-simulation run.
#[derive(Debug, Clone)]
pub struct CosimOptions {
    /// Elements to stream (at least).
    pub elements: usize,
    /// Random seed of the stimulus and the handshake patterns.
    pub seed: u64,
    /// Probability that an input beat is offered on a cycle.
    pub p_valid: f64,
    /// Probability that the output is ready on a cycle.
    pub p_ready: f64,
    /// Preset of the golden unit whose constants configure the hardware.
    pub preset: Preset,
    /// Folder of the Verilog to simulate.
    pub rtl_dir: PathBuf,
    /// Build and scratch folder.
    pub work_dir: PathBuf,
    /// Write a waveform here.
    pub vcd: Option<PathBuf>,
}

/// The outcome of one co-simulation.
#[derive(Debug, Clone, Serialize)]
pub struct CosimReport {
    /// Configuration name.
    pub name: String,
    /// Output beats compared.
    pub beats: usize,
    /// Elements streamed.
    pub elements: usize,
    /// Beats whose values or cycle differ between RTL and cycle model.
    pub mismatches: usize,
    /// The first mismatch, described.
    pub first_mismatch: Option<String>,
    /// Output elements where the cycle model differs from the golden model.
    pub golden_mismatches: usize,
    /// Input elements streamed with their mask flag set (softmax: Swin's shifted windows and corner masks).
    pub masked: usize,
    /// Consecutive rows in different modes (multi-method softmax).
    pub mode_switches: usize,
    /// Latency, row period and throughput of the cycle model with no input gaps and no back-pressure.
    pub timing: Option<cycle::Timing>,
    /// Cycles simulated.
    pub cycles: u64,
    /// Cycle-model speed (cycles per second of wall time).
    pub model_cycles_per_s: f64,
    /// Verilator speed (cycles per second of the harness's wall time, process start included).
    pub verilator_cycles_per_s: f64,
}

impl CosimReport {
    /// One line for people.
    pub fn line(&self) -> String {
        let head = if self.mismatches == 0 {
            format!("{}: {} beats, 0 mismatches, cycle-exact", self.name, self.beats)
        } else {
            format!(
                "{}: {} beats, {} mismatches; first: {}",
                self.name,
                self.beats,
                self.mismatches,
                self.first_mismatch.as_deref().unwrap_or("?")
            )
        };
        let t = self.timing.map(|t| format!("; latency {} cycles, row period {:.1} cycles", t.latency, t.row_period)).unwrap_or_default();
        let mut masked = if self.masked > 0 { format!("; {} masked elements", self.masked) } else { String::new() };
        if self.mode_switches > 0 {
            masked += &format!("; {} mode switches between rows", self.mode_switches);
        }
        format!(
            "{head}; golden {}{masked}{t}; cycle model {:.2e} cycles/s, Verilator {:.2e} cycles/s",
            if self.golden_mismatches == 0 { "exact".to_string() } else { format!("{} mismatches", self.golden_mismatches) },
            self.model_cycles_per_s,
            self.verilator_cycles_per_s
        )
    }
}

/// One configured stream: the stimulus, its rows, the input scale and the golden unit.
pub struct Session {
    /// Stimulus for both simulators.
    pub stim: Stimulus,
    /// Rows of input codes (unpadded).
    pub rows: Vec<Vec<i64>>,
    /// Input scale.
    pub scale: f64,
    /// LayerNorm affine parameters of the rows, or the softmax mask of the rows (one flag per
    /// element, rows concatenated; as streamed in `stim.masks`).
    pub aux: units::Aux,
    /// Per-channel input scales, where they differ by channel (PTF LayerNorm); else `scale`.
    pub channel_scales: Option<Vec<f64>>,
    /// The method of each row (multi-method softmax, streamed as `in_mode`); empty otherwise.
    pub row_modes: Vec<Method>,
}

fn quantise_rows(x: &[f64], row: usize, s: f64, bits: u32) -> Vec<Vec<i64>> {
    let hi = (1i64 << (bits - 1)) - 1;
    x.chunks(row).map(|r| r.iter().map(|v| (v / s).round_ties_even().clamp((-hi - 1) as f64, hi as f64) as i64).collect()).collect()
}

/// The golden units the hardware implements for a preset: one, or one per method of a
/// multi-method softmax (in the order of its methods).
pub fn golden_units(cfg: &RtlConfig, preset: Preset) -> Result<Vec<Box<dyn units::Unit>>, CosimError> {
    match cfg.methods() {
        Some(ms) => ms.iter().map(|&m| golden_unit(&cfg.single(m), preset)).collect(),
        None => Ok(vec![golden_unit(cfg, preset)?]),
    }
}

/// The golden unit the hardware implements for a preset (a single-method unit).
pub fn golden_unit(cfg: &RtlConfig, preset: Preset) -> Result<Box<dyn units::Unit>, CosimError> {
    if cfg.methods().is_some() {
        return Err(CosimError::Config(format!("{} computes several methods: take golden_units", cfg.unit)));
    }
    let mut u = units::build(&cfg.unit, preset).map_err(|e| CosimError::Config(e.to_string()))?;
    if cfg.unit == "softmax_ivit" {
        // The hardware's divider is K = 31 bits and its outputs 16 bits (ViT/DeiT), whatever the preset says.
        u.set_param("sum_bits", "31").and_then(|_| u.set_param("out_bits", "16")).map_err(|e| CosimError::Config(e.to_string()))?;
    }
    Ok(u)
}

/// The configuration writes of a softmax layer with input scale `s` and rows of `row` elements,
/// constants from `preset`, or why the generated hardware cannot take them.
pub fn softmax_config(cfg: &RtlConfig, preset: Preset, s: f64, row: usize) -> Result<Vec<(u32, u32)>, String> {
    match cfg.unit.as_str() {
        "softmax_ivit" => {
            let golden = ivit::Softmax::preset(preset);
            let up = golden.upshift.unwrap_or_else(|| ivit::auto_upshift(s));
            cycle::softmax::shift_config(cfg.bits, cfg.lanes, s, up, golden.n, row)
        }
        "softmax_ibert" => cycle::softmax::poly_config(cfg.bits, cfg.lanes, &ibert::Softmax::preset(preset), s, row),
        "softmax_fqvit" => cycle::softmax::log_config(cfg.bits, cfg.lanes, &crate::units::fqvit::Softmax::preset(preset), s, row),
        other => Err(format!("{other} is not a softmax")),
    }
}

/// The configuration writes of one layer with rows of `row` elements, and the input scale
/// they were computed for: the scale of the operation's standard input distribution
/// (attention logits drawn with `seed` for softmax, [−8, 8] for GELU, LayerNorm inputs drawn
/// with `seed` and per-channel γ/β from `seed` for LayerNorm), constants from `preset`.
pub fn layer_config(cfg: &RtlConfig, preset: Preset, seed: u64, row: usize) -> Result<(Vec<(u32, u32)>, f64), CosimError> {
    if let Some(ms) = cfg.methods() {
        // Every bank takes its single-method unit's writes for the same layer.
        let mut writes = Vec::new();
        let mut scale = 0.0;
        for m in ms {
            let (w, s) = layer_config(&cfg.single(m), preset, seed, row)?;
            writes.extend(cycle::softmax::to_bank(m, w));
            scale = s;
        }
        return Ok((writes, scale));
    }
    let bits = cfg.bits;
    let hi = (1i64 << (bits - 1)) - 1;
    let config = match cfg.unit.as_str() {
        "gelu_ibert" | "gelu_ivit" => {
            let s = f64::from((8.0 / hi as f64) as f32);
            let c = if cfg.unit == "gelu_ibert" {
                cycle::gelu_ibert::config(bits, &ibert::Gelu::preset(preset).consts(s))
            } else {
                cycle::gelu_ivit::config(bits, &ivit::Gelu::preset(preset), s)
            };
            (c, s)
        }
        "softmax_ivit" | "softmax_ibert" | "softmax_fqvit" => {
            let s = crate::sensitivity::symmetric_scale(&draw(Dist::Attention, 64, seed), bits);
            (softmax_config(cfg, preset, s, row), s)
        }
        "layernorm_ivit" | "layernorm_ibert" | "layernorm_fqvit" => {
            let s = crate::sensitivity::symmetric_scale(&draw(Dist::Layernorm, 16, seed), bits);
            let (g, b) = crate::sensitivity::affine_params(row, seed);
            let c = if cfg.unit == "layernorm_ivit" {
                cycle::layernorm::ivit_config(bits, &ivit::LayerNorm::preset(preset), &g, &b)
            } else if cfg.unit == "layernorm_fqvit" {
                // Per-tensor input scale, zero point 0, the standard output scale (as in `sessions`).
                let so = vec![cycle::layernorm_fqvit::STANDARD_OUT_SCALE; row];
                cycle::layernorm_fqvit::config(bits, &crate::units::fqvit::LayerNorm::preset(preset), &vec![s; row], &g, &b, &so, 0)
            } else {
                cycle::layernorm::ibert_config(bits, &ibert::LayerNorm::preset(preset), &g, &b)
            };
            (c, s)
        }
        other => return Err(CosimError::Config(format!("no layer configuration for {other}"))),
    };
    Ok((config.0.map_err(CosimError::Config)?, config.1))
}

/// The streams of a co-simulation: realistic rows plus corner rows, and for row-wise units
/// further streams reconfigured for the longest and the shortest row.
pub fn sessions(cfg: &RtlConfig, opts: &CosimOptions) -> Result<Vec<Session>, CosimError> {
    if let Some(ms) = cfg.methods() {
        return multi_sessions(cfg, &ms, opts);
    }
    let bits = cfg.bits;
    let hi = (1i64 << (bits - 1)) - 1;
    let lo = -hi - 1;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut pattern = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let p = 4093; // pattern period (prime, so it does not lock to row lengths)
    let in_allow: Vec<bool> = (0..p).map(|_| pattern.gen_bool(opts.p_valid)).collect();
    let out_ready: Vec<bool> = (0..p).map(|_| pattern.gen_bool(opts.p_ready)).collect();
    let mut out = Vec::new();
    let mut push = |rows: Vec<Vec<i64>>, config: Vec<(u32, u32)>, scale: f64, aux: units::Aux| {
        let mut masks = Vec::new();
        if let Some(m) = &aux.mask {
            let mut at = 0;
            for r in &rows {
                masks.extend(cycle::masks_of(&[&m[at..at + r.len()]], cfg.lanes));
                at += r.len();
            }
        }
        out.push(Session {
            stim: Stimulus {
                lanes: cfg.lanes,
                config,
                beats: cycle::beats_of(&rows, cfg.lanes),
                masks,
                modes: Vec::new(),
                in_allow: in_allow.clone(),
                out_ready: out_ready.clone(),
            },
            rows,
            scale,
            aux,
            channel_scales: None,
            row_modes: Vec::new(),
        });
    };
    match cfg.unit.as_str() {
        "gelu_ibert" | "gelu_ivit" => {
            let (config, s) = layer_config(cfg, opts.preset, opts.seed, Dist::Gelu.row_len())?;
            let mut rows: Vec<Vec<i64>> = vec![
                vec![0; 7],
                vec![hi; 13],
                vec![lo; 5],
                (0..64).map(|i| if i % 2 == 0 { lo } else { hi }).collect(),
                (lo..=hi).collect(),
                vec![1],
            ];
            rows.push((0..1024).map(|_| rng.gen_range(lo..=hi)).collect());
            let mut k = 0u64;
            while rows.iter().map(Vec::len).sum::<usize>() < opts.elements {
                let len = rng.gen_range(1..=Dist::Gelu.row_len());
                rows.extend(quantise_rows(&draw(Dist::Gelu, 1, opts.seed.wrapping_add(k))[..len], len, s, bits));
                k += 1;
            }
            push(rows, config, s, units::Aux::default());
        }
        "softmax_ivit" | "softmax_ibert" | "softmax_fqvit" => {
            let cfgw = |row: usize| layer_config(cfg, opts.preset, opts.seed, row).map(|c| c.0);
            let s = layer_config(cfg, opts.preset, opts.seed, 1)?.1;
            let row = Dist::Attention.row_len();
            let mut rows: Vec<Vec<i64>> = vec![
                vec![0; row],
                vec![hi; row],
                vec![lo; row],
                (0..row).map(|i| if i == 7 { hi } else { lo }).collect(),
                (0..row as i64).map(|i| lo + i % (hi - lo + 1)).collect(),
            ];
            let mut k = 0u64;
            while rows.iter().map(Vec::len).sum::<usize>() < opts.elements {
                rows.extend(quantise_rows(&draw(Dist::Attention, 8, opts.seed.wrapping_add(1000 + k)), row, s, bits));
                k += 1;
            }
            push(rows, cfgw(row)?, s, units::Aux::default());
            let long: Vec<i64> = (0..cycle::softmax::NMAX).map(|_| rng.gen_range(lo..=hi)).collect();
            push(vec![long, vec![lo; cycle::softmax::NMAX]], cfgw(cycle::softmax::NMAX)?, s, units::Aux::default());
            push(vec![vec![hi], vec![lo], vec![0]], cfgw(1)?, s, units::Aux::default());
            // Swin's shifted windows: the masks of the last window row and column regions (window
            // 7 on 14×14 shifted by 3: N = 49; 4 on 8×8 by 2: N = 16; 2 on 4×4 by 1: N = 4), then
            // corner masks: all masked, one lane unmasked, masked lanes holding the largest code,
            // random masks.
            for (grid, window, shift, heads) in [(14, 7, 3, 1), (8, 4, 2, 2), (4, 2, 1, 4)] {
                let (rows, mask) = swin_rows((grid, window, shift), heads, s, bits, opts.seed, &mut rng);
                let aux = units::Aux { mask: Some(mask.into()), ..units::Aux::default() };
                push(rows, cfgw(window * window)?, s, aux);
            }
        }
        "layernorm_ivit" | "layernorm_ibert" | "layernorm_fqvit" => {
            let probe = draw(Dist::Layernorm, 16, opts.seed);
            let s = crate::sensitivity::symmetric_scale(&probe, bits);
            let fq = cfg.unit == "layernorm_fqvit";
            // The PTF LayerNorm also needs the next quantiser's scale: the documented standard one.
            let so = cycle::layernorm_fqvit::STANDARD_OUT_SCALE;
            let affine = |c: usize, seed: u64| {
                let (g, b) = crate::sensitivity::affine_params(c, seed);
                let out_scale = fq.then_some(Scale::PerTensor(so));
                units::Aux { gamma: Some(g), beta: Some(b), out_scale, ..units::Aux::default() }
            };
            let cfg_sc = |aux: &units::Aux, sc: &[f64]| -> Result<Vec<(u32, u32)>, CosimError> {
                let (g, b) = (aux.gamma.as_deref().unwrap_or(&[]), aux.beta.as_deref().unwrap_or(&[]));
                if cfg.unit == "layernorm_ivit" {
                    cycle::layernorm::ivit_config(bits, &ivit::LayerNorm::preset(opts.preset), g, b)
                } else if fq {
                    let unit = crate::units::fqvit::LayerNorm::preset(opts.preset);
                    cycle::layernorm_fqvit::config(bits, &unit, sc, g, b, &vec![so; g.len()], aux.zero_point)
                } else {
                    cycle::layernorm::ibert_config(bits, &ibert::LayerNorm::preset(opts.preset), g, b)
                }
                .map_err(CosimError::Config)
            };
            let cfgw = |aux: &units::Aux| cfg_sc(aux, &vec![s; aux.gamma.as_ref().map_or(0, Vec::len)]);
            let row = Dist::Layernorm.row_len();
            let mut rows: Vec<Vec<i64>> = vec![
                vec![0; row],
                vec![hi; row],
                vec![lo; row],
                (0..row).map(|i| if i % 2 == 0 { lo } else { hi }).collect(),
                (0..row).map(|i| if i == 7 { hi } else { lo }).collect(),
                (0..row as i64).map(|i| lo + i % (hi - lo + 1)).collect(),
                (0..row).map(|i| if i == 0 { 1 } else { 0 }).collect(),
            ];
            let mut k = 0u64;
            while rows.iter().map(Vec::len).sum::<usize>() < opts.elements {
                rows.extend(quantise_rows(&draw(Dist::Layernorm, 8, opts.seed.wrapping_add(1000 + k)), row, s, bits));
                k += 1;
            }
            let aux = affine(row, opts.seed);
            push(rows, cfgw(&aux)?, s, aux);
            // The longest row (random codes, then zero variance at the lowest code) and short rows
            // whose last beat is partly padded.
            let n = cycle::layernorm::NMAX;
            let long: Vec<i64> = (0..n).map(|_| rng.gen_range(lo..=hi)).collect();
            let aux = affine(n, opts.seed + 1);
            push(vec![long, vec![lo; n], (0..n).map(|i| if i % 3 == 0 { hi } else { lo }).collect()], cfgw(&aux)?, s, aux);
            for c in [1usize, 3, 5] {
                let rows: Vec<Vec<i64>> = (0..4).map(|_| (0..c).map(|_| rng.gen_range(lo..=hi)).collect()).collect();
                let aux = affine(c, opts.seed + c as u64);
                push(rows, cfgw(&aux)?, s, aux);
            }
            if fq {
                // PTF: per-channel input factors 2^e (e ≤ 3) and a nonzero zero point.
                let c = 96;
                let sc: Vec<f64> = (0..c).map(|i| s * f64::from(1u32 << (i % 4))).collect();
                let rows: Vec<Vec<i64>> = (0..16).map(|_| (0..c).map(|_| rng.gen_range(lo..=hi)).collect()).collect();
                let aux = units::Aux { zero_point: lo / 3, ..affine(c, opts.seed + 7) };
                push(rows, cfg_sc(&aux, &sc)?, s, aux);
                out.last_mut().expect("just pushed").channel_scales = Some(sc);
            }
        }
        other => return Err(CosimError::Config(format!("no stimulus for {other}"))),
    }
    Ok(out)
}

/// The streams of a multi-method softmax: the single-method softmaxes' streams (their rows do
/// not depend on the method), every bank configured for the stream's row length, and each row
/// in a mode drawn at random, so that consecutive rows switch modes or keep them.
fn multi_sessions(cfg: &RtlConfig, methods: &[Method], opts: &CosimOptions) -> Result<Vec<Session>, CosimError> {
    let mut per: Vec<Vec<Session>> = Vec::new();
    for &m in methods {
        per.push(sessions(&cfg.single(m), opts)?);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x30de);
    let mut out = Vec::new();
    for (k, mut ses) in std::mem::take(&mut per[0]).into_iter().enumerate() {
        let mut config = cycle::softmax::to_bank(methods[0], std::mem::take(&mut ses.stim.config));
        for (j, other) in per.iter().enumerate().skip(1) {
            let o = &other[k];
            if o.rows != ses.rows {
                return Err(CosimError::Config(format!("stream {k}: the {} and {} streams differ", methods[0].name(), methods[j].name())));
            }
            config.extend(cycle::softmax::to_bank(methods[j], o.stim.config.clone()));
        }
        ses.stim.config = config;
        ses.row_modes = ses.rows.iter().map(|_| methods[rng.gen_range(0..methods.len())]).collect();
        ses.stim.modes = ses
            .rows
            .iter()
            .zip(&ses.row_modes)
            .flat_map(|(r, &m)| std::iter::repeat_n(cycle::softmax::mode_code(m), r.len().div_ceil(cfg.lanes)))
            .collect();
        out.push(ses);
    }
    Ok(out)
}

/// Rows of one Swin shifted-window attention layer (`heads` heads of every window of a
/// `grid`×`grid` token grid, windows of `window`, shifted by `shift`: timm's mask) with
/// attention logits at scale `s`, followed by corner rows; returns the rows and their mask
/// flags (concatenated).
fn swin_rows(
    (grid, window, shift): (usize, usize, usize),
    heads: usize,
    s: f64,
    bits: u32,
    seed: u64,
    rng: &mut rand::rngs::StdRng,
) -> (Vec<Vec<i64>>, Vec<bool>) {
    let hi = (1i64 << (bits - 1)) - 1;
    let lo = -hi - 1;
    let wm = crate::model::graph::WindowMask::shifted(grid, window, shift);
    let n = wm.n;
    let flags = wm.expand(heads);
    let want = flags.len();
    let mut x = Vec::with_capacity(want);
    let mut k = 0u64;
    while x.len() < want {
        x.extend(draw(Dist::Attention, 8, seed.wrapping_add(5000 + 100 * n as u64 + k)));
        k += 1;
    }
    x.truncate(want);
    let mut rows = quantise_rows(&x, n, s, bits);
    let mut mask = flags.to_vec();
    let random_row = |rng: &mut rand::rngs::StdRng| -> Vec<i64> { (0..n).map(|_| rng.gen_range(lo..=hi)).collect() };
    let one = rng.gen_range(0..n);
    let corners: Vec<(Vec<i64>, Vec<bool>)> = vec![
        (random_row(rng), vec![true; n]),
        (vec![hi; n], vec![true; n]),
        ((0..n).map(|j| if j == one { lo } else { hi }).collect(), (0..n).map(|j| j != one).collect()),
        (random_row(rng), (0..n).map(|j| j != n - 1).collect()),
        ((0..n).map(|j| if j == 0 { hi } else { 0 }).collect(), (0..n).map(|j| j == 0).collect()),
        (random_row(rng), (0..n).map(|_| rng.gen_bool(0.5)).collect()),
        (random_row(rng), (0..n).map(|_| rng.gen_bool(0.9)).collect()),
        (random_row(rng), vec![false; n]),
    ];
    for (r, m) in corners {
        rows.push(r);
        mask.extend(m);
    }
    (rows, mask)
}

fn write_stimulus(path: &Path, cfg: &RtlConfig, st: &Stimulus, max_cycles: u64) -> Result<(), CosimError> {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "mnq-stim 3");
    let _ = writeln!(
        t,
        "lanes {} in_bits {} out_bits {} expect {} max_cycles {}",
        cfg.lanes,
        cfg.bits,
        cfg.out_bits(),
        st.beats.len(),
        max_cycles
    );
    let _ = writeln!(t, "config {}", st.config.len());
    for (a, d) in &st.config {
        let _ = writeln!(t, "{a} {d}");
    }
    let bits = |v: &[bool]| v.iter().map(|&b| if b { '1' } else { '0' }).collect::<String>();
    let _ = writeln!(t, "pattern {}\n{}\n{}", st.in_allow.len(), bits(&st.in_allow), bits(&st.out_ready));
    let _ = writeln!(t, "beats {}", st.beats.len());
    for (b, (d, l)) in st.beats.iter().enumerate() {
        let _ = write!(t, "{} {} {}", u8::from(*l), st.masks.get(b).copied().unwrap_or(0), st.modes.get(b).copied().unwrap_or(0));
        for v in d {
            let _ = write!(t, " {v}");
        }
        t.push('\n');
    }
    std::fs::write(path, t).map_err(io(path))
}

fn parse_trace(path: &Path, name: &str) -> Result<Trace, CosimError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut beats = Vec::new();
    let mut cycles = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let head = it.next().unwrap_or("");
        if head == "cycles" {
            cycles = it.next().and_then(|c| c.parse().ok());
            continue;
        }
        let bad = || CosimError::Run { name: name.into(), why: format!("unreadable output line '{line}' in {}", path.display()) };
        let cycle: u64 = head.parse().map_err(|_| bad())?;
        let last = it.next().ok_or_else(bad)? == "1";
        let data = it.map(|v| v.parse::<i64>()).collect::<Result<Vec<_>, _>>().map_err(|_| bad())?;
        beats.push(OutBeat { cycle, last, data });
    }
    let cycles = cycles.ok_or_else(|| CosimError::Run {
        name: name.into(),
        why: format!("{} has no final cycle count (harness crashed?)", path.display()),
    })?;
    Ok(Trace { beats, cycles, first_in: None })
}

/// Check a tool answers `--version`.
pub fn require(tool: &'static str, package: &'static str) -> Result<(), CosimError> {
    match Command::new(tool).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(CosimError::Tool { tool, package }),
    }
}

/// Build (or reuse) the Verilator harness for one configuration.
pub fn build(cfg: &RtlConfig, rtl: &Path, work: &Path, trace: bool) -> Result<PathBuf, CosimError> {
    require("verilator", "verilator")?;
    let name = cfg.name();
    let dir = work.join(if trace { format!("{name}_vcd") } else { name.clone() });
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // make runs inside obj/: every path handed to Verilator must be absolute.
    let dir = dir.canonicalize().map_err(io(&dir))?;
    let rtl = &rtl.canonicalize().map_err(io(rtl))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let harness = root.join("testbenches/harness.cpp");
    let waivers = root.join("testbenches/lint.vlt");
    let stamp_text = format!(
        "{}\n{}\n{}",
        std::fs::read_to_string(rtl).map_err(io(rtl))?,
        std::fs::read_to_string(&harness).map_err(io(&harness))?,
        trace
    );
    let stamp = dir.join("stamp");
    let exe = dir.join("obj").join("harness");
    if exe.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text) {
        return Ok(exe);
    }
    let top_h = dir.join("top.h");
    // Only the softmaxes have the in_mask port; the harness drives it where it exists.
    let has_mask = if cfg.unit.starts_with("softmax") { "#define MNQ_HAS_MASK 1\n" } else { "" };
    // Only the multi-method softmaxes have the in_mode port.
    let has_mode = if cfg.methods().is_some() { "#define MNQ_HAS_MODE 1\n" } else { "" };
    std::fs::write(&top_h, format!("#include \"V{name}.h\"\nusing Top = V{name};\n{has_mask}{has_mode}")).map_err(io(&top_h))?;
    let log = dir.join("build.log");
    let mut cmd = Command::new("verilator");
    // Lint is checked separately (verilator -Wall in the tests); a warning must not stop a simulation build.
    cmd.args(["--cc", "--exe", "--build", "-Wno-fatal", "-j", "2", "-O2", "--x-assign", "fast", "--x-initial", "fast", "--top-module"])
        .arg(&name)
        .arg("--Mdir")
        .arg(dir.join("obj"))
        .arg("-CFLAGS")
        .arg(format!("-I{} -O2", dir.display()))
        .args(["-o", "harness"]);
    if trace {
        cmd.arg("--trace");
    }
    cmd.arg(&waivers).arg(rtl).arg(&harness);
    let out = cmd.output().map_err(|_| CosimError::Tool { tool: "verilator", package: "verilator" })?;
    std::fs::write(&log, [out.stdout, out.stderr].concat()).map_err(io(&log))?;
    if !out.status.success() || !exe.is_file() {
        return Err(CosimError::Build { name, log });
    }
    std::fs::write(&stamp, stamp_text).map_err(io(&stamp))?;
    Ok(exe)
}

/// Output elements where a cycle-model trace differs from the golden model on a session's rows
/// (padding lanes ignored; missing outputs count as mismatches); `goldens` as [`golden_units`],
/// each row checked against its mode's.
pub fn golden_mismatches(cfg: &RtlConfig, ses: &Session, mt: &Trace, goldens: &[Box<dyn units::Unit>]) -> Result<usize, CosimError> {
    let mut bad = 0;
    let mut bi = 0;
    let mut at = 0;
    let methods = cfg.methods().unwrap_or_default();
    let which = |r: usize| ses.row_modes.get(r).and_then(|m| methods.iter().position(|x| x == m)).unwrap_or(0);
    let mut first = 0;
    // Element-wise units see each row alone; row-wise units see a layer's rows (of one mode) as one tensor.
    let idx: Vec<usize> = (0..ses.rows.len()).collect();
    for gi in idx.chunk_by(|&a, &b| ses.rows[a].len() == ses.rows[b].len() && which(a) == which(b) && !cfg.unit.starts_with("gelu")) {
        let group = &ses.rows[first..first + gi.len()];
        let golden = goldens[which(first)].as_ref();
        first += gi.len();
        let len = group[0].len();
        let scale = ses.channel_scales.clone().map_or(Scale::PerTensor(ses.scale), Scale::PerChannel);
        let x = QTensor::new(group.concat(), &[group.len(), len], scale, cfg.bits, true).map_err(|e| CosimError::Config(e.to_string()))?;
        // The group's slice of the session's mask (one flag per element).
        let aux = units::Aux { mask: ses.aux.mask.as_ref().map(|m| m[at..at + x.data().len()].into()), ..ses.aux.clone() };
        at += x.data().len();
        let want = golden.run(&x, &aux, Mode::Integer).map_err(|e| CosimError::Config(e.to_string()))?.values;
        for (r, w) in group.iter().zip(want.chunks(len)) {
            let mut got = Vec::with_capacity(r.len());
            while got.len() < r.len() {
                match mt.beats.get(bi) {
                    Some(b) => got.extend_from_slice(&b.data),
                    None => break,
                }
                bi += 1;
            }
            got.truncate(r.len());
            bad += w.iter().zip(&got).filter(|(a, b)| a != b).count() + w.len().saturating_sub(got.len());
        }
    }
    Ok(bad)
}

/// Cycles a beat spends in a serial element engine beyond the handshakes: the PTF LayerNorm
/// takes LANES·(Q + 3) cycles a beat; the other units keep pace with the stream.
pub fn engine_cycles_per_beat(cfg: &RtlConfig) -> u64 {
    if cfg.unit == "layernorm_fqvit" {
        cfg.lanes as u64 * (u64::from(cycle::layernorm_fqvit::q_bits(cfg.bits)) + 3)
    } else {
        0
    }
}

/// Co-simulate one configuration.
pub fn cosim(cfg: &RtlConfig, opts: &CosimOptions) -> Result<CosimReport, CosimError> {
    let name = cfg.name();
    let rtl = opts.rtl_dir.join(format!("{name}.v"));
    if !rtl.is_file() {
        return Err(CosimError::MissingRtl(rtl, opts.rtl_dir.clone()));
    }
    let exe = build(cfg, &rtl, &opts.work_dir, opts.vcd.is_some())?;
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let goldens = golden_units(cfg, opts.preset)?;
    let mut report = CosimReport {
        name: name.clone(),
        beats: 0,
        elements: 0,
        mismatches: 0,
        first_mismatch: None,
        golden_mismatches: 0,
        masked: 0,
        mode_switches: 0,
        timing: None,
        cycles: 0,
        model_cycles_per_s: 0.0,
        verilator_cycles_per_s: 0.0,
    };
    let (mut model_s, mut rtl_s, mut rtl_cycles) = (0.0, 0.0, 0u64);
    for (si, ses) in sessions(cfg, opts)?.iter().enumerate() {
        let st = &ses.stim;
        // 80 cycles a beat for the handshakes, plus the per-row fixed phases of the row-wise units.
        let max_cycles =
            64 + st.config.len() as u64 + (80 + engine_cycles_per_beat(cfg)) * st.beats.len() as u64 + 1024 * ses.rows.len() as u64;
        let t0 = Instant::now();
        let mt = cycle::run(cycle::model(cfg).as_mut(), st, st.beats.len(), max_cycles);
        model_s += t0.elapsed().as_secs_f64();

        report.golden_mismatches += golden_mismatches(cfg, ses, &mt, &goldens)?;

        // Verilator.
        let stim_path = dir.join(format!("stimulus{si}.txt"));
        let out_path = dir.join(format!("rtl_trace{si}.txt"));
        write_stimulus(&stim_path, cfg, st, max_cycles)?;
        let mut cmd = Command::new(&exe);
        cmd.arg(&stim_path).arg(&out_path);
        if let (Some(v), 0) = (&opts.vcd, si) {
            cmd.arg(v);
        }
        let t1 = Instant::now();
        let out = cmd.output().map_err(|e| CosimError::Run { name: name.clone(), why: e.to_string() })?;
        rtl_s += t1.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(CosimError::Run { name, why: String::from_utf8_lossy(&out.stderr).into_owned() });
        }
        let rt = parse_trace(&out_path, &name)?;
        rtl_cycles += rt.cycles;
        for i in 0..mt.beats.len().max(rt.beats.len()) {
            match (mt.beats.get(i), rt.beats.get(i)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    report.mismatches += 1;
                    report.first_mismatch.get_or_insert_with(|| format!("stream {si}, beat {i}: cycle model {a:?}, RTL {b:?}"));
                }
            }
        }
        if mt.beats.len() < st.beats.len() {
            report.mismatches += 1;
            report.first_mismatch.get_or_insert_with(|| {
                format!("stream {si}: the cycle model produced {} of {} beats in {max_cycles} cycles", mt.beats.len(), st.beats.len())
            });
        }
        if si == 0 {
            let full = Stimulus { in_allow: vec![true], out_ready: vec![true], ..st.clone() };
            report.timing = cycle::timing(&cycle::run(cycle::model(cfg).as_mut(), &full, full.beats.len(), max_cycles));
        }
        report.beats += mt.beats.len();
        report.elements += ses.rows.iter().map(Vec::len).sum::<usize>();
        report.mode_switches += ses.row_modes.windows(2).filter(|w| w[0] != w[1]).count();
        report.masked += ses.aux.mask.as_ref().map_or(0, |m| m.iter().filter(|&&k| k).count());
        report.cycles += mt.cycles;
    }
    report.model_cycles_per_s = report.cycles as f64 / model_s.max(1e-9);
    report.verilator_cycles_per_s = rtl_cycles as f64 / rtl_s.max(1e-9);
    Ok(report)
}
