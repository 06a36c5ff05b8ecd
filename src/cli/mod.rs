//! The `mnq` command line: argument parsing and calls into the library, nothing more.

mod cost;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use mnq::fixed::{QTensor, Scale};
use mnq::golden;
use mnq::io::{check_output, check_output_dir, read_input, write_atomic, Values};
use mnq::report;
use mnq::sensitivity::{self, Dist};
use mnq::units::{self, Aux, Mode, Preset, Unit};
use serde_json::json;
use std::path::PathBuf;

mod infer;
mod run;

/// mnq: hardware co-design simulator for integer Softmax, GELU and LayerNorm units of vision transformers.
#[derive(Debug, Parser)]
#[command(name = "mnq", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check golden cases (reference-code vectors) bit for bit, reporting every file; exits 1 on any mismatch, 2 on an unreadable file.
    Golden {
        /// Case files, or folders of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List every unit with its parameters, presets, supported widths and internal widths.
    Units {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a unit on your integers (or floats, quantised first) and write the output integers and scale.
    Eval(EvalArgs),
    /// Error of a unit against the float reference on a realistic input distribution (JSON + plots).
    Error(ErrorArgs),
    /// Generate Verilog through rust_hdl: `<unit>_<bits>b_l<lanes>.v` and `manifest.json`.
    Rtl(RtlArgs),
    /// Co-simulate generated Verilog under Verilator against the cycle model, cycle by cycle.
    Cosim(CosimArgs),
    /// Area (yosys: ASIC-like gates, iCE40), timing (cycle models) and accuracy of hardware configurations; trade-off plots.
    Cost(cost::CostArgs),
    /// Float and integer inference of a model directory: top-1, agreement, per-layer ASQNR.
    Infer(infer::InferArgs),
    /// Where the integer model's accuracy goes: the linear quantisation against each op's (each layer's) units.
    Attribute(infer::AttributeArgs),
    /// Activation scales (and PTF parameters) from calibration images, into the manifest.
    Calibrate(infer::CalibrateArgs),
    /// Print a model's layer graph: the op list both executors run, with every non-linear layer.
    Graph {
        /// Model directory (manifest.json + model.safetensors).
        #[arg(long, default_value = infer::DEFAULT_MODEL)]
        model: PathBuf,
    },
    /// The main job: sensitivity, rules, cost-aware Pareto fronts, accuracy and the report folder.
    Run(run::RunArgs),
    /// Join the partials of `mnq run --shard K/N` shards into the report one `mnq run` writes.
    Merge(run::MergeArgs),
}

/// Selection of hardware configurations (default: the committed set).
#[derive(Debug, clap::Args)]
pub struct HwSelect {
    /// Unit (default: every unit with hardware; `softmax_multi` with --methods for the
    /// multi-method softmax).
    #[arg(long)]
    unit: Option<String>,
    /// Methods of `--unit softmax_multi` (comma-separated, at least two of ibert, fqvit, ivit;
    /// default all three).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Input widths (comma-separated; default 8,6).
    #[arg(long, value_delimiter = ',')]
    bits: Vec<u32>,
    /// Lanes (comma-separated; default 1,4).
    #[arg(long, value_delimiter = ',')]
    lanes: Vec<usize>,
}

impl HwSelect {
    fn configs(&self) -> Result<Vec<mnq::hdl::RtlConfig>> {
        let multi = self.unit.as_deref() == Some(mnq::hdl::MULTI_SOFTMAX);
        if !self.methods.is_empty() && !multi {
            bail!("--methods selects the methods of --unit {}; give that unit", mnq::hdl::MULTI_SOFTMAX);
        }
        if self.unit.is_none() && self.bits.is_empty() && self.lanes.is_empty() {
            return Ok(mnq::hdl::default_set());
        }
        let units: Vec<String> = match &self.unit {
            Some(_) if multi => {
                let all = [units::Method::IBert, units::Method::FqVit, units::Method::IVit];
                let mut ms = Vec::new();
                for name in &self.methods {
                    let m = all.into_iter().find(|m| m.name() == name.trim()).ok_or_else(|| {
                        anyhow!("--methods: '{name}' is not a method: use ibert, fqvit, ivit (at least two, comma-separated)")
                    })?;
                    ms.push(m);
                }
                vec![mnq::hdl::multi_unit(if ms.is_empty() { &all } else { &ms })?]
            }
            Some(u) => vec![u.clone()],
            None => mnq::hdl::RTL_UNITS.iter().map(|s| s.to_string()).collect(),
        };
        let bits = if self.bits.is_empty() { vec![8, 6] } else { self.bits.clone() };
        let lanes = if self.lanes.is_empty() { vec![1, 4] } else { self.lanes.clone() };
        let mut v = Vec::new();
        for u in &units {
            for &b in &bits {
                // Without --unit, each unit takes the widths it is generated for.
                if self.unit.is_none() && !mnq::hdl::supported_bits(u).contains(&b) {
                    continue;
                }
                for &l in &lanes {
                    v.push(mnq::hdl::RtlConfig::new(u, b, l)?);
                }
            }
        }
        Ok(v)
    }
}

/// Options of `mnq rtl`.
#[derive(Debug, clap::Args)]
pub struct RtlArgs {
    #[command(flatten)]
    select: HwSelect,
    /// Output folder.
    #[arg(long, default_value = "rtl")]
    out: PathBuf,
    /// Compare with the files in --out instead of writing; exit 1 on any difference.
    #[arg(long)]
    check: bool,
}

/// Options of `mnq cosim`.
#[derive(Debug, clap::Args)]
pub struct CosimArgs {
    #[command(flatten)]
    select: HwSelect,
    /// Elements to stream per configuration (at least).
    #[arg(long, default_value_t = 100_000)]
    elements: usize,
    /// Seed of the stimulus and of the handshake patterns.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that an input beat is offered on a cycle (random input gaps).
    #[arg(long, default_value_t = 0.8)]
    p_valid: f64,
    /// Probability that the output is ready on a cycle (random back-pressure).
    #[arg(long, default_value_t = 0.8)]
    p_ready: f64,
    /// Preset whose constants configure the hardware.
    #[arg(long, value_enum, default_value = "adapted")]
    preset: Preset,
    /// Folder with the Verilog to simulate.
    #[arg(long, default_value = "rtl")]
    rtl: PathBuf,
    /// Build folder (Verilator objects, stimulus, traces, logs).
    #[arg(long, default_value = "target/cosim")]
    work: PathBuf,
    /// Dump a waveform (one configuration only).
    #[arg(long)]
    vcd: Option<PathBuf>,
    /// Also write the reports as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Options shared by commands that build a unit.
#[derive(Debug, clap::Args)]
pub struct UnitArgs {
    /// Unit name, `<op>_<method>` (see `mnq units`).
    #[arg(long)]
    pub unit: String,
    /// Reference (bit-exact with the published code) or integer (the hardware datapath).
    #[arg(long, value_enum, default_value = "integer")]
    pub mode: Mode,
    /// Parameter preset.
    #[arg(long, value_enum, default_value = "reference")]
    pub preset: Preset,
    /// Override a parameter: `--param name=value` (repeatable; see `mnq units`).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
}

/// Options of `mnq eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    unit: UnitArgs,
    /// Input bit width.
    #[arg(long)]
    bits: u32,
    /// Input scale (real = q · scale); a scale inside a JSON input takes precedence.
    #[arg(long, allow_negative_numbers = true)]
    scale: Option<f64>,
    /// Input is unsigned (FQ-ViT uint activations); default signed.
    #[arg(long)]
    unsigned: bool,
    /// Zero point of an unsigned input.
    #[arg(long, allow_negative_numbers = true)]
    zero_point: Option<i64>,
    /// Output scale of the next quantiser (PTF LayerNorm, requantiser).
    #[arg(long, allow_negative_numbers = true)]
    out_scale: Option<f64>,
    /// Input file: .json ({"q": [...]} or {"x": [...]}, "shape", optional "scale", "gamma", "beta") or .npy.
    #[arg(long)]
    input: PathBuf,
    /// Output file (.json): integers, shape, scale, encoding and conditions.
    #[arg(long)]
    output: PathBuf,
}

/// Options of `mnq error`.
#[derive(Debug, clap::Args)]
pub struct ErrorArgs {
    /// Unit name; omit with --all.
    #[arg(long, required_unless_present = "all")]
    unit: Option<String>,
    /// Every Softmax, GELU and LayerNorm unit.
    #[arg(long, conflicts_with = "unit")]
    all: bool,
    /// Input bit widths (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    bits: Vec<u32>,
    /// Reference or integer datapath.
    #[arg(long, value_enum, default_value = "integer")]
    mode: Mode,
    /// Parameter presets (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "reference")]
    preset: Vec<Preset>,
    /// Input distribution (default: the operation's own).
    #[arg(long, value_enum)]
    dist: Option<Dist>,
    /// Override a parameter: `--param name=value` (repeatable; with --all, applied where the unit has it).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Rows to draw.
    #[arg(long, default_value_t = 64)]
    rows: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "reports/units")]
    out: PathBuf,
    /// Skip the plots (JSON and Markdown only).
    #[arg(long)]
    no_plots: bool,
}

