//! The sensitivity table (layer × candidate unit → ASQNR in/out, SQNR diff, cost) and the seed's
//! decision rules over it.

use super::asqnr::{sqnr_diff, Asqnr, AsqnrError, Convention, RATIO_CAP};
use super::assign::{Assignment, Choice, Layer, Problem, Sense};
use crate::units::Op;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use thiserror::Error;

/// A non-linear layer as the table describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Layer name, e.g. `blocks.3.attn.softmax`.
    pub name: String,
    /// The operation it computes.
    pub op: Op,
    /// Position in execution order (0-based).
    pub index: usize,
    /// Values per row the unit normalises over (tokens for softmax, channels otherwise).
    pub row_len: usize,
    /// Rows per image (heads × tokens for softmax, tokens otherwise).
    pub rows_per_image: usize,
}

impl LayerInfo {
    /// Short plot label `<index>.<op>`, e.g. `7.softmax`.
    pub fn label(&self) -> String {
        format!("{}.{}", self.index, self.op.name())
    }
}

/// One candidate unit at one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Unit name, `<op>_<method>` (or a variant of it, same prefix).
    pub unit: String,
    /// ASQNR of the layer's input in the model quantised with this unit's method, in dB.
    pub asqnr_in_db: f64,
    /// ASQNR of the layer's output, in dB.
    pub asqnr_out_db: f64,
    /// `asqnr_out_db − asqnr_in_db` (seed Eq. 11).
    pub sqnr_diff_db: f64,
    /// Area of one instance of the unit.
    pub area: f64,
    /// Cycles the layer takes on the unit for one image.
    pub latency: u64,
}

impl Cell {
    /// A cell from ASQNR values in dB; the SQNR diff is computed.
    pub fn new(unit: impl Into<String>, asqnr_in_db: f64, asqnr_out_db: f64, area: f64, latency: u64) -> Self {
        Cell { unit: unit.into(), asqnr_in_db, asqnr_out_db, sqnr_diff_db: asqnr_out_db - asqnr_in_db, area, latency }
    }

    /// A cell from the accumulators of the layer's input and output taps.
    pub fn from_taps(
        unit: impl Into<String>,
        input: &Asqnr,
        output: &Asqnr,
        convention: Convention,
        area: f64,
        latency: u64,
    ) -> Result<Self, AsqnrError> {
        let (i, o) = (input.db(convention)?, output.db(convention)?);
        let d = sqnr_diff(input, output, convention)?;
        Ok(Cell { unit: unit.into(), asqnr_in_db: i, asqnr_out_db: o, sqnr_diff_db: d, area, latency })
    }
}

/// A layer with its candidate cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableLayer {
    /// The layer.
    #[serde(flatten)]
    pub info: LayerInfo,
    /// One cell per candidate unit.
    pub cells: Vec<Cell>,
}

/// What the summed criterion of an assignment is; each one is also a decision rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// SQNR diff, lower is better (the seed's rule).
    SqnrDiff,
    /// Output ASQNR, higher is better (the seed's alternative rule).
    SqnrOutput,
    /// |SQNR diff|, lower is better.
    AbsSqnrDiff,
}

impl Criterion {
    /// Every criterion, in report order.
    pub const ALL: [Criterion; 3] = [Criterion::SqnrDiff, Criterion::SqnrOutput, Criterion::AbsSqnrDiff];

    /// Whether the criterion is minimised or maximised.
    pub fn sense(self) -> Sense {
        match self {
            Criterion::SqnrOutput => Sense::Maximise,
            _ => Sense::Minimise,
        }
    }

    /// The criterion's value at a cell.
    pub fn value(self, c: &Cell) -> f64 {
        match self {
            Criterion::SqnrDiff => c.sqnr_diff_db,
            Criterion::SqnrOutput => c.asqnr_out_db,
            Criterion::AbsSqnrDiff => c.sqnr_diff_db.abs(),
        }
    }

    /// Name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Criterion::SqnrDiff => "sqnr-diff",
            Criterion::SqnrOutput => "sqnr-output",
            Criterion::AbsSqnrDiff => "abs-sqnr-diff",
        }
    }

    /// One line for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Criterion::SqnrDiff => "SQNR diff (dB; lowest per layer: the seed's SQNR-diff rule)",
            Criterion::SqnrOutput => "output ASQNR (dB; highest per layer: the seed's SQNR-output rule)",
            Criterion::AbsSqnrDiff => "|SQNR diff| (dB; lowest per layer)",
        }
    }
}

