//! Unit costs: area from yosys synthesis of the generated Verilog, latency from the cycle
//! models, accuracy from the golden units the hardware implements; the cost table that
//! `mnq cost` writes (`reports/cost/cost.json`) and the assignment reads ([`Table::load`]).
//!
//! - [`yosys`]: the pinned synthesis scripts (ASIC-like gates, iCE40, Xilinx 7-series) and their parsers;
//! - [`nextpnr`]: place and route for fmax (`--fmax`);
//! - [`latency`]: timing measured on the cycle models, fitted and checked against the manifest;
//! - [`accuracy`]: SQNR of the configuration's golden unit;
//! - [`table`]: the table, its files (JSON, CSV, Markdown) and lookups.

pub mod accuracy;
pub mod latency;
pub mod nextpnr;
pub mod table;
pub mod yosys;

pub use table::{Area, AreaMetric, Row, Table};

use crate::hdl::RtlConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;
use thiserror::Error;

/// Errors of cost measurement and of the cost table.
#[derive(Debug, Error)]
pub enum CostError {
    /// A required tool is not installed.
    #[error("{tool} is not installed or not on PATH: install it with `apt-get install -y {package}`")]
    Tool {
        /// Command.
        tool: &'static str,
        /// Debian package.
        package: &'static str,
    },
    /// A synthesis or place-and-route run failed; its log is kept.
    #[error("{name} ({target}): {why}; the log is kept at {}", log.display())]
    Run {
        /// Configuration.
        name: String,
        /// Target.
        target: String,
        /// What happened.
        why: String,
        /// Log path.
        log: PathBuf,
    },
    /// A tool's log does not say what the scripts make it say.
    #[error("{}: {why}", log.display())]
    Parse {
        /// Log path.
        log: PathBuf,
        /// What is missing.
        why: String,
    },
    /// The cycle model cannot be timed.
    #[error("{name}: cycle model timing: {why}")]
    Cycle {
        /// Configuration.
        name: String,
        /// What happened.
        why: String,
    },
    /// The golden unit cannot be measured.
    #[error("{name}: accuracy: {why}")]
    Accuracy {
        /// Configuration.
        name: String,
        /// What happened.
        why: String,
    },
    /// The RTL file of a configuration is missing.
    #[error("{} does not exist: generate it with `mnq rtl --out {}`", .0.display(), .1.display())]
    MissingRtl(PathBuf, PathBuf),
    /// Files.
    #[error("{}: {source}", path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A cost table that cannot be used.
    #[error("{}: {why}", path.display())]
    Table {
        /// File.
        path: PathBuf,
        /// What is wrong and the way out.
        why: String,
    },
    /// A lookup the table cannot answer.
    #[error("cost table: {0}")]
    Lookup(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CostError + '_ {
    move |source| CostError::Io { path: path.to_path_buf(), source }
}

/// Synthesis target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Generic CMOS gates: cells, flip-flops, transistors, NAND2-equivalents, memory bits.
    Asic,
    /// Lattice iCE40 UltraPlus: LUT4, carry, flip-flops, block RAM, DSP.
    Ice40,
    /// Xilinx 7-series: LUT, LUTRAM, SRL, CARRY4, flip-flops, RAMB18/RAMB36, DSP48E1.
    Xilinx,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Asic => "asic",
            Target::Ice40 => "ice40",
            Target::Xilinx => "xilinx",
        })
    }
}

/// The first line a tool prints for `arg`, or the error naming its package.
pub fn tool_version(tool: &'static str, arg: &str, package: &'static str) -> Result<String, CostError> {
    match Command::new(tool).arg(arg).output() {
        Ok(o) if o.status.success() => {
            let t = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            Ok(t.lines().find(|l| !l.trim().is_empty()).unwrap_or(tool).trim().to_string())
        }
        _ => Err(CostError::Tool { tool, package }),
    }
}