/// The most worker threads a command starts: far above any core count mnq runs on, low enough
/// that starting them takes a moment (100,000 threads took minutes and looked like a hang).
pub(crate) const MAX_THREADS: usize = 1024;

/// The most elements `mnq cosim` streams per configuration (1000 times the default; each
/// element is kept in memory with its stimulus and trace).
const MAX_COSIM_ELEMENTS: usize = 100_000_000;

/// The most rows `mnq error` draws (each row is up to 768 values, kept with its reference).
const MAX_ERROR_ROWS: usize = 1_000_000;

/// Refuse a thread or job count of 0 or above [`MAX_THREADS`], naming the flag.
pub(crate) fn check_threads(flag: &str, t: Option<usize>) -> Result<()> {
    match t {
        Some(0) => bail!("{flag} must be at least 1"),
        Some(t) if t > MAX_THREADS => bail!(
            "{flag} {t} is above mnq's bound of {MAX_THREADS} (this machine has {} cores; the default uses them all)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        _ => Ok(()),
    }
}

/// Run the parsed command; returns the process exit code for non-error outcomes.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Golden { files } => cmd_golden(&files),
        Command::Units { json } => cmd_units(json).map(|_| 0),
        Command::Eval(a) => cmd_eval(&a).map(|_| 0),
        Command::Error(a) => cmd_error(&a).map(|_| 0),
        Command::Rtl(a) => cmd_rtl(&a),
        Command::Cosim(a) => cmd_cosim(&a),
        Command::Cost(a) => cost::run(&a),
        Command::Infer(a) => infer::cmd_infer(&a),
        Command::Calibrate(a) => infer::cmd_calibrate(&a),
        Command::Attribute(a) => infer::cmd_attribute(&a),
        Command::Run(a) => run::cmd_run(&a),
        Command::Merge(a) => run::cmd_merge(&a),
        Command::Graph { model } => cmd_graph(&model).map(|_| 0),
    }
}

