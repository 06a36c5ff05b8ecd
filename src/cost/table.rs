//! The cost table: one row per configuration with every figure, written as JSON (for tools:
//! [`Table::load`] and the lookups), CSV and Markdown; partial runs update only their rows.

use super::accuracy::{self, Accuracy};
use super::latency::{self, RowTiming, TimingModel};
use super::{AsicCost, CostError, Fmax, Ice40Cost, Outcome, XilinxCost};
use crate::hdl::RtlConfig;
use crate::io::write_atomic;
use crate::units::{self, Method, Preset};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Version of the JSON layout; [`Table::load`] refuses others.
pub const SCHEMA: u32 = 1;

/// How the manifest's formulas compare with the cycle model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestCheck {
    /// Latency formula of `rtl/manifest.json`.
    pub latency: String,
    /// Row-period formula.
    pub row_period: String,
    /// Whether both equal the cycle model at every measured row length.
    pub agrees: bool,
    /// The first disagreement.
    pub note: Option<String>,
}

/// Everything measured about one configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `<unit>_<bits>b_l<lanes>`.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// Operation (Softmax, GELU, LayerNorm).
    pub op: String,
    /// Method family.
    pub method: String,
    /// Input bits.
    pub bits: u32,
    /// Lanes.
    pub lanes: usize,
    /// FNV-1a hash of the Verilog synthesised.
    pub verilog_fnv64: String,
    /// ASIC-like synthesis.
    pub asic: Option<Outcome<AsicCost>>,
    /// iCE40 synthesis.
    pub ice40: Option<Outcome<Ice40Cost>>,
    /// Xilinx 7-series synthesis (absent from tables written before the target existed).
    #[serde(default)]
    pub xilinx: Option<Outcome<XilinxCost>>,
    /// Place and route (`--fmax`).
    pub fmax: Option<Outcome<Fmax>>,
    /// Timing at the reported row lengths, from the cycle model.
    pub timing: Vec<RowTiming>,
    /// Timing as affine functions of the beats per row (fitted on `timing` and probes).
    pub timing_model: TimingModel,
    /// Longest row the configuration takes at the standard input scale (`None`: no limit found up to 65,536).
    pub max_row_len: Option<usize>,
    /// The manifest's formulas against the cycle model.
    pub manifest: ManifestCheck,
    /// Accuracy of the unit the configuration implements.
    pub accuracy: Accuracy,
    /// A multi-method softmax's modes, each with its own timing and accuracy; the row's
    /// `timing`, `timing_model` and `accuracy` are those of its slowest mode. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<ModeCost>,
}

/// Timing and accuracy of one mode of a multi-method softmax (its rows alone, back to back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeCost {
    /// Method of the mode.
    pub method: String,
    /// Timing at the reported row lengths.
    pub timing: Vec<RowTiming>,
    /// Timing as affine functions of the beats per row.
    pub timing_model: TimingModel,
    /// Accuracy: the method's golden unit, as its single-method unit's.
    pub accuracy: Accuracy,
}

/// Area figures of one configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Area {
    /// NAND2-equivalents of logic and flip-flops.
    pub nand2_eq: f64,
    /// Transistor estimate.
    pub transistors: u64,
    /// Row-buffer memory bits (not in the figures above).
    pub memory_bits: u64,
    /// iCE40 LUT4, when synthesised.
    pub lut4: Option<u64>,
    /// iCE40 block RAMs, when synthesised.
    pub bram: Option<u64>,
    /// iCE40 DSPs, when synthesised.
    pub dsp: Option<u64>,
    /// Xilinx 7-series LUT6-equivalents, when synthesised.
    pub lut6_eq: Option<u64>,
}

/// Which area figure of the cost table the optimiser of `mnq run` uses (`--area-metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AreaMetric {
    /// ASIC-like NAND2-equivalents of logic and flip-flops, plus the row-buffer SRAM.
    #[default]
    Nand2,
    /// iCE40 LUT4 (block RAMs and DSPs not counted).
    Lut4,
    /// Xilinx 7-series LUT6-equivalents (block RAMs and DSPs not counted).
    Lut6,
}

