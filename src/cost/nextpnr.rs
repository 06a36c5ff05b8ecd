//! Place and route with nextpnr-ice40 (`--fmax`) and the parser of its log.
//!
//! Pinned: iCE40HX8K in the CT256 package (the largest HX part, 7,680 logic cells, 206 I/O
//! pins; the UltraPlus has 39 I/O pins, fewer than any unit's ports), seed 1, target 100 MHz
//! (the timing-driven placer works towards it; failing it is allowed, the achieved figure is
//! what is reported), pins placed freely.

use super::CostError;
use std::path::Path;

/// Arguments of nextpnr-ice40 after `--json FILE`.
pub const NEXTPNR_ARGS: &[&str] =
    &["--hx8k", "--package", "ct256", "--seed", "1", "--freq", "100", "--timing-allow-fail", "--pcf-allow-unconstrained"];

/// What a place-and-route log says.
#[derive(Debug, Clone, PartialEq)]
pub struct PnrResult {
    /// Maximum frequency of the clock after routing, MHz (the last report in the log).
    pub fmax_mhz: Option<f64>,
    /// Logic cells used and available.
    pub logic_cells: Option<(u64, u64)>,
    /// The first `ERROR:` line, if any.
    pub error: Option<String>,
}

/// Read a nextpnr-ice40 log.
pub fn parse(log: &str, log_path: &Path) -> Result<PnrResult, CostError> {
    let mut r = PnrResult { fmax_mhz: None, logic_cells: None, error: None };
    for line in log.lines() {
        let t = line.trim();
        if let Some(i) = t.find("Max frequency for clock") {
            // "Info: Max frequency for clock 'clock$SB_IO_IN_$glb_clk': 61.86 MHz (PASS at 12.00 MHz)"
            let rest = &t[i..];
            let after = rest
                .split("': ")
                .nth(1)
                .ok_or_else(|| CostError::Parse { log: log_path.to_path_buf(), why: format!("unreadable line '{t}'") })?;
            let mhz = after
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| CostError::Parse { log: log_path.to_path_buf(), why: format!("unreadable frequency in '{t}'") })?;
            r.fmax_mhz = Some(mhz);
        } else if let Some(rest) = t.strip_prefix("Info:").map(str::trim).and_then(|s| s.strip_prefix("ICESTORM_LC:")) {
            // "ICESTORM_LC:  1234/ 7680    16%"
            let mut it = rest.split('/').map(|s| s.split_whitespace().next().unwrap_or("").parse::<u64>());
            if let (Some(Ok(u)), Some(Ok(a))) = (it.next(), it.next()) {
                r.logic_cells = Some((u, a));
            }
        } else if t.starts_with("ERROR:") && r.error.is_none() {
            r.error = Some(t.to_string());
        }
    }
    Ok(r)
}

/// The version line of the nextpnr-ice40 on PATH.
pub fn version() -> Result<String, CostError> {
    super::tool_version("nextpnr-ice40", "--version", "nextpnr-ice40")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_fmax_and_utilisation() {
        let log = "Info: Device utilisation:\nInfo: \t         ICESTORM_LC:   812/ 7680    10%\n\
                   Info: Max frequency for clock 'clock$SB_IO_IN_$glb_clk': 48.10 MHz (FAIL at 100.00 MHz)\n\
                   Info: Max frequency for clock 'clock$SB_IO_IN_$glb_clk': 52.81 MHz (FAIL at 100.00 MHz)\n";
        let r = parse(log, Path::new("p.log")).unwrap();
        assert_eq!(r.fmax_mhz, Some(52.81));
        assert_eq!(r.logic_cells, Some((812, 7680)));
        assert_eq!(r.error, None);
    }

    #[test]
    fn errors_are_kept() {
        let r = parse("ERROR: Design uses 9000 ICESTORM_LC, but device has only 7680\n", Path::new("p.log")).unwrap();
        assert_eq!(r.fmax_mhz, None);
        assert!(r.error.unwrap().contains("7680"));
    }
}
