//! `mnq run`, the main job: layer-wise sensitivity of a model to the three methods, the decision
//! rules, the cost-aware Pareto fronts, end-to-end accuracy of every assignment, and the report
//! folder (`reports/<model>/`) with tables, figures, assignments, Verilog and `index.md`.
//!
//! Everything is first written into a temporary sibling folder and renamed into place only when
//! every step succeeded, so an error leaves nothing partial behind.

use crate::report::charts::{self, OutputHistograms, ParetoScatter, ScatterPoint, SqnrBars};
use crate::report::pct;
use serde::{Deserialize, Serialize};
use shard::Mode;

pub mod shard;
use crate::cost::AreaMetric;
use crate::io::{write_atomic, IoError};
use crate::model::attribution;
use crate::model::manifest::{unit_for, OrderedLayers};
use crate::model::{self, calibrate, forward_multi, ActScales, Assignment, CalibOptions, Images, IntModel, Model, ModelError, QuantConfig};
use crate::sensitivity::asqnr::{Asqnr, AsqnrError, Convention};
use crate::sensitivity::assign::{self, AssignError, Axis, Budget, Choice, Problem, Sense, Solution};
use crate::sensitivity::range::RangeProfile;
use crate::sensitivity::table::{Cell, Criterion, LayerInfo, Table, TableError, TableLayer};
use crate::units::{Method, Op, Preset};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;

/// The three methods of the seed, in report order.
pub const METHODS: [Method; 3] = [Method::IBert, Method::FqVit, Method::IVit];

/// Why `mnq run` stopped.
#[derive(Debug, Error)]
pub enum RunError {
    /// Model loading, calibration or a forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// ASQNR accumulation failed.
    #[error(transparent)]
    Asqnr(#[from] AsqnrError),
    /// The sensitivity table was refused.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The assignment optimiser refused the problem or the budget.
    #[error(transparent)]
    Assign(#[from] AssignError),
    /// Writing a file or a figure failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Bad options or inputs, with the way out.
    #[error("{0}")]
    Input(String),
}

/// Options of the main job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOptions {
    /// Model directory.
    pub model_dir: PathBuf,
    /// Evaluation images (`.npy`, uint8 [N,H,W]).
    pub eval_images: PathBuf,
    /// Evaluation labels (`.npy`).
    pub eval_labels: PathBuf,
    /// Calibration images (train split); also the sensitivity images.
    pub calib_images: PathBuf,
    /// Images for the sensitivity analysis (first N of the calibration split).
    pub sens_images: usize,
    /// Limit on the evaluation images (None = all).
    pub images: Option<usize>,
    /// Activation (and weight) widths.
    pub bits: Vec<u32>,
    /// Architecture model of the cost-aware part.
    pub arch: assign::Arch,
    /// Area budget (in the units of `area_metric`; needs the cost table).
    pub area_budget: Option<f64>,
    /// Which area figure of the cost table the optimiser uses (absent in older options: NAND2-eq).
    #[serde(default)]
    pub area_metric: crate::cost::AreaMetric,
    /// Latency budget (cycles per image over the costed layers).
    pub latency_budget: Option<u64>,
    /// Decibel convention.
    pub convention: Convention,
    /// Most Pareto points evaluated end to end per front.
    pub max_pareto_eval: usize,
    /// Cost table written by `mnq cost` (used when present).
    pub cost_table: PathBuf,
    /// RTL manifest with the cycle-model formulas (`rtl/manifest.json`).
    pub rtl_manifest: PathBuf,
    /// Error attribution of the SQNR-diff rule's model (linear quantisation against units).
    pub attribution: crate::model::attribution::Level,
    /// Attribution on the first N evaluation images only (None = all of them).
    #[serde(default)]
    pub attr_images: Option<usize>,
    /// Output folder.
    pub out: PathBuf,
    /// Show progress bars.
    #[serde(skip)]
    pub progress: bool,
    /// All images here, one shard's slices, or a merge of shards' partials.
    #[serde(skip)]
    pub mode: Mode,
}

// ---------------------------------------------------------------- costs

/// Area of one SRAM bit in NAND2-equivalents: a 6-transistor cell against the 4 of a NAND2
/// (array periphery not counted), so that row buffers weigh in the area the optimiser sees.
pub const SRAM_NAND2_EQ_PER_BIT: f64 = 1.5;

/// Cost of one unit configuration as the run uses it: area per instance when known, and the
/// cycle formulas of the single-lane configuration.
#[derive(Debug, Clone)]
struct UnitCost {
    area: Option<f64>,
    /// Why the cost table has no area for this configuration in the chosen metric.
    area_missing: Option<String>,
    /// Timing measured by `mnq cost`, when the cost table has the configuration.
    timing: Option<crate::cost::Row>,
    latency: String,
    row_period: String,
}

/// Where the costs came from and what they are, per (unit, bits).
#[derive(Debug, Clone, Default)]
struct Costs {
    units: BTreeMap<(String, u32), UnitCost>,
    metric: crate::cost::AreaMetric,
    area_source: Option<String>,
    notes: Vec<String>,
}

/// Evaluate a manifest cycle formula at row length `n` (see [`crate::cost::latency::eval_formula`]).
fn formula(f: &str, n: u64, lanes: u64) -> Option<u64> {
    crate::cost::latency::eval_formula(f, n as usize, lanes as usize).ok().and_then(|v| u64::try_from(v).ok())
}

impl Costs {
    fn load(rtl_manifest: &Path, cost_table: &Path, metric: crate::cost::AreaMetric) -> Result<Costs, RunError> {
        let mut c = Costs { metric, ..Costs::default() };
        let text = std::fs::read_to_string(rtl_manifest).map_err(|e| {
            RunError::Input(format!("{}: {e}; run from the repository root or regenerate it with `mnq rtl`", rtl_manifest.display()))
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| RunError::Input(format!("{}: not an RTL manifest ({e}); regenerate it with `mnq rtl`", rtl_manifest.display())))?;
        for e in v.as_array().into_iter().flatten() {
            if e["lanes"].as_u64() != Some(1) {
                continue;
            }
            let (Some(unit), Some(bits), Some(lat), Some(rp)) =
                (e["unit"].as_str(), e["bits"].as_u64(), e["latency_cycles"].as_str(), e["row_period_cycles"].as_str())
            else {
                continue;
            };
            c.units.insert(
                (unit.to_string(), bits as u32),
                UnitCost { area: None, area_missing: None, timing: None, latency: lat.to_string(), row_period: rp.to_string() },
            );
        }
        if cost_table.is_file() {
            let t = crate::cost::Table::load(cost_table).map_err(|e| RunError::Input(e.to_string()))?;
            let mut found = 0;
            for ((unit, bits), uc) in c.units.iter_mut() {
                let area = match metric {
                    AreaMetric::Nand2 => t.area(unit, *bits, 1).map(|a| a.nand2_eq + SRAM_NAND2_EQ_PER_BIT * a.memory_bits as f64),
                    AreaMetric::Lut4 => t.luts(unit, *bits, 1, crate::cost::Target::Ice40).map(|n| n as f64),
                    AreaMetric::Lut6 => t.luts(unit, *bits, 1, crate::cost::Target::Xilinx).map(|n| n as f64),
                };
                match area {
                    Ok(a) => {
                        uc.area = Some(a);
                        found += 1;
                    }
                    Err(e) => uc.area_missing = Some(e.to_string()),
                }
                if let Ok(r) = t.row(unit, *bits, 1) {
                    uc.timing = Some(r.clone());
                }
            }
            let what = match metric {
                AreaMetric::Nand2 => format!("yosys NAND2-equivalents of logic and flip-flops, plus row-buffer SRAM at {SRAM_NAND2_EQ_PER_BIT} NAND2-eq per bit, a 6-transistor cell"),
                AreaMetric::Lut4 => "yosys iCE40 UltraPlus LUT4, block RAMs and DSPs not counted; `--area-metric lut4`".into(),
                AreaMetric::Lut6 => "yosys Xilinx 7-series LUT6-equivalents (logic LUTs, LUTRAM and SRL sites), block RAMs and DSPs not counted; a synthesis estimate without place and route; `--area-metric lut6`".into(),
            };
            c.area_source = Some(format!("{} ({what}; {found} configurations)", cost_table.display()));
            c.notes.push(format!(
                "latency: cycles measured on the single-lane cycle models by `mnq cost` ({}): layer cycles per image = cycles of its rows streamed back to back, first input to last output",
                cost_table.display()
            ));
        } else {
            c.notes.push(format!(
                "latency: cycle-model formulas of the single-lane configurations in {} (layer cycles per image = latency(N) + rows × row_period(N), N = row length)",
                rtl_manifest.display()
            ));
            c.notes.push(format!(
                "area: no cost table at {} (`mnq cost` writes it), so no area is known and the area-aware part is skipped",
                cost_table.display()
            ));
        }
        Ok(c)
    }

    fn get(&self, unit: &str, bits: u32) -> Option<&UnitCost> {
        self.units.get(&(unit.to_string(), bits))
    }

    /// Cycles of one image's rows of a layer on `unit`, when the unit has hardware.
    fn layer_latency(&self, unit: &str, bits: u32, rows: usize, row_len: usize) -> Option<u64> {
        let c = self.get(unit, bits)?;
        if let Some(r) = &c.timing {
            return r.timing_at(row_len).ok().map(|t| t.cycles(rows as u64));
        }
        let n = row_len as u64;
        Some(formula(&c.latency, n, 1)? + rows as u64 * formula(&c.row_period, n, 1)?)
    }

    fn area(&self, unit: &str, bits: u32) -> Option<f64> {
        self.get(unit, bits).and_then(|c| c.area)
    }

    /// The first unit with hardware (a row in the cost table) at one of `bits` but no area in
    /// the chosen metric: the optimiser would silently drop it, so the run stops instead.
    fn missing_area(&self, bits: &[u32]) -> Option<String> {
        self.units
            .iter()
            .filter(|((_, b), c)| bits.contains(b) && c.timing.is_some() && c.area.is_none())
            .find_map(|(_, c)| c.area_missing.clone())
            .map(|why| format!("--area-metric {}: {why}, or choose another --area-metric", self.metric))
    }
}

// ---------------------------------------------------------------- sensitivity

/// Float and one single-method integer model over the sensitivity images: ASQNR of every
/// layer's input and output, plus the outputs of the first images for the histograms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sens {
    /// ASQNR of every non-linear layer's input, in execution order.
    pub input: Vec<Asqnr>,
    /// ASQNR of every non-linear layer's output, in execution order.
    pub output: Vec<Asqnr>,
    /// `samples[layer]` = (float outputs, quantised outputs) of the first images, at most
    /// `HIST_VALUES` evenly strided values per image.
    #[serde(with = "samples_bits")]
    pub samples: Vec<(Vec<f64>, Vec<f64>)>,
    /// Range profile of every non-linear layer, in execution order.
    pub ranges: Vec<RangeProfile>,
}

impl Sens {
    /// Append the sums of the images after this one's (shards joined in order).
    pub fn extend(&mut self, later: Sens) {
        for (l, (i, o)) in later.input.into_iter().zip(later.output).enumerate() {
            self.input[l].extend(i);
            self.output[l].extend(o);
        }
        for (l, (f, q)) in later.samples.into_iter().enumerate() {
            self.samples[l].0.extend(f);
            self.samples[l].1.extend(q);
        }
        for (l, r) in later.ranges.iter().enumerate() {
            self.ranges[l].merge(r);
        }
    }
}

/// Serde of the histogram samples as bit patterns (exact through a shard's partial).
mod samples_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    type Samples = Vec<(Vec<f64>, Vec<f64>)>;
    type Bits = Vec<(Vec<u64>, Vec<u64>)>;