impl AreaMetric {
    /// The figure's unit in words, for tables and axes.
    pub fn unit(self) -> &'static str {
        match self {
            AreaMetric::Nand2 => "NAND2-eq",
            AreaMetric::Lut4 => "iCE40 LUT4",
            AreaMetric::Lut6 => "Xilinx LUT6-eq",
        }
    }

    /// The suffix of JSON keys holding the figure (`area_<key>`).
    pub fn key(self) -> &'static str {
        match self {
            AreaMetric::Nand2 => "nand2_eq",
            AreaMetric::Lut4 => "lut4",
            AreaMetric::Lut6 => "lut6_eq",
        }
    }
}

impl std::fmt::Display for AreaMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AreaMetric::Nand2 => "nand2",
            AreaMetric::Lut4 => "lut4",
            AreaMetric::Lut6 => "lut6",
        })
    }
}

fn longest_row(cfg: &RtlConfig) -> Option<usize> {
    const LIMIT: usize = 1 << 16;
    let ok = |n: usize| crate::cosim::layer_config(cfg, Preset::Adapted, 1, n).is_ok();
    if ok(LIMIT) {
        return None;
    }
    let (mut lo, mut hi) = (1usize, LIMIT); // ok(lo) assumed, !ok(hi)
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

impl Row {
    /// A row with the cycle-model timing, the manifest check and the accuracy of `cfg`
    /// (Verilog `verilog`); synthesis figures are added by [`super::measure`].
    pub fn new(cfg: &RtlConfig, verilog: &str, row_lengths: Option<&[usize]>) -> Result<Row, CostError> {
        if let Some(methods) = cfg.methods() {
            return Self::multi(cfg, &methods, verilog, row_lengths);
        }
        let unit = units::build(&cfg.unit, Preset::Reference).map_err(|e| CostError::Cycle { name: cfg.name(), why: e.to_string() })?;
        let lens = row_lengths.map_or_else(|| latency::default_row_lengths(unit.op()), <[usize]>::to_vec);
        let (timing, timing_model, all) = Self::timed(cfg, &lens, None)?;
        let m = cfg.manifest();
        let check = latency::check_manifest(cfg, &all);
        Ok(Row {
            modes: Vec::new(),
            name: cfg.name(),
            unit: cfg.unit.clone(),
            op: unit.op().name().to_string(),
            method: unit.method().name().to_string(),
            bits: cfg.bits,
            lanes: cfg.lanes,
            verilog_fnv64: super::fnv64(verilog),
            asic: None,
            ice40: None,
            xilinx: None,
            fmax: None,
            timing,
            timing_model,
            max_row_len: longest_row(cfg),
            manifest: ManifestCheck {
                latency: m.latency_cycles,
                row_period: m.row_period_cycles,
                agrees: check.is_ok(),
                note: check.err(),
            },
            accuracy: accuracy::measure(cfg)?,
        })
    }

    /// Timing at `lens` (and the probes), the fitted model, and every measurement (`mode`: the
    /// multi-method softmax's rows all in that mode).
    fn timed(cfg: &RtlConfig, lens: &[usize], mode: Option<Method>) -> Result<(Vec<RowTiming>, TimingModel, Vec<RowTiming>), CostError> {
        let timing = lens.iter().map(|&n| latency::measure_mode(cfg, n, mode)).collect::<Result<Vec<_>, _>>()?;
        let probes = latency::PROBES
            .iter()
            .filter(|n| !lens.contains(n))
            .map(|&n| latency::measure_mode(cfg, n, mode))
            .collect::<Result<Vec<_>, _>>()?;
        let all: Vec<RowTiming> = timing.iter().chain(&probes).copied().collect();
        let model = latency::fit(&cfg.name(), &all)?;
        Ok((timing, model, all))
    }

    /// The row of a multi-method softmax: each mode timed on its own rows and checked against
    /// its single-method unit's manifest formulas; the slowest mode stands for the row.
    fn multi(cfg: &RtlConfig, methods: &[Method], verilog: &str, row_lengths: Option<&[usize]>) -> Result<Row, CostError> {
        let lens = row_lengths.map_or_else(|| latency::default_row_lengths(units::Op::Softmax), <[usize]>::to_vec);
        let mut modes = Vec::new();
        let mut notes = Vec::new();
        for &m in methods {
            let (timing, timing_model, all) = Self::timed(cfg, &lens, Some(m))?;
            if let Err(e) = latency::check_manifest(&cfg.single(m), &all) {
                notes.push(format!("{}: {e}", m.name()));
            }
            modes.push(ModeCost { method: m.name().to_string(), timing, timing_model, accuracy: accuracy::measure(&cfg.single(m))? });
        }
        let slowest = (0..modes.len()).max_by_key(|&i| (modes[i].timing[0].row_period, std::cmp::Reverse(i))).unwrap_or(0);
        let s = modes[slowest].clone();
        let m = cfg.manifest();
        Ok(Row {
            name: cfg.name(),
            unit: cfg.unit.clone(),
            op: units::Op::Softmax.name().to_string(),
            method: "multi".to_string(),
            bits: cfg.bits,
            lanes: cfg.lanes,
            verilog_fnv64: super::fnv64(verilog),
            asic: None,
            ice40: None,
            xilinx: None,
            fmax: None,
            timing: s.timing,
            timing_model: s.timing_model,
            max_row_len: longest_row(cfg),
            manifest: ManifestCheck {
                latency: m.latency_cycles,
                row_period: m.row_period_cycles,
                agrees: notes.is_empty(),
                note: (!notes.is_empty()).then(|| notes.join("; ")),
            },
            accuracy: s.accuracy,
            modes,
        })
    }

    /// Timing at row length `n`: measured if it was, else from the fitted model.
    pub fn timing_at(&self, n: usize) -> Result<RowTiming, CostError> {
        if n == 0 {
            return Err(CostError::Lookup(format!("{}: row length 0", self.name)));
        }
        if let Some(max) = self.max_row_len.filter(|&m| n > m) {
            return Err(CostError::Lookup(format!("{}: rows of {n} elements exceed the {max} this configuration takes", self.name)));
        }
        Ok(self.timing.iter().find(|t| t.row_len == n).copied().unwrap_or_else(|| self.timing_model.at(n, self.lanes)))
    }

    fn fmax_mhz(&self) -> Option<f64> {
        self.fmax.as_ref().and_then(Outcome::ok).and_then(|f| f.mhz)
    }
}

/// The cost table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Layout version ([`SCHEMA`]).
    pub schema: u32,
    /// Tool version lines.
    pub tools: BTreeMap<String, String>,
    /// The pinned scripts and arguments (`{file}`, `{top}` and `{json}` are filled per run).
    pub scripts: BTreeMap<String, String>,
    /// How the figures were obtained, in words.
    pub notes: Vec<String>,
    /// One row per configuration.
    pub rows: Vec<Row>,
}