fn cmd_rtl(a: &RtlArgs) -> Result<i32> {
    let configs = a.select.configs()?;
    if !a.check {
        check_output_dir(&a.out, &[])?;
    }
    let mut differ = 0;
    let n = configs.len();
    for (i, c) in configs.iter().enumerate() {
        let v = mnq::hdl::verilog(c);
        let path = a.out.join(format!("{}.v", c.name()));
        if a.check {
            let same = std::fs::read_to_string(&path).is_ok_and(|old| old == v);
            println!("[{}/{n}] {}: {}", i + 1, path.display(), if same { "identical" } else { "DIFFERS from the generator" });
            differ += usize::from(!same);
        } else {
            write_atomic(&path, v.as_bytes())?;
            println!("[{}/{n}] wrote {}", i + 1, path.display());
        }
    }
    // The manifest describes every configuration in the folder: a partial run replaces its own
    // entries and keeps the others, in their order.
    let mpath = a.out.join("manifest.json");
    let mut entries: Vec<serde_json::Value> = match std::fs::read_to_string(&mpath) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| anyhow!("{}: not a manifest ({e}); delete it to start afresh", mpath.display()))?,
        Err(_) => Vec::new(),
    };
    for c in &configs {
        let v = serde_json::to_value(c.manifest())?;
        match entries.iter_mut().find(|e| e["name"] == v["name"]) {
            Some(e) => *e = v,
            None => entries.push(v),
        }
    }
    let text = serde_json::to_string_pretty(&entries)? + "\n";
    if a.check {
        let same = std::fs::read_to_string(&mpath).is_ok_and(|old| old == text);
        println!("{}: {}", mpath.display(), if same { "identical" } else { "DIFFERS from the generator" });
        differ += usize::from(!same);
        if differ > 0 {
            eprintln!("{differ} file(s) differ: regenerate with `mnq rtl --out {}` and commit", a.out.display());
        }
        return Ok(i32::from(differ > 0));
    }
    write_atomic(&mpath, text.as_bytes())?;
    println!("wrote {}", mpath.display());
    Ok(0)
}

