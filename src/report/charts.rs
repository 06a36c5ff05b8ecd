//! Charts of the model-level reports: per-layer SQNR bars (the seed's Figure 1), output
//! histograms (its Figure 2) and accuracy-cost Pareto scatters.

use super::{category_labels, legend_column, legend_width, render, title_fit, Figure, Swatch};
use crate::io::IoError;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// One colour per series, stable across figures so a method keeps its colour everywhere.
pub fn series_colour(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    C[i % C.len()]
}

fn range_of(v: impl Iterator<Item = f64>, include_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = v.filter(|x| x.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    if !lo.is_finite() {
        return (-1.0, 1.0);
    }
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6);
    (lo - pad, hi + pad)
}

/// Per-layer SQNR figure: bars of SQNR diff per layer and method (top), lines of output ASQNR (bottom).
pub struct SqnrBars<'a> {
    /// Title of the figure.
    pub title: &'a str,
    /// Layer labels on the x axis, in execution order.
    pub layers: &'a [String],
    /// Method (series) names.
    pub methods: &'a [String],
    /// `diff[m][l]`: the bar value of method m at layer l (SQNR diff; None where the method does not apply).
    pub diff: &'a [Vec<Option<f64>>],
    /// `out[m][l]`: the line value of method m at layer l (output ASQNR).
    pub out: &'a [Vec<Option<f64>>],
    /// Description of the bars' axis with its unit, e.g. "SQNR diff, dB (20·log10)".
    pub bar_desc: &'a str,
    /// Description of the lines' axis with its unit.
    pub line_desc: &'a str,
}

impl Figure for SqnrBars<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let root = title_fit(root, self.title, 22)?;
        let lw = legend_width(&root, self.methods);
        let (plot, legend) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(lw));
        let (top, bottom) = plot.split_vertically(plot.dim_in_pixel().1 * 50 / 100);
        let nl = self.layers.len().max(1);
        let nm = self.methods.len().max(1);
        let (lo, hi) = range_of(self.diff.iter().flatten().flatten().cloned(), true);
        let mut c = ChartBuilder::on(&top)
            .margin(10)
            .x_label_area_size(10)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..nl as f64, lo..hi)
            .map_err(|x| e(&x))?;
        c.configure_mesh().disable_x_mesh().x_labels(0).y_desc(self.bar_desc).draw().map_err(|x| e(&x))?;
        let w = 0.8 / nm as f64;
        for (m, _) in self.methods.iter().enumerate() {
            let col = series_colour(m);
            let bars: Vec<_> = self.diff[m]
                .iter()
                .enumerate()
                .filter_map(|(l, v)| v.filter(|v| v.is_finite()).map(|v| (l, v)))
                .map(|(l, v)| {
                    let x0 = l as f64 + 0.1 + w * m as f64;
                    Rectangle::new([(x0, 0.0), (x0 + w, v)], col.filled())
                })
                .collect();
            c.draw_series(bars).map_err(|x| e(&x))?;
        }
        let entries = |sw: Swatch| -> Vec<(String, RGBColor, Swatch)> {
            self.methods.iter().enumerate().map(|(m, n)| (n.clone(), series_colour(m), sw)).collect()
        };
        legend_column(&legend, 30, &entries(Swatch::Box))?;

        let (lo, hi) = range_of(self.out.iter().flatten().flatten().cloned(), false);
        let label_px = self
            .layers
            .iter()
            .filter_map(|l| bottom.estimate_text_size(l, &TextStyle::from(("sans-serif", 11).into_font())).ok())
            .map(|(w, _)| w)
            .max()
            .unwrap_or(40);
        let mut c = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(label_px + 34)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..nl as f64, lo..hi)
            .map_err(|x| e(&x))?;
        c.configure_mesh().x_labels(0).x_desc("non-linear layer, in execution order").y_desc(self.line_desc).draw().map_err(|x| e(&x))?;
        category_labels(&bottom, &c, self.layers, lo)?;
        for (m, _) in self.methods.iter().enumerate() {
            let col = series_colour(m);
            let pts: Vec<(f64, f64)> =
                self.out[m].iter().enumerate().filter_map(|(l, v)| v.filter(|v| v.is_finite()).map(|v| (l as f64 + 0.5, v))).collect();
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, col.filled()))).map_err(|x| e(&x))?;
            c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2))).map_err(|x| e(&x))?;
        }
        legend_column(&legend, bottom.get_base_pixel().1 - root.get_base_pixel().1 + 30, &entries(Swatch::Line))?;
        Ok(())
    }
}