    pub fn serialize<S: Serializer>(v: &Samples, s: S) -> Result<S::Ok, S::Error> {
        let to = |x: &[f64]| x.iter().map(|v| v.to_bits()).collect::<Vec<u64>>();
        s.collect_seq(v.iter().map(|(f, q)| (to(f), to(q))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Samples, D::Error> {
        let from = |x: Vec<u64>| x.into_iter().map(f64::from_bits).collect::<Vec<f64>>();
        Ok(Bits::deserialize(d)?.into_iter().map(|(f, q)| (from(f), from(q))).collect())
    }
}

const HIST_IMAGES: usize = 4;
/// Most output values per layer and image kept for the histograms. An 80-bin histogram needs
/// far fewer than a real model's outputs (ViT-S softmax: 6x197x197 per image), and keeping
/// them all cost about 0.5 GB per method and width at 224 px.
const HIST_VALUES: usize = 4096;

/// Every `stride`-th value, `stride` = ceil(len / HIST_VALUES), from the first: the same
/// values whichever shard or thread computes the image.
fn hist_sample(x: &[f64]) -> Vec<f64> {
    let stride = x.len().div_ceil(HIST_VALUES).max(1);
    x.iter().step_by(stride).copied().collect()
}
const CHUNK: usize = 16;

/// The sensitivity pass of `mnq run`: the float model once and every integer model of `qms`
/// beside it (one [`Sens`] each, in `qms` order) over `images`, parallel over images and
/// accumulated in image order, every tap into the ASQNRs. `first` is the index of `images`'
/// first image in the whole split (a shard's slice starts later), so that the histogram
/// samples are always those of the split's first images.
pub fn sensitivity(model: &Model, qms: &[&IntModel], images: &Images, first: usize, bar: &ProgressBar) -> Result<Vec<Sens>, RunError> {
    let nl = model.layers.len();
    let empty = || Sens {
        input: model.layers.iter().map(|l| Asqnr::new(format!("{} input", l.name))).collect(),
        output: model.layers.iter().map(|l| Asqnr::new(format!("{} output", l.name))).collect(),
        samples: vec![(Vec::new(), Vec::new()); nl],
        ranges: vec![RangeProfile::default(); nl],
    };
    let mut s: Vec<Sens> = qms.iter().map(|_| empty()).collect();
    // Per image: a one-image `Sens` per model (joined below in image order with `Sens::extend`,
    // identical to feeding the images one by one), with the outputs only for the histograms'
    // first images. Keeping no other tap values bounds memory by the images in flight.
    let mut start = 0;
    while start < images.len() {
        let end = (start + CHUNK).min(images.len());
        // Parallel over a chunk, then joined in image order so the result does not depend on threads.
        let chunk: Vec<Vec<Sens>> = (start..end)
            .into_par_iter()
            .map(|i| -> Result<Vec<Sens>, RunError> {
                let mut per: Vec<Sens> =
                    qms.iter().map(|_| Sens { input: Vec::new(), output: Vec::new(), samples: Vec::new(), ranges: Vec::new() }).collect();
                let keep = first + i < HIST_IMAGES;
                let mut err = None;
                forward_multi::<f64>(model, qms, &images.image(i), &mut |a, bs| {
                    let name = &model.layers[a.layer.index].name;
                    let fs = if keep { hist_sample(a.output) } else { Vec::new() };
                    for (p, b) in per.iter_mut().zip(bs) {
                        let mut ai = Asqnr::new(format!("{name} input"));
                        let mut ao = Asqnr::new(format!("{name} output"));
                        if let Err(e) = ai.push(a.input, b.input).and_then(|_| ao.push(a.output, b.output)) {
                            err.get_or_insert(e.at_image(i));
                        }
                        let mut rp = RangeProfile::default();
                        rp.push(a, b);
                        p.input.push(ai);
                        p.output.push(ao);
                        p.samples.push(if keep { (fs.clone(), hist_sample(b.output)) } else { (Vec::new(), Vec::new()) });
                        p.ranges.push(rp);
                    }
                })?;
                if let Some(e) = err {
                    return Err(e.into());
                }
                bar.inc(1);
                Ok(per)
            })
            .collect::<Result<_, _>>()?;
        for per in chunk {
            for (t, p) in s.iter_mut().zip(per) {
                t.extend(p);
            }
        }
        start = end;
    }
    Ok(s)
}

// ---------------------------------------------------------------- range profile

/// A flagged layer of the range profile: (layer, unit, flags).
type RangeFlag = (String, String, String);

/// `ranges_<bits>b.{md,csv,json}` and the figure: per layer and single-method model, the float
/// input against the unit's input format (saturating share, bits of the format used) and the
/// output ranges. Returns the flagged (layer, unit, flags) for the index.
fn ranges_report(
    files: &mut Vec<(String, Vec<u8>)>,
    tmp: &Path,
    name: &str,
    bits: u32,
    layers: &[model::Layer],
    sens: &[Sens],
) -> Result<Vec<RangeFlag>, RunError> {
    let fmt_pair = |p: Option<(f64, f64)>| p.map_or("—".to_string(), |(a, b)| format!("[{a:.4}, {b:.4}]"));
    let mut md = format!(
        "# Range profile: {name} at {bits} bits

Per non-linear layer and single-method model, over the sensitivity images: the float model's input values against the integer format the unit takes them in (bits, signedness, scale: per tensor, or the smallest and largest per-channel scale), the share of them beyond the format (they saturate when quantised), the bits of the format their codes span, and the float and integer output ranges. Flags: saturating above {:.1} %, few codes when more than {} bits of the format are unused. A 16-bit residual input (LayerNorm) or an int32 accumulator (I-BERT's GELU) is a wide format by design.

| layer | unit | input format | float input range | saturating | bits used | float output range | integer output range | flags |
|---|---|---|---|---:|---:|---|---|---|
",
        100.0 * crate::sensitivity::range::SATURATION_FLAG,
        crate::sensitivity::range::UNUSED_BITS_FLAG
    );
    let mut csv = String::from("layer,label,unit,bits,signed,zero_point,scale_min,scale_max,float_in_min,float_in_max,saturated_share,code_min,code_max,bits_used,float_out_min,float_out_max,int_out_min,int_out_max,flags
");
    let mut jl = Vec::new();
    let mut flagged = Vec::new();
    let mut unused: Vec<Vec<Option<f64>>> = vec![Vec::new(); METHODS.len()];
    let mut sat: Vec<Vec<Option<f64>>> = vec![Vec::new(); METHODS.len()];
    for l in layers {
        for (k, meth) in METHODS.iter().enumerate() {
            let unit = unit_for(l.op, *meth);
            let u = unit.name();
            let r = &sens[k].ranges[l.index];
            let f = r.format.as_ref();
            let (smin, smax) = f.map_or((f64::NAN, f64::NAN), |f| {
                (f.scales.iter().cloned().fold(f64::INFINITY, f64::min), f.scales.iter().cloned().fold(0.0, f64::max))
            });
            let fdesc = f.map_or("—".to_string(), |f| {
                let sc = if f.scales.len() == 1 { format!("s = {smin:.3e}") } else { format!("s per channel {smin:.3e}..{smax:.3e}") };
                format!(
                    "{}{} {}{}",
                    if f.signed { "int" } else { "uint" },
                    f.bits,
                    sc,
                    if f.zero_point != 0 { format!(", zp {}", f.zero_point) } else { String::new() }
                )
            });
            let flags = r.flags();
            if !flags.is_empty() {
                flagged.push((l.name.clone(), u.to_string(), flags.clone()));
            }
            let _ = writeln!(
                md,
                "| {} ({}) | {u} | {fdesc} | {} | {:.3} % | {} | {} | {} | {flags} |",
                l.name,
                l.label(),
                fmt_pair(r.float_input()),
                100.0 * r.saturation(),
                r.used_bits().map_or("—".into(), |b| format!("{b:.1}")),
                fmt_pair(r.float_output()),
                fmt_pair(r.int_output())
            );
            let o = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
            let _ = writeln!(
                csv,
                "{},{},{u},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{flags}\"",
                l.name,
                l.label(),
                f.map_or(String::new(), |f| f.bits.to_string()),
                f.map_or(String::new(), |f| f.signed.to_string()),
                f.map_or(String::new(), |f| f.zero_point.to_string()),
                o(f.map(|_| smin)),
                o(f.map(|_| smax)),
                o(r.float_input().map(|p| p.0)),
                o(r.float_input().map(|p| p.1)),
                r.saturation(),
                r.codes.map_or(String::new(), |c| c.0.to_string()),
                r.codes.map_or(String::new(), |c| c.1.to_string()),
                o(r.used_bits()),
                o(r.float_output().map(|p| p.0)),
                o(r.float_output().map(|p| p.1)),
                o(r.int_output().map(|p| p.0)),
                o(r.int_output().map(|p| p.1)),
            );
            jl.push(json!({
                "layer": l.name, "label": l.label(), "unit": u, "format": f,
                "float_input": r.float_input(), "saturated_share": r.saturation(), "codes": r.codes, "bits_used": r.used_bits(),
                "float_output": r.float_output(), "int_output": r.int_output(), "flags": flags,
            }));
            unused[k].push(r.unused_bits());
            sat[k].push(Some(100.0 * r.saturation()));
        }
    }
    if flagged.is_empty() {
        md.push_str(
            "
No layer saturates or uses few codes.
",
        );
    }
    files.push((format!("ranges_{bits}b.md"), md.into_bytes()));
    files.push((format!("ranges_{bits}b.csv"), csv.into_bytes()));
    files.push((
        format!("ranges_{bits}b.json"),
        (serde_json::to_string_pretty(&json!({"model": name, "bits": bits, "layers": jl})).expect("serialises") + "\n").into_bytes(),
    ));
    let labels: Vec<String> = layers.iter().map(|l| l.label()).collect();
    let mnames: Vec<String> = METHODS.iter().map(|m| m.name().to_string()).collect();
    charts::sqnr_bars(
        &tmp.join(format!("ranges_{bits}b")),
        &SqnrBars {
            title: &format!("{name}, {bits}-bit: input format use per layer (bars: bits unused; lines: share saturating)"),
            layers: &labels,
            methods: &mnames,
            diff: &unused,
            out: &sat,
            bar_desc: "bits of the input format unused",
            line_desc: "float inputs saturating (%)",
        },
    )?;
    Ok(flagged)
}

// ---------------------------------------------------------------- sums over images

/// Where the run's sums over images come from: computed on all images, on one shard's slice
/// (written as partials, see [`shard`]), or joined from every shard's partials.
struct Sums<'a> {
    mode: &'a Mode,
    sens_total: usize,
    eval_total: usize,
    /// Shards whose sensitivity partials are still missing.
    waiting: Vec<usize>,
    /// Whether to show progress bars.
    progress: bool,
    /// The float32 forward's outputs of the evaluation images (of this shard's slice), computed
    /// at the first evaluation that needs them and shared by every integer model and width.
    float: std::cell::OnceCell<Vec<model::Output>>,
}

impl Sums<'_> {
    fn sens_slice(&self) -> std::ops::Range<usize> {
        match self.mode {
            Mode::Shard { spec, .. } => shard::slice(self.sens_total, *spec),
            _ => 0..self.sens_total,
        }
    }

    fn eval_slice(&self) -> std::ops::Range<usize> {
        match self.mode {
            Mode::Shard { spec, .. } => shard::slice(self.eval_total, *spec),
            _ => 0..self.eval_total,
        }
    }

    fn missing(work: &Path, key: &str, missing: &[usize], n: usize) -> RunError {
        RunError::Input(format!(
            "{}: shards {} of {n} have not written {key}: run `mnq run --shard K/{n} --work {}` for them (twice: stage 1 then stage 2) before `mnq merge`",
            work.display(),
            shard::list(missing),
            work.display()
        ))
    }

    /// The sensitivity of the single-method models `qms` (partials `keys`, one per model): all
    /// images, or `None` while a shard waits for the others' slices.
    fn sensitivity(
        &mut self,
        keys: &[String],
        model: &Model,
        qms: &[&IntModel],
        images: &Images,
        bar: &ProgressBar,
    ) -> Result<Option<Vec<Sens>>, RunError> {
        let (n, work) = match self.mode {
            Mode::Whole => return Ok(Some(sensitivity(model, qms, images, 0, bar)?)),
            Mode::Shard { spec, work } => {
                // Stage 2 (or a re-run) finds its slices already written; read_all checks them below.
                if keys.iter().any(|k| !shard::has_own(work, *spec, k)) {
                    let ss = sensitivity(model, qms, images, self.sens_slice().start, bar)?;
                    for (k, s) in keys.iter().zip(&ss) {
                        shard::write(work, *spec, k, self.sens_slice(), self.sens_total, s)?;
                    }
                }
                (spec.n, work)
            }
            Mode::Merge { n, work } => (*n, work),
        };
        let mut out = Vec::new();
        for key in keys {
            match shard::read_all::<Sens>(work, n, key, self.sens_total)? {
                Ok(parts) => {
                    let mut it = parts.into_iter();
                    let mut s = it.next().expect("at least one shard");
                    for p in it {
                        s.extend(p);
                    }
                    out.push(s);
                }
                Err(missing) if matches!(self.mode, Mode::Merge { .. }) => return Err(Self::missing(work, key, &missing, n)),
                Err(missing) => {
                    self.waiting.extend(missing);
                    self.waiting.sort_unstable();
                    self.waiting.dedup();
                }
            }
        }
        Ok((out.len() == keys.len()).then_some(out))
    }

    /// The exact sums of `job` over this run's images: computed (and, in a shard, written as
    /// partial `key`, or read back when already there), or joined from every shard's partial.
    fn sums<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &str,
        job: impl FnOnce() -> Result<T, RunError>,
        merge: impl Fn(T, &T) -> T,
    ) -> Result<T, RunError> {
        match self.mode {
            Mode::Whole => job(),
            Mode::Shard { spec, work } => {
                if let Some(t) = shard::read_own::<T>(work, *spec, key, self.eval_total)? {
                    return Ok(t);
                }
                let t = job()?;
                shard::write(work, *spec, key, self.eval_slice(), self.eval_total, &t)?;
                Ok(t)
            }
            Mode::Merge { n, work } => match shard::read_all::<T>(work, *n, key, self.eval_total)? {
                Ok(parts) => {
                    let mut it = parts.into_iter();
                    let first = it.next().expect("at least one shard");
                    Ok(it.fold(first, |a, b| merge(a, &b)))
                }
                Err(missing) => Err(Self::missing(work, key, &missing, *n)),
            },
        }
    }