/// The pinned scripts of the current build, by target (`asic`, `ice40`, `xilinx`, `fmax_yosys`, `fmax_nextpnr`).
pub fn scripts() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("asic".into(), super::yosys::ASIC_SCRIPT.into());
    m.insert("ice40".into(), super::yosys::ICE40_SCRIPT.into());
    m.insert("xilinx".into(), super::yosys::XILINX_SCRIPT.into());
    m.insert("fmax_yosys".into(), super::yosys::ICE40_PNR_SCRIPT.into());
    m.insert("fmax_nextpnr".into(), format!("nextpnr-ice40 --json {{json}} {}", super::nextpnr::NEXTPNR_ARGS.join(" ")));
    m
}

fn notes() -> Vec<String> {
    vec![
        "ASIC: yosys generic gates (CMOS set), transistors from `stat -tech cmos`, NAND2-equivalents = transistors / 4; row-buffer memories kept as macros and counted in memory bits only".into(),
        "iCE40 UltraPlus: the steps of synth_ice40 -dsp with single-pass gate-level opt and a shorter ABC script (SB_MAC16 DSPs, SB_RAM40_4K block RAMs of 4 kbit)".into(),
        "Xilinx 7-series: the steps of synth_xilinx -family xc7 -flatten -noiopad -noclkbuf with single-pass gate-level opt and a shorter ABC script; a yosys estimate, no place and route, not Vivado; LUT6-eq = LUT + LUTRAM sites + SRL, BRAM36-eq = RAMB36 + RAMB18 / 2".into(),
        "fmax: synth_ice40 without DSPs and nextpnr-ice40 on iCE40HX8K-CT256, seed 1".into(),
        format!("timing: cycle model, {} back-to-back rows, no input gaps, no back-pressure; latency = first input beat to first output beat; row period = cycles per row in steady state", latency::ROWS),
        format!("accuracy: golden unit the hardware implements (adapted preset), Integer mode, SQNR against float on the op's standard distribution, {} rows, seed {}", accuracy::ROWS, accuracy::SEED),
    ]
}

