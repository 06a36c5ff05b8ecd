//! `mnq cost`: synthesis, timing and accuracy of hardware configurations; the cost table and
//! the trade-off plots.

use super::HwSelect;
use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mnq::cost::{self, Options, Table, Target};
use std::path::PathBuf;
use std::time::Instant;

/// The longest row `--row-len` times (64 times the longest default, 768).
const MAX_ROW_LEN: usize = 1 << 16;

/// Options of `mnq cost`.
#[derive(Debug, clap::Args)]
pub struct CostArgs {
    #[command(flatten)]
    select: HwSelect,
    /// Synthesis targets (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "asic,ice40,xilinx")]
    target: Vec<Target>,
    /// Also place and route with nextpnr-ice40 (iCE40HX8K) and report fmax, ns per row and rows/s.
    #[arg(long)]
    fmax: bool,
    /// No ASIC/iCE40/Xilinx synthesis: timing and accuracy only (plus place and route with --fmax); the table keeps its synthesis figures where the Verilog is unchanged.
    #[arg(long)]
    no_synth: bool,
    /// Synthesise again even where the existing cost.json has figures for the same Verilog, pinned script and tool version (otherwise those are reused).
    #[arg(long)]
    no_cache: bool,
    /// Parallel synthesis runs (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Row lengths to time (comma-separated; default 197,49 for softmax and 192,384,768 for GELU and LayerNorm).
    #[arg(long, value_delimiter = ',')]
    row_len: Vec<usize>,
    /// Folder with the Verilog to synthesise.
    #[arg(long, default_value = "rtl")]
    rtl: PathBuf,
    /// Scratch folder: scripts, logs and netlists, one subfolder per configuration.
    #[arg(long, default_value = "target/cost")]
    work: PathBuf,
    /// Output folder of cost.{json,csv,md} and the plots.
    #[arg(long, default_value = "reports/cost")]
    out: PathBuf,
    /// Skip the plots.
    #[arg(long)]
    no_plots: bool,
}

/// Run `mnq cost`; exit 1 when a synthesis failed (the table marks it).
pub fn run(a: &CostArgs) -> Result<i32> {
    let configs = a.select.configs()?;
    if a.row_len.contains(&0) {
        bail!("--row-len: a row has at least one element");
    }
    if let Some(&n) = a.row_len.iter().find(|&&n| n > MAX_ROW_LEN) {
        bail!("--row-len {n} is above mnq's bound of {MAX_ROW_LEN}");
    }
    super::check_threads("--jobs", a.jobs)?;
    let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    mnq::io::check_output_dir(&a.out, &[])?;
    let mut targets = if a.no_synth { Vec::new() } else { a.target.clone() };
    targets.sort();
    targets.dedup();
    let opts = Options {
        rtl_dir: a.rtl.clone(),
        work_dir: a.work.clone(),
        targets,
        fmax: a.fmax,
        jobs,
        row_lengths: (!a.row_len.is_empty()).then(|| a.row_len.clone()),
        reuse: None,
    };
    let tools = cost::require_tools(&opts)?;
    // Read an existing table first: a partial run updates it, and an unreadable one is reported before hours of synthesis.
    let json = a.out.join("cost.json");
    let old = if json.is_file() { Some(Table::load(&json).map_err(|e| anyhow!("{e} (or delete it to start afresh)"))?) } else { None };
    let opts = Options { reuse: if a.no_cache { None } else { old.clone() }, ..opts };

    let steps = configs.len() * (1 + opts.targets.len() + usize::from(opts.fmax));
    let pb = ProgressBar::new(steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}").map_err(|e| anyhow!("{e}"))?.progress_chars("=> "),
    );
    pb.set_message(format!("{} configurations, {} parallel synthesis runs", configs.len(), jobs));
    let t0 = Instant::now();
    let rows = cost::measure(&configs, &opts, &|d| {
        let line = format!("{} {}: {} ({:.1} s)", d.name, d.what, d.line, d.seconds);
        let line = if d.failed { format!("error: {line}") } else { line };
        // A hidden bar (stderr not a terminal) prints nothing: the lines go to stderr plainly.
        if pb.is_hidden() {
            eprintln!("[{}/{steps}] {line}", pb.position() + 1);
        } else {
            pb.println(line);
        }
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();

    let failed: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let f = |what: &str, o: Option<(&str, &str)>| o.map(|(why, log)| format!("{} ({what}): {why}; log kept at {log}", r.name));
            [
                f("asic", outcome_failure(&r.asic)),
                f("ice40", outcome_failure(&r.ice40)),
                f("xilinx", outcome_failure(&r.xilinx)),
                f("fmax", outcome_failure(&r.fmax)),
            ]
        })
        .flatten()
        .collect();
    let table = Table::new(tools, rows);
    let table = match old {
        Some(o) => o.merge(table),
        None => table,
    };
    let mut files = table.write(&a.out)?;
    if !a.no_plots {
        files.extend(mnq::report::cost::plots(&table, &a.out)?);
    }
    for f in &files {
        println!("wrote {}", f.display());
    }
    println!("{} configurations in {wall:.1} s wall with {jobs} parallel runs; {} failed", configs.len(), failed.len());
    for f in &failed {
        println!("FAILED {f}");
    }
    Ok(i32::from(!failed.is_empty()))
}

fn outcome_failure<T>(o: &Option<cost::Outcome<T>>) -> Option<(&str, &str)> {
    match o {
        Some(cost::Outcome::Failed { why, log }) => Some((why.as_str(), log.as_str())),
        _ => None,
    }
}