/// Figures of the ASIC-like synthesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsicCost {
    /// Cells by type (memories excluded).
    pub cells: BTreeMap<String, u64>,
    /// All cells (memories excluded).
    pub cells_total: u64,
    /// Flip-flops (`$_DFF_P_`).
    pub flip_flops: u64,
    /// yosys's `stat -tech cmos` transistor estimate of the logic and flip-flops.
    pub transistors: u64,
    /// NAND2-equivalents: transistors / 4.
    pub nand2_eq: f64,
    /// Memories kept as macros (row buffers).
    pub memories: u64,
    /// Their bits (words × width), not included in the figures above.
    pub memory_bits: u64,
}

/// Figures of the iCE40 synthesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ice40Cost {
    /// Cells by type.
    pub cells: BTreeMap<String, u64>,
    /// `SB_LUT4`.
    pub lut4: u64,
    /// `SB_CARRY`.
    pub carry: u64,
    /// Flip-flops (`SB_DFF*`).
    pub dff: u64,
    /// Block RAMs (`SB_RAM40_4K*`, 4 kbit each).
    pub bram: u64,
    /// DSP blocks (`SB_MAC16`).
    pub dsp: u64,
}

/// Figures of the Xilinx 7-series synthesis (a yosys estimate: no place and route, not Vivado).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XilinxCost {
    /// Cells by type.
    pub cells: BTreeMap<String, u64>,
    /// Logic LUTs: `LUT1`..`LUT6` and `INV`.
    pub lut: u64,
    /// LUT6 sites used as distributed RAM.
    pub lutram: u64,
    /// Shift registers in LUTs (`SRL16E`, `SRLC32E`).
    pub srl: u64,
    /// LUT6-equivalents: every LUT6 site used, `lut + lutram + srl`, no two sharing a site.
    pub lut6_eq: u64,
    /// `MUXF7` and `MUXF8` (slice muxes beside the LUTs).
    pub muxf: u64,
    /// `CARRY4` chains of 4 bits.
    pub carry4: u64,
    /// Flip-flops (`FDRE`, `FDSE`, `FDCE`, `FDPE`).
    pub ff: u64,
    /// `DSP48E1` slices.
    pub dsp: u64,
    /// 18-kbit block RAMs (`RAMB18E1`).
    pub ramb18: u64,
    /// 36-kbit block RAMs (`RAMB36E1`).
    pub ramb36: u64,
    /// Block RAM in 36-kbit tiles: `ramb36 + ramb18 / 2`.
    pub bram36_eq: f64,
}

/// Place-and-route result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fmax {
    /// Device and package.
    pub device: String,
    /// Maximum clock frequency after routing, MHz; `None` when it does not place or route.
    pub mhz: Option<f64>,
    /// Logic cells used / available.
    pub logic_cells: Option<(u64, u64)>,
    /// Why there is no figure (nextpnr's error), with the log path.
    pub note: Option<String>,
}

/// A measurement that ran, or the failure with its kept log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome<T> {
    /// It ran.
    Ok(T),
    /// It failed.
    Failed {
        /// What happened.
        why: String,
        /// The kept log.
        log: String,
    },
}

impl<T> Outcome<T> {
    /// The figures, if it ran.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(t) => Some(t),
            Outcome::Failed { .. } => None,
        }
    }
}

fn failed<T>(e: CostError) -> Outcome<T> {
    match e {
        CostError::Run { why, log, .. } => Outcome::Failed { why, log: log.display().to_string() },
        CostError::Parse { log, why } => Outcome::Failed { why, log: log.display().to_string() },
        other => Outcome::Failed { why: other.to_string(), log: String::new() },
    }
}

/// Run yosys on `script`, keeping the log at `log`; `Err(Run)` names the log on failure.
fn run_yosys(name: &str, target: &str, script: &str, dir: &Path, stem: &str) -> Result<String, CostError> {
    let ys = dir.join(format!("{stem}.ys"));
    let log = dir.join(format!("{stem}.log"));
    std::fs::write(&ys, script).map_err(io(&ys))?;
    let _ = std::fs::remove_file(&log);
    let out = Command::new("yosys")
        .arg("-q")
        .arg("-l")
        .arg(&log)
        .arg("-s")
        .arg(&ys)
        .output()
        .map_err(|_| CostError::Tool { tool: "yosys", package: "yosys" })?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !out.status.success() {
        // yosys -q prints the error on stderr; keep it in the log too.
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = std::fs::write(&log, format!("{text}\n{err}"));
        let first = err.lines().chain(text.lines()).find(|l| l.contains("ERROR")).unwrap_or("yosys failed").trim().to_string();
        return Err(CostError::Run { name: name.into(), target: target.into(), why: format!("synthesis failed: {first}"), log });
    }
    Ok(text)
}