    /// The float32 outputs of the evaluation images, computed on first use.
    fn float(&self, model: &Model, eval: &Images) -> &[model::Output] {
        self.float.get_or_init(|| {
            let b = bar(self.progress, eval.len() as u64, format!("float reference on {} images", eval.len()));
            let f = model::float_outputs::<f32>(model, eval, &|| b.inc(1));
            b.finish();
            f
        })
    }

    /// End-to-end figures of each of `qms` (float32 reference) over the evaluation images, the
    /// sums kept as partial `keys[k]` (one per model, as [`Sums::sums`] does for one), the
    /// models that still need them run together with their shared prefixes computed once.
    fn evaluate_many(
        &self,
        keys: &[String],
        model: &Model,
        qms: &[&IntModel],
        eval: &Images,
        bar: &ProgressBar,
    ) -> Result<Vec<model::EvalReport>, RunError> {
        let mut accs: Vec<Option<model::EvalAcc>> = vec![None; qms.len()];
        if let Mode::Shard { spec, work } = self.mode {
            for (a, key) in accs.iter_mut().zip(keys) {
                *a = shard::read_own(work, *spec, key, self.eval_total)?;
            }
        }
        if !matches!(self.mode, Mode::Merge { .. }) {
            let todo: Vec<usize> = (0..qms.len()).filter(|&k| accs[k].is_none()).collect();
            if !todo.is_empty() {
                let run: Vec<&IntModel> = todo.iter().map(|&k| qms[k]).collect();
                let got = model::evaluate_logits_many(&run, eval, self.float(model, eval), &|| bar.inc(1))?;
                for (&k, a) in todo.iter().zip(got) {
                    if let Mode::Shard { spec, work } = self.mode {
                        shard::write(work, *spec, &keys[k], self.eval_slice(), self.eval_total, &a)?;
                    }
                    accs[k] = Some(a);
                }
            }
        }
        let mut out = Vec::with_capacity(qms.len());
        for (k, a) in accs.into_iter().enumerate() {
            let acc = match a {
                Some(a) => a,
                None => self.sums(&keys[k], || unreachable!("only a merge reads every shard's sums"), |a: model::EvalAcc, b| a.merge(b))?,
            };
            out.push(acc.report(model, qms[k], <f32 as model::Real>::name(), eval.labels.is_some()));
        }
        Ok(out)
    }

    /// The attribution variants over the evaluation images.
    #[allow(clippy::too_many_arguments)]
    fn attribute(
        &self,
        key: &str,
        model: &Model,
        scales: &ActScales,
        bits: u32,
        vars: Vec<attribution::Variant>,
        eval: &Images,
        limit: Option<usize>,
        bar: &ProgressBar,
    ) -> Result<attribution::Attribution, RunError> {
        // The first `limit` images of the whole split: this shard's part of them.
        let m = limit.map_or(eval.len(), |n| eval.len().min(n.saturating_sub(self.eval_slice().start)));
        let acc = self.sums(
            key,
            || {
                let imgs = eval.prefix(m);
                let float = &self.float(model, eval)[..m];
                Ok(attribution::attribute_acc::<f32>(model, scales, bits, Preset::Adapted, &vars, &imgs, float, &|| bar.inc(1))?)
            },
            |a, b| a.merge(b),
        )?;
        Ok(acc.finish(vars, <f32 as model::Real>::name(), eval.labels.is_some()))
    }
}