/// Why a table was refused.
#[derive(Debug, Error, PartialEq)]
pub enum TableError {
    /// A table with no layers.
    #[error("the sensitivity table has no layers")]
    NoLayers,
    /// A layer listed twice.
    #[error("layer '{0}' appears twice in the sensitivity table")]
    DuplicateLayer(String),
    /// Execution indices not increasing.
    #[error("layer '{layer}' has execution index {index}, not after the previous layer's {prev}; list layers in execution order")]
    BadIndex {
        /// Layer name.
        layer: String,
        /// Its index.
        index: usize,
        /// The previous layer's index.
        prev: usize,
    },
    /// A layer with no row length or rows.
    #[error("layer '{0}' has a zero row length or row count")]
    BadShape(String),
    /// A layer without cells.
    #[error("layer '{0}' has no candidate unit")]
    NoCells(String),
    /// A unit listed twice at one layer.
    #[error("layer '{layer}' lists unit '{unit}' twice")]
    DuplicateUnit {
        /// Layer name.
        layer: String,
        /// Unit name.
        unit: String,
    },
    /// A unit of another op.
    #[error("layer '{layer}' computes {op} but candidate '{unit}' is not a {op} unit (names are <op>_<method>)")]
    WrongOp {
        /// Layer name.
        layer: String,
        /// The layer's op.
        op: &'static str,
        /// Unit name.
        unit: String,
    },
    /// A non-finite value, a negative area, or a diff that is not out − in.
    #[error("layer '{layer}', unit '{unit}': {what}")]
    BadCell {
        /// Layer name.
        layer: String,
        /// Unit name.
        unit: String,
        /// What is wrong.
        what: String,
    },
    /// One unit with two areas.
    #[error("unit '{unit}' has area {a} at one layer and {b} at '{layer}'; a unit type has one area")]
    AreaMismatch {
        /// Unit name.
        unit: String,
        /// First area.
        a: f64,
        /// Second area.
        b: f64,
        /// Layer of the second.
        layer: String,
    },
    /// A table file that does not parse.
    #[error("{path}: {what}")]
    Format {
        /// File.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// The sensitivity table: per layer (execution order) and candidate unit, ASQNR in and out, SQNR
/// diff and the unit's cost at that layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Decibel convention of every ASQNR and SQNR diff in the table.
    pub convention: Convention,
    /// Unit of the area column (e.g. `NAND2-eq`).
    pub area_unit: String,
    /// Layers in execution order.
    pub layers: Vec<TableLayer>,
}

impl Table {
    /// A table, validated.
    pub fn new(convention: Convention, area_unit: impl Into<String>, layers: Vec<TableLayer>) -> Result<Self, TableError> {
        let t = Table { convention, area_unit: area_unit.into(), layers };
        t.validate()?;
        Ok(t)
    }

    /// Check every invariant a table must keep (see [`TableError`]).
    pub fn validate(&self) -> Result<(), TableError> {
        if self.layers.is_empty() {
            return Err(TableError::NoLayers);
        }
        let mut areas: HashMap<&str, f64> = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.layers.iter().enumerate() {
            let info = &l.info;
            if !names.insert(info.name.as_str()) {
                return Err(TableError::DuplicateLayer(info.name.clone()));
            }
            if i > 0 && info.index <= self.layers[i - 1].info.index {
                return Err(TableError::BadIndex { layer: info.name.clone(), index: info.index, prev: self.layers[i - 1].info.index });
            }
            if info.row_len == 0 || info.rows_per_image == 0 {
                return Err(TableError::BadShape(info.name.clone()));
            }
            if l.cells.is_empty() {
                return Err(TableError::NoCells(info.name.clone()));
            }
            for (j, c) in l.cells.iter().enumerate() {
                if l.cells[..j].iter().any(|d| d.unit == c.unit) {
                    return Err(TableError::DuplicateUnit { layer: info.name.clone(), unit: c.unit.clone() });
                }
                if !c.unit.starts_with(&format!("{}_", info.op.name())) {
                    return Err(TableError::WrongOp { layer: info.name.clone(), op: info.op.name(), unit: c.unit.clone() });
                }
                let bad = |what: String| TableError::BadCell { layer: info.name.clone(), unit: c.unit.clone(), what };
                for (what, v) in
                    [("ASQNR in", c.asqnr_in_db), ("ASQNR out", c.asqnr_out_db), ("SQNR diff", c.sqnr_diff_db), ("area", c.area)]
                {
                    if !v.is_finite() {
                        return Err(bad(format!("{what} is {v}; it must be finite")));
                    }
                }
                if c.area < 0.0 {
                    return Err(bad(format!("area is {}; it must be ≥ 0", c.area)));
                }
                if c.sqnr_diff_db != c.asqnr_out_db - c.asqnr_in_db {
                    return Err(bad(format!(
                        "SQNR diff {} is not ASQNR out − ASQNR in = {}",
                        c.sqnr_diff_db,
                        c.asqnr_out_db - c.asqnr_in_db
                    )));
                }
                match areas.get(c.unit.as_str()) {
                    Some(&a) if a != c.area => {
                        return Err(TableError::AreaMismatch { unit: c.unit.clone(), a, b: c.area, layer: info.name.clone() })
                    }
                    _ => {
                        areas.insert(&c.unit, c.area);
                    }
                }
            }
        }
        Ok(())
    }

    /// Parse and validate JSON text; `path` names the source in errors.
    pub fn from_json(text: &str, path: &str) -> Result<Self, TableError> {
        let t: Table = serde_json::from_str(text).map_err(|e| TableError::Format { path: path.into(), what: e.to_string() })?;
        t.validate()?;
        Ok(t)
    }

    /// Pretty JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a validated table serialises") + "\n"
    }

