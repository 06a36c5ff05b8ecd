//! Plots (SVG and PNG, via plotters) and tables (Markdown, CSV, JSON) for people and tools.
//! Every file is written atomically: a failed run leaves no partial file.

pub mod attribution;
pub mod charts;
pub mod cost;

use crate::io::{write_atomic, IoError};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;
use std::path::{Path, PathBuf};
use std::sync::Once;

static FONT: Once = Once::new();

/// Register the bundled DejaVu Sans so that plots render the same on every machine.
fn ensure_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, include_bytes!("DejaVuSans.ttf"));
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> IoError {
    IoError::Format { path: path.to_path_buf(), what: format!("cannot draw plot: {e}") }
}

/// A figure that can be drawn on any plotters backend.
pub trait Figure {
    /// Draw on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draw the same figure as `<stem>.svg` and `<stem>.png`; returns both paths.
pub fn render(stem: &Path, size: (u32, u32), fig: &impl Figure) -> Result<Vec<PathBuf>, IoError> {
    ensure_font();
    let svg_path = stem.with_extension("svg");
    let png_path = stem.with_extension("png");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&svg_path, e))?;
        fig.draw(&root).map_err(|e| plot_err(&svg_path, e))?;
        root.present().map_err(|e| plot_err(&svg_path, e))?;
    }
    write_atomic(&svg_path, svg.as_bytes())?;
    let dir = png_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.{}.tmp.png", png_path.file_stem().unwrap_or_default().to_string_lossy(), std::process::id()));
    let res = (|| {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&png_path, e))?;
        fig.draw(&root).map_err(|e| plot_err(&png_path, e))?;
        root.present().map_err(|e| plot_err(&png_path, e))?;
        Ok::<(), IoError>(())
    })();
    match res.and_then(|_| std::fs::rename(&tmp, &png_path).map_err(|source| IoError::Io { path: png_path.clone(), source })) {
        Ok(()) => Ok(vec![svg_path, png_path]),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn bounds(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    if !lo.is_finite() || !hi.is_finite() {
        return (-1.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// Unit output against the float reference, with the identity line.
pub fn transfer_plot(stem: &Path, title: &str, reference: &[f64], output: &[f64]) -> Result<Vec<PathBuf>, IoError> {
    let step = (reference.len() / 1500).max(1);
    let pts: Vec<(f64, f64)> = reference.iter().zip(output).step_by(step).map(|(&r, &o)| (r, o)).collect();
    let (lo, hi) = bounds(pts.iter().flat_map(|p| [p.0, p.1]));
    render(stem, (640, 480), &Transfer { title, pts, lo, hi })
}

struct Transfer<'a> {
    title: &'a str,
    pts: Vec<(f64, f64)>,
    lo: f64,
    hi: f64,
}

impl Figure for Transfer<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (title, pts, lo, hi) = (self.title, &self.pts, self.lo, self.hi);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, lo..hi)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("float reference").y_desc("unit output (dequantised)").draw().map_err(|e| e.to_string())?;
        chart.draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.4))).map_err(|e| e.to_string())?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, BLUE.mix(0.5).filled()))).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Histogram of errors (unit − float).
pub fn error_histogram(stem: &Path, title: &str, errors: &[f64]) -> Result<Vec<PathBuf>, IoError> {
    let (lo, hi) = bounds(errors.iter().cloned());
    let nb = 60usize;
    let w = (hi - lo) / nb as f64;
    let mut counts = vec![0u64; nb];
    for e in errors {
        counts[(((e - lo) / w) as usize).min(nb - 1)] += 1;
    }
    let top = counts.iter().cloned().max().unwrap_or(1).max(1) as f64 * 1.05;
    render(stem, (640, 480), &Hist { title, counts, lo, w, top })
}

struct Hist<'a> {
    title: &'a str,
    counts: Vec<u64>,
    lo: f64,
    w: f64,
    top: f64,
}

impl Figure for Hist<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (title, counts, lo, w, top) = (self.title, &self.counts, self.lo, self.w, self.top);
        let hi = lo + w * counts.len() as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0f64..top)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("error (unit − float)").y_desc("elements").draw().map_err(|e| e.to_string())?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + w * i as f64;
                Rectangle::new([(x0, 0.0), (x0 + w, c as f64)], RED.mix(0.6).filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// How a legend entry's swatch is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Swatch {
    /// A filled square (bars).
    Box,
    /// A short thick line (lines).
    Line,
    /// A filled dot of this radius (scatters).
    Dot(i32),
}