/// "the N evaluation images", or "the first N of the M evaluation images (`--attr-images N`)".
fn attr_images_text(n: usize, total: usize) -> String {
    if n >= total {
        format!("the {n} evaluation images")
    } else {
        format!("the first {n} of the {total} evaluation images (`--attr-images {n}`)")
    }
}

// ---------------------------------------------------------------- results

/// The signoff figures of one width for `summary.json` (README "summary.json"): per evaluated
/// single method and rule, its units, area and cycles under the run's architecture model and
/// its accuracy; per unit type its synthesis figures; the RTL files with their hashes.
fn signoff_bits(
    bits: u32,
    arch: crate::sensitivity::assign::Arch,
    costs: &Costs,
    problem: Option<&assign::Problem>,
    acc: &[Accuracy],
    hw: &[HwFile],
    skipped: &[String],
) -> serde_json::Value {
    let models: Vec<serde_json::Value> = acc
        .iter()
        .filter(|a| a.kind == "single" || a.kind == "rule")
        .map(|a| {
            let asg = assign::Assignment(a.assignment.iter().map(|(l, u)| (l.clone(), u.clone())).collect());
            let sol = problem.and_then(|p| p.evaluate_assignment(arch, &asg).ok());
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for u in a.assignment.values() {
                *counts.entry(u.as_str()).or_default() += 1;
            }
            json!({
                "name": a.name,
                "kind": a.kind,
                "top1": a.top1,
                "agreement_with_float": a.agreement,
                "logits_asqnr_db": a.logits_asqnr_db,
                "units": counts,
                format!("area_{}", costs.metric.key()): sol.as_ref().map(|s| s.area),
                "cycles_per_image": sol.as_ref().map(|s| s.latency),
                "max_layer_cycles": sol.as_ref().map(|s| s.max_layer_latency),
            })
        })
        .collect();
    let mut types: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for a in acc.iter().filter(|a| a.kind == "single" || a.kind == "rule") {
        for u in a.assignment.values() {
            if types.contains_key(u) {
                continue;
            }
            let c = costs.get(u, bits);
            let row = c.and_then(|c| c.timing.as_ref());
            let ice = row.and_then(|r| r.ice40.as_ref()).and_then(crate::cost::Outcome::ok);
            let fmax = row.and_then(|r| r.fmax.as_ref()).and_then(crate::cost::Outcome::ok).and_then(|f| f.mhz);
            types.insert(
                u.clone(),
                json!({
                    format!("area_{}", costs.metric.key()): c.and_then(|c| c.area),
                    "ice40_lut4": ice.map(|i| i.lut4),
                    "ice40_dff": ice.map(|i| i.dff),
                    "ice40_bram": ice.map(|i| i.bram),
                    "ice40_fmax_mhz": fmax,
                    "cost_row": row.map(|r| r.name.clone()),
                }),
            );
        }
    }
    json!({
        "bits": bits,
        "models": models,
        "unit_types": types,
        "rtl": hw,
        "layers_without_cost": skipped,
    })
}

/// One RTL file of a report's unit set: where the report points for it and its hash.
#[derive(Debug, Clone, serde::Serialize)]
struct HwFile {
    name: String,
    /// Path relative to the report folder (the committed `rtl/` file, or the report's copy).
    link: String,
    /// FNV-1a 64 of the Verilog text (the cost table's `verilog_fnv64`).
    fnv64: String,
}

/// `to` relative to the folder `from` (both made absolute against the working directory).
fn rel_path(from: &Path, to: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (f, t) = (abs(from), abs(to));
    let (fc, tc): (Vec<_>, Vec<_>) = (f.components().collect(), t.components().collect());
    let common = fc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    let mut r = PathBuf::new();
    for _ in common..fc.len() {
        r.push("..");
    }
    for c in &tc[common..] {
        r.push(c);
    }
    r.to_string_lossy().into_owned()
}

/// End-to-end figures of one assignment at one width.
#[derive(Debug, Clone, serde::Serialize)]
struct Accuracy {
    name: String,
    kind: String,
    top1: Option<f64>,
    agreement: f64,
    logits_asqnr_db: Option<f64>,
    assignment: BTreeMap<String, String>,
}

fn bar(progress: bool, n: u64, msg: String) -> ProgressBar {
    // Where stderr is not a terminal (a batch job's log) indicatif draws nothing: one plain
    // line per stage, with the time since the first, says how far the run got.
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let t0 = *START.get_or_init(std::time::Instant::now);
    if progress && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("[{:.0} s] {msg} ({n} steps)", t0.elapsed().as_secs_f64());
    }
    let b = if progress { ProgressBar::new(n) } else { ProgressBar::hidden() };
    b.set_style(
        ProgressStyle::with_template("{msg:48} [{bar:30}] {pos}/{len} {elapsed}/{eta}").expect("valid template").progress_chars("=> "),
    );
    b.set_message(msg);
    b
}

fn to_model_assignment(model: &str, bits: u32, a: &assign::Assignment) -> Assignment {
    Assignment { format: 1, model: model.to_string(), bits, layers: OrderedLayers(a.0.clone()) }
}

fn fmt_opt(v: Option<f64>, p: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.p$}"))
}

/// What `mnq run` measured, for the caller to print.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Output folder.
    pub out: PathBuf,
    /// Files written (relative to the folder).
    pub files: Vec<String>,
    /// One line per result worth printing.
    pub lines: Vec<String>,
}

