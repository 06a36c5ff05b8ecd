//! Accuracy of what a configuration computes: the golden unit the hardware implements
//! (`cosim::golden_unit`, adapted preset: the constants the co-simulation loads), in Integer
//! mode, against the float reference on the operation's standard input distribution — the
//! same measurement as `mnq error` (64 rows, seed 1), through the same library functions.
//! The cycle models equal these golden units bit for bit (`mnq cosim`), so this is the
//! hardware's accuracy.

use super::CostError;
use crate::hdl::RtlConfig;
use crate::sensitivity::{self, Dist};
use crate::units::{Mode, Preset};
use serde::{Deserialize, Serialize};

/// Rows drawn, as `mnq error`'s default.
pub const ROWS: usize = 64;
/// Seed, as `mnq error`'s default.
pub const SEED: u64 = 1;

/// SQNR of a configuration against float.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Preset whose constants the hardware is configured with.
    pub preset: String,
    /// Input distribution.
    pub dist: String,
    /// SQNR against float on the float input, dB (`None`: exact).
    pub sqnr_db: Option<f64>,
    /// SQNR against float on the quantised input (the unit's own error), dB.
    pub sqnr_unit_db: Option<f64>,
    /// Parameters of the golden unit, `name=value`.
    pub params: Vec<String>,
}

/// Measure the accuracy of the unit a configuration implements.
pub fn measure(cfg: &RtlConfig) -> Result<Accuracy, CostError> {
    let cerr = |why: String| CostError::Accuracy { name: cfg.name(), why };
    let unit = crate::cosim::golden_unit(cfg, Preset::Adapted).map_err(|e| cerr(e.to_string()))?;
    let dist = Dist::for_op(unit.op()).ok_or_else(|| cerr("no standard input distribution".into()))?;
    let s = sensitivity::sample(unit.as_ref(), cfg.bits, dist, ROWS, SEED).map_err(|e| cerr(e.to_string()))?;
    let y = unit.run(&s.q, &s.aux, Mode::Integer).map_err(|e| cerr(e.to_string()))?.dequantize();
    Ok(Accuracy {
        preset: Preset::Adapted.to_string(),
        dist: serde_json::to_value(dist).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        sqnr_db: sensitivity::error_stats(&s.reference, &y).sqnr_db,
        sqnr_unit_db: sensitivity::error_stats(&s.reference_deq, &y).sqnr_db,
        params: unit.params().iter().map(|p| format!("{}={}", p.name, p.value)).collect(),
    })
}