/// The title inside the frame: the largest font size ≤ `size` (down to 12) at which it fits the
/// width, wrapped at spaces onto more lines when even 12 does not fit; returns the area below.
pub fn title_fit<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, size: u32) -> Result<DrawingArea<DB, Shift>, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let avail = root.dim_in_pixel().0.saturating_sub(24);
    let width =
        |s: &str, px: u32| root.estimate_text_size(s, &TextStyle::from(("sans-serif", px).into_font())).map(|(w, _)| w).unwrap_or(u32::MAX);
    let mut px = size;
    while px > 12 && width(title, px) > avail {
        px -= 1;
    }
    let mut lines: Vec<String> = Vec::new();
    for word in title.split(' ') {
        match lines.last_mut() {
            Some(l) if width(&format!("{l} {word}"), px) <= avail => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    let line_h = px as i32 + 6;
    let (top, rest) = root.split_vertically(lines.len() as i32 * line_h + 12);
    let cx = root.dim_in_pixel().0 as i32 / 2;
    for (i, l) in lines.iter().enumerate() {
        let style =
            ("sans-serif", px).into_font().color(&BLACK).pos(text_anchor::Pos::new(text_anchor::HPos::Center, text_anchor::VPos::Top));
        top.draw(&Text::new(l.clone(), (cx, 6 + i as i32 * line_h), style)).map_err(|x| e(&x))?;
    }
    Ok(rest)
}

/// Width in pixels a legend column needs for these names.
pub fn legend_width<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, names: &[String]) -> u32 {
    let w = names
        .iter()
        .filter_map(|n| root.estimate_text_size(n, &TextStyle::from(("sans-serif", 13).into_font())).ok())
        .map(|(w, _)| w)
        .max()
        .unwrap_or(0);
    w + 40
}

/// A legend drawn in its own column beside the plot (never over the data): one swatch and name
/// per entry, from `top` pixels down.
pub fn legend_column<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    top: i32,
    entries: &[(String, RGBColor, Swatch)],
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    for (i, (name, col, sw)) in entries.iter().enumerate() {
        let y = top + 20 * i as i32;
        match sw {
            Swatch::Box => area.draw(&Rectangle::new([(8, y - 5), (20, y + 5)], col.filled())),
            Swatch::Line => area.draw(&PathElement::new([(6, y), (22, y)], col.stroke_width(3))),
            Swatch::Dot(r) => area.draw(&Circle::new((14, y), *r, col.filled())),
        }
        .map_err(|x| e(&x))?;
        let style =
            ("sans-serif", 13).into_font().color(&BLACK).pos(text_anchor::Pos::new(text_anchor::HPos::Left, text_anchor::VPos::Center));
        area.draw(&Text::new(name.clone(), (28, y), style)).map_err(|x| e(&x))?;
    }
    Ok(())
}

/// Category labels under a chart's x axis, rotated to read upwards and hanging below the axis
/// (plotters' own rotated tick labels are centred on the tick and cross the axis): label `i`
/// sits under x = i + 0.5.
pub fn category_labels<DB: DrawingBackend, X, Y>(
    area: &DrawingArea<DB, Shift>,
    chart: &ChartContext<'_, DB, Cartesian2d<X, Y>>,
    labels: &[String],
    y_axis: Y::ValueType,
) -> Result<(), String>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged,
    Y::ValueType: Clone,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let base = area.get_base_pixel();
    for (i, l) in labels.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, y_axis.clone()));
        let style = ("sans-serif", 11)
            .into_font()
            .transform(FontTransform::Rotate270)
            .color(&BLACK)
            .pos(text_anchor::Pos::new(text_anchor::HPos::Right, text_anchor::VPos::Center));
        area.draw(&Text::new(l.clone(), (px - base.0, py - base.1 + 6), style)).map_err(|x| e(&x))?;
    }
    Ok(())
}

/// A fraction as a percentage with two decimals, "—" when unknown.
pub fn pct(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{:.2} %", 100.0 * v))
}