/// Draw [`SqnrBars`] as `<stem>.svg` and `<stem>.png`.
pub fn sqnr_bars(stem: &Path, fig: &SqnrBars) -> Result<Vec<PathBuf>, IoError> {
    let w = (360 + 26 * fig.layers.len() as u32).max(900);
    render(stem, (w, 680), fig)
}

/// Overlaid histograms of one layer's output: the float model against each quantised model.
pub struct OutputHistograms<'a> {
    /// Title of the figure.
    pub title: &'a str,
    /// (series name, values); the first series is drawn as the float reference.
    pub series: &'a [(String, Vec<f64>)],
}

impl Figure for OutputHistograms<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let (lo, hi) = range_of(self.series.iter().flat_map(|s| s.1.iter().cloned()), false);
        let nb = 80usize;
        let w = (hi - lo) / nb as f64;
        let hists: Vec<Vec<f64>> = self
            .series
            .iter()
            .map(|(_, v)| {
                let mut h = vec![0f64; nb];
                for &x in v.iter().filter(|x| x.is_finite()) {
                    h[(((x - lo) / w) as usize).min(nb - 1)] += 1.0;
                }
                let n = v.len().max(1) as f64;
                h.iter().map(|c| c / n).collect()
            })
            .collect();
        let top = hists.iter().flatten().cloned().fold(0.0, f64::max).max(1e-9) * 1.08;
        let root = title_fit(root, self.title, 18)?;
        let names: Vec<String> = self.series.iter().map(|s| s.0.clone()).collect();
        let (plot, legend) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(legend_width(&root, &names)));
        let mut c = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(lo..hi, 0f64..top)
            .map_err(|x| e(&x))?;
        c.configure_mesh().x_desc("layer output value (float)").y_desc("fraction of elements").draw().map_err(|x| e(&x))?;
        let mut entries = Vec::new();
        for (i, ((name, _), h)) in self.series.iter().zip(&hists).enumerate() {
            let col = if i == 0 { BLACK } else { series_colour(i - 1) };
            let mut pts = Vec::with_capacity(2 * nb + 2);
            pts.push((lo, 0.0));
            for (b, &v) in h.iter().enumerate() {
                pts.push((lo + w * b as f64, v));
                pts.push((lo + w * (b + 1) as f64, v));
            }
            pts.push((hi, 0.0));
            let width = if i == 0 { 3 } else { 1 };
            c.draw_series(LineSeries::new(pts, col.stroke_width(width))).map_err(|x| e(&x))?;
            entries.push((name.clone(), col, Swatch::Line));
        }
        legend_column(&legend, 30, &entries)?;
        Ok(())
    }
}

/// Draw [`OutputHistograms`] as `<stem>.svg` and `<stem>.png`.
pub fn output_histograms(stem: &Path, fig: &OutputHistograms) -> Result<Vec<PathBuf>, IoError> {
    render(stem, (860, 480), fig)
}

/// One point of a Pareto scatter.
#[derive(Debug, Clone)]
pub struct ScatterPoint {
    /// Cost axis value (area, latency).
    pub x: f64,
    /// Quality axis value (accuracy, SQNR).
    pub y: f64,
    /// Whether the point is on the Pareto front (drawn large and joined by a step line).
    pub pareto: bool,
    /// Short label drawn beside Pareto points (empty for none).
    pub label: String,
}

/// Quality against cost, Pareto points highlighted and joined.
pub struct ParetoScatter<'a> {
    /// Title of the figure.
    pub title: &'a str,
    /// x axis description.
    pub x_desc: &'a str,
    /// y axis description.
    pub y_desc: &'a str,
    /// The points.
    pub points: &'a [ScatterPoint],
}