/// Run the main job; see the module documentation.
pub fn run(o: &RunOptions) -> Result<RunSummary, RunError> {
    let t0 = Instant::now();
    if o.bits.is_empty() {
        return Err(RunError::Input("--bits is empty; give e.g. --bits 8,6".into()));
    }
    for &b in &o.bits {
        if !model::quant::SUPPORTED_BITS.contains(&b) {
            return Err(RunError::Input(format!("--bits {b} is not supported by the integer forward (4..=8)")));
        }
    }
    if o.sens_images == 0 || o.images == Some(0) {
        return Err(RunError::Input("--sens-images and --images must be at least 1".into()));
    }
    if let Some(a) = o.area_budget {
        if !(a.is_finite() && a >= 0.0) {
            return Err(RunError::Input(format!("--area-budget {a} must be a non-negative number")));
        }
    }
    let model = Model::load(&o.model_dir)?;
    let m = &model.manifest;
    let name = m.name.clone();
    let costs = Costs::load(&o.rtl_manifest, &o.cost_table, o.area_metric)?;
    if let Some(why) = costs.missing_area(&o.bits) {
        return Err(RunError::Input(why));
    }
    if o.area_budget.is_some() && costs.area_source.is_none() {
        return Err(RunError::Input(format!(
            "--area-budget needs unit areas, but there is no cost table at {}; run `mnq cost` first or drop --area-budget",
            o.cost_table.display()
        )));
    }
    let mut eval = Images::load_npy(&o.eval_images, m)?.with_labels(&o.eval_labels, m.num_classes)?;
    if let Some(n) = o.images {
        eval.truncate(n);
    }
    let calib = Images::load_npy(&o.calib_images, m)?;
    let mut sens_imgs = calib.clone();
    sens_imgs.truncate(o.sens_images);
    let mut sums = Sums {
        mode: &o.mode,
        sens_total: sens_imgs.len(),
        eval_total: eval.len(),
        waiting: Vec::new(),
        progress: o.progress,
        float: std::cell::OnceCell::new(),
    };
    if let Mode::Shard { spec, work } = &o.mode {
        shard::check_options(work, *spec, o)?;
        sens_imgs.slice(sums.sens_slice());
        eval.slice(sums.eval_slice());
    }

    let layers = model.layers.clone();
    let mut results = serde_json::Map::new();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let tmp = o.out.with_file_name(format!(".{}.tmp-{}", o.out.file_name().and_then(|s| s.to_str()).unwrap_or("out"), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| RunError::Input(format!("{}: cannot clear ({e})", tmp.display())))?;
    }
    let result = (|| -> Result<RunSummary, RunError> {
        std::fs::create_dir_all(&tmp).map_err(|e| RunError::Input(format!("{}: cannot create ({e})", tmp.display())))?;
        let mut lines = Vec::new();
        let mut index = String::new();
        let mut per_bits = Vec::new();
        let mut summary_bits: Vec<serde_json::Value> = Vec::new();
        let mut attributions: Vec<(u32, attribution::Attribution)> = Vec::new();
        let mut range_flags: Vec<(u32, Vec<RangeFlag>)> = Vec::new();
        let calibrated = m.quant.is_none();
        let mut float_top1 = None;
        // 1. Sensitivity of each single-method model at every width (all of it first: a shard
        // stops here until every shard has written its sensitivity partials).
        let mut prepared = Vec::new();
        for &bits in &o.bits {
            // Scales: the manifest's, or calibrated here on the calibration split.
            let section = match &m.quant {
                Some(q) => q.clone(),
                None => {
                    let b = bar(o.progress, 2 * calib.len() as u64, format!("{bits}-bit: calibrating on {} images", calib.len()));
                    let c = calibrate(
                        &model,
                        &calib,
                        &CalibOptions { weight_bits: bits, act_bits: bits, percentile: None, mse: false },
                        &|| b.inc(1),
                    )?;
                    b.finish();
                    c
                }
            };
            let scales = ActScales::from_section(&section, bits, &model.graph);
            let mut qms = Vec::new();
            for meth in METHODS {
                let a = Assignment::single(&layers, &name, bits, meth);
                qms.push(IntModel::new(
                    &model,
                    &scales,
                    QuantConfig { weight_bits: bits, act_bits: bits, preset: Preset::Adapted, units: a.resolve(&layers, "single")? },
                )?);
            }
            let keys: Vec<String> = METHODS.iter().map(|m| format!("sens_{bits}b_{}", m.name())).collect();
            let b = bar(o.progress, sens_imgs.len() as u64, format!("{bits}-bit: sensitivity, float beside the single-method models"));
            let sens = sums.sensitivity(&keys, &model, &qms.iter().collect::<Vec<_>>(), &sens_imgs, &b)?.unwrap_or_default();
            b.finish();
            drop(qms);
            prepared.push((bits, scales, sens));
        }
        if let (Mode::Shard { spec, work }, false) = (&o.mode, sums.waiting.is_empty()) {
            return Ok(RunSummary {
                out: work.clone(),
                files: Vec::new(),
                lines: vec![format!(
                    "shard {spec}, stage 1 of 2: sensitivity of images {:?} of {} written to {}; still waiting for shard(s) {}: run this same command again once every shard has (stage 2: evaluation)",
                    sums.sens_slice(),
                    sums.sens_total,
                    work.display(),
                    shard::list(&sums.waiting)
                )],
            });
        }
        for (bits, scales, sens) in prepared {
            let build = |units: Vec<model::LayerUnit>| {
                IntModel::new(&model, &scales, QuantConfig { weight_bits: bits, act_bits: bits, preset: Preset::Adapted, units })
            };
            // 2. Table with cost columns (0 in the table where unknown; the report marks them).
            let mut tl = Vec::new();
            for l in &layers {
                let mut cells = Vec::new();
                for (k, meth) in METHODS.iter().enumerate() {
                    // The float fallback (FQ-ViT GELU) is measured in its single-method model but is
                    // not an integer unit, so no rule or optimiser may choose it.
                    if !unit_for(l.op, *meth).is_integer() {
                        continue;
                    }
                    let u = unit_for(l.op, *meth).name().to_string();
                    let lat = costs.layer_latency(&u, bits, l.rows, l.row_len).unwrap_or(0);
                    let area = costs.area(&u, bits).unwrap_or(0.0);
                    cells.push(Cell::from_taps(u, &sens[k].input[l.index], &sens[k].output[l.index], o.convention, area, lat)?);
                }
                tl.push(TableLayer {
                    info: LayerInfo { name: l.name.clone(), op: l.op, index: l.index, row_len: l.row_len, rows_per_image: l.rows },
                    cells,
                });
            }
            let table = Table::new(o.convention, if costs.area_source.is_some() { costs.metric.unit() } else { "unknown" }, tl)?;
            let (tmd, tcsv) = table_text(&table, &costs, bits);
            files.push((format!("sensitivity_{bits}b.md"), tmd.into_bytes()));
            files.push((format!("sensitivity_{bits}b.csv"), tcsv.into_bytes()));
            files.push((format!("sensitivity_{bits}b.json"), table.to_json().into_bytes()));
            // Figure 1.
            let labels: Vec<String> = layers.iter().map(|l| l.label()).collect();
            let mnames: Vec<String> = METHODS.iter().map(|m| m.name().to_string()).collect();
            let diff: Vec<Vec<Option<f64>>> = METHODS
                .iter()
                .map(|m| {
                    table
                        .layers
                        .iter()
                        .map(|l| l.cells.iter().find(|c| c.unit == unit_for(l.info.op, *m).name()).map(|c| c.sqnr_diff_db))
                        .collect()
                })
                .collect();
            let outv: Vec<Vec<Option<f64>>> = METHODS
                .iter()
                .map(|m| {
                    table
                        .layers
                        .iter()
                        .map(|l| l.cells.iter().find(|c| c.unit == unit_for(l.info.op, *m).name()).map(|c| c.asqnr_out_db))
                        .collect()
                })
                .collect();
            let title = format!("{name}, {bits}-bit: SQNR diff (bars) and output ASQNR (lines) per layer (FQ-ViT has no integer GELU)");
            let unit_desc = format!("dB ({})", o.convention);
            charts::sqnr_bars(
                &tmp.join(format!("sqnr_{bits}b")),
                &SqnrBars {
                    title: &title,
                    layers: &labels,
                    methods: &mnames,
                    diff: &diff,
                    out: &outv,
                    bar_desc: &format!("SQNR diff, {unit_desc}"),
                    line_desc: &format!("output ASQNR, {unit_desc}"),
                },
            )?;
            // Range profile: the float values at each layer against each unit's input format.
            range_flags.push((bits, ranges_report(&mut files, &tmp, &name, bits, &layers, &sens)?));
            // Figure 2: layers where the methods' output ASQNR spreads most.
            let mut spread: Vec<(usize, f64)> = table
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let v: Vec<f64> = l.cells.iter().map(|c| c.asqnr_out_db).collect();
                    (i, v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min))
                })
                .collect();
            spread.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut hist_layers = Vec::new();
            for &(i, sp) in spread.iter().take(3) {
                let l = &layers[i];
                let mut series = vec![("float".to_string(), sens[0].samples[i].0.clone())];
                for (k, meth) in METHODS.iter().enumerate() {
                    series.push((unit_for(l.op, *meth).name().to_string(), sens[k].samples[i].1.clone()));
                }
                let t = format!(
                    "{name}, {bits}-bit: output of {} ({}), first {HIST_IMAGES} images, ≤{HIST_VALUES} values each",
                    l.name,
                    l.label()
                );
                let stem = format!("hist_{bits}b_{}", l.label().replace('.', "_"));
                charts::output_histograms(&tmp.join(&stem), &OutputHistograms { title: &t, series: &series })?;
                hist_layers.push(json!({"layer": l.name, "label": l.label(), "spread_db": sp, "figure": stem}));
            }
            // 3. Rules.
            let mut rules = Vec::new();
            for c in Criterion::ALL {
                let a = table.rule(c);
                let ma = to_model_assignment(&name, bits, &a);
                ma.resolve(&layers, c.name())?; // every rule's assignment is valid for the model
                let mut s = serde_json::to_string_pretty(&ma).expect("serialises");
                s.push('\n');
                files.push((format!("assignment_{}_{bits}b.json", c.name()), s.into_bytes()));
                rules.push((c, a));
            }
            // 4. Cost-aware part: layers and candidates with known cost only.
            let chosen = rules[0].1.clone();
            let (problem, skipped) = cost_problem(&table, &costs, bits, Criterion::SqnrDiff);
            let mut fronts = serde_json::Map::new();
            let mut pareto_assign: Vec<(String, assign::Assignment, Solution)> = Vec::new();
            let mut budget_solution = None;
            let have_area = costs.area_source.is_some();
            if let Some(p) = &problem {
                let budget = Budget { area: o.area_budget, latency: o.latency_budget };
                if budget.area.is_some() || budget.latency.is_some() {
                    let sol = assign::optimise(p, o.arch, &budget)?;
                    budget_solution = Some(sol.clone());
                    pareto_assign.push(("budget".into(), complete(&chosen, &sol.assignment), sol));
                }
                let mut axes = vec![Axis::Latency];
                if have_area {
                    axes.insert(0, Axis::Area);
                }
                for axis in axes {
                    let ax = if axis == Axis::Area { "area" } else { "latency" };
                    let front = assign::pareto(p, o.arch, axis, &Budget::none())?;
                    files.push((format!("pareto_{ax}_{bits}b.csv"), assign::solutions_csv(p, &front).into_bytes()));
                    files.push((format!("pareto_{ax}_{bits}b.md"), assign::solutions_markdown(p, &front).into_bytes()));
                    // Evaluate at most `max_pareto_eval`, spread evenly over the front.
                    let n = front.len();
                    let k = o.max_pareto_eval.min(n);
                    let picks: Vec<usize> = if k == 0 {
                        vec![]
                    } else if k == n {
                        (0..n).collect()
                    } else {
                        let mut v: Vec<usize> = (0..k).map(|i| i * (n - 1) / (k - 1).max(1)).collect();
                        v.dedup();
                        v
                    };
                    for &i in &picks {
                        pareto_assign.push((format!("pareto_{ax}_{i}"), complete(&chosen, &front[i].assignment), front[i].clone()));
                    }
                    fronts.insert(ax.into(), json!({"points": front, "evaluated": picks, "total": n, "capped": k < n}));
                }
            }
            // 5. End-to-end accuracy.
            let mut to_eval: Vec<(String, String, assign::Assignment)> = Vec::new();
            for meth in METHODS {
                let a = Assignment::single(&layers, &name, bits, meth);
                to_eval.push((format!("single_{}", meth.name()), "single".into(), assign::Assignment(a.layers.0)));
            }
            for (c, a) in &rules {
                to_eval.push((format!("rule_{}", c.name()), "rule".into(), a.clone()));
            }
            for (n, a, _) in &pareto_assign {
                to_eval.push((n.clone(), "pareto".into(), a.clone()));
            }
            // Each distinct assignment once, all of them in one pass over the images.
            let mut uniq: Vec<&assign::Assignment> = Vec::new();
            let mut which: Vec<usize> = Vec::with_capacity(to_eval.len());
            let mut qms = Vec::new();
            for (n, _, a) in &to_eval {
                which.push(match uniq.iter().position(|u| u.0 == a.0) {
                    Some(i) => i,
                    None => {
                        qms.push(build(to_model_assignment(&name, bits, a).resolve(&layers, n)?)?);
                        uniq.push(a);
                        uniq.len() - 1
                    }
                });
            }
            let keys: Vec<String> = uniq
                .iter()
                .map(|a| format!("eval_{bits}b_{}", crate::cost::fnv64(&serde_json::to_string(&a.0).expect("serialises"))))
                .collect();
            let b = bar(o.progress, eval.len() as u64, format!("{bits}-bit: accuracy of {} distinct assignments", uniq.len()));
            let reps = sums.evaluate_many(&keys, &model, &qms.iter().collect::<Vec<_>>(), &eval, &b)?;
            b.finish();
            drop(qms);
            if float_top1.is_none() {
                float_top1 = reps.first().and_then(|r| r.float_top1);
            }
            let acc: Vec<Accuracy> = to_eval
                .iter()
                .zip(&which)
                .map(|((n, kind, a), &i)| Accuracy {
                    name: n.clone(),
                    kind: kind.clone(),
                    top1: reps[i].int_top1,
                    agreement: reps[i].agreement,
                    logits_asqnr_db: reps[i].logits_asqnr_db,
                    assignment: a.0.iter().cloned().collect(),
                })
                .collect();
            // 6. Where the accuracy goes: the SQNR-diff rule's model with op kinds (layers) in float64.
            if o.attribution != attribution::Level::None {
                let ma = to_model_assignment(&name, bits, &rules[0].1);
                let units = ma.resolve(&layers, "rule_sqnr-diff")?;
                let vars = attribution::variants(&layers, &units, o.attribution == attribution::Level::Layers);
                let n_attr = o.attr_images.map_or(eval.len(), |n| n.min(eval.len()));
                let b = bar(o.progress, n_attr as u64, format!("{bits}-bit: attribution, {} variants", vars.len()));
                let at = sums.attribute(&format!("attr_{bits}b"), &model, &scales, bits, vars, &eval, o.attr_images, &b)?;
                b.finish();
                let header = format!(
                    "# Where the accuracy goes: {name} at {bits} bits, the sqnr-diff rule's assignment\n\nEach variant is the integer model with the listed layers computing their op in float64 on the dequantised input (`*_float`, output requantised as from a unit), on {}.",
                    attr_images_text(at.images, sums.eval_total)
                );
                let stem = format!("attribution_{bits}b");
                let meta = json!({"model": name, "bits": bits, "assignment": format!("assignment_sqnr-diff_{bits}b.json"), "level": o.attribution});
                crate::report::attribution::write(&tmp, &stem, &at, &header, meta, false)?;
                attributions.push((bits, at));
            }
            // Pareto plots: accuracy against cost of the evaluated points, criterion against cost of all.
            for (ax, key) in [("area", Axis::Area), ("latency", Axis::Latency)] {
                let Some(f) = fronts.get(ax) else { continue };
                let pts: Vec<Solution> = serde_json::from_value(f["points"].clone()).expect("front serialises");
                let cost = |s: &Solution| if key == Axis::Area { s.area } else { s.latency as f64 };
                let sp: Vec<ScatterPoint> = pts
                    .iter()
                    .enumerate()
                    .map(|(i, s)| ScatterPoint { x: cost(s), y: s.criterion, pareto: true, label: format!("{i}") })
                    .collect();
                let xd = if key == Axis::Area {
                    format!("area of the costed units ({})", costs.metric.unit())
                } else {
                    "cycles per image over the costed layers".to_string()
                };
                let t = format!("{name}, {bits}-bit: Σ SQNR diff against {ax} ({} model)", o.arch);
                charts::pareto_scatter(
                    &tmp.join(format!("pareto_criterion_{ax}_{bits}b")),
                    &ParetoScatter { title: &t, x_desc: &xd, y_desc: "Σ SQNR diff (dB, lower is better)", points: &sp },
                )?;
                let ap: Vec<ScatterPoint> = acc
                    .iter()
                    .filter(|a| a.name.starts_with(&format!("pareto_{ax}_")))
                    .filter_map(|a| {
                        let i: usize = a.name.rsplit('_').next()?.parse().ok()?;
                        Some(ScatterPoint { x: cost(&pts[i]), y: 100.0 * a.top1.unwrap_or(0.0), pareto: true, label: format!("{i}") })
                    })
                    .collect();
                let t = format!("{name}, {bits}-bit: top-1 of evaluated Pareto points against {ax}");
                charts::pareto_scatter(
                    &tmp.join(format!("pareto_accuracy_{ax}_{bits}b")),
                    &ParetoScatter { title: &t, x_desc: &xd, y_desc: "top-1 (%)", points: &ap },
                )?;
            }
            // Verilog of the unit set the SQNR-diff rule's assignment needs.
            let mut hw = Vec::new();
            let mut no_hw = Vec::new();
            let mut copied_rtl: Vec<String> = Vec::new();
            for (u, _) in chosen.counts() {
                // A unit with hardware at other widths only (layernorm_fqvit: 6 and 8 bits) has none here.
                if crate::hdl::RTL_UNITS.contains(&u.as_str()) && crate::hdl::supported_bits(&u).contains(&bits) {
                    let cfg = crate::hdl::RtlConfig::new(&u, bits, 1).map_err(|e| RunError::Input(format!("{u} at {bits} bits: {e}")))?;
                    let v = crate::hdl::verilog(&cfg);
                    let hash = crate::cost::fnv64(&v);
                    // Link the committed RTL when it is exactly what this mnq generates; copy it
                    // (with a note saying why) only when rtl/ lacks it or holds other Verilog.
                    let committed = o.rtl_manifest.with_file_name(format!("{}.v", cfg.name()));
                    let link = if std::fs::read_to_string(&committed).is_ok_and(|t| t == v) {
                        rel_path(&o.out, &committed)
                    } else {
                        let why = format!(
                            "{}.v: {} does not hold this Verilog (missing or regenerated since), so the report carries its own copy; fnv64 {hash}\n",
                            cfg.name(),
                            committed.display()
                        );
                        copied_rtl.push(why);
                        files.push((format!("verilog_{bits}b/{}.v", cfg.name()), v.into_bytes()));
                        format!("verilog_{bits}b/{}.v", cfg.name())
                    };
                    hw.push(HwFile { name: cfg.name(), link, fnv64: hash });
                } else {
                    no_hw.push(u);
                }
            }
            if !copied_rtl.is_empty() {
                files.push((
                    format!("verilog_{bits}b/WHY.md"),
                    format!("# Why this report copies Verilog\n\n{}", copied_rtl.join("\n")).into_bytes(),
                ));
            }
            for (c, a) in &rules {
                let r = acc.iter().find(|x| x.name == format!("rule_{}", c.name())).expect("evaluated");
                let units: Vec<String> = a.counts().iter().map(|(u, n)| format!("{u} ×{n}")).collect();
                lines.push(format!(
                    "{bits}-bit rule {:<14} top-1 {}  agreement {}  units: {}",
                    c.name(),
                    pct(r.top1),
                    pct(Some(r.agreement)),
                    units.join(", ")
                ));
            }
            for r in acc.iter().filter(|a| a.kind == "single") {
                lines.push(format!("{bits}-bit {:<20} top-1 {}  agreement {}", r.name, pct(r.top1), pct(Some(r.agreement))));
            }
            summary_bits.push(signoff_bits(bits, o.arch, &costs, problem.as_ref(), &acc, &hw, &skipped));
            per_bits.push((bits, table, rules, acc, fronts, budget_solution, hw, no_hw, hist_layers, skipped, problem.is_some()));
        }
        // Tables 2, 3, 4 and the index.
        let ft = float_top1;
        let mut t2 = String::from("# Table 2: decision rule against accuracy\n\n| bits | rule | top-1 | agreement with float | logits ASQNR (dB) |\n|---:|---|---:|---:|---:|\n");
        let mut t3 = String::from("# Table 3: layers of each op per method, by rule\n\n| bits | rule | op | ibert | fqvit | ivit |\n|---:|---|---|---:|---:|---:|\n");
        let mut t4 = String::from(
            "# Table 4: single methods against mixed (rules)\n\n| bits | model | top-1 | agreement with float |\n|---:|---|---:|---:|\n",
        );
        let _ = writeln!(t4, "| — | float | {} | — |", pct(ft));
        let mut jbits = Vec::new();
        for (bits, table, rules, acc, fronts, bsol, hw, no_hw, hist, skipped, costed) in &per_bits {
            for (c, a) in rules {
                let r = acc.iter().find(|x| x.name == format!("rule_{}", c.name())).expect("evaluated");
                let _ = writeln!(
                    t2,
                    "| {bits} | {} | {} | {} | {} |",
                    c.name(),
                    pct(r.top1),
                    pct(Some(r.agreement)),
                    fmt_opt(r.logits_asqnr_db, 2)
                );
                for op in [Op::Softmax, Op::Gelu, Op::LayerNorm] {
                    let count = |meth: Method| {
                        table.layers.iter().filter(|l| l.info.op == op && a.get(&l.info.name) == Some(unit_for(op, meth).name())).count()
                    };
                    let _ = writeln!(
                        t3,
                        "| {bits} | {} | {} | {} | {} | {} |",
                        c.name(),
                        op.name(),
                        count(Method::IBert),
                        count(Method::FqVit),
                        count(Method::IVit)
                    );
                }
            }
            for r in acc.iter().filter(|a| a.kind != "pareto") {
                let _ = writeln!(t4, "| {bits} | {} | {} | {} |", r.name, pct(r.top1), pct(Some(r.agreement)));
            }
            jbits.push(json!({
                "bits": bits,
                "table": table,
                "rules": rules.iter().map(|(c, a)| json!({"rule": c.name(), "description": c.describe(), "assignment": a, "counts": a.counts()})).collect::<Vec<_>>(),
                "accuracy": acc,
                "pareto": fronts,
                "costed_problem": costed,
                "cost_unknown_layers": skipped,
                "budget_solution": bsol,
                "verilog": hw,
                "units_without_hardware": no_hw,
                "histogram_layers": hist,
            }));
        }
        files.push(("table2_rules.md".into(), t2.clone().into_bytes()));
        files.push(("table3_mapping.md".into(), t3.clone().into_bytes()));
        files.push(("table4_single_vs_mixed.md".into(), t4.clone().into_bytes()));
        let secs = t0.elapsed().as_secs_f64();
        results.insert("model".into(), json!(name));
        results.insert("model_dir".into(), json!(o.model_dir));
        results.insert("float_top1".into(), json!(ft));
        results.insert("eval_images".into(), json!(eval.len()));
        results.insert("eval_split".into(), json!(o.eval_images));
        results.insert("sensitivity_images".into(), json!(sens_imgs.len()));
        results.insert("sensitivity_split".into(), json!(format!("first {} of {}", sens_imgs.len(), o.calib_images.display())));
        results.insert("scales".into(), json!(if calibrated { format!("calibrated here on {} images of {} (manifest has no quant section), weights and activations at the run's bits, min/max ranges", calib.len(), o.calib_images.display()) } else { "from the manifest's quant section".to_string() }));
        results.insert("convention".into(), json!(o.convention.describe()));
        results.insert("arch".into(), json!(o.arch.describe()));
        results.insert("cost_notes".into(), json!(costs.notes));
        results.insert("area_source".into(), json!(costs.area_source));
        results.insert("fallback".into(), json!("FQ-ViT has no integer GELU: gelu_fqvit is the float GELU on the dequantised input with the output quantised (not an integer unit, no hardware)"));
        results.insert("pareto_eval_cap".into(), json!(o.max_pareto_eval));
        results.insert("seconds".into(), json!(secs));
        results.insert("threads".into(), json!(rayon::current_num_threads()));
        results.insert("bits".into(), json!(jbits));
        let idx = index_md(&name, o, &per_bits_summary(&per_bits), ft, &costs, calibrated, &sens_imgs, &eval, secs);
        let _ = write!(index, "{idx}");
        if !attributions.is_empty() {
            let _ = writeln!(
                index,
                "\n## Where the accuracy goes (sqnr-diff rule's model)\n\nThe integer model re-run with layers computing their op in float64 (`mnq attribute`; `--attribution {}`): float minus \"linear only\" is the loss of the linear quantisation alone, the rest is the non-linear units'; \"units only\" is the reverse split (float linear layers, every non-linear layer through its unit at its calibrated input format).\n\n| bits | integer top-1 | linear only (all non-linear ops float64) | units only (float linear layers) | softmax float | gelu float | layernorm float | tables |\n|---:|---:|---:|---:|---:|---:|---:|---|",
                match o.attribution {
                    attribution::Level::Layers => "layers",
                    _ => "ops",
                }
            );
            for (bits, at) in &attributions {
                let cell = |n: &str| at.results.iter().find(|r| r.variant.name == n).map_or("—".to_string(), |r| pct(r.top1));
                let _ = writeln!(
                    index,
                    "| {bits} | {} | {} | {} | {} | {} | {} | [attribution_{bits}b.md](attribution_{bits}b.md), [plot](attribution_{bits}b.svg) |",
                    cell("integer"),
                    cell("linear only"),
                    cell("units only"),
                    cell("softmax float"),
                    cell("gelu float"),
                    cell("layernorm float")
                );
            }
            let n_attr = attributions.first().map_or(0, |(_, a)| a.images);
            let float_attr = attributions.first().and_then(|(_, a)| a.float_top1);
            let _ = writeln!(
                index,
                "\nOn {}, where the float top-1 is {}; differences below about 1 point are within the sampling noise of {n_attr} images. The per-layer rows and the logits' ASQNR are in each table.",
                attr_images_text(n_attr, sums.eval_total),
                pct(float_attr)
            );
            results.insert(
                "attribution".into(),
                json!(attributions.iter().map(|(b, a)| json!({"bits": b, "attribution": a})).collect::<Vec<_>>()),
            );
        }
        let _ = writeln!(
            index,
            "\n## Value ranges against the integer formats\n\nPer layer and single-method model, the float model's inputs against the format each unit takes them in (`ranges_<bits>b.md`, `.csv`, `.json` and the plot `ranges_<bits>b.svg`)."
        );
        for (bits, fl) in &range_flags {
            if fl.is_empty() {
                let _ = writeln!(
                    index,
                    "\n{bits} bits: no layer saturates or uses few codes ([table](ranges_{bits}b.md), [plot](ranges_{bits}b.svg))."
                );
                continue;
            }
            let _ = writeln!(
                index,
                "\n{bits} bits, {} flagged (layer, unit) pairs ([table](ranges_{bits}b.md), [plot](ranges_{bits}b.svg)):\n",
                fl.len()
            );
            for (l, u, f) in fl.iter().take(12) {
                let _ = writeln!(index, "- {l}, {u}: {f}");
            }
            if fl.len() > 12 {
                let _ = writeln!(index, "- … and {} more in the table", fl.len() - 12);
            }
        }
        results.insert(
            "range_flags".into(),
            json!(range_flags.iter().map(|(b, f)| json!({"bits": b, "flagged": f.iter().map(|(l, u, x)| json!({"layer": l, "unit": u, "flags": x})).collect::<Vec<_>>()})).collect::<Vec<_>>()),
        );
        files.push(("index.md".into(), index.into_bytes()));
        let summary = json!({
            "format": 1,
            "tool": format!("mnq {}", env!("CARGO_PKG_VERSION")),
            "model": name,
            "model_dir": o.model_dir.display().to_string(),
            "arch": o.arch,
            "eval_images": eval.len(),
            "sensitivity_images": sens_imgs.len(),
            "float_top1": float_top1,
            "area_source": costs.area_source,
            "bits": summary_bits,
        });
        files.push(("summary.json".into(), (serde_json::to_string_pretty(&summary).expect("serialises") + "\n").into_bytes()));
        files.push((
            "results.json".into(),
            (serde_json::to_string_pretty(&serde_json::Value::Object(results.clone())).expect("json") + "\n").into_bytes(),
        ));
        for (p, bytes) in &files {
            write_atomic(&tmp.join(p), bytes)?;
        }
        let mut all: Vec<String> = Vec::new();
        list_files(&tmp, &tmp, &mut all);
        all.sort();
        lines.insert(0, format!("float top-1 {}", pct(ft)));
        lines.push(format!("run time {secs:.1} s on {} threads", rayon::current_num_threads()));
        Ok(RunSummary { out: o.out.clone(), files: all, lines })
    })();
    match (result, &o.mode) {
        // Stage 1 of a shard stopped before any report file: its summary says what is next.
        (Ok(s), Mode::Shard { .. }) if s.files.is_empty() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(s)
        }
        // A shard's report covers its slice only: its partials are what it leaves.
        (Ok(_), Mode::Shard { spec, work }) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(RunSummary {
                out: work.clone(),
                files: Vec::new(),
                lines: vec![format!(
                    "shard {spec}, stage 2 of 2: evaluation of images {:?} of {} written to {}; once every shard has run this stage, `mnq merge --work {}` writes the report",
                    sums.eval_slice(),
                    sums.eval_total,
                    work.display(),
                    work.display()
                )],
            })
        }
        (Ok(s), _) => {
            // Swap the finished folder into place.
            let old = tmp.with_extension("old");
            if o.out.exists() {
                std::fs::rename(&o.out, &old).map_err(|e| RunError::Input(format!("{}: cannot move aside ({e})", o.out.display())))?;
            }
            std::fs::rename(&tmp, &o.out).map_err(|e| RunError::Input(format!("{}: cannot rename into place ({e})", o.out.display())))?;
            if old.exists() {
                let _ = std::fs::remove_dir_all(&old);
            }
            Ok(s)
        }
        (Err(e), _) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            list_files(root, &p, out);
        } else if let Ok(r) = p.strip_prefix(root) {
            out.push(r.display().to_string());
        }
    }
}