impl Table {
    /// A table of `rows` with the current scripts and `tools`.
    pub fn new(tools: BTreeMap<String, String>, rows: Vec<Row>) -> Table {
        Table { schema: SCHEMA, tools, scripts: scripts(), notes: notes(), rows }
    }

    /// Read a table written by `mnq cost` (`reports/cost/cost.json`).
    pub fn load(path: &Path) -> Result<Table, CostError> {
        let text = std::fs::read_to_string(path).map_err(|source| CostError::Io { path: path.to_path_buf(), source })?;
        let bad = |why: String| CostError::Table { path: path.to_path_buf(), why };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not valid JSON ({e}); is it truncated? regenerate it with `mnq cost`")))?;
        if v.get("schema").and_then(serde_json::Value::as_u64) != Some(u64::from(SCHEMA)) {
            return Err(bad(format!("not a cost table of schema {SCHEMA}: regenerate it with `mnq cost`")));
        }
        serde_json::from_value(v).map_err(|e| bad(format!("not a cost table ({e}): regenerate it with `mnq cost`")))
    }

    /// Replace the rows measured again (by name) and keep the others; a target not run again
    /// keeps its old figures when the Verilog is the same.
    pub fn merge(mut self, newer: Table) -> Table {
        for mut r in newer.rows {
            match self.rows.iter_mut().find(|o| o.name == r.name) {
                Some(o) => {
                    if o.verilog_fnv64 == r.verilog_fnv64 {
                        r.asic = r.asic.or(o.asic.take());
                        r.ice40 = r.ice40.or(o.ice40.take());
                        r.xilinx = r.xilinx.or(o.xilinx.take());
                        r.fmax = r.fmax.or(o.fmax.take());
                    }
                    *o = r;
                }
                None => self.rows.push(r),
            }
        }
        self.tools.extend(newer.tools);
        self.scripts = newer.scripts;
        self.notes = newer.notes;
        self
    }

    /// The row of a configuration.
    pub fn row(&self, unit: &str, bits: u32, lanes: usize) -> Result<&Row, CostError> {
        self.rows.iter().find(|r| r.unit == unit && r.bits == bits && r.lanes == lanes).ok_or_else(|| {
            CostError::Lookup(format!(
                "no row for {unit} at {bits} bits, {lanes} lanes: run `mnq cost --unit {unit} --bits {bits} --lanes {lanes}`"
            ))
        })
    }