impl Figure for ParetoScatter<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let (xl, xh) = range_of(self.points.iter().map(|p| p.x), false);
        let (yl, yh) = range_of(self.points.iter().map(|p| p.y), false);
        let root = title_fit(root, self.title, 18)?;
        let names = vec!["dominated".to_string(), "Pareto front".to_string()];
        let (plot, legend) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(legend_width(&root, &names)));
        let mut c = ChartBuilder::on(&plot)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(xl..xh, yl..yh)
            .map_err(|x| e(&x))?;
        let tick = |v: &f64| {
            if v.abs() >= 1000.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.4}").trim_end_matches('0').trim_end_matches('.').to_string()
            }
        };
        c.configure_mesh()
            .x_desc(self.x_desc)
            .y_desc(self.y_desc)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .draw()
            .map_err(|x| e(&x))?;
        c.draw_series(self.points.iter().filter(|p| !p.pareto).map(|p| Circle::new((p.x, p.y), 3, RGBColor(150, 150, 150).filled())))
            .map_err(|x| e(&x))?;
        let mut front: Vec<&ScatterPoint> = self.points.iter().filter(|p| p.pareto).collect();
        front.sort_by(|a, b| a.x.total_cmp(&b.x));
        let mut steps = Vec::new();
        for (i, p) in front.iter().enumerate() {
            if i > 0 {
                steps.push((p.x, front[i - 1].y));
            }
            steps.push((p.x, p.y));
        }
        c.draw_series(LineSeries::new(steps, RED.stroke_width(1))).map_err(|x| e(&x))?;
        c.draw_series(front.iter().map(|p| Circle::new((p.x, p.y), 5, RED.filled()))).map_err(|x| e(&x))?;
        // Labels offset from their marker so they never sit on it.
        c.draw_series(front.iter().filter(|p| !p.label.is_empty()).map(|p| {
            EmptyElement::at((p.x, p.y))
                + Text::new(p.label.clone(), (7, -7), ("sans-serif", 11).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Bottom)))
        }))
        .map_err(|x| e(&x))?;
        legend_column(
            &legend,
            30,
            &[(names[0].clone(), RGBColor(150, 150, 150), Swatch::Dot(3)), (names[1].clone(), RED, Swatch::Dot(5))],
        )?;
        Ok(())
    }
}

/// Draw [`ParetoScatter`] as `<stem>.svg` and `<stem>.png`.
pub fn pareto_scatter(stem: &Path, fig: &ParetoScatter) -> Result<Vec<PathBuf>, IoError> {
    render(stem, (860, 520), fig)
}

/// Error-attribution figure, one horizontal bar per variant of the integer model (all
/// integer, linear quantisation only, one op kind or one layer in float64): top-1 points lost
/// against the float model (left) and the logits' ASQNR against it (right).
pub struct AttributionBars<'a> {
    /// Title of the figure.
    pub title: &'a str,
    /// Variant labels, top to bottom.
    pub labels: &'a [String],
    /// Points lost (float top-1 − variant top-1) per variant.
    pub lost: &'a [f64],
    /// Logits ASQNR (dB) per variant (infinite: drawn at the largest finite value).
    pub asqnr: &'a [f64],
    /// Series index of each bar (its colour): 0 all integer, 1 linear only, 2 op kind, 3 layer, 4 units only.
    pub kind: &'a [usize],
}

/// Legend names of the [`AttributionBars`] series, by kind index.
const NAMES: [&str; 5] =
    ["all integer", "linear quantisation only", "one op kind in float64", "one layer in float64", "units only (float linear layers)"];

