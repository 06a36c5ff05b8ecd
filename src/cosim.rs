//! Co-simulation: the generated Verilog under Verilator against the cycle model, driven by
//! the same stimulus and handshake patterns, compared value by value and cycle by cycle; and
//! the cycle model against the golden model.

use crate::cycle::{self, OutBeat, Stimulus, Trace};
use crate::fixed::{QTensor, Scale};
use crate::hdl::RtlConfig;
use crate::sensitivity::{draw, Dist};
use crate::units::{self, ibert, Mode, Preset};
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
        format!(
            "{head}; golden {}{t}; cycle model {:.2e} cycles/s, Verilator {:.2e} cycles/s",
            if self.golden_mismatches == 0 { "exact".to_string() } else { format!("{} mismatches", self.golden_mismatches) },
            self.model_cycles_per_s,
            self.verilator_cycles_per_s
        )
    }
}

/// Rows of input codes for a configuration: realistic rows plus corner rows.
fn rows(cfg: &RtlConfig, elements: usize, seed: u64) -> (Vec<Vec<i64>>, f64) {
    let bits = cfg.bits;
    let hi = (1i64 << (bits - 1)) - 1;
    let lo = -hi - 1;
    let s = f64::from((8.0 / hi as f64) as f32);
    let mut rows: Vec<Vec<i64>> = vec![
        vec![0; 7],
        vec![hi; 13],
        vec![lo; 5],
        (0..64).map(|i| if i % 2 == 0 { lo } else { hi }).collect(),
        (lo..=hi).collect(),
        vec![1],
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    rows.push((0..1024).map(|_| rng.gen_range(lo..=hi)).collect()); // the longest row
    let dist = Dist::Gelu;
    let mut k = 0u64;
    while rows.iter().map(Vec::len).sum::<usize>() < elements {
        let len = rng.gen_range(1..=dist.row_len());
        let x = draw(dist, 1, seed.wrapping_add(k));
        rows.push(x.iter().take(len).map(|v| (v / s).round_ties_even().clamp(lo as f64, hi as f64) as i64).collect());
        k += 1;
    }
    (rows, s)
}

/// Build the stimulus: beats of LANES elements (the last beat of a row zero-padded) and the patterns.
pub fn stimulus(cfg: &RtlConfig, opts: &CosimOptions) -> Result<(Stimulus, Vec<Vec<i64>>, f64), CosimError> {
    let (rows, s) = rows(cfg, opts.elements, opts.seed);
    let unit = ibert::Gelu::preset(opts.preset);
    let config = cycle::gelu_ibert::config(cfg.bits, &unit.consts(s)).map_err(CosimError::Config)?;
    let mut beats = Vec::new();
    for r in &rows {
        let n = r.len().div_ceil(cfg.lanes);
        for b in 0..n {
            let mut d: Vec<i64> = r[b * cfg.lanes..((b + 1) * cfg.lanes).min(r.len())].to_vec();
            d.resize(cfg.lanes, 0);
            beats.push((d, b + 1 == n));
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let p = 4093; // pattern period (prime, so it does not lock to row lengths)
    let in_allow = (0..p).map(|_| rng.gen_bool(opts.p_valid)).collect();
    let out_ready = (0..p).map(|_| rng.gen_bool(opts.p_ready)).collect();
    Ok((Stimulus { lanes: cfg.lanes, config, beats, in_allow, out_ready }, rows, s))
}

fn write_stimulus(path: &Path, cfg: &RtlConfig, st: &Stimulus, max_cycles: u64) -> Result<(), CosimError> {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "mnq-stim 1");
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
    for (d, l) in &st.beats {
        let _ = write!(t, "{}", u8::from(*l));
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
    std::fs::write(&top_h, format!("#include \"V{name}.h\"\nusing Top = V{name};\n")).map_err(io(&top_h))?;
    let log = dir.join("build.log");
    let mut cmd = Command::new("verilator");
    cmd.args(["--cc", "--exe", "--build", "-j", "2", "-O2", "--x-assign", "fast", "--x-initial", "fast", "--top-module"])
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

/// Co-simulate one configuration.
pub fn cosim(cfg: &RtlConfig, opts: &CosimOptions) -> Result<CosimReport, CosimError> {
    let name = cfg.name();
    let rtl = opts.rtl_dir.join(format!("{name}.v"));
    if !rtl.is_file() {
        return Err(CosimError::MissingRtl(rtl, opts.rtl_dir.clone()));
    }
    let (st, rows, s) = stimulus(cfg, opts)?;
    let elements: usize = rows.iter().map(Vec::len).sum();
    let max_cycles = 64 + st.config.len() as u64 + 40 * st.beats.len() as u64;

    // Cycle model, timed.
    let mut model = cycle::model(cfg);
    let t0 = Instant::now();
    let mt = cycle::run(model.as_mut(), &st, st.beats.len(), max_cycles);
    let model_s = t0.elapsed().as_secs_f64();

    // Golden model on the same rows.
    let golden = units::build(&cfg.unit, opts.preset).map_err(|e| CosimError::Config(e.to_string()))?;
    let mut golden_mismatches = 0;
    let mut bi = 0;
    for r in &rows {
        let x =
            QTensor::new(r.clone(), &[1, r.len()], Scale::PerTensor(s), cfg.bits, true).map_err(|e| CosimError::Config(e.to_string()))?;
        let want = golden.run(&x, &units::Aux::default(), Mode::Integer).map_err(|e| CosimError::Config(e.to_string()))?.values;
        let mut got = Vec::with_capacity(r.len());
        while got.len() < r.len() {
            match mt.beats.get(bi) {
                Some(b) => got.extend_from_slice(&b.data),
                None => break,
            }
            bi += 1;
        }
        got.truncate(r.len());
        golden_mismatches += want.iter().zip(&got).filter(|(a, b)| a != b).count() + want.len().saturating_sub(got.len());
    }

    // Verilator.
    let exe = build(cfg, &rtl, &opts.work_dir, opts.vcd.is_some())?;
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let stim_path = dir.join("stimulus.txt");
    let out_path = dir.join("rtl_trace.txt");
    write_stimulus(&stim_path, cfg, &st, max_cycles)?;
    let mut cmd = Command::new(&exe);
    cmd.arg(&stim_path).arg(&out_path);
    if let Some(v) = &opts.vcd {
        cmd.arg(v);
    }
    let t1 = Instant::now();
    let out = cmd.output().map_err(|e| CosimError::Run { name: name.clone(), why: e.to_string() })?;
    let rtl_s = t1.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(CosimError::Run { name, why: String::from_utf8_lossy(&out.stderr).into_owned() });
    }
    let rt = parse_trace(&out_path, &name)?;

    let mut mismatches = 0;
    let mut first = None;
    for i in 0..mt.beats.len().max(rt.beats.len()) {
        match (mt.beats.get(i), rt.beats.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                mismatches += 1;
                first.get_or_insert_with(|| format!("beat {i}: cycle model {a:?}, RTL {b:?}"));
            }
        }
    }
    Ok(CosimReport {
        name,
        beats: mt.beats.len(),
        elements,
        mismatches,
        first_mismatch: first,
        golden_mismatches,
        timing: {
            let full = Stimulus { in_allow: vec![true], out_ready: vec![true], ..st.clone() };
            cycle::timing(&cycle::run(cycle::model(cfg).as_mut(), &full, full.beats.len(), max_cycles))
        },
        cycles: mt.cycles,
        model_cycles_per_s: mt.cycles as f64 / model_s.max(1e-9),
        verilator_cycles_per_s: rt.cycles as f64 / rtl_s.max(1e-9),
    })
}