/// The cost-aware problem for `criterion`: layers with at least one costed candidate, costed
/// candidates only. Returns the layers left out (no unit with hardware).
fn cost_problem(table: &Table, costs: &Costs, bits: u32, criterion: Criterion) -> (Option<Problem>, Vec<String>) {
    let mut layers = Vec::new();
    let mut skipped = Vec::new();
    let have_area = costs.area_source.is_some();
    for l in &table.layers {
        let options: Vec<Choice> = l
            .cells
            .iter()
            .filter_map(|c| {
                let lat = costs.layer_latency(&c.unit, bits, l.info.rows_per_image, l.info.row_len)?;
                let area = if have_area { costs.area(&c.unit, bits)? } else { 0.0 };
                Some(Choice { unit: c.unit.clone(), criterion: criterion.value(c), area, latency: lat })
            })
            .collect();
        if options.is_empty() {
            skipped.push(l.info.name.clone());
        } else {
            layers.push(assign::Layer { name: l.info.name.clone(), options });
        }
    }
    let p = (!layers.is_empty()).then(|| Problem {
        criterion: format!("{} [{}], layers with hardware only", criterion.describe(), table.convention),
        sense: match criterion.sense() {
            Sense::Minimise => Sense::Minimise,
            Sense::Maximise => Sense::Maximise,
        },
        layers,
    });
    (p, skipped)
}