impl Figure for AttributionBars<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let root = title_fit(root, self.title, 20)?;
        let present: Vec<usize> = (0..NAMES.len()).filter(|k| self.kind.contains(k)).collect();
        let names: Vec<String> = present.iter().map(|&k| NAMES[k].to_string()).collect();
        let (root, legend) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(legend_width(&root, &names)));
        legend_column(&legend, 40, &present.iter().map(|&k| (NAMES[k].to_string(), series_colour(k), Swatch::Box)).collect::<Vec<_>>())?;
        let w = root.dim_in_pixel().0;
        let (left, right) = root.split_horizontally(w * 58 / 100);
        let n = self.labels.len().max(1);
        let labels = self.labels;
        let fmt = move |y: &f64| {
            let i = (y - 0.5).round();
            if (y - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[labels.len() - 1 - i as usize].clone()
            } else {
                String::new()
            }
        };
        // (area, values, axis title, label area width)
        type Panel<'p, D> = (&'p DrawingArea<D, Shift>, &'p [f64], &'p str, u32);
        let panels: [Panel<DB>; 2] =
            [(&left, self.lost, "top-1 points lost against float", 230), (&right, self.asqnr, "logits ASQNR against float, dB", 10)];
        for (pi, (area, vals, desc, ylab)) in panels.into_iter().enumerate() {
            let (lo, hi) = range_of(vals.iter().cloned(), true);
            let mut c = ChartBuilder::on(area)
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(ylab)
                .build_cartesian_2d(lo..hi, 0f64..n as f64)
                .map_err(|x| e(&x))?;
            let mut mesh = c.configure_mesh();
            mesh.disable_y_mesh().x_desc(desc).y_labels(4 * n + 1);
            if pi == 0 {
                mesh.y_label_formatter(&fmt);
            } else {
                mesh.y_label_formatter(&|_| String::new());
            }
            mesh.draw().map_err(|x| e(&x))?;
            let fin_hi = vals.iter().cloned().filter(|v| v.is_finite()).fold(0.0f64, f64::max);
            for k in 0..NAMES.len() {
                let col = series_colour(k);
                let bars: Vec<_> = vals
                    .iter()
                    .zip(self.kind)
                    .enumerate()
                    .filter(|(_, (v, &kk))| kk == k && !v.is_nan())
                    .map(|(i, (&v, _))| {
                        let v = if v.is_finite() { v } else { fin_hi };
                        let y = (n - 1 - i) as f64;
                        Rectangle::new([(0.0, y + 0.15), (v, y + 0.85)], col.filled())
                    })
                    .collect();
                if bars.is_empty() {
                    continue;
                }
                c.draw_series(bars).map_err(|x| e(&x))?;
            }
        }
        Ok(())
    }
}

/// Draw [`AttributionBars`] as `<stem>.svg` and `<stem>.png`.
pub fn attribution_bars(stem: &Path, fig: &AttributionBars) -> Result<Vec<PathBuf>, IoError> {
    let h = (160 + 22 * fig.labels.len() as u32).max(360);
    render(stem, (1200, h), fig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_render_to_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<String> = (0..5).map(|i| format!("{i}.softmax")).collect();
        let methods = vec!["ibert".to_string(), "ivit".to_string()];
        let diff = vec![vec![Some(1.0), Some(-2.0), None, Some(0.5), Some(3.0)], vec![Some(0.2); 5]];
        let out = vec![vec![Some(20.0), Some(22.0), None, Some(18.0), Some(25.0)], vec![Some(21.0); 5]];
        let f = SqnrBars {
            title: "t",
            layers: &layers,
            methods: &methods,
            diff: &diff,
            out: &out,
            bar_desc: "SQNR diff, dB",
            line_desc: "output ASQNR, dB",
        };
        let p = sqnr_bars(&dir.path().join("bars"), &f).unwrap();
        assert!(p.iter().all(|p| std::fs::metadata(p).unwrap().len() > 1000));
        let s = vec![("float".to_string(), vec![0.0, 0.1, 0.2, 0.9]), ("ivit".to_string(), vec![0.0, 0.0, 0.25, 1.0])];
        let p = output_histograms(&dir.path().join("h"), &OutputHistograms { title: "h", series: &s }).unwrap();
        assert_eq!(p.len(), 2);
        let pts = vec![
            ScatterPoint { x: 1.0, y: 1.0, pareto: true, label: "a".into() },
            ScatterPoint { x: 2.0, y: 0.5, pareto: false, label: String::new() },
            ScatterPoint { x: 3.0, y: 2.0, pareto: true, label: "b".into() },
        ];
        let p = pareto_scatter(&dir.path().join("p"), &ParetoScatter { title: "p", x_desc: "x", y_desc: "y", points: &pts }).unwrap();
        let svg = std::fs::read_to_string(&p[0]).unwrap();
        assert!(svg.contains("Pareto front"));
    }
}
