//! Plots of the cost table: accuracy against area and against cycles per row for each
//! operation, Pareto points highlighted (`tradeoff_<op>`), and area against input bits
//! (`area_vs_bits`).

use super::{render, Figure};
use crate::cost::{Outcome, Row, Table};
use crate::io::IoError;
use crate::sensitivity::Dist;
use crate::units::Op;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// A point of a trade-off plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Configuration label.
    pub label: String,
    /// Method (colour).
    pub method: String,
    /// Cost (smaller is better).
    pub cost: f64,
    /// SQNR in dB (larger is better).
    pub sqnr_db: f64,
}

/// Indices of the points no other point beats on both cost and SQNR (ties kept).
pub fn pareto(points: &[Point]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            let p = &points[i];
            !points.iter().any(|q| q.cost <= p.cost && q.sqnr_db >= p.sqnr_db && (q.cost < p.cost || q.sqnr_db > p.sqnr_db))
        })
        .collect()
}

fn method_color(m: &str) -> RGBColor {
    match m {
        "I-BERT" | "ibert" => RGBColor(31, 119, 180),
        "I-ViT" | "ivit" => RGBColor(214, 39, 40),
        "FQ-ViT" | "fqvit" => RGBColor(44, 160, 44),
        _ => RGBColor(120, 120, 120),
    }
}

fn display(op: Op) -> &'static str {
    match op {
        Op::Softmax => "Softmax",
        Op::Gelu => "GELU",
        Op::LayerNorm => "LayerNorm",
        _ => op.name(),
    }
}

fn op_of(row: &Row) -> Option<Op> {
    crate::units::build(&row.unit, crate::units::Preset::Reference).ok().map(|u| u.op())
}

fn label(r: &Row) -> String {
    format!("{} {}b L{}", r.unit.split('_').nth(1).unwrap_or(&r.unit), r.bits, r.lanes)
}

/// Write `tradeoff_<op>.{svg,png}` for every operation in the table and `area_vs_bits.{svg,png}`.
pub fn plots(table: &Table, dir: &Path) -> Result<Vec<PathBuf>, IoError> {
    let mut files = Vec::new();
    for op in [Op::Softmax, Op::Gelu, Op::LayerNorm] {
        let rows: Vec<&Row> = table.rows.iter().filter(|r| op_of(r) == Some(op)).collect();
        if rows.is_empty() {
            continue;
        }
        let n = Dist::for_op(op).map_or(197, Dist::row_len);
        let mut area = Vec::new();
        let mut time = Vec::new();
        for r in &rows {
            let Some(db) = r.accuracy.sqnr_db else { continue };
            if let Some(Outcome::Ok(a)) = &r.asic {
                area.push(Point { label: label(r), method: r.method.clone(), cost: a.nand2_eq, sqnr_db: db });
            }
            if let Ok(t) = r.timing_at(n) {
                time.push(Point { label: label(r), method: r.method.clone(), cost: t.row_period as f64, sqnr_db: db });
            }
        }
        let fig = Tradeoff {
            title: format!("{}: accuracy against cost (one point per method × bits × lanes; Pareto points ringed)", display(op)),
            panels: [
                (area, "area (NAND2-equivalents, logic + flip-flops; row buffers apart)".to_string()),
                (time, format!("cycles per row at N = {n} (row period)")),
            ],
        };
        files.extend(render(&dir.join(format!("tradeoff_{}", op.name())), (1600, 560), &fig)?);
    }
    files.extend(render(&dir.join("area_vs_bits"), (1600, 600), &AreaBits { rows: table.rows.iter().collect() })?);
    Ok(files)
}

struct Tradeoff {
    title: String,
    panels: [(Vec<Point>, String); 2],
}

/// Tick values 1, 2, 5 × 10^k inside `r`, so that a log axis is labelled at readable numbers.
fn key_points(r: &std::ops::Range<f64>) -> Vec<f64> {
    let mut v = Vec::new();
    let mut p = 10f64.powf(r.start.max(1e-9).log10().floor());
    while p <= r.end {
        for m in [1.0, 2.0, 5.0] {
            if (r.start..=r.end).contains(&(m * p)) {
                v.push(m * p);
            }
        }
        p *= 10.0;
    }
    v
}

fn log_range(v: impl Iterator<Item = f64> + Clone) -> std::ops::Range<f64> {
    let lo = v.clone().fold(f64::INFINITY, f64::min);
    let hi = v.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || lo <= 0.0 {
        return 1.0..10.0;
    }
    lo / 1.4..hi * 1.4
}