    /// Area of a configuration (needs its ASIC synthesis; iCE40 figures when present).
    pub fn area(&self, unit: &str, bits: u32, lanes: usize) -> Result<Area, CostError> {
        let r = self.row(unit, bits, lanes)?;
        let a = match &r.asic {
            Some(Outcome::Ok(a)) => a,
            Some(Outcome::Failed { why, log }) => {
                return Err(CostError::Lookup(format!("{}: synthesis failed ({why}; log {log})", r.name)))
            }
            None => return Err(CostError::Lookup(format!("{}: not synthesised for the ASIC target", r.name))),
        };
        let ice = r.ice40.as_ref().and_then(Outcome::ok);
        let xil = r.xilinx.as_ref().and_then(Outcome::ok);
        Ok(Area {
            nand2_eq: a.nand2_eq,
            transistors: a.transistors,
            memory_bits: a.memory_bits,
            lut4: ice.map(|c| c.lut4),
            bram: ice.map(|c| c.bram),
            dsp: ice.map(|c| c.dsp),
            lut6_eq: xil.map(|x| x.lut6_eq),
        })
    }

    /// The LUT figure of an FPGA target (`lut4` of iCE40, `lut6_eq` of Xilinx) for a
    /// configuration; an error names the `mnq cost` run that supplies a missing one.
    pub fn luts(&self, unit: &str, bits: u32, lanes: usize, target: super::Target) -> Result<u64, CostError> {
        let r = self.row(unit, bits, lanes)?;
        let (status, n) = match target {
            super::Target::Ice40 => (r.ice40.as_ref().map(|o| o.ok().is_some()), r.ice40.as_ref().and_then(Outcome::ok).map(|c| c.lut4)),
            super::Target::Xilinx => {
                (r.xilinx.as_ref().map(|o| o.ok().is_some()), r.xilinx.as_ref().and_then(Outcome::ok).map(|x| x.lut6_eq))
            }
            super::Target::Asic => return Err(CostError::Lookup("the ASIC target has no LUTs".into())),
        };
        let again = format!("`mnq cost --unit {unit} --bits {bits} --lanes {lanes} --target {target}`");
        match (status, n) {
            (_, Some(n)) => Ok(n),
            (Some(false), _) => {
                Err(CostError::Lookup(format!("{}: the {target} synthesis failed (see its log); fix it and run {again}", r.name)))
            }
            _ => Err(CostError::Lookup(format!("{}: no {target} figures in the cost table: run {again}", r.name))),
        }
    }

    /// Cycles for `rows` rows of `row_len` elements streamed back to back through one
    /// instance, from the first input beat to the last output beat.
    pub fn cycles(&self, unit: &str, bits: u32, lanes: usize, row_len: usize, rows: u64) -> Result<u64, CostError> {
        Ok(self.row(unit, bits, lanes)?.timing_at(row_len)?.cycles(rows))
    }