/// Synthesise `file` (top module `cfg.name()`) with the ASIC-like script in `dir`.
pub fn synth_asic(cfg: &RtlConfig, file: &Path, dir: &Path) -> Result<AsicCost, CostError> {
    let name = cfg.name();
    let text = run_yosys(&name, "asic", &yosys::script(yosys::ASIC_SCRIPT, file, &name, None), dir, "asic")?;
    let log = dir.join("asic.log");
    let mem = yosys::parse_stat(&text, "memories", &log)?;
    let g = yosys::parse_stat(&text, "gates", &log)?;
    let (transistors, exact) = g.transistors.ok_or_else(|| CostError::Parse { log: log.clone(), why: "no transistor estimate".into() })?;
    let ours = yosys::cmos_transistors(&g.cells);
    if !exact || ours != Some(transistors) {
        return Err(CostError::Parse {
            log,
            why: format!(
                "the transistor estimate {transistors}{} does not match the CMOS gate counts ({ours:?}): a cell outside the gate set",
                if exact { "" } else { "+" }
            ),
        });
    }
    Ok(AsicCost {
        flip_flops: g.cells.get("$_DFF_P_").copied().unwrap_or(0),
        cells_total: g.total_cells,
        cells: g.cells,
        transistors,
        nand2_eq: transistors as f64 / 4.0,
        memories: mem.memories,
        memory_bits: mem.memory_bits,
    })
}

/// Synthesise `file` for iCE40 UltraPlus in `dir`.
pub fn synth_ice40(cfg: &RtlConfig, file: &Path, dir: &Path) -> Result<Ice40Cost, CostError> {
    let name = cfg.name();
    let text = run_yosys(&name, "ice40", &yosys::script(yosys::ICE40_SCRIPT, file, &name, None), dir, "ice40")?;
    let log = dir.join("ice40.log");
    let st = yosys::parse_stat(&text, "ice40", &log)?;
    ice40_cost(st, &log)
}

/// The iCE40 figures of a parsed `stat` block.
pub fn ice40_cost(st: yosys::Stat, log: &Path) -> Result<Ice40Cost, CostError> {
    let c = yosys::classify(&st, yosys::ICE40_CLASSES, log)?;
    Ok(Ice40Cost { lut4: c["lut4"], carry: c["carry"], dff: c["dff"], bram: c["bram"], dsp: c["dsp"], cells: st.cells })
}

/// Synthesise `file` for Xilinx 7-series in `dir`.
pub fn synth_xilinx(cfg: &RtlConfig, file: &Path, dir: &Path) -> Result<XilinxCost, CostError> {
    let name = cfg.name();
    let text = run_yosys(&name, "xilinx", &yosys::script(yosys::XILINX_SCRIPT, file, &name, None), dir, "xilinx")?;
    let log = dir.join("xilinx.log");
    xilinx_cost(yosys::parse_stat(&text, "xilinx", &log)?, &log)
}

/// The Xilinx figures of a parsed `stat` block.
pub fn xilinx_cost(st: yosys::Stat, log: &Path) -> Result<XilinxCost, CostError> {
    let c = yosys::classify(&st, yosys::XILINX_CLASSES, log)?;
    Ok(XilinxCost {
        lut: c["lut"],
        lutram: c["lutram"],
        srl: c["srl"],
        lut6_eq: c["lut"] + c["lutram"] + c["srl"],
        muxf: c["muxf"],
        carry4: c["carry4"],
        ff: c["ff"],
        dsp: c["dsp"],
        ramb18: c["ramb18"],
        ramb36: c["ramb36"],
        bram36_eq: c["ramb36"] as f64 + c["ramb18"] as f64 / 2.0,
        cells: st.cells,
    })
}