impl Figure for Tradeoff {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let root = super::title_fit(root, &self.title, 20)?;
        let mut all: Vec<&str> = self.panels.iter().flat_map(|(pts, _)| pts.iter().map(|p| p.method.as_str())).collect();
        all.sort_unstable();
        all.dedup();
        let mut entries: Vec<(String, RGBColor, super::Swatch)> =
            all.iter().map(|m| (m.to_string(), method_color(m), super::Swatch::Dot(5))).collect();
        entries.push(("Pareto (ringed)".into(), BLACK, super::Swatch::Dot(3)));
        let names: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
        let (root, legend) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(super::legend_width(&root, &names)));
        super::legend_column(&legend, 30, &entries)?;
        let halves = root.split_evenly((1, 2));
        for (area, (pts, xdesc)) in halves.iter().zip(&self.panels) {
            let xr = log_range(pts.iter().map(|p| p.cost));
            let (ylo, yhi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.sqnr_db), b.max(p.sqnr_db)));
            let (ylo, yhi) = if ylo.is_finite() { (ylo - 2.0, yhi + 2.0) } else { (0.0, 1.0) };
            let mut chart = ChartBuilder::on(area)
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(55)
                .build_cartesian_2d(xr.clone().log_scale().with_key_points(key_points(&xr)), ylo..yhi)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc(xdesc.as_str())
                .y_desc("SQNR vs float (dB)")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|e| e.to_string())?;
            let front = pareto(pts);
            let mut line: Vec<(f64, f64)> = front.iter().map(|&i| (pts[i].cost, pts[i].sqnr_db)).collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart.draw_series(LineSeries::new(line, BLACK.mix(0.5).stroke_width(1))).map_err(|e| e.to_string())?;
            let mut methods: Vec<&str> = pts.iter().map(|p| p.method.as_str()).collect();
            methods.sort_unstable();
            methods.dedup();
            for m in methods {
                let c = method_color(m);
                chart
                    .draw_series(pts.iter().filter(|p| p.method == m).map(|p| Circle::new((p.cost, p.sqnr_db), 5, c.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .draw_series(front.iter().map(|&i| Circle::new((pts[i].cost, pts[i].sqnr_db), 9, BLACK.stroke_width(2))))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(pts.iter().map(|p| {
                    EmptyElement::at((p.cost, p.sqnr_db))
                        + Text::new(p.label.clone(), (8, -12), ("sans-serif", 11).into_font().color(&BLACK.mix(0.7)))
                }))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// One area figure of a row, when measured.
type AreaOf = dyn Fn(&Row) -> Option<f64>;

struct AreaBits<'a> {
    rows: Vec<&'a Row>,
}

impl Figure for AreaBits<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let root = super::title_fit(root, "Area against input bits (one line per unit and lane count)", 20)?;
        let asic = |r: &Row| r.asic.as_ref().and_then(Outcome::ok).map(|a| a.nand2_eq);
        let lut = |r: &Row| r.ice40.as_ref().and_then(Outcome::ok).map(|c| c.lut4 as f64);
        let panels: [(&AreaOf, &str); 2] = [(&asic, "NAND2-equivalents (ASIC-like)"), (&lut, "iCE40 LUT4")];
        let (bmin, bmax) = self.rows.iter().fold((u32::MAX, 0), |(a, b), r| (a.min(r.bits), b.max(r.bits)));
        let (bmin, bmax) = if bmin > bmax { (4, 16) } else { (bmin, bmax) };
        let mut series: Vec<(String, String, usize)> = self.rows.iter().map(|r| (r.unit.clone(), r.method.clone(), r.lanes)).collect();
        series.sort();
        series.dedup();
        // Colour by method, shade by unit within the method, thicker for more lanes.
        let style_of = |k: usize, method: &str, lanes: usize| {
            let base = method_color(method);
            let shade = 0.45 + 0.55 * ((k % 3) as f64 / 2.0);
            let c = RGBColor((f64::from(base.0) * shade) as u8, (f64::from(base.1) * shade) as u8, (f64::from(base.2) * shade) as u8);
            (c, if lanes > 1 { 3 } else { 1 })
        };
        let names: Vec<String> = series.iter().map(|(u, _, l)| format!("{u} L{l}")).collect();
        let (root, legend) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(super::legend_width(&root, &names)));
        let entries: Vec<(String, RGBColor, super::Swatch)> =
            series.iter().enumerate().map(|(k, (u, m, l))| (format!("{u} L{l}"), style_of(k, m, *l).0, super::Swatch::Line)).collect();
        super::legend_column(&legend, 30, &entries)?;
        let halves = root.split_evenly((1, 2));
        for (area, (f, ydesc)) in halves.iter().zip(panels) {
            let yr = log_range(self.rows.iter().filter_map(|r| f(r)));
            let mut chart = ChartBuilder::on(area)
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d(f64::from(bmin) - 0.5..f64::from(bmax) + 0.5, yr.clone().log_scale().with_key_points(key_points(&yr)))
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("input bits")
                .y_desc(ydesc)
                .x_labels((bmax - bmin + 2) as usize)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|e| e.to_string())?;
            for (k, (unit, method, lanes)) in series.iter().enumerate() {
                let mut pts: Vec<(f64, f64)> = self
                    .rows
                    .iter()
                    .filter(|r| &r.unit == unit && r.lanes == *lanes)
                    .filter_map(|r| f(r).map(|y| (f64::from(r.bits), y)))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (c, w) = style_of(k, method, *lanes);
                chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(w)).point_size(4)).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cost: f64, db: f64) -> Point {
        Point { label: String::new(), method: String::new(), cost, sqnr_db: db }
    }

    #[test]
    fn pareto_front() {
        let pts = [p(1.0, 10.0), p(2.0, 20.0), p(3.0, 15.0), p(2.0, 20.0), p(4.0, 30.0), p(0.5, 5.0)];
        assert_eq!(pareto(&pts), vec![0, 1, 3, 4, 5]);
        assert!(pareto(&[]).is_empty());
    }
}