    /// CSV, one row per layer and candidate.
    pub fn to_csv(&self) -> String {
        let mut s = format!(
            "index,label,layer,op,row_len,rows_per_image,unit,asqnr_in_db,asqnr_out_db,sqnr_diff_db,db_convention,area_{},latency_cycles\n",
            self.area_unit.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        for l in &self.layers {
            let i = &l.info;
            for c in &l.cells {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    i.index,
                    i.label(),
                    i.name,
                    i.op.name(),
                    i.row_len,
                    i.rows_per_image,
                    c.unit,
                    c.asqnr_in_db,
                    c.asqnr_out_db,
                    c.sqnr_diff_db,
                    self.convention,
                    c.area,
                    c.latency
                );
            }
        }
        s
    }

    /// Markdown: a note on the convention, then one row per layer and candidate.
    pub fn to_markdown(&self) -> String {
        let cap_db = self.convention.db(RATIO_CAP);
        let mut s = format!(
            "ASQNR: batch mean over images of E[x²]/E[(x−q)²] per image, in dB as {} (seed Eq. 10); an exact image counts as a ratio of {RATIO_CAP:e} ({cap_db:.0} dB). SQNR diff = ASQNR out − ASQNR in (seed Eq. 11).\n\n\
             | # | layer | op | rows × row length | unit | ASQNR in (dB) | ASQNR out (dB) | SQNR diff (dB) | area ({}) | latency (cycles) |\n\
             |---:|---|---|---:|---|---:|---:|---:|---:|---:|\n",
            self.convention.describe(),
            self.area_unit
        );
        for l in &self.layers {
            let i = &l.info;
            for (j, c) in l.cells.iter().enumerate() {
                let head = if j == 0 {
                    format!("{} | {} | {} | {} × {}", i.index, i.name, i.op.name(), i.rows_per_image, i.row_len)
                } else {
                    " | | | ".into()
                };
                let _ = writeln!(
                    s,
                    "| {head} | {} | {:.2} | {:.2} | {:+.2} | {} | {} |",
                    c.unit, c.asqnr_in_db, c.asqnr_out_db, c.sqnr_diff_db, c.area, c.latency
                );
            }
        }
        s
    }

    /// Layer names and ops, in execution order (what [`crate::model::Assignment::check`] takes).
    pub fn layer_ops(&self) -> Vec<(String, Op)> {
        self.layers.iter().map(|l| (l.info.name.clone(), l.info.op)).collect()
    }

    /// The decision rule of `criterion`: per layer the candidate with the best value (lowest, or
    /// highest for output ASQNR), ties to the first candidate in table order. Ignores cost.
    pub fn rule(&self, criterion: Criterion) -> Assignment {
        Assignment(
            self.layers
                .iter()
                .map(|l| {
                    let better = |a: f64, b: f64| match criterion.sense() {
                        Sense::Minimise => a < b,
                        Sense::Maximise => a > b,
                    };
                    let best =
                        l.cells.iter().skip(1).fold(&l.cells[0], |b, c| if better(criterion.value(c), criterion.value(b)) { c } else { b });
                    (l.info.name.clone(), best.unit.clone())
                })
                .collect(),
        )
    }

    /// The assignment problem for `criterion`: every cell a candidate with its cost.
    pub fn problem(&self, criterion: Criterion) -> Problem {
        Problem {
            criterion: format!("{} [{}]", criterion.describe(), self.convention),
            sense: criterion.sense(),
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    name: l.info.name.clone(),
                    options: l
                        .cells
                        .iter()
                        .map(|c| Choice { unit: c.unit.clone(), criterion: criterion.value(c), area: c.area, latency: c.latency })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, op: Op, index: usize) -> LayerInfo {
        LayerInfo { name: name.into(), op, index, row_len: 8, rows_per_image: 4 }
    }

    #[test]
    fn validation_catches_bad_tables() {
        let good = || vec![TableLayer { info: info("n", Op::LayerNorm, 0), cells: vec![Cell::new("layernorm_ivit", 30.0, 25.0, 10.0, 4)] }];
        assert!(Table::new(Convention::Amplitude20, "NAND2-eq", good()).is_ok());
        let mut l = good();
        l[0].cells[0].unit = "softmax_ivit".into();
        assert!(matches!(Table::new(Convention::Amplitude20, "x", l), Err(TableError::WrongOp { .. })));
        let mut l = good();
        l[0].cells[0].sqnr_diff_db = 1.0;
        assert!(Table::new(Convention::Amplitude20, "x", l).unwrap_err().to_string().contains("not ASQNR out"));
        let mut l = good();
        l[0].cells[0].asqnr_in_db = f64::NAN;
        assert!(matches!(Table::new(Convention::Amplitude20, "x", l), Err(TableError::BadCell { .. })));
        let mut l = good();
        l.push(TableLayer { info: info("m", Op::LayerNorm, 0), cells: good()[0].cells.clone() });
        assert!(matches!(Table::new(Convention::Amplitude20, "x", l), Err(TableError::BadIndex { .. })));
        assert!(matches!(Table::from_json("{\"convention\": \"amplitude20\"", "t.json"), Err(TableError::Format { .. })));
    }
}
