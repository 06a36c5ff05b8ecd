//! `mnq infer` and `mnq calibrate`: argument handling and printing around `mnq::model`.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mnq::io::write_atomic;
use mnq::model::attribution::{attribute, variants};
use mnq::model::manifest::{Assignment, LayerUnit, OrderedLayers};
use mnq::model::{calibrate, evaluate, ActScales, CalibOptions, EvalReport, Images, IntModel, Model, QuantConfig, QuantSection};
use mnq::units::{Method, Op, Preset};
use std::path::{Path, PathBuf};

/// Default model directory (the bundled trained model).
pub(crate) const DEFAULT_MODEL: &str = "sim/models/deit_tiny_fmnist";
/// Default data directory (the bundled evaluation split and calibration images).
const DEFAULT_DATA: &str = "sim/data/fashion_mnist";

/// A single method for every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// I-BERT units everywhere.
    Ibert,
    /// I-ViT units everywhere.
    Ivit,
    /// FQ-ViT units everywhere (GELU: FQ-ViT's float fallback, not an integer unit).
    Fqvit,
}

impl MethodArg {
    fn method(self) -> Method {
        match self {
            MethodArg::Ibert => Method::IBert,
            MethodArg::Ivit => Method::IVit,
            MethodArg::Fqvit => Method::FqVit,
        }
    }
}

/// Float precision of the reference forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatArg {
    /// Single precision, as PyTorch runs it.
    F32,
    /// Double precision.
    F64,
}

/// Which model, images, units and scales an integer run uses (`mnq infer`, `mnq attribute`).
#[derive(Debug, clap::Args)]
pub struct ModelSel {
    /// Model directory (manifest.json + model.safetensors).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Use this manifest instead of MODEL/manifest.json (e.g. one written by `mnq calibrate --out`).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Data directory with eval_images.npy, eval_labels.npy and calib_images.npy.
    #[arg(long, default_value = DEFAULT_DATA)]
    data: PathBuf,
    /// Evaluate only the first N images (default: all).
    #[arg(long)]
    images: Option<usize>,
    /// Weight and activation bits (4..=8).
    #[arg(long, default_value_t = 8)]
    bits: u32,
    /// Per-layer assignment file (assignment.json).
    #[arg(long, conflicts_with = "method")]
    assign: Option<PathBuf>,
    /// One method for every layer (default: the manifest's assignment, else ivit).
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// Unit parameter preset.
    #[arg(long, value_enum, default_value = "adapted")]
    preset: Preset,
    /// Precision of the float reference forward.
    #[arg(long, value_enum, default_value = "f32")]
    float: FloatArg,
    /// Calibration images used when the manifest has no scales (default 256).
    #[arg(long)]
    calib_images: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// An op kind that `--float-ops` keeps in float64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OpArg {
    /// Every Softmax layer.
    Softmax,
    /// Every GELU layer.
    Gelu,
    /// Every LayerNorm layer.
    Layernorm,
}

impl OpArg {
    fn op(self) -> Op {
        match self {
            OpArg::Softmax => Op::Softmax,
            OpArg::Gelu => Op::Gelu,
            OpArg::Layernorm => Op::LayerNorm,
        }
    }
}

/// Options of `mnq attribute`.
#[derive(Debug, clap::Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    sel: ModelSel,
    /// Also keep each layer in float64 alone (one more integer forward per layer and image).
    #[arg(long)]
    per_layer: bool,
    /// Folder for attribution_<bits>b_<units>.{md,csv,json,svg,png} (default: print the table only).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the SVG/PNG plot.
    #[arg(long)]
    no_plots: bool,
}

/// Options of `mnq infer`.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    #[command(flatten)]
    sel: ModelSel,
    /// Keep these op kinds in float64 inside the integer model (comma-separated: softmax,
    /// gelu, layernorm): each such layer computes its op exactly on the dequantised input, and
    /// only the linear quantisation is left on it (error attribution; see `mnq attribute`).
    #[arg(long, value_enum, value_delimiter = ',')]
    float_ops: Vec<OpArg>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every image's logits to this .npz: `int_logits` (int64 [N, K]: the integers the
    /// logits come from, the head accumulators — DeiT: class head, then distillation head),
    /// `logits` (float64 [N, classes], the integer model's) and `float_logits` (float64, the
    /// float forward's), for exact comparisons with another implementation (sim/mnq_torch).
    #[arg(long)]
    logits: Option<PathBuf>,
}