/// A full assignment: the costed layers from `part`, the others from `base`.
fn complete(base: &assign::Assignment, part: &assign::Assignment) -> assign::Assignment {
    assign::Assignment(base.0.iter().map(|(l, u)| (l.clone(), part.get(l).unwrap_or(u).to_string())).collect())
}

fn table_text(t: &Table, costs: &Costs, bits: u32) -> (String, String) {
    let mut md = format!(
        "# Sensitivity table, {bits}-bit\n\nASQNR in {}. Latency: cycles per image of the layer on the single-lane unit; area: {}. '—' = no hardware for this unit, cost unknown.\n\n| layer | label | unit | ASQNR in (dB) | ASQNR out (dB) | SQNR diff (dB) | area | latency (cycles) |\n|---|---|---|---:|---:|---:|---:|---:|\n",
        t.convention.describe(),
        costs.area_source.as_deref().unwrap_or("unknown (no cost table)")
    );
    let mut csv = String::from("layer,label,op,unit,asqnr_in_db,asqnr_out_db,sqnr_diff_db,area,latency_cycles\n");
    for l in &t.layers {
        for c in &l.cells {
            let lat = costs.layer_latency(&c.unit, bits, l.info.rows_per_image, l.info.row_len);
            let area = costs.area(&c.unit, bits);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |",
                l.info.name,
                l.info.label(),
                c.unit,
                c.asqnr_in_db,
                c.asqnr_out_db,
                c.sqnr_diff_db,
                fmt_opt(area, 0),
                lat.map_or("—".into(), |v| v.to_string())
            );
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{}",
                l.info.name,
                l.info.label(),
                l.info.op.name(),
                c.unit,
                c.asqnr_in_db,
                c.asqnr_out_db,
                c.sqnr_diff_db,
                area.map_or(String::new(), |v| v.to_string()),
                lat.map_or(String::new(), |v| v.to_string())
            );
        }
    }
    (md, csv)
}

