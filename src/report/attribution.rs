//! The error-attribution report of `mnq attribute`: a Markdown table, CSV, JSON and a bar plot.

use super::charts::{attribution_bars, AttributionBars};
use super::pct;
use crate::io::{write_atomic, IoError};
use crate::model::attribution::{Attribution, VariantKind};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn pts(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{:+.2}", 100.0 * v))
}

/// The Markdown table (with `header` lines above it) of an attribution.
pub fn markdown(a: &Attribution, header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(s, "Float ({}) top-1 {} on {} images.\n", a.float, pct(a.float_top1), a.images);
    let _ = writeln!(
        s,
        "| variant | float64 layers | top-1 | lost vs float (points) | recovered vs integer (points) | agreement with float | logits ASQNR (dB) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for r in &a.results {
        let lost = a.lost(r);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} % | {} |",
            r.variant.name,
            r.variant.exact_layers,
            pct(r.top1),
            pts(lost),
            pts(a.recovered(r)),
            100.0 * r.agreement,
            r.logits_asqnr_db.map_or("∞".into(), |v| format!("{v:.2}"))
        );
    }
    if let (Some(lin), Some(int)) = (a.linear_loss(), a.results.first().and_then(|r| a.lost(r))) {
        let _ = writeln!(
            s,
            "\nReading: the integer model loses {:.2} points against float; the linear quantisation alone (every non-linear op in float64) loses {:.2}, so the non-linear units together account for {:.2}{}. A variant's \"recovered\" column is what computing those layers exactly wins back; the op-kind rows need not add up (the errors interact). Differences below about 1 point are within the sampling noise of {} images.",
            100.0 * int,
            100.0 * lin,
            100.0 * (int - lin),
            a.units_loss().map_or(String::new(), |u| format!(" (the units alone, around float linear layers: {:.2})", 100.0 * u)),
            a.images
        );
    }
    s
}

/// The CSV rows of an attribution.
pub fn csv(a: &Attribution) -> String {
    let mut s = String::from("variant,what,exact_layers,top1,float_top1,lost_vs_float,recovered_vs_integer,agreement,logits_asqnr_db\n");
    let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    for r in &a.results {
        let lost = a.lost(r);
        let _ = writeln!(
            s,
            "\"{}\",\"{}\",{},{},{},{},{},{},{}",
            r.variant.name,
            r.variant.what,
            r.variant.exact_layers,
            f(r.top1),
            f(a.float_top1),
            f(lost),
            f(a.recovered(r)),
            r.agreement,
            f(r.logits_asqnr_db)
        );
    }
    s
}

/// Write `<stem>.md`, `.csv`, `.json` (with `meta` beside the results) and, unless `no_plot`,
/// `.svg` and `.png` into `dir`; returns the paths written.
pub fn write(
    dir: &Path,
    stem: &str,
    a: &Attribution,
    header: &str,
    meta: serde_json::Value,
    no_plot: bool,
) -> Result<Vec<PathBuf>, IoError> {
    let p = |ext: &str| dir.join(format!("{stem}.{ext}"));
    let json = serde_json::json!({ "meta": meta, "attribution": a });
    let json = serde_json::to_string_pretty(&json).map_err(|e| IoError::Format { path: p("json"), what: e.to_string() })? + "\n";
    let mut out = Vec::new();
    for (ext, bytes) in [("md", markdown(a, header)), ("csv", csv(a)), ("json", json)] {
        write_atomic(&p(ext), bytes.as_bytes())?;
        out.push(p(ext));
    }
    if !no_plot {
        let labels: Vec<String> = a.results.iter().map(|r| r.variant.name.clone()).collect();
        let lost: Vec<f64> = a.results.iter().map(|r| a.lost(r).map_or(f64::NAN, |v| 100.0 * v)).collect();
        let kind: Vec<usize> = a
            .results
            .iter()
            .map(|r| match r.variant.kind {
                VariantKind::Integer => 0,
                VariantKind::LinearOnly => 1,
                VariantKind::Op => 2,
                VariantKind::Layer => 3,
                VariantKind::UnitsOnly => 4,
            })
            .collect();
        let asqnr: Vec<f64> = a.results.iter().map(|r| r.logits_asqnr_db.unwrap_or(f64::INFINITY)).collect();
        let title = header.lines().next().unwrap_or("").trim_start_matches('#').trim();
        out.extend(attribution_bars(
            &dir.join(stem),
            &AttributionBars { title, labels: &labels, lost: &lost, asqnr: &asqnr, kind: &kind },
        )?);
    }
    Ok(out)
}
