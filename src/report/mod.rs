//! Plots (SVG and PNG, via plotters) and tables (Markdown, CSV, JSON) for people and tools.
//! Every file is written atomically: a failed run leaves no partial file.

pub mod attribution;
pub mod charts;
pub mod cost;
pub mod model;

use crate::io::{write_atomic, IoError};
use plotters::coord::Shift;
use plotters::prelude::*;
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