/// Options of `mnq calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// Model directory (manifest.json + model.safetensors).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Calibration images (.npy, uint8 [N,H,W] / [N,C,H,W] or normalised float32); default DATA/calib_images.npy.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Data directory holding calib_images.npy.
    #[arg(long, default_value = DEFAULT_DATA)]
    data: PathBuf,
    /// Use only the first N images (default: all).
    #[arg(long)]
    images: Option<usize>,
    /// Range from this percentile of |x| instead of min/max (act_bits points only).
    #[arg(long)]
    percentile: Option<f64>,
    /// Outlier-aware ranges: per act_bits point, the clipping range with the least squared
    /// quantisation error over the calibration values (instead of min/max or a percentile).
    #[arg(long, conflicts_with = "percentile")]
    mse: bool,
    /// Weight and activation bits the scales are for.
    #[arg(long, default_value_t = 8)]
    bits: u32,
    /// Write the calibrated manifest here instead of into MODEL/manifest.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace existing scales (or an existing --out file).
    #[arg(long)]
    force: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn progress(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})").expect("valid template").progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    super::check_threads("--threads", threads)?;
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(t) = threads {
        b = b.num_threads(t);
    }
    b.build().context("starting worker threads")
}

/// Keep the first `n` of `images` as `flag` asks; 0, or more than the file holds, is refused.
fn take(images: &mut Images, n: Option<usize>, flag: &str) -> Result<()> {
    if let Some(n) = n {
        if n == 0 {
            bail!("{flag} must be at least 1");
        }
        if n > images.len() {
            bail!("{flag} {n}: {} holds only {} images", images.path.display(), images.len());
        }
        images.truncate(n);
    }
    Ok(())
}

fn load_model(dir: &Path, manifest: Option<&Path>) -> Result<Model> {
    let m = match manifest {
        Some(p) => Model::load_with(dir, p),
        None => Model::load(dir),
    };
    m.with_context(|| format!("loading the model from {}", dir.display()))
}

fn run_calibration(model: &Model, images: &Images, opts: &CalibOptions) -> Result<QuantSection> {
    let pb = progress(2 * images.len(), "calibrating");
    let q = calibrate(model, images, opts, &|| pb.inc(1))?;
    pb.finish_and_clear();
    Ok(q)
}