/// Synthesise for iCE40HX8K and place and route with nextpnr-ice40 in `dir`.
pub fn place_and_route(cfg: &RtlConfig, file: &Path, dir: &Path) -> Result<Fmax, CostError> {
    let name = cfg.name();
    let json = dir.join("hx8k.json");
    run_yosys(&name, "fmax", &yosys::script(yosys::ICE40_PNR_SCRIPT, file, &name, Some(&json)), dir, "hx8k")?;
    let log = dir.join("nextpnr.log");
    let out = Command::new("nextpnr-ice40")
        .arg("--json")
        .arg(&json)
        .args(nextpnr::NEXTPNR_ARGS)
        .arg("--log")
        .arg(&log)
        .output()
        .map_err(|_| CostError::Tool { tool: "nextpnr-ice40", package: "nextpnr-ice40" })?;
    let text = std::fs::read_to_string(&log).unwrap_or_default() + &String::from_utf8_lossy(&out.stderr);
    let r = nextpnr::parse(&text, &log)?;
    let device = "iCE40HX8K-CT256".to_string();
    if out.status.success() && r.fmax_mhz.is_some() {
        return Ok(Fmax { device, mhz: r.fmax_mhz, logic_cells: r.logic_cells, note: None });
    }
    // Not fitting the device is a result, not a failure of the run: the table says why.
    let why = r.error.unwrap_or_else(|| format!("nextpnr-ice40 exited with {}", out.status));
    Ok(Fmax { device, mhz: None, logic_cells: r.logic_cells, note: Some(format!("{why} (log {})", log.display())) })
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Folder of the Verilog files `<name>.v`.
    pub rtl_dir: PathBuf,
    /// Scratch folder: one subfolder per configuration with scripts, logs and netlists.
    pub work_dir: PathBuf,
    /// Synthesis targets.
    pub targets: Vec<Target>,
    /// Also place and route for fmax.
    pub fmax: bool,
    /// Parallel synthesis runs.
    pub jobs: usize,
    /// Row lengths per configuration (default: by operation, [`latency::default_row_lengths`]).
    pub row_lengths: Option<Vec<usize>>,
    /// An earlier table whose synthesis and place-and-route figures are reused where the
    /// Verilog (hash), the pinned script and the tool's version line are the same (a
    /// cache; None: run everything).
    pub reuse: Option<Table>,
}

/// The earlier figure of `name`'s `target` work in `old`, when nothing it depends on changed:
/// the same Verilog hash, pinned script(s) and tool version, and it succeeded.
fn reusable<'t>(old: &'t Table, tools: &BTreeMap<String, String>, name: &str, fnv: &str, w: Work) -> Option<&'t Row> {
    let now = table::scripts();
    let (keys, tool): (&[&str], &[&str]) = match w {
        Work::Synth(Target::Asic) => (&["asic"], &["yosys"]),
        Work::Synth(Target::Ice40) => (&["ice40"], &["yosys"]),
        Work::Synth(Target::Xilinx) => (&["xilinx"], &["yosys"]),
        Work::Pnr => (&["fmax_yosys", "fmax_nextpnr"], &["yosys", "nextpnr-ice40"]),
    };
    let same = keys.iter().all(|k| old.scripts.get(*k).is_some_and(|v| now.get(*k) == Some(v)))
        && tool.iter().all(|t| old.tools.get(*t).is_some_and(|v| tools.get(*t) == Some(v)));
    let r = old.rows.iter().find(|r| r.name == name && r.verilog_fnv64 == fnv)?;
    let ok = match w {
        Work::Synth(Target::Asic) => matches!(r.asic, Some(Outcome::Ok(_))),
        Work::Synth(Target::Ice40) => matches!(r.ice40, Some(Outcome::Ok(_))),
        Work::Synth(Target::Xilinx) => matches!(r.xilinx, Some(Outcome::Ok(_))),
        Work::Pnr => matches!(r.fmax, Some(Outcome::Ok(_))),
    };
    (same && ok).then_some(r)
}