struct BitsSummary {
    bits: u32,
    singles: Vec<(String, Option<f64>, f64)>,
    rules: Vec<(String, Option<f64>, f64, String)>,
    front_len: Vec<(String, usize, bool)>,
    hw: Vec<HwFile>,
    no_hw: Vec<String>,
    skipped: Vec<String>,
    hist: Vec<String>,
    budget: Option<String>,
}

type PerBits = (
    u32,
    Table,
    Vec<(Criterion, assign::Assignment)>,
    Vec<Accuracy>,
    serde_json::Map<String, serde_json::Value>,
    Option<Solution>,
    Vec<HwFile>,
    Vec<String>,
    Vec<serde_json::Value>,
    Vec<String>,
    bool,
);

fn per_bits_summary(v: &[PerBits]) -> Vec<BitsSummary> {
    v.iter()
        .map(|(bits, _t, rules, acc, fronts, bsol, hw, no_hw, hist, skipped, _)| BitsSummary {
            bits: *bits,
            singles: acc.iter().filter(|a| a.kind == "single").map(|a| (a.name.clone(), a.top1, a.agreement)).collect(),
            rules: rules
                .iter()
                .map(|(c, a)| {
                    let r = acc.iter().find(|x| x.name == format!("rule_{}", c.name())).expect("evaluated");
                    let counts: Vec<String> = a.counts().iter().map(|(u, n)| format!("{u}×{n}")).collect();
                    (c.name().to_string(), r.top1, r.agreement, counts.join(", "))
                })
                .collect(),
            front_len: fronts
                .iter()
                .map(|(k, f)| (k.clone(), f["total"].as_u64().unwrap_or(0) as usize, f["capped"].as_bool().unwrap_or(false)))
                .collect(),
            hw: hw.clone(),
            no_hw: no_hw.clone(),
            skipped: skipped.clone(),
            hist: hist.iter().filter_map(|h| h["figure"].as_str().map(String::from)).collect(),
            budget: bsol.as_ref().map(|s| {
                let acc = acc.iter().find(|a| a.name == "budget");
                format!(
                    "within the budget the best assignment has Σ SQNR diff {:.2} dB, area {}, latency {} cycles, top-1 {}",
                    s.criterion,
                    s.area,
                    s.latency,
                    pct(acc.and_then(|a| a.top1))
                )
            }),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn index_md(
    name: &str,
    o: &RunOptions,
    bs: &[BitsSummary],
    ft: Option<f64>,
    costs: &Costs,
    calibrated: bool,
    sens: &Images,
    eval: &Images,
    secs: f64,
) -> String {
    let mut s = format!("# mnq run: {name}\n\n");
    let bits_arg: Vec<String> = o.bits.iter().map(|b| b.to_string()).collect();
    let _ = writeln!(
        s,
        "Command: `mnq run --model {} --bits {} --sens-images {} --images {} --arch {}{}{}{}` ({secs:.1} s).\n",
        o.model_dir.display(),
        bits_arg.join(","),
        sens.len(),
        eval.len(),
        o.arch,
        o.area_budget.map_or(String::new(), |a| format!(" --area-budget {a}")),
        if o.area_metric == AreaMetric::Nand2 { String::new() } else { format!(" --area-metric {}", o.area_metric) },
        o.latency_budget.map_or(String::new(), |a| format!(" --latency-budget {a}"))
    );
    // The reading, generated from the numbers.
    let mut reading = format!("The float model reaches {} top-1 on {} evaluation images. ", pct(ft), eval.len());
    for b in bs {
        let best_single = b.singles.iter().max_by(|x, y| x.1.unwrap_or(0.0).total_cmp(&y.1.unwrap_or(0.0)));
        let best_rule = b.rules.iter().max_by(|x, y| x.1.unwrap_or(0.0).total_cmp(&y.1.unwrap_or(0.0)));
        let singles: Vec<String> = b.singles.iter().map(|(n, t, _)| format!("{} {}", n.trim_start_matches("single_"), pct(*t))).collect();
        let _ = write!(reading, "At {} bits the single-method models reach {}", b.bits, singles.join(", "));
        if let (Some(bs1), Some(br)) = (best_single, best_rule) {
            let d = 100.0 * (br.1.unwrap_or(0.0) - bs1.1.unwrap_or(0.0));
            let _ = write!(
                reading,
                "; the best rule ({}) reaches {}, {} the best single method ({}) by {:.2} points. ",
                br.0,
                pct(br.1),
                if d >= 0.0 { "above" } else { "below" },
                bs1.0.trim_start_matches("single_"),
                d.abs()
            );
        }
    }
    let _ = write!(
        reading,
        "Sensitivity used {} calibration (train-split) images, disjoint from the evaluation images; scales were {}. ",
        sens.len(),
        if calibrated { "calibrated here (the manifest has no quant section)" } else { "taken from the manifest" }
    );
    if costs.area_source.is_none() {
        reading.push_str("No cost table was present, so areas are unknown and only latency fronts are drawn. ");
    }
    let no_hw: std::collections::BTreeSet<&str> = bs.iter().flat_map(|b| b.skipped.iter().map(|s| s.as_str())).collect();
    let uncosted: std::collections::BTreeSet<String> = bs
        .iter()
        .flat_map(|b| {
            [Op::Softmax, Op::Gelu, Op::LayerNorm]
                .into_iter()
                .flat_map(crate::model::manifest::units_for)
                .filter(|u| u != crate::model::manifest::FLOAT_GELU && costs.get(u, b.bits).is_none())
                .collect::<Vec<_>>()
        })
        .collect();
    if no_hw.is_empty() && uncosted.is_empty() {
        reading.push_str("Every candidate unit has hardware, so the cost-aware part covers every layer and every candidate.");
    } else if no_hw.is_empty() {
        let _ = write!(
            reading,
            "Candidates without hardware ({}) are left out of the cost-aware part (fronts and budgets); every layer keeps at least one candidate with hardware.",
            uncosted.into_iter().collect::<Vec<_>>().join(", ")
        );
    } else {
        let _ = write!(reading, "Layers whose candidates lack hardware ({} layer(s), listed below) keep the SQNR-diff rule's choice outside the cost-aware part; FQ-ViT's float GELU fallback is never a candidate of a rule.", no_hw.len());
    }
    let _ = writeln!(s, "## Reading\n\n{reading}\n");
    let _ = writeln!(s, "## Method and conventions\n\n- ASQNR: {}\n- Architecture model: {}\n- {}\n- Area: {}\n- FQ-ViT GELU: float fallback (not an integer unit, no hardware).\n- Pareto points evaluated end to end: at most {} per front, spread evenly along it.\n", o.convention.describe(), o.arch.describe(), costs.notes.join("\n- "), costs.area_source.as_deref().unwrap_or("unknown"), o.max_pareto_eval);
    let _ = writeln!(s, "## Tables\n\n- [Table 2: rule against accuracy](table2_rules.md)\n- [Table 3: mapping per op](table3_mapping.md)\n- [Table 4: single against mixed](table4_single_vs_mixed.md)\n- [results.json](results.json): everything above in one file\n");
    for b in bs {
        let bb = b.bits;
        let _ = writeln!(s, "## {bb}-bit\n");
        let _ =
            writeln!(s, "- Sensitivity table: [md](sensitivity_{bb}b.md), [csv](sensitivity_{bb}b.csv), [json](sensitivity_{bb}b.json)");
        let _ = writeln!(s, "- Figure 1: ![SQNR diff and output ASQNR](sqnr_{bb}b.png) ([svg](sqnr_{bb}b.svg))");
        for h in &b.hist {
            let _ = writeln!(s, "- Figure 2: ![{h}]({h}.png) ([svg]({h}.svg))");
        }
        for (r, t, a, c) in &b.rules {
            let _ = writeln!(
                s,
                "- Rule {r}: top-1 {}, agreement {}, units {c}: [assignment_{r}_{bb}b.json](assignment_{r}_{bb}b.json)",
                pct(*t),
                pct(Some(*a))
            );
        }
        for (ax, n, capped) in &b.front_len {
            let _ = writeln!(
                s,
                "- Pareto front, Σ SQNR diff against {ax}: {n} points{} ([md](pareto_{ax}_{bb}b.md), [csv](pareto_{ax}_{bb}b.csv)); ![criterion](pareto_criterion_{ax}_{bb}b.png) ![accuracy](pareto_accuracy_{ax}_{bb}b.png)",
                if *capped { format!(", at most {} evaluated end to end", o.max_pareto_eval) } else { String::new() }
            );
        }
        if let Some(bu) = &b.budget {
            let _ = writeln!(s, "- Budget: {bu}");
        }
        if !b.skipped.is_empty() {
            let _ = writeln!(s, "- Layers without hardware (cost unknown, left out of the cost-aware part): {}", b.skipped.join(", "));
        }
        let _ = writeln!(
            s,
            "- Verilog of the SQNR-diff rule's unit set: {}; without hardware: {}\n",
            if b.hw.is_empty() {
                "none".into()
            } else {
                b.hw.iter().map(|h| format!("[{}]({}) (fnv64 `{}`)", h.name, h.link, h.fnv64)).collect::<Vec<_>>().join(", ")
            },
            if b.no_hw.is_empty() { "none".into() } else { b.no_hw.join(", ") }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_evaluate() {
        assert_eq!(formula("2*ceil(N/LANES) + 36", 10, 4), Some(42));
        assert_eq!(formula("33", 10, 1), Some(33));
        assert_eq!(formula("ceil(N/LANES)", 10, 1), Some(10));
        assert_eq!(formula("N^2", 10, 1), None);
    }
}