fn cmd_cosim(a: &CosimArgs) -> Result<i32> {
    let configs = a.select.configs()?;
    if a.vcd.is_some() && configs.len() != 1 {
        bail!("--vcd needs exactly one configuration: give --unit, --bits and --lanes");
    }
    if !(0.0 < a.p_valid && a.p_valid <= 1.0 && 0.0 < a.p_ready && a.p_ready <= 1.0) {
        bail!("--p-valid and --p-ready must be in (0, 1]");
    }
    if a.elements == 0 {
        bail!("--elements must be at least 1 (default 100000)");
    }
    if a.elements > MAX_COSIM_ELEMENTS {
        bail!("--elements {} is above mnq's bound of {MAX_COSIM_ELEMENTS} per configuration", a.elements);
    }
    for f in a.json.iter().chain(&a.vcd) {
        check_output(f, &[])?;
    }
    if let (Some(j), Some(v)) = (&a.json, &a.vcd) {
        if mnq::io::same_file(j, v) {
            bail!("--json and --vcd name the same file {}", j.display());
        }
    }
    mnq::cosim::require("verilator", "verilator")?;
    let opts = mnq::cosim::CosimOptions {
        elements: a.elements,
        seed: a.seed,
        p_valid: a.p_valid,
        p_ready: a.p_ready,
        preset: a.preset,
        rtl_dir: a.rtl.clone(),
        work_dir: a.work.clone(),
        vcd: a.vcd.clone(),
    };
    let mut bad = 0;
    let mut reports = Vec::new();
    let n = configs.len();
    for (i, c) in configs.iter().enumerate() {
        eprintln!("[{}/{n}] {}: building and simulating...", i + 1, c.name());
        let r = mnq::cosim::cosim(c, &opts)?;
        println!("{}", r.line());
        bad += usize::from(r.mismatches > 0 || r.golden_mismatches > 0);
        reports.push(r);
    }
    if let Some(j) = &a.json {
        write_atomic(j, serde_json::to_string_pretty(&reports)?.as_bytes())?;
    }
    println!("{} configurations: {} cycle-exact and golden-exact, {} failing", n, n - bad, bad);
    Ok(i32::from(bad > 0))
}

fn build_unit(a: &UnitArgs) -> Result<Box<dyn Unit>> {
    let mut u = units::build(&a.unit, a.preset)?;
    for p in &a.params {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("--param '{p}' must be NAME=VALUE"))?;
        u.set_param(k, v)?;
    }
    Ok(u)
}