    /// Write `cost.json`, `cost.csv`, `cost.md` and `summary.json` into `dir`; returns the paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, CostError> {
        let io = |e: crate::io::IoError| CostError::Table { path: dir.to_path_buf(), why: e.to_string() };
        let files = [dir.join("cost.json"), dir.join("cost.csv"), dir.join("cost.md"), dir.join("summary.json")];
        let json = serde_json::to_string_pretty(self).map_err(|e| CostError::Table { path: files[0].clone(), why: e.to_string() })? + "\n";
        write_atomic(&files[0], json.as_bytes()).map_err(io)?;
        write_atomic(&files[1], self.csv().as_bytes()).map_err(io)?;
        write_atomic(&files[2], self.markdown().as_bytes()).map_err(io)?;
        let summary = serde_json::to_string_pretty(&self.summary()).expect("summary serialises") + "\n";
        write_atomic(&files[3], summary.as_bytes()).map_err(io)?;
        Ok(files.to_vec())
    }

    /// The signoff figures of every configuration, flat (README "summary.json of mnq cost"):
    /// what an architect quotes, without the cell lists, scripts and fits of `cost.json`.
    pub fn summary(&self) -> serde_json::Value {
        let status = |ok: Option<bool>| match ok {
            Some(true) => "ok",
            Some(false) => "failed",
            None => "not run",
        };
        let configs: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let asic = r.asic.as_ref().and_then(Outcome::ok);
                let ice = r.ice40.as_ref().and_then(Outcome::ok);
                let xil = r.xilinx.as_ref().and_then(Outcome::ok);
                let fmax = r.fmax.as_ref().and_then(Outcome::ok);
                serde_json::json!({
                    "name": r.name,
                    "unit": r.unit,
                    "op": r.op,
                    "method": r.method,
                    "bits": r.bits,
                    "lanes": r.lanes,
                    "verilog": format!("{}.v", r.name),
                    "verilog_fnv64": r.verilog_fnv64,
                    "asic_status": status(r.asic.as_ref().map(|o| o.ok().is_some())),
                    "nand2_eq": asic.map(|a| a.nand2_eq),
                    "transistors": asic.map(|a| a.transistors),
                    "flip_flops": asic.map(|a| a.flip_flops),
                    "memory_bits": asic.map(|a| a.memory_bits),
                    "ice40_status": status(r.ice40.as_ref().map(|o| o.ok().is_some())),
                    "ice40_lut4": ice.map(|c| c.lut4),
                    "ice40_carry": ice.map(|c| c.carry),
                    "ice40_dff": ice.map(|c| c.dff),
                    "ice40_bram": ice.map(|c| c.bram),
                    "ice40_dsp": ice.map(|c| c.dsp),
                    "xilinx_status": status(r.xilinx.as_ref().map(|o| o.ok().is_some())),
                    "xilinx_lut6_eq": xil.map(|x| x.lut6_eq),
                    "xilinx_lut": xil.map(|x| x.lut),
                    "xilinx_lutram": xil.map(|x| x.lutram),
                    "xilinx_srl": xil.map(|x| x.srl),
                    "xilinx_carry4": xil.map(|x| x.carry4),
                    "xilinx_ff": xil.map(|x| x.ff),
                    "xilinx_dsp48": xil.map(|x| x.dsp),
                    "xilinx_ramb18": xil.map(|x| x.ramb18),
                    "xilinx_ramb36": xil.map(|x| x.ramb36),
                    "xilinx_bram36_eq": xil.map(|x| x.bram36_eq),
                    "fmax_mhz": fmax.and_then(|f| f.mhz),
                    "fmax_device": fmax.map(|f| f.device.clone()),
                    "timing": r.timing.iter().map(|t| serde_json::json!({
                        "row_len": t.row_len,
                        "latency_cycles": t.latency,
                        "row_period_cycles": t.row_period,
                        "elements_per_cycle": t.elements_per_cycle,
                    })).collect::<Vec<_>>(),
                    "max_row_len": r.max_row_len,
                    "sqnr_db": r.accuracy.sqnr_db,
                    "sqnr_unit_db": r.accuracy.sqnr_unit_db,
                    "manifest_formulas_agree": r.manifest.agrees,
                })
            })
            .collect();
        serde_json::json!({
            "format": 1,
            "tool": format!("mnq {}", env!("CARGO_PKG_VERSION")),
            "tools": self.tools,
            "scripts_fnv64": self.scripts.iter().map(|(k, v)| (k.clone(), super::fnv64(v))).collect::<BTreeMap<_, _>>(),
            "estimate": "yosys synthesis estimates of the unit alone, without place and route (fmax: nextpnr-ice40 where measured; Xilinx: yosys synth_xilinx, not Vivado); memory bits are the row buffers, outside the NAND2-eq figure",
            "configurations": configs,
        })
    }

    fn row_lengths(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.rows.iter().flat_map(|r| r.timing.iter().map(|t| t.row_len)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// One line per configuration, every figure; empty cells where a figure does not apply.
    pub fn csv(&self) -> String {
        let lens = self.row_lengths();
        let mut head: Vec<String> = [
            "name",
            "unit",
            "op",
            "method",
            "bits",
            "lanes",
            "sqnr_db",
            "sqnr_unit_db",
            "asic_status",
            "asic_cells",
            "asic_flip_flops",
            "asic_transistors",
            "asic_nand2_eq",
            "memories",
            "memory_bits",
            "ice40_status",
            "ice40_lut4",
            "ice40_carry",
            "ice40_dff",
            "ice40_bram",
            "ice40_dsp",
            "xilinx_status",
            "xilinx_lut6_eq",
            "xilinx_lut",
            "xilinx_lutram",
            "xilinx_srl",
            "xilinx_muxf",
            "xilinx_carry4",
            "xilinx_ff",
            "xilinx_dsp48",
            "xilinx_ramb18",
            "xilinx_ramb36",
            "xilinx_bram36_eq",
            "fmax_status",
            "fmax_mhz",
            "fmax_device",
            "max_row_len",
            "manifest_agrees",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in &lens {
            for f in ["latency", "row_period", "first_row_cycles", "elements_per_cycle", "ns_per_row", "rows_per_s"] {
                head.push(format!("{f}_n{n}"));
            }
        }
        let mut out = head.join(",") + "\n";
        let opt = |v: Option<String>| v.unwrap_or_default();
        let status = |s: Option<bool>| match s {
            None => "not run".to_string(),
            Some(true) => "ok".into(),
            Some(false) => "FAILED".into(),
        };
        for r in &self.rows {
            let a = r.asic.as_ref().and_then(Outcome::ok);
            let c = r.ice40.as_ref().and_then(Outcome::ok);
            let x = r.xilinx.as_ref().and_then(Outcome::ok);
            let f = r.fmax.as_ref().and_then(Outcome::ok);
            let mut v: Vec<String> = vec![
                r.name.clone(),
                r.unit.clone(),
                r.op.clone(),
                r.method.clone(),
                r.bits.to_string(),
                r.lanes.to_string(),
                opt(r.accuracy.sqnr_db.map(|x| format!("{x:.4}"))),
                opt(r.accuracy.sqnr_unit_db.map(|x| format!("{x:.4}"))),
                status(r.asic.as_ref().map(|o| o.ok().is_some())),
                opt(a.map(|a| a.cells_total.to_string())),
                opt(a.map(|a| a.flip_flops.to_string())),
                opt(a.map(|a| a.transistors.to_string())),
                opt(a.map(|a| a.nand2_eq.to_string())),
                opt(a.map(|a| a.memories.to_string())),
                opt(a.map(|a| a.memory_bits.to_string())),
                status(r.ice40.as_ref().map(|o| o.ok().is_some())),
                opt(c.map(|c| c.lut4.to_string())),
                opt(c.map(|c| c.carry.to_string())),
                opt(c.map(|c| c.dff.to_string())),
                opt(c.map(|c| c.bram.to_string())),
                opt(c.map(|c| c.dsp.to_string())),
                status(r.xilinx.as_ref().map(|o| o.ok().is_some())),
                opt(x.map(|x| x.lut6_eq.to_string())),
                opt(x.map(|x| x.lut.to_string())),
                opt(x.map(|x| x.lutram.to_string())),
                opt(x.map(|x| x.srl.to_string())),
                opt(x.map(|x| x.muxf.to_string())),
                opt(x.map(|x| x.carry4.to_string())),
                opt(x.map(|x| x.ff.to_string())),
                opt(x.map(|x| x.dsp.to_string())),
                opt(x.map(|x| x.ramb18.to_string())),
                opt(x.map(|x| x.ramb36.to_string())),
                opt(x.map(|x| x.bram36_eq.to_string())),
                status(r.fmax.as_ref().map(|o| o.ok().is_some())),
                opt(f.and_then(|f| f.mhz).map(|m| format!("{m:.2}"))),
                opt(f.map(|f| f.device.clone())),
                opt(r.max_row_len.map(|m| m.to_string())),
                r.manifest.agrees.to_string(),
            ];
            for n in &lens {
                match r.timing.iter().find(|t| t.row_len == *n) {
                    Some(t) => {
                        let fm = r.fmax_mhz();
                        v.extend([
                            t.latency.to_string(),
                            t.row_period.to_string(),
                            t.first_row_cycles.to_string(),
                            format!("{:.4}", t.elements_per_cycle),
                            opt(fm.map(|m| format!("{:.1}", t.row_period as f64 * 1e3 / m))),
                            opt(fm.map(|m| format!("{:.0}", m * 1e6 / t.row_period as f64))),
                        ]);
                    }
                    None => v.extend(std::iter::repeat_n(String::new(), 6)),
                }
            }
            out += &v.join(",");
            out.push('\n');
        }
        out
    }

    /// Tables for people: area and accuracy, then timing per row length.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "# Unit costs\n\nGenerated by `mnq cost`; every figure is measured (see `cost.json` for the scripts and tool versions).\n\n",
        );
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push_str("\n## Area and accuracy\n\n| configuration | SQNR (dB) | ASIC cells | flip-flops | transistors | NAND2-eq | memory bits | LUT4 | carry | DFF | BRAM | DSP | LUT6-eq | CARRY4 | FF | BRAM36-eq | DSP48 | fmax (MHz) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let fail = |log: &str| format!("FAILED (log {log})");
        for r in &self.rows {
            let asic = match &r.asic {
                Some(Outcome::Ok(a)) => {
                    format!("{} | {} | {} | {:.0} | {}", a.cells_total, a.flip_flops, a.transistors, a.nand2_eq, a.memory_bits)
                }
                Some(Outcome::Failed { log, .. }) => format!("{} | | | | ", fail(log)),
                None => "not run | | | | ".into(),
            };
            let ice = match &r.ice40 {
                Some(Outcome::Ok(c)) => format!("{} | {} | {} | {} | {}", c.lut4, c.carry, c.dff, c.bram, c.dsp),
                Some(Outcome::Failed { log, .. }) => format!("{} | | | | ", fail(log)),
                None => "not run | | | | ".into(),
            };
            let xil = match &r.xilinx {
                Some(Outcome::Ok(x)) => format!("{} | {} | {} | {} | {}", x.lut6_eq, x.carry4, x.ff, x.bram36_eq, x.dsp),
                Some(Outcome::Failed { log, .. }) => format!("{} | | | | ", fail(log)),
                None => "not run | | | | ".into(),
            };
            let fmax = match &r.fmax {
                Some(Outcome::Ok(f)) => f.mhz.map_or_else(|| "does not fit".to_string(), |m| format!("{m:.1}")),
                Some(Outcome::Failed { log, .. }) => fail(log),
                None => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {asic} | {ice} | {xil} | {fmax} |",
                r.name,
                r.accuracy.sqnr_db.map_or("exact".into(), |x| format!("{x:.2}"))
            );
        }
        s.push_str("\n## Timing (cycle model)\n\n| configuration | N | latency (cycles) | cycles per row | elements per cycle | ns per row | rows/s |\n|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let fm = r.fmax_mhz();
            for t in &r.timing {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.3} | {} | {} |",
                    r.name,
                    t.row_len,
                    t.latency,
                    t.row_period,
                    t.elements_per_cycle,
                    fm.map_or("—".into(), |m| format!("{:.1}", t.row_period as f64 * 1e3 / m)),
                    fm.map_or("—".into(), |m| format!("{:.0}", m * 1e6 / t.row_period as f64)),
                );
            }
        }
        let bad: Vec<&Row> = self.rows.iter().filter(|r| !r.manifest.agrees).collect();
        if !bad.is_empty() {
            s.push_str("\n## Manifest disagreements\n\n");
            for r in bad {
                let _ = writeln!(s, "- {}: {}", r.name, r.manifest.note.as_deref().unwrap_or("?"));
            }
        }
        s
    }
}