/// The tools a run needs, checked before anything starts; their version lines.
pub fn require_tools(opts: &Options) -> Result<BTreeMap<String, String>, CostError> {
    let mut v = BTreeMap::new();
    if !opts.targets.is_empty() || opts.fmax {
        v.insert("yosys".to_string(), yosys::version()?);
    }
    if opts.fmax {
        v.insert("nextpnr-ice40".to_string(), nextpnr::version()?);
    }
    Ok(v)
}

/// One finished piece of work, for progress reports.
#[derive(Debug, Clone)]
pub struct Done {
    /// Configuration.
    pub name: String,
    /// What ran: `asic`, `ice40`, `xilinx`, `fmax`.
    pub what: String,
    /// Wall seconds.
    pub seconds: f64,
    /// One line: the main figure, or the failure with its log path.
    pub line: String,
    /// Whether it failed.
    pub failed: bool,
}

/// The FNV-1a hash of a text, as 16 hex digits (identifies the Verilog a row was measured on).
pub fn fnv64(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[derive(Clone, Copy)]
enum Work {
    Synth(Target),
    Pnr,
}

/// Measure every configuration: timing and accuracy first (quick), then the synthesis runs in
/// `opts.jobs` parallel workers, largest Verilog first; `progress` is called after each piece
/// of work. A failed synthesis is recorded in its row and the others go on.
pub fn measure(configs: &[RtlConfig], opts: &Options, progress: &(dyn Fn(&Done) + Sync)) -> Result<Vec<Row>, CostError> {
    let mut rows = Vec::with_capacity(configs.len());
    let mut files = Vec::with_capacity(configs.len());
    for cfg in configs {
        let file = opts.rtl_dir.join(format!("{}.v", cfg.name()));
        let text = std::fs::read_to_string(&file).map_err(|_| CostError::MissingRtl(file.clone(), opts.rtl_dir.clone()))?;
        let file = file.canonicalize().map_err(io(&file))?;
        let t0 = Instant::now();
        let row = Row::new(cfg, &text, opts.row_lengths.as_deref())?;
        progress(&Done {
            name: cfg.name(),
            what: "cycle model".into(),
            seconds: t0.elapsed().as_secs_f64(),
            line: row.timing.iter().map(|t| format!("N={} {} cycles/row", t.row_len, t.row_period)).collect::<Vec<_>>().join(", "),
            failed: false,
        });
        rows.push(row);
        files.push((file, text.len()));
    }
    let tools = if opts.reuse.is_some() { require_tools(opts)? } else { BTreeMap::new() };
    let mut queue: Vec<(usize, Work)> = Vec::new();
    for i in 0..configs.len() {
        let mut work: Vec<Work> = opts.targets.iter().map(|&t| Work::Synth(t)).collect();
        if opts.fmax {
            work.push(Work::Pnr);
        }
        for w in work {
            let Some(old) = opts.reuse.as_ref().and_then(|t| reusable(t, &tools, &rows[i].name, &rows[i].verilog_fnv64, w)) else {
                queue.push((i, w));
                continue;
            };
            let row = &mut rows[i];
            match w {
                Work::Synth(Target::Asic) => row.asic = old.asic.clone(),
                Work::Synth(Target::Ice40) => row.ice40 = old.ice40.clone(),
                Work::Synth(Target::Xilinx) => row.xilinx = old.xilinx.clone(),
                Work::Pnr => row.fmax = old.fmax.clone(),
            }
            progress(&Done {
                name: configs[i].name(),
                what: work_name(w),
                seconds: 0.0,
                line: "reused from the earlier table (same Verilog, script and tool version; --no-cache runs it)".into(),
                failed: false,
            });
        }
    }
    queue.sort_by_key(|&(i, w)| (std::cmp::Reverse(files[i].1), matches!(w, Work::Pnr)));
    let queue = Mutex::new(VecDeque::from(queue));
    let results = Mutex::new(Vec::new());
    let work_root = &opts.work_dir;
    std::fs::create_dir_all(work_root).map_err(io(work_root))?;
    let work_root = work_root.canonicalize().map_err(io(work_root))?;
    std::thread::scope(|sc| {
        for _ in 0..opts.jobs.max(1) {
            sc.spawn(|| loop {
                let Some((i, w)) = queue.lock().unwrap().pop_front() else { break };
                let cfg = &configs[i];
                let dir = work_root.join(cfg.name());
                let t0 = Instant::now();
                let r = std::fs::create_dir_all(&dir).map_err(io(&dir)).and_then(|_| match w {
                    Work::Synth(Target::Asic) => synth_asic(cfg, &files[i].0, &dir).map(Res::Asic),
                    Work::Synth(Target::Ice40) => synth_ice40(cfg, &files[i].0, &dir).map(Res::Ice40),
                    Work::Synth(Target::Xilinx) => synth_xilinx(cfg, &files[i].0, &dir).map(Res::Xilinx),
                    Work::Pnr => place_and_route(cfg, &files[i].0, &dir).map(Res::Fmax),
                });
                let (what, line, failed) = match (&w, &r) {
                    (_, Err(e)) => (work_name(w), format!("FAILED: {e}"), true),
                    (_, Ok(Res::Asic(a))) => (
                        "asic".into(),
                        format!(
                            "{} cells, {} flip-flops, {:.0} NAND2-eq, {} memory bits",
                            a.cells_total, a.flip_flops, a.nand2_eq, a.memory_bits
                        ),
                        false,
                    ),
                    (_, Ok(Res::Ice40(c))) => (
                        "ice40".into(),
                        format!("{} LUT4, {} carry, {} DFF, {} BRAM, {} DSP", c.lut4, c.carry, c.dff, c.bram, c.dsp),
                        false,
                    ),
                    (_, Ok(Res::Xilinx(x))) => (
                        "xilinx".into(),
                        format!(
                            "{} LUT6-eq ({} LUT, {} LUTRAM, {} SRL), {} CARRY4, {} FF, {} RAMB18 + {} RAMB36, {} DSP48E1",
                            x.lut6_eq, x.lut, x.lutram, x.srl, x.carry4, x.ff, x.ramb18, x.ramb36, x.dsp
                        ),
                        false,
                    ),
                    (_, Ok(Res::Fmax(f))) => (
                        "fmax".into(),
                        f.mhz.map_or_else(|| format!("no fmax: {}", f.note.as_deref().unwrap_or("?")), |m| format!("{m:.2} MHz")),
                        false,
                    ),
                };
                progress(&Done { name: cfg.name(), what: what.clone(), seconds: t0.elapsed().as_secs_f64(), line, failed });
                results.lock().unwrap().push((i, w, r));
            });
        }
    });
    for (i, w, r) in results.into_inner().unwrap() {
        let row = &mut rows[i];
        match (w, r) {
            (_, Ok(Res::Asic(a))) => row.asic = Some(Outcome::Ok(a)),
            (_, Ok(Res::Ice40(c))) => row.ice40 = Some(Outcome::Ok(c)),
            (_, Ok(Res::Xilinx(x))) => row.xilinx = Some(Outcome::Ok(x)),
            (_, Ok(Res::Fmax(f))) => row.fmax = Some(Outcome::Ok(f)),
            (Work::Synth(Target::Asic), Err(e)) => row.asic = Some(failed(e)),
            (Work::Synth(Target::Ice40), Err(e)) => row.ice40 = Some(failed(e)),
            (Work::Synth(Target::Xilinx), Err(e)) => row.xilinx = Some(failed(e)),
            (Work::Pnr, Err(e)) => row.fmax = Some(failed(e)),
        }
    }
    Ok(rows)
}

fn work_name(w: Work) -> String {
    match w {
        Work::Synth(t) => t.to_string(),
        Work::Pnr => "fmax".into(),
    }
}

enum Res {
    Asic(AsicCost),
    Ice40(Ice40Cost),
    Xilinx(XilinxCost),
    Fmax(Fmax),
}