fn cmd_golden(files: &[PathBuf]) -> Result<i32> {
    let mut list = Vec::new();
    for f in files {
        if f.is_dir() {
            list.extend(golden::case_files(f).with_context(|| format!("{}: cannot list folder", f.display()))?);
        } else {
            list.push(f.clone());
        }
    }
    if list.is_empty() {
        bail!("no golden case files found in {files:?}");
    }
    // Every file is reported, an unreadable one included (it does not hide the others'
    // results); the exit status is the worst seen: 2 unreadable, 1 mismatching, 0 exact.
    let (mut bad, mut unreadable) = (0, 0);
    for f in &list {
        match golden::run_file(f) {
            Ok(r) => {
                println!("{}", r.line());
                bad += usize::from(!r.exact());
            }
            Err(e) => {
                println!("{}: unreadable: {e}", f.display());
                unreadable += 1;
            }
        }
    }
    let n = list.len();
    println!("{n} cases: {} exact, {bad} mismatching, {unreadable} unreadable", n - bad - unreadable);
    Ok(if unreadable > 0 {
        2
    } else if bad > 0 {
        1
    } else {
        0
    })
}

fn cmd_units(as_json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for name in units::unit_names() {
        let mut presets = serde_json::Map::new();
        let mut widths = serde_json::Map::new();
        let mut ranges = serde_json::Map::new();
        for p in [Preset::Reference, Preset::Adapted] {
            let u = units::build(name, p)?;
            presets.insert(p.to_string(), serde_json::to_value(u.params())?);
            // Accepted input scales on the op's standard rows (requant: at an output scale of 1).
            let row = sensitivity::Dist::for_op(u.op()).map_or(1, |d| d.row_len());
            let aux = Aux { out_scale: Some(Scale::PerTensor(1.0)), ..Aux::default() };
            let (lo, hi, _) = u.input_bits();
            for bits in [6u32, 8, 16].into_iter().filter(|b| (lo..=hi).contains(b)) {
                if let Some(r) = u.scale_range(bits, row, &aux) {
                    ranges.insert(format!("{p}/{bits}b"), json!({"lo": r.lo, "hi": r.hi, "text": r.to_string(), "row_len": row}));
                }
            }
            if let Some(dist) = sensitivity::Dist::for_op(u.op()) {
                for bits in [6u32, 8, 16] {
                    if let Ok(s) = sensitivity::sample(u.as_ref(), bits, dist, 2, 1) {
                        if let Ok(w) = u.declared_width(&s.q, &s.aux) {
                            widths.insert(format!("{p}/{bits}b"), json!(w));
                        }
                    }
                }
            }
        }
        let u = units::build(name, Preset::Reference)?;
        let (lo, hi, signed) = u.input_bits();
        rows.push(json!({
            "name": name,
            "op": u.op().name(),
            "method": u.method().name(),
            "input_bits": format!("{lo}..={hi}"),
            "input_sign": match signed { Some(true) => "signed", Some(false) => "unsigned", None => "signed or unsigned" },
            "presets": presets,
            "internal_width_bits": widths,
            "scale_range": ranges,
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for r in &rows {
        println!(
            "{}  ({} / {}; input {} bits, {})",
            r["name"].as_str().unwrap(),
            r["op"].as_str().unwrap(),
            r["method"].as_str().unwrap(),
            r["input_bits"].as_str().unwrap(),
            r["input_sign"].as_str().unwrap()
        );
        for (preset, params) in r["presets"].as_object().unwrap() {
            let ps: Vec<String> = params
                .as_array()
                .unwrap()
                .iter()
                .map(|p| format!("{}={}", p["name"].as_str().unwrap(), p["value"].as_str().unwrap()))
                .collect();
            println!("    preset {preset:<9}: {}", ps.join(" "));
        }
        if let Some(doc) = r["presets"]["reference"].as_array() {
            for p in doc {
                println!("        {}: {}", p["name"].as_str().unwrap(), p["doc"].as_str().unwrap());
            }
        }
        let w = r["internal_width_bits"].as_object().unwrap();
        if !w.is_empty() {
            let ws: Vec<String> = w.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("    widest intermediate (standard input distribution): {}", ws.join(" "));
        }
        let sr = r["scale_range"].as_object().unwrap();
        if !sr.is_empty() {
            let rs: Vec<String> = sr.iter().map(|(k, v)| format!("{k}={}", v["text"].as_str().unwrap())).collect();
            println!("    accepted input scales (rows of {}): {}", sr.values().next().unwrap()["row_len"], rs.join(" "));
        }
    }
    Ok(())
}

/// `mnq eval --unit gelu_fqvit`: FQ-ViT's float GELU fallback (not a golden unit) on signed
/// `--bits` codes, quantised to `--bits` at `--out-scale`, as the integer forward computes it.
fn eval_float_gelu(a: &EvalArgs) -> Result<()> {
    let f = read_input(&a.input)?;
    let s = match (&f.scale, a.scale) {
        (Some(v), _) if v.len() == 1 => v[0],
        (None, Some(s)) => s,
        _ => bail!("gelu_fqvit needs one per-tensor input scale (--scale S or \"scale\" in the JSON input)"),
    };
    let so = a.out_scale.or(f.out_scale).ok_or_else(|| anyhow!("gelu_fqvit needs --out-scale (the scale its output is quantised to)"))?;
    if !(s.is_finite() && s > 0.0 && so.is_finite() && so > 0.0) || a.unsigned || !mnq::model::quant::SUPPORTED_BITS.contains(&a.bits) {
        bail!("gelu_fqvit takes signed 4..=8-bit codes with positive input and output scales");
    }
    let Values::Int(q) = f.values else { bail!("{}: gelu_fqvit takes integer codes (\"q\")", a.input.display()) };
    let x = QTensor::new(q, &f.shape, Scale::PerTensor(s), a.bits, true).map_err(|e| anyhow!("{}: {e}", a.input.display()))?;
    let values: Vec<i64> = x.data().iter().map(|&v| i64::from(mnq::model::quant::float_gelu_code(v, s, so, a.bits))).collect();
    let doc = json!({
        "unit": "gelu_fqvit",
        "note": "FQ-ViT's float GELU fallback: not an integer unit",
        "shape": f.shape,
        "values": values,
        "scale": so,
        "encoding": {"kind": "linear"},
        "conditions": [],
    });
    write_atomic(&a.output, serde_json::to_string(&doc)?.as_bytes())?;
    println!("wrote {} ({} values)", a.output.display(), values.len());
    Ok(())
}

fn cmd_eval(a: &EvalArgs) -> Result<()> {
    if a.output.extension().and_then(|e| e.to_str()) != Some("json") {
        bail!("--output {}: the output is written as JSON; give a .json path", a.output.display());
    }
    check_output(&a.output, &[&a.input])?;
    if a.unit.unit == mnq::model::FLOAT_GELU {
        return eval_float_gelu(a);
    }
    let unit = build_unit(&a.unit)?;
    let f = read_input(&a.input)?;
    let scale = match (&f.scale, a.scale) {
        (Some(v), _) if v.len() == 1 => Scale::PerTensor(v[0]),
        (Some(v), _) => Scale::PerChannel(v.clone()),
        (None, Some(s)) => Scale::PerTensor(s),
        (None, None) => bail!("no input scale: pass --scale S (or put \"scale\" in the JSON input)"),
    };
    for v in scale.values() {
        if !(v.is_finite() && v > 0.0) {
            bail!("input scale {v} is not a positive finite number");
        }
    }
    let signed = !a.unsigned;
    let (x, clamped) = match f.values {
        Values::Int(q) => (QTensor::new(q, &f.shape, scale, a.bits, signed), 0),
        Values::Float(x) => match scale {
            Scale::PerTensor(s) => match QTensor::quantize_counted(&x, &f.shape, s, a.bits, signed) {
                Ok((t, n)) => (Ok(t), n),
                Err(e) => (Err(e), 0),
            },
            Scale::PerChannel(_) => bail!("float input needs a per-tensor --scale to be quantised"),
        },
    };
    let x = x.map_err(|e| anyhow!("{}: {e}", a.input.display()))?;
    let aux = Aux {
        gamma: f.gamma,
        beta: f.beta,
        zero_point: a.zero_point.or(f.zero_point).unwrap_or(0),
        out_scale: a.out_scale.or(f.out_scale).map(Scale::PerTensor),
        identity: None,
        mask: None,
    };
    let out = unit.run(&x, &aux, a.unit.mode)?;
    let doc = json!({
        "unit": unit.name(),
        "mode": a.unit.mode,
        "preset": a.unit.preset,
        "params": unit.params(),
        "shape": out.shape,
        "values": out.values,
        "scale": out.scale,
        "encoding": out.encoding,
        "conditions": out.conditions,
        "clamped_inputs": clamped,
    });
    write_atomic(&a.output, serde_json::to_string(&doc)?.as_bytes())?;
    if clamped > 0 {
        let (lo, hi) = mnq::fixed::int_range(a.bits.clamp(1, 63), signed);
        let s = x.scale.at(0);
        eprintln!(
            "note: {clamped} of {} float inputs were beyond the {}-bit range [{:e}, {:e}] at scale {s:e} and were clamped to it",
            x.data().len(),
            a.bits,
            lo as f64 * s,
            hi as f64 * s
        );
    }
    for (c, n) in &out.conditions {
        eprintln!("note: {c:?} in {n} rows/elements (see the unit's documentation for the defined output)");
    }
    println!("wrote {} ({} values)", a.output.display(), out.values.len());
    Ok(())
}

fn cmd_error(a: &ErrorArgs) -> Result<()> {
    let names: Vec<String> = if a.all {
        units::unit_names()
            .into_iter()
            .filter(|n| units::build(n, Preset::Reference).is_ok_and(|u| Dist::for_op(u.op()).is_some()))
            .map(String::from)
            .collect()
    } else {
        vec![a.unit.clone().unwrap()]
    };
    if a.rows == 0 {
        bail!("--rows must be at least 1");
    }
    if a.rows > MAX_ERROR_ROWS {
        bail!("--rows {} is above mnq's bound of {MAX_ERROR_ROWS}", a.rows);
    }
    if a.bits.is_empty() || a.preset.is_empty() {
        bail!("--bits and --preset need at least one value");
    }
    check_output_dir(&a.out, &[])?;
    let mut table = Vec::new();
    for name in &names {
        for &preset in &a.preset {
            for &bits in &a.bits {
                let mut unit = units::build(name, preset)?;
                for p in &a.params {
                    let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("--param '{p}' must be NAME=VALUE"))?;
                    if !a.all || unit.params().iter().any(|q| q.name == k) {
                        unit.set_param(k, v)?;
                    }
                }
                let (lo, hi, _) = unit.input_bits();
                if bits < lo.max(2) || bits > hi.min(16) {
                    bail!("{name}: --bits {bits} is not supported here (2..=16 within the unit's {lo}..={hi})");
                }
                let dist = match a.dist.or(Dist::for_op(unit.op())) {
                    Some(d) => d,
                    None => bail!("{name} has no float counterpart; `mnq error` measures softmax_*, gelu_* and layernorm_* units"),
                };
                let row = error_one(unit.as_ref(), preset, bits, dist, a)?;
                println!(
                    "{name:<16} {preset:<9} {bits:>2}b  SQNR {:>8} dB  (unit alone {:>8} dB)  max|err| {:.4}  mean|err| {:.5}",
                    fmt_db(row["vs_float"]["sqnr_db"].as_f64()),
                    fmt_db(row["vs_float_on_quantised_input"]["sqnr_db"].as_f64()),
                    row["vs_float"]["max_abs"].as_f64().unwrap_or(0.0),
                    row["vs_float"]["mean_abs"].as_f64().unwrap_or(0.0)
                );
                table.push(row);
            }
        }
    }
    if names.len() > 1 || a.bits.len() > 1 || a.preset.len() > 1 {
        let mut md = String::from("| unit | preset | bits | SQNR (dB) | SQNR unit alone (dB) | SQNR Eq. 10 ratio | max abs err | mean abs err |\n|---|---|---|---|---|---|---|---|\n");
        for r in &table {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.4} | {:.5} |\n",
                r["unit"].as_str().unwrap(),
                r["preset"].as_str().unwrap(),
                r["bits"],
                fmt_db(r["vs_float"]["sqnr_db"].as_f64()),
                fmt_db(r["vs_float_on_quantised_input"]["sqnr_db"].as_f64()),
                r["vs_float"]["sqnr"].as_f64().map_or("exact".into(), |v| format!("{v:.1}")),
                r["vs_float"]["max_abs"].as_f64().unwrap_or(0.0),
                r["vs_float"]["mean_abs"].as_f64().unwrap_or(0.0)
            ));
        }
        write_atomic(&a.out.join("summary.md"), md.as_bytes())?;
        write_atomic(&a.out.join("summary.json"), serde_json::to_string_pretty(&table)?.as_bytes())?;
        println!("wrote {}", a.out.join("summary.{md,json}").display());
    }
    Ok(())
}

