//! `mnq run`: argument parsing for the main job (the pipeline is `mnq::study`).

use anyhow::{bail, Result};
use mnq::model::data::npy_shape;
use mnq::sensitivity::asqnr::Convention;
use mnq::sensitivity::assign::Arch;
use mnq::study::shard::{Mode, ShardSpec};
use mnq::study::{run, RunOptions, RunSummary};
use std::path::PathBuf;

/// Options of `mnq run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Model directory.
    #[arg(long, default_value = "sim/models/deit_tiny_fmnist")]
    model: PathBuf,
    /// Dataset folder with eval_images.npy, eval_labels.npy and calib_images.npy.
    #[arg(long, default_value = "sim/data/fashion_mnist")]
    data: PathBuf,
    /// Activation and weight widths (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "8,6")]
    bits: Vec<u32>,
    /// Images of the sensitivity analysis (first N of the calibration split; default 256, or all when fewer).
    #[arg(long)]
    sens_images: Option<usize>,
    /// Limit the evaluation images (default: all of the eval split).
    #[arg(long)]
    images: Option<usize>,
    /// Architecture model of the cost-aware part.
    #[arg(long, value_enum, default_value = "shared")]
    arch: Arch,
    /// Area budget (in the units of --area-metric; needs the cost table).
    #[arg(long)]
    area_budget: Option<f64>,
    /// Area figure of the cost table the optimiser uses: nand2 (ASIC NAND2-eq plus row-buffer
    /// SRAM), lut4 (iCE40 LUT4) or lut6 (Xilinx 7-series LUT6-equivalents); FPGA block RAMs and
    /// DSPs are not counted.
    #[arg(long, value_enum, default_value = "nand2")]
    area_metric: mnq::cost::AreaMetric,
    /// Latency budget (cycles per image over the layers with hardware).
    #[arg(long)]
    latency_budget: Option<u64>,
    /// Decibel convention of ASQNR.
    #[arg(long, value_enum, default_value = "amplitude20")]
    convention: Convention,
    /// Most Pareto points evaluated end to end per front.
    #[arg(long, default_value_t = 6)]
    max_pareto_eval: usize,
    /// Cost table of `mnq cost` (used when present).
    #[arg(long, default_value = "reports/cost/cost.json")]
    cost_table: PathBuf,
    /// RTL manifest with the cycle formulas.
    #[arg(long, default_value = "rtl/manifest.json")]
    rtl_manifest: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Error attribution of the sqnr-diff rule's model: none, ops (linear quantisation and each
    /// op kind in float64), layers (also each layer alone; one more integer forward per layer).
    #[arg(long, value_enum, default_value = "layers")]
    attribution: mnq::model::attribution::Level,
    /// Run the attribution on the first N evaluation images only (default: all of them). Its
    /// cost is one integer forward per variant and image, and `layers` adds one variant per
    /// layer (ViT-S: 49), so on a real-size model this bounds the run's longest part.
    #[arg(long)]
    attr_images: Option<usize>,
    /// Output folder (default reports/<model name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run one shard of the study (K of N, 1-based): its slice of the sensitivity and of the
    /// evaluation images, partials into --work; run it twice (stage 1 sensitivity, stage 2
    /// evaluation), then `mnq merge --work DIR` (README "Sharded runs").
    #[arg(long, requires = "work")]
    shard: Option<ShardSpec>,
    /// Work folder shared by the shards of one study (partials and options.json).
    #[arg(long, requires = "shard")]
    work: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Options of `mnq merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Work folder of the shards (`mnq run --shard K/N --work DIR`).
    #[arg(long)]
    work: PathBuf,
    /// Output folder (default: the shards' --out, or reports/<model name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn print(s: &RunSummary) {
    for l in &s.lines {
        println!("{l}");
    }
    if !s.files.is_empty() {
        println!("wrote {} files to {}", s.files.len(), s.out.display());
    }
}

/// Join the shards' partials into the report.
pub fn cmd_merge(a: &MergeArgs) -> Result<i32> {
    super::check_threads("--threads", a.threads)?;
    let (mut opts, n) = mnq::study::shard::recorded_options(&a.work)?;
    if let Some(out) = &a.out {
        opts.out = out.clone();
    }
    mnq::io::check_output_dir(&opts.out, &[&opts.model_dir, &a.work])?;
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    opts.progress = !a.quiet;
    opts.mode = Mode::Merge { n, work: a.work.clone() };
    print(&run(&opts)?);
    Ok(0)
}

/// Run the main job.
pub fn cmd_run(a: &RunArgs) -> Result<i32> {
    super::check_threads("--threads", a.threads)?;
    let name = a.model.file_name().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("reports").join(&name));
    // Counts against what the files hold (their headers only), and the output folder, before the run.
    let (eval, calib) = (a.data.join("eval_images.npy"), a.data.join("calib_images.npy"));
    for (flag, n, file) in
        [("--sens-images", a.sens_images, &calib), ("--images", a.images, &eval), ("--attr-images", a.attr_images, &eval)]
    {
        if n == Some(0) {
            bail!("{flag} must be at least 1");
        }
        if let (Some(n), Ok(shape)) = (n, npy_shape(file)) {
            if let Some(&have) = shape.first().filter(|&&h| n > h) {
                bail!("{flag} {n}: {} holds only {have} images", file.display());
            }
        }
    }
    if let Some(w) = &a.work {
        mnq::io::check_output_dir(w, &[&a.model, &a.data])?;
    }
    mnq::io::check_output_dir(&out, &[&a.model, &a.data])?;
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    let opts = RunOptions {
        model_dir: a.model.clone(),
        eval_images: a.data.join("eval_images.npy"),
        eval_labels: a.data.join("eval_labels.npy"),
        calib_images: a.data.join("calib_images.npy"),
        sens_images: a.sens_images.unwrap_or(256),
        images: a.images,
        bits: a.bits.clone(),
        arch: a.arch,
        area_budget: a.area_budget,
        area_metric: a.area_metric,
        latency_budget: a.latency_budget,
        convention: a.convention,
        max_pareto_eval: a.max_pareto_eval,
        cost_table: a.cost_table.clone(),
        rtl_manifest: a.rtl_manifest.clone(),
        attribution: a.attribution,
        attr_images: a.attr_images,
        out,
        progress: !a.quiet,
        mode: match (a.shard, &a.work) {
            (Some(spec), Some(work)) => Mode::Shard { spec, work: work.clone() },
            _ => Mode::Whole,
        },
    };
    print(&run(&opts)?);
    Ok(0)
}