fn fmt_db(v: Option<f64>) -> String {
    v.map_or("exact".into(), |v| format!("{v:.2}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a (no labels)".into(), |v| format!("{:.2} %", 100.0 * v))
}

/// Every image's integer and float outputs, written as an .npz (see `InferArgs::logits`).
fn write_logits(path: &Path, model: &Model, qm: &IntModel, images: &Images, float: FloatArg) -> Result<()> {
    use rayon::prelude::*;
    let outs = (0..images.len())
        .into_par_iter()
        .map(|i| {
            let img = images.image(i);
            let q = qm.forward(&img, None)?;
            let f = match float {
                FloatArg::F32 => model.forward_float::<f32>(&img, None),
                FloatArg::F64 => model.forward_float::<f64>(&img, None),
            };
            Ok((q, f))
        })
        .collect::<Result<Vec<_>, mnq::model::ModelError>>()?;
    let n = outs.len();
    let (k, c) = (outs[0].0.int_logits.len(), outs[0].0.logits.len());
    let ints = ndarray::Array2::from_shape_vec((n, k), outs.iter().flat_map(|(q, _)| q.int_logits.iter().copied()).collect())?;
    let logits = ndarray::Array2::from_shape_vec((n, c), outs.iter().flat_map(|(q, _)| q.logits.iter().copied()).collect())?;
    let flogits = ndarray::Array2::from_shape_vec((n, c), outs.iter().flat_map(|(_, f)| f.logits.iter().copied()).collect())?;
    let mut w = ndarray_npy::NpzWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_array("int_logits", &ints)?;
    w.add_array("logits", &logits)?;
    w.add_array("float_logits", &flogits)?;
    write_atomic(path, &w.finish()?.into_inner())?;
    Ok(())
}

/// `mnq infer`.
/// Everything an integer run needs, resolved from [`ModelSel`].
struct Prepared {
    model: Model,
    images: Images,
    eval_path: PathBuf,
    pool: rayon::ThreadPool,
    /// How the units were chosen, for the printout.
    how: String,
    units: Vec<LayerUnit>,
    section: QuantSection,
    scales_note: String,
}

/// Check the outputs against the inputs, load the model and images, resolve the units and the
/// scales (calibrating on the fly when the manifest has none).
fn prepare(a: &ModelSel, outputs: &[&Path]) -> Result<Prepared> {
    super::check_threads("--threads", a.threads)?;
    if a.calib_images == Some(0) {
        bail!("--calib-images must be at least 1");
    }
    // Before the run: an unwritable output path, or one that is an input, fails now, not after it.
    let (mf, w) = (a.model.join("manifest.json"), a.model.join("model.safetensors"));
    let (e, l, c) = (a.data.join("eval_images.npy"), a.data.join("eval_labels.npy"), a.data.join("calib_images.npy"));
    let mut inputs: Vec<&Path> = vec![&mf, &w, &e, &l, &c];
    inputs.extend(a.manifest.as_deref());
    inputs.extend(a.assign.as_deref());
    for out in outputs {
        mnq::io::check_output(out, &inputs)?;
    }
    let model = load_model(&a.model, a.manifest.as_deref())?;
    let m = &model.manifest;
    if !mnq::model::quant::SUPPORTED_BITS.contains(&a.bits) {
        bail!(
            "--bits {} is not supported by the integer forward (supported: {}..={})",
            a.bits,
            mnq::model::quant::SUPPORTED_BITS.start(),
            mnq::model::quant::SUPPORTED_BITS.end()
        );
    }
    let eval_path = a.data.join("eval_images.npy");
    let mut images = Images::load_npy(&eval_path, m)?;
    let labels = a.data.join("eval_labels.npy");
    if labels.exists() {
        images = images.with_labels(&labels, m.num_classes)?;
    }
    take(&mut images, a.images, "--images")?;
    let pool = pool(a.threads)?;

    // Which unit computes each layer.
    let (assignment, how) = match (&a.assign, a.method) {
        (Some(p), _) => (Assignment::load(p)?, format!("from {}", p.display())),
        (None, Some(meth)) => {
            (Assignment::single(&model.layers, &m.name, a.bits, meth.method()), format!("{} on every layer", meth.method().name()))
        }
        (None, None) => match m.quant.as_ref().and_then(|q| q.assignment.as_ref()) {
            Some(map) => (
                Assignment {
                    format: 1,
                    model: m.name.clone(),
                    bits: a.bits,
                    layers: OrderedLayers(
                        model
                            .layers
                            .iter()
                            .filter_map(|l| map.get(&l.name).map(|u| (l.name.clone(), u.clone())))
                            .chain(
                                map.iter()
                                    .filter(|(k, _)| !model.layers.iter().any(|l| &l.name == *k))
                                    .map(|(k, v)| (k.clone(), v.clone())),
                            )
                            .collect(),
                    ),
                },
                "from the manifest's quant.assignment".to_string(),
            ),
            None => (
                Assignment::single(&model.layers, &m.name, a.bits, Method::IVit),
                "ivit on every layer (default; see --method, --assign)".into(),
            ),
        },
    };
    let source = a.assign.as_ref().map_or_else(|| "(manifest)".to_string(), |p| p.display().to_string());
    let units = assignment.resolve(&model.layers, &source)?;
    if assignment.model != m.name {
        eprintln!("note: the assignment was made for model '{}', this is '{}'", assignment.model, m.name);
    }
    if assignment.bits != a.bits {
        eprintln!("note: the assignment was made for {} bits, running at {}", assignment.bits, a.bits);
    }

    // Activation scales: the manifest's, or calibrated now.
    let (section, scales_note) = match m.quant.as_ref().filter(|q| !q.act_scales.is_empty()) {
        Some(q) if a.calib_images.is_some() => bail!(
            "--calib-images is used only when the manifest has no activation scales, and {} has {}; drop it, or recalibrate with `mnq calibrate --force`",
            m.name,
            q.act_scales.len()
        ),
        Some(q) => {
            let c = q
                .calibration
                .as_ref()
                .map_or(String::new(), |c| match &c.clip {
                    Some(k) => format!(", calibrated on {} images ({k} clipping)", c.images),
                    None => format!(", calibrated on {} images at percentile {}", c.images, c.percentile),
                });
            let conv =
                if q.act_bits != a.bits { format!("; made for {} bits, ranges kept for {}", q.act_bits, a.bits) } else { String::new() };
            (q.clone(), format!("the manifest's quant section{c}{conv}"))
        }
        None => {
            let p = a.data.join("calib_images.npy");
            let mut ci = Images::load_npy(&p, m)
                .with_context(|| "the manifest has no activation scales, so mnq calibrates on the fly".to_string())?;
            match a.calib_images {
                Some(_) => take(&mut ci, a.calib_images, "--calib-images")?,
                None => ci.truncate(256),
            }
            eprintln!(
                "note: {} has no activation scales; calibrating on {} images of {} (min/max); `mnq calibrate` stores them",
                m.name,
                ci.len(),
                p.display()
            );
            let opts = CalibOptions { weight_bits: a.bits, act_bits: a.bits, percentile: None, mse: false };
            let q = pool.install(|| run_calibration(&model, &ci, &opts))?;
            (q, format!("calibrated on the fly on {} images of {} (min/max)", ci.len(), p.display()))
        }
    };
    Ok(Prepared { model, images, eval_path, pool, how, units, section, scales_note })
}

/// `mnq infer`.
pub fn cmd_infer(args: &InferArgs) -> Result<i32> {
    if let Some(p) = &args.logits {
        if p.extension().and_then(|e| e.to_str()) != Some("npz") {
            bail!("--logits {}: the logits are written as an .npz archive; give a .npz path", p.display());
        }
    }
    let outputs: Vec<&Path> = args.json.iter().chain(args.logits.iter()).map(|p| p.as_path()).collect();
    let a = &args.sel;
    let Prepared { model, images, eval_path, pool, mut how, mut units, section, scales_note } = prepare(a, &outputs)?;
    let m = &model.manifest;
    if !args.float_ops.is_empty() {
        let ops: Vec<Op> = args.float_ops.iter().map(|o| o.op()).collect();
        for (u, l) in units.iter_mut().zip(&model.layers) {
            if ops.contains(&l.op) {
                *u = LayerUnit::Exact(l.op);
            }
        }
        let names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
        how += &format!("; {} kept in float64 (--float-ops)", names.join(", "));
    }
    let scales = ActScales::from_section(&section, a.bits, &model.graph);
    let cfg = QuantConfig { weight_bits: a.bits, act_bits: a.bits, preset: a.preset, units };
    let qm = IntModel::new(&model, &scales, cfg)?;

    let pb = progress(images.len(), "inference");
    let report: EvalReport = pool.install(|| match a.float {
        FloatArg::F32 => evaluate::<f32>(&model, &qm, &images, &|| pb.inc(1)),
        FloatArg::F64 => evaluate::<f64>(&model, &qm, &images, &|| pb.inc(1)),
    })?;
    pb.finish_and_clear();

    let shape = match &m.swin {
        Some(s) => format!(
            "stages: depths {:?}, dims {:?}, heads {:?}, windows {:?}, {} tokens in stage 0",
            s.depths,
            s.embed_dims,
            s.num_heads,
            s.window_size,
            m.tokens()
        ),
        None => format!("D {}, depth {}, {} heads, {} tokens", m.embed_dim, m.depth, m.num_heads, m.tokens()),
    };
    println!("model {} ({}, {shape}) from {}", m.name, m.arch, a.model.display());
    println!("images: {} from {}", report.images, eval_path.display());
    println!("integer: {}-bit weights and activations, units {how}, preset {}", a.bits, a.preset);
    println!("scales: {scales_note}");
    let exact = qm.config.units.iter().filter(|u| matches!(u, LayerUnit::Exact(_))).count();
    if exact > 0 {
        println!("note: {exact} layers compute their op in float64 on the dequantised input (*_float): not integer units");
    }
    if qm.config.units.iter().any(|u| matches!(u, LayerUnit::FloatGelu)) {
        println!(
            "note: gelu_fqvit layers run FQ-ViT's float GELU (dequantised input, output quantised to {} bits): not an integer unit",
            a.bits
        );
    }
    println!();
    println!("| | value |");
    println!("|---|---|");
    println!("| float ({}) top-1 | {} |", report.float, pct(report.float_top1));
    println!("| integer top-1 | {} |", pct(report.int_top1));
    println!("| agreement (same top-1) | {:.2} % |", 100.0 * report.agreement);
    println!("| logits ASQNR (dB) | {} |", fmt_db(report.logits_asqnr_db));
    println!();
    println!("ASQNR = 20·log10 of the mean over images of E[x²]/E[(x−q)²], float tap x against the integer tap q (dequantised).");
    println!();
    println!("| # | layer | unit | rows × len | ASQNR in (dB) | ASQNR out (dB) | conditions |");
    println!("|---|---|---|---|---|---|---|");
    for l in &report.layers {
        let cond: Vec<String> = l.conditions.iter().map(|(c, n)| format!("{c:?} ×{n}")).collect();
        println!(
            "| {} | {} | {}{} | {} × {} | {} | {} | {} |",
            l.index,
            l.name,
            l.unit,
            if l.integer { "" } else { " (float)" },
            l.rows,
            l.row_len,
            fmt_db(l.asqnr_in_db),
            fmt_db(l.asqnr_out_db),
            cond.join(", ")
        );
    }
    if let Some(p) = &args.json {
        let v = serde_json::json!({
            "model": m.name,
            "model_dir": a.model,
            "bits": a.bits,
            "preset": a.preset,
            "units": how,
            "scales": scales_note,
            "report": report,
        });
        write_atomic(p, (serde_json::to_string_pretty(&v)? + "\n").as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.logits {
        pool.install(|| write_logits(p, &model, &qm, &images, a.float))?;
        eprintln!("wrote {} (int_logits, logits, float_logits for {} images)", p.display(), images.len());
    }
    Ok(0)
}

/// `mnq attribute`: where the integer model's accuracy goes (linear quantisation, each op's
/// units, with `--per-layer` each layer's).
pub fn cmd_attribute(args: &AttributeArgs) -> Result<i32> {
    let a = &args.sel;
    let label = match (&a.assign, a.method) {
        (Some(p), _) => p.file_stem().map_or("assign".into(), |s| s.to_string_lossy().into_owned()),
        (None, Some(m)) => m.method().name().to_string(),
        (None, None) => "manifest".into(),
    };
    let stem = format!("attribution_{}b_{label}", a.bits);
    let targets: Vec<PathBuf> = match &args.out {
        Some(d) => {
            let exts: &[&str] = if args.no_plots { &["md", "csv", "json"] } else { &["md", "csv", "json", "svg", "png"] };
            exts.iter().map(|e| d.join(format!("{stem}.{e}"))).collect()
        }
        None => Vec::new(),
    };
    let outputs: Vec<&Path> = targets.iter().map(|p| p.as_path()).collect();
    let Prepared { model, images, eval_path, pool, how, units, section, scales_note } = prepare(a, &outputs)?;
    let m = &model.manifest;
    let scales = ActScales::from_section(&section, a.bits, &model.graph);
    let vars = variants(&model.layers, &units, args.per_layer);
    let pb = progress(images.len(), &format!("attribution ({} variants)", vars.len()));
    let at = pool.install(|| match a.float {
        FloatArg::F32 => attribute::<f32>(&model, &scales, a.bits, a.preset, vars, &images, &|| pb.inc(1)),
        FloatArg::F64 => attribute::<f64>(&model, &scales, a.bits, a.preset, vars, &images, &|| pb.inc(1)),
    })?;
    pb.finish_and_clear();
    let header = format!(
        "# Where the accuracy goes: {} at {} bits, units {how}\n\nImages: {} from {}. Scales: {scales_note}. Each variant is the integer model with the listed layers computing their op in float64 on the dequantised input (`*_float`), output requantised as from a unit; `mnq attribute{}` measured it.",
        m.name,
        a.bits,
        at.images,
        eval_path.display(),
        if args.per_layer { " --per-layer" } else { "" }
    );
    print!("{}", mnq::report::attribution::markdown(&at, &header));
    if let Some(d) = &args.out {
        let meta = serde_json::json!({
            "model": m.name, "model_dir": a.model, "bits": a.bits, "preset": a.preset, "units": how,
            "scales": scales_note, "per_layer": args.per_layer,
        });
        for p in mnq::report::attribution::write(d, &stem, &at, &header, meta, args.no_plots)? {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(0)
}

/// `mnq calibrate`.
pub fn cmd_calibrate(a: &CalibrateArgs) -> Result<i32> {
    super::check_threads("--threads", a.threads)?;
    let model = load_model(&a.model, None)?;
    let m = &model.manifest;
    let manifest_path = a.model.join("manifest.json");
    let target = a.out.clone().unwrap_or_else(|| manifest_path.clone());
    let path = a.calib.clone().unwrap_or_else(|| a.data.join("calib_images.npy"));
    // Writing into the model's own manifest is what calibrate does without --out; any other
    // input (the weights, the images) must survive.
    let weights = a.model.join("model.safetensors");
    let mut inputs: Vec<&Path> = vec![&weights, &path];
    if a.out.is_some() {
        inputs.push(&manifest_path);
    }
    mnq::io::check_output(&target, &inputs)?;
    if !a.force {
        if let Some(out) = &a.out {
            if out.exists() {
                bail!("{} exists; pass --force to replace it", out.display());
            }
        } else if let Some(q) = m.quant.as_ref().filter(|q| !q.act_scales.is_empty()) {
            let how =
                q.calibration.as_ref().map_or("from QAT or an earlier tool".to_string(), |c| format!("calibrated on {} images", c.images));
            bail!(
                "{} already has {} activation scales ({how}); pass --force to replace them, or --out FILE to write the calibrated manifest elsewhere",
                manifest_path.display(),
                q.act_scales.len()
            );
        }
    }
    let mut images = Images::load_npy(&path, m)?;
    take(&mut images, a.images, "--images")?;
    let opts = CalibOptions { weight_bits: a.bits, act_bits: a.bits, percentile: a.percentile, mse: a.mse };
    let pool = pool(a.threads)?;
    let mut q = pool.install(|| run_calibration(&model, &images, &opts))?;
    // Keep an assignment the manifest already had.
    q.assignment = m.quant.as_ref().and_then(|old| old.assignment.clone());
    let mut out = m.clone();
    out.quant = Some(q.clone());
    write_atomic(&target, out.to_json().as_bytes())?;
    println!(
        "calibrated {} on {} images of {} ({}): {} activation scales for {} bits, PTF parameters for {} LayerNorms",
        m.name,
        images.len(),
        path.display(),
        if a.mse { "MSE clipping search".to_string() } else { a.percentile.map_or("min/max".to_string(), |p| format!("percentile {p}")) },
        q.act_scales.len(),
        a.bits,
        q.ptf.len()
    );
    println!("wrote {}", target.display());
    if a.out.is_some() {
        println!("use it with: mnq infer --model {} --manifest {}", a.model.display(), target.display());
    }
    Ok(0)
}