fn fmt_db(v: Option<f64>) -> String {
    v.map_or("exact".into(), |v| format!("{v:.2}"))
}

fn error_one(unit: &dyn Unit, preset: Preset, bits: u32, dist: Dist, a: &ErrorArgs) -> Result<serde_json::Value> {
    let s = sensitivity::sample(unit, bits, dist, a.rows, a.seed)?;
    let out = unit.run(&s.q, &s.aux, a.mode)?;
    let y = out.dequantize();
    let vs_float = sensitivity::error_stats(&s.reference, &y);
    let vs_deq = sensitivity::error_stats(&s.reference_deq, &y);
    let deq_in: Vec<f64> =
        s.q.data().iter().enumerate().map(|(i, &v)| (v - s.aux.zero_point) as f64 * s.q.scale.at(i % s.q.row_len())).collect();
    let input = sensitivity::error_stats(&s.x, &deq_in);
    let stem = format!("{}_{}b_{}", unit.name(), bits, preset);
    let mut files = vec![a.out.join(format!("{stem}.json"))];
    if !a.no_plots {
        let title = format!("{} ({preset}, {bits}-bit input, {:?} mode)", unit.name(), a.mode);
        files.extend(report::transfer_plot(&a.out.join(format!("{stem}_transfer")), &title, &s.reference, &y)?);
        let errs: Vec<f64> = y.iter().zip(&s.reference).map(|(o, r)| o - r).collect();
        files.extend(report::error_histogram(&a.out.join(format!("{stem}_error_hist")), &title, &errs)?);
    }
    let row = json!({
        "unit": unit.name(),
        "preset": preset,
        "mode": a.mode,
        "bits": bits,
        "dist": dist,
        "rows": a.rows,
        "row_len": dist.row_len(),
        "seed": a.seed,
        "params": unit.params(),
        "declared_width_bits": unit.declared_width(&s.q, &s.aux)?,
        "input_quantisation": input,
        "vs_float": vs_float,
        "vs_float_on_quantised_input": vs_deq,
        "conditions": out.conditions,
        "files": files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "command": format!("mnq error --unit {} --bits {bits} --preset {preset} --mode {} --rows {} --seed {}", unit.name(), match a.mode { Mode::Reference => "reference", Mode::Integer => "integer" }, a.rows, a.seed),
    });
    write_atomic(&files[0], serde_json::to_string_pretty(&row)?.as_bytes())?;
    Ok(row)
}

fn cmd_graph(dir: &std::path::Path) -> Result<()> {
    let m = mnq::model::Model::load(dir)?;
    let g = &m.graph;
    let count = |op: units::Op| g.layers.iter().filter(|l| l.op == op).count();
    println!(
        "{} ({}): {} ops, {} softmax / {} GELU / {} LayerNorm layers, {} parameters",
        m.manifest.name,
        m.manifest.arch,
        g.nodes.len(),
        count(units::Op::Softmax),
        count(units::Op::Gelu),
        count(units::Op::LayerNorm),
        g.params.len()
    );
    print!("{}", g.describe());
    Ok(())
}
