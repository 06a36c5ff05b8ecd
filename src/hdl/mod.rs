//! Verilog generation through rust_hdl: one block per unit, the registry of configurations
//! that can be generated, and the emitter that names each configuration
//! `<unit>_<bits>b_l<lanes>` and writes it with `rtl/manifest.json`.

pub mod gelu_ibert;
pub mod gelu_ivit;
pub mod layernorm;
pub mod layernorm_fqvit;
pub mod layernorm_ibert;
pub mod layernorm_ivit;
pub mod prims;
pub mod softmax_fqvit;
pub mod softmax_ibert;
pub mod softmax_ivit;
pub mod softmax_multi;
pub mod softmax_row;

use crate::units::Method;
use layernorm_ibert::LayerNormIbert;
use layernorm_ivit::LayerNormIvit;
use rust_hdl::prelude::*;
use serde::Serialize;
use softmax_fqvit::SoftmaxFqvit;
use softmax_ibert::SoftmaxIbert;
use softmax_ivit::SoftmaxIvit;
use thiserror::Error;

/// Units that have hardware so far (the others are golden models only).
pub const RTL_UNITS: &[&str] =
    &["gelu_ibert", "gelu_ivit", "softmax_ivit", "softmax_ibert", "softmax_fqvit", "layernorm_ivit", "layernorm_ibert", "layernorm_fqvit"];
/// Name of the multi-method softmax: generated as `softmax_multi_<m>_<m>[_<m>]`, the methods
/// in the order ibert, fqvit, ivit (`mnq rtl --unit softmax_multi --methods ibert,ivit`).
pub const MULTI_SOFTMAX: &str = "softmax_multi";
/// Input widths of the multi-method softmax (each subset, width and lane count is a large
/// monomorphised block; compile time is part of CI's budget).
pub const MULTI_BITS: [u32; 2] = [6, 8];
/// Lane counts of the multi-method softmax.
pub const MULTI_LANES: [usize; 2] = [1, 4];
/// The multi-method configurations committed in `rtl/` (co-simulated and costed in CI).
pub const MULTI_DEFAULT: &[(&[Method], u32, usize)] =
    &[(&[Method::IBert, Method::FqVit, Method::IVit], 8, 1), (&[Method::IBert, Method::IVit], 8, 1)];

/// The methods of a multi-method softmax unit name (`softmax_multi_ibert_ivit`), or `None`
/// for any other name.
pub fn multi_methods(unit: &str) -> Option<Vec<Method>> {
    let rest = unit.strip_prefix(MULTI_SOFTMAX)?.strip_prefix('_')?;
    let mut v = Vec::new();
    for part in rest.split('_') {
        v.push([Method::IBert, Method::FqVit, Method::IVit].into_iter().find(|m| m.name() == part)?);
    }
    (v.len() >= 2 && v.windows(2).all(|w| w[0] < w[1])).then_some(v)
}

/// The unit name of a multi-method softmax over `methods` (any order, each once, at least two).
pub fn multi_unit(methods: &[Method]) -> Result<String, HdlError> {
    let mut v = methods.to_vec();
    v.sort();
    let names = || methods.iter().map(|m| m.name()).collect::<Vec<_>>().join(",");
    if v.windows(2).any(|w| w[0] == w[1]) {
        return Err(HdlError::Methods(format!("--methods {} names a method twice", names())));
    }
    if v.len() < 2 {
        return Err(HdlError::Methods(format!(
            "--methods {} is one method: its unit is softmax_{} (a multi-method softmax needs at least two of ibert, fqvit, ivit)",
            names(),
            v.first().map_or("?", |m| m.name())
        )));
    }
    Ok(format!("{MULTI_SOFTMAX}_{}", v.iter().map(|m| m.name()).collect::<Vec<_>>().join("_")))
}

/// Supported lane counts.
pub const LANES: [usize; 5] = [1, 2, 4, 8, 16];
/// Supported input widths of the generated hardware.
pub const BITS: [u32; 6] = [4, 6, 8, 10, 12, 16];

/// Errors of RTL generation: an impossible configuration is refused before anything is written.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum HdlError {
    /// A unit without hardware yet.
    #[error("unit '{0}' has no hardware model yet (available: {list})", list = RTL_UNITS.join(", "))]
    Unit(String),
    /// LANES not in the supported set.
    #[error("LANES = {0} is not supported: use a power of two in {LANES:?}")]
    Lanes(usize),
    /// A method subset that has no multi-method softmax.
    #[error("{0}")]
    Methods(String),
    /// LANES not generated for the multi-method softmax.
    #[error("LANES = {0} is not generated for softmax_multi: use one of {MULTI_LANES:?}")]
    MultiLanes(usize),
    /// Input width not in the supported set.
    #[error("{bits}-bit inputs are not generated for {unit}: supported widths {supported:?}", supported = supported_bits(unit))]
    Bits {
        /// Unit.
        unit: String,
        /// Requested width.
        bits: u32,
    },
}

/// Input widths generated for a unit: the softmax exponent datapath is bits + 20 wide and must
/// stay within 32; layernorm_fqvit is generated for 6 and 8 bits only (each width is a large
/// monomorphised block, and compile time is part of CI's budget).
pub fn supported_bits(unit: &str) -> Vec<u32> {
    match unit {
        u if multi_methods(u).is_some() => MULTI_BITS.to_vec(),
        "layernorm_fqvit" => vec![6, 8],
        u if u.starts_with("softmax") || u == "gelu_ivit" => BITS.iter().copied().filter(|&b| b <= 12).collect(),
        _ => BITS.to_vec(),
    }
}

/// One generated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RtlConfig {
    /// Unit name.
    pub unit: String,
    /// Input bits.
    pub bits: u32,
    /// Lanes per beat.
    pub lanes: usize,
}

impl RtlConfig {
    /// Check the configuration can be generated.
    pub fn new(unit: &str, bits: u32, lanes: usize) -> Result<RtlConfig, HdlError> {
        let multi = multi_methods(unit).is_some();
        if !RTL_UNITS.contains(&unit) && !multi {
            return Err(HdlError::Unit(unit.to_string()));
        }
        if !LANES.contains(&lanes) {
            return Err(HdlError::Lanes(lanes));
        }
        if multi && !MULTI_LANES.contains(&lanes) {
            return Err(HdlError::MultiLanes(lanes));
        }
        if !supported_bits(unit).contains(&bits) {
            return Err(HdlError::Bits { unit: unit.to_string(), bits });
        }
        Ok(RtlConfig { unit: unit.to_string(), bits, lanes })
    }

    /// Module and file name: `<unit>_<bits>b_l<lanes>`.
    pub fn name(&self) -> String {
        format!("{}_{}b_l{}", self.unit, self.bits, self.lanes)
    }

    /// Width of the configuration address: 12 bits for the LayerNorms (per-channel biases at
    /// 1024 + c), 8 for the multi-method softmax (a 6-bit bank per method), 6 bits for the others.
    pub fn cfg_addr_bits(&self) -> u32 {
        if self.unit.starts_with("layernorm") {
            crate::cycle::layernorm::CFG_ADDR_BITS
        } else if self.methods().is_some() {
            crate::cycle::softmax::BANK_ADDR_BITS + 2
        } else {
            6
        }
    }

    /// The methods of a multi-method softmax (`None` for a single-method unit).
    pub fn methods(&self) -> Option<Vec<Method>> {
        multi_methods(&self.unit)
    }

    /// The single-method configuration of `m` at this configuration's width and lanes (a
    /// multi-method unit's bank `m` takes that unit's constants).
    pub fn single(&self, m: Method) -> RtlConfig {
        RtlConfig { unit: format!("softmax_{}", m.name()), bits: self.bits, lanes: self.lanes }
    }

    /// Output bits per lane.
    pub fn out_bits(&self) -> u32 {
        self.manifest().out_bits_per_lane
    }

    /// What the manifest records about this configuration.
    pub fn manifest(&self) -> ManifestEntry {
        let (out_bits, regs, latency, period, ii) = match self.unit.as_str() {
            _ if self.methods().is_some() => self.multi_manifest(),
            "softmax_ivit" => {
                let x = crate::cycle::softmax::xw(self.bits);
                (
                    16,
                    vec![
                        "0: upshift p (5 bits)".to_string(),
                        format!("1: x0 = floor(-1/(s/2^p)) ({x} bits)"),
                        format!("2: n*x0 ({x} bits)"),
                        "3: n (5 bits, <= 15)".into(),
                        "5: beats per row ceil(N/LANES) (11 bits)".into(),
                        "6: valid lanes of the last beat (5 bits)".into(),
                        format!("32..46: k*x0 for k = 1..15 ({x} bits)"),
                    ],
                    "2*ceil(N/LANES) + 34".to_string(),
                    "3*ceil(N/LANES) + 34".to_string(),
                    "one row at a time: LOAD ceil(N/LANES), SUM ceil(N/LANES)+1, DIV 31, OUT ceil(N/LANES)+1 cycles".to_string(),
                )
            }
            "gelu_ivit" => {
                let x = crate::cycle::gelu_ivit::xw(self.bits);
                (
                    self.bits + 9,
                    vec![
                        "0: upshift p (5 bits)".to_string(),
                        format!("1: x0 = floor(-1/(1.702 s/2^p)) ({x} bits)"),
                        format!("2: n*x0 ({x} bits)"),
                        "3: n (5 bits, <= 23)".into(),
                        "4: K0 = exp_shift(0) = -x0*2^n (32 bits)".into(),
                        format!("32..54: k*x0 for k = 1..23 ({x} bits)"),
                    ],
                    "33".to_string(),
                    "ceil(N/LANES)".to_string(),
                    "1 beat per cycle (31-stage pipelined divider)".to_string(),
                )
            }
            "softmax_fqvit" => {
                let x = crate::cycle::softmax::xw(self.bits);
                (
                    5,
                    vec![
                        "0: upshift p (5 bits)".to_string(),
                        format!("2: n*x0 ({x} bits)"),
                        "3: n (6 bits, 30)".into(),
                        "5: beats per row ceil(N/LANES) (11 bits)".into(),
                        "6: valid lanes of the last beat (5 bits)".into(),
                        "7: b_int (32 bits)".into(),
                        "8: c_int (32 bits)".into(),
                        format!("32..61: k*x0 for k = 1..30 ({x} bits)"),
                    ],
                    "2*ceil(N/LANES) + 3".to_string(),
                    "3*ceil(N/LANES) + 3".to_string(),
                    "one row at a time: LOAD ceil(N/LANES), SUM ceil(N/LANES)+1, OUT ceil(N/LANES)+1 cycles (no divider)".to_string(),
                )
            }
            "softmax_ibert" => {
                let x = crate::cycle::softmax::xw(self.bits);
                (
                    9,
                    vec![
                        "0: upshift p (5 bits)".to_string(),
                        format!("2: n*x0 ({x} bits)"),
                        "3: n (6 bits, 30)".into(),
                        "5: beats per row ceil(N/LANES) (11 bits)".into(),
                        "6: valid lanes of the last beat (5 bits)".into(),
                        "7: b_int (32 bits)".into(),
                        "8: c_int (32 bits)".into(),
                        "9: m16, requantiser mantissa (32 bits unsigned)".into(),
                        "10: e16, requantiser shift (6 bits)".into(),
                        "11: largest output, 2^8 (reference) or 2^8-1 (adapted) (10 bits)".into(),
                        format!("32..61: k*x0 for k = 1..30 ({x} bits)"),
                    ],
                    "2*ceil(N/LANES) + 36".to_string(),
                    "3*ceil(N/LANES) + 36".to_string(),
                    "one row at a time: LOAD ceil(N/LANES), SUM ceil(N/LANES)+1, DIV 33, OUT ceil(N/LANES)+1 cycles".to_string(),
                )
            }
            "layernorm_ivit" | "layernorm_ibert" => {
                let b = self.bits;
                let w = crate::cycle::layernorm::var_bits(b);
                let mut regs = vec![
                    "7: row length N, the channels (11 bits, 1..=1024; ceil(N/LANES) and the last beat's valid lanes are derived on the write)"
                        .to_string(),
                    "8: variance shift (5 bits; 0 for I-ViT)".into(),
                    "9: factor numerator (32 bits): 2^31-1 (I-ViT), 2^(31-shift) (I-BERT)".into(),
                ];
                let (lat, per, sq) = if self.unit == "layernorm_ivit" {
                    regs.push("10: Newton steps S (5 bits; 10 in both presets)".into());
                    regs.push(format!("11: Newton start (32 bits, below 2^{}; 0 = 2^ceil(bitlen(var)/2))", w.min(32)));
                    let k = b + 47;
                    (
                        format!("2*ceil(N/LANES) + {w}*S + {k} (S = 10: 2*ceil(N/LANES) + {})", 10 * w + k),
                        format!("3*ceil(N/LANES) + {w}*S + {k} (S = 10: 3*ceil(N/LANES) + {})", 10 * w + k),
                        format!("SQRT {w}*S+2 (Newton, one {w}-bit restoring division per step)"),
                    )
                } else {
                    let k = 2 * b + 52;
                    (
                        format!("2*ceil(N/LANES) + {k}"),
                        format!("3*ceil(N/LANES) + {k}"),
                        format!("SQRT {} (digit-by-digit, 2 bits a cycle)", w / 2 + 2),
                    )
                };
                regs.push("1024+c: bias_int[c] for channel c < N (32 bits, two's complement)".into());
                (
                    crate::cycle::layernorm::out_bits(b),
                    regs,
                    lat,
                    per,
                    format!(
                        "one row at a time: LOAD ceil(N/LANES), MEAN {}, VAR ceil(N/LANES)+1, {sq}, FACT 32, OUT ceil(N/LANES)+1 cycles",
                        crate::cycle::layernorm::mean_len(b)
                    ),
                )
            }
            "layernorm_fqvit" => {
                let (b, q) = (self.bits, crate::cycle::layernorm_fqvit::q_bits(self.bits));
                (
                    crate::cycle::layernorm_fqvit::OUT_BITS,
                    vec![
                        "7: row length N, the channels (11 bits, 1..=1024; ceil(N/LANES) and the last beat's valid lanes are derived on the write)"
                            .to_string(),
                        format!("8: zero point zp ({b} bits, two's complement)"),
                        "1024+c: hq[c] = RNE(gamma_c/so_c*2^20) (32 bits, two's complement)".into(),
                        "2048+c: bq[c] = RNE(beta_c/so_c*2^20) (32 bits, two's complement)".into(),
                        "3072+c: e_c in bits 12:11 (input factor 2^e_c, e_c <= 3), delta_c = gq[c] - N*hq[c] in bits 10:0 (two's complement)".into(),
                    ],
                    format!("2*ceil(N/LANES) + {}", self.lanes as u32 * (q + 3) + b + 18),
                    format!("{}*ceil(N/LANES) + {}", self.lanes as u32 * (q + 3) + 4, b + 16),
                    format!(
                        "one row at a time, one element at a time: LOAD ceil(N/LANES), STAT ceil(N/LANES)+1, SQRT {}, then per beat 2 + LANES*{} (per lane, padded ones too: two restoring dividers by D, {q} and 8 quotient bits)",
                        b + 15,
                        q + 3
                    ),
                )
            }
            _ => {
                let (t, y, o) = crate::cycle::gelu_ibert::widths(self.bits);
                (
                    o,
                    vec![
                        format!("0: -b_int ({t} bits)"),
                        format!("1: b_int ({t} bits)"),
                        format!("2: c_int ({y} bits)"),
                        format!("3: shift_int ({y} bits)"),
                        "4: n (5 bits)".into(),
                    ],
                    "3".to_string(),
                    "ceil(N/LANES)".to_string(),
                    "1 beat per cycle".to_string(),
                )
            }
        };
        let mut ports = vec![
            "clock".into(),
            "reset (synchronous)".into(),
            format!("cfg_we, cfg_addr[{}:0], cfg_data[31:0]", self.cfg_addr_bits() - 1),
            format!("in_valid, in_ready, in_data[{}:0], in_last", self.bits as usize * self.lanes - 1),
        ];
        if self.methods().is_some() {
            ports.push("in_mode[1:0]: mode of the row, read with its first beat (0 ibert, 1 fqvit, 2 ivit; a mode not generated runs the first method)".into());
        }
        if self.unit.starts_with("softmax") {
            ports.push(format!(
                "in_mask[{}:0]: bit i = lane i masked (left out of the row's maximum and sum, output probability zero{})",
                self.lanes - 1,
                if self.unit == "softmax_fqvit" {
                    ": code -1"
                } else if self.methods().is_some() {
                    ": 0, or code -1 in fqvit mode"
                } else {
                    ": 0"
                }
            ));
        }
        ports.push(format!("out_valid, out_ready, out_data[{}:0], out_last", out_bits as usize * self.lanes - 1));
        ManifestEntry {
            name: self.name(),
            file: format!("{}.v", self.name()),
            unit: self.unit.clone(),
            bits: self.bits,
            lanes: self.lanes,
            in_bits_per_lane: self.bits,
            out_bits_per_lane: out_bits,
            ports,
            config_registers: regs,
            latency_cycles: latency,
            row_period_cycles: period,
            initiation_interval: ii,
        }
    }
}

impl RtlConfig {
    /// Output bits, registers and timing of a multi-method softmax: each method's bank holds
    /// its single-method unit's registers, and each mode keeps that unit's phases.
    fn multi_manifest(&self) -> (u32, Vec<String>, String, String, String) {
        let methods = self.methods().expect("a multi-method configuration");
        let singles: Vec<(Method, ManifestEntry)> = methods.iter().map(|&m| (m, self.single(m).manifest())).collect();
        let out_bits = singles.iter().map(|(_, e)| e.out_bits_per_lane).max().unwrap_or(0);
        let mut regs = vec![
            "cfg_addr = 64*code + address; code 0 ibert, 1 fqvit, 2 ivit; each bank holds its softmax_<method>'s registers".to_string(),
        ];
        let per = |f: &dyn Fn(&ManifestEntry) -> String| {
            singles.iter().map(|(m, e)| format!("{}: {}", m.name(), f(e))).collect::<Vec<_>>().join("; ")
        };
        for (m, e) in &singles {
            let base = 64 * crate::cycle::softmax::mode_code(*m);
            regs.extend(e.config_registers.iter().map(|r| format!("{}+{r}", base)));
        }
        (
            out_bits,
            regs,
            per(&|e| e.latency_cycles.clone()),
            per(&|e| e.row_period_cycles.clone()),
            format!("one row at a time, each in the mode of its first beat; {}", per(&|e| e.initiation_interval.clone())),
        )
    }
}

/// One configuration in `rtl/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManifestEntry {
    /// Module name.
    pub name: String,
    /// File name.
    pub file: String,
    /// Unit.
    pub unit: String,
    /// Input bits.
    pub bits: u32,
    /// Lanes.
    pub lanes: usize,
    /// Input bits per lane.
    pub in_bits_per_lane: u32,
    /// Output bits per lane.
    pub out_bits_per_lane: u32,
    /// Ports.
    pub ports: Vec<String>,
    /// Configuration registers.
    pub config_registers: Vec<String>,
    /// Latency (first input beat to first output beat) as a formula.
    pub latency_cycles: String,
    /// Row period as a formula in N (row length) and LANES.
    pub row_period_cycles: String,
    /// Initiation interval.
    pub initiation_interval: String,
}

/// The default set committed in `rtl/`: every unit with hardware at 8 and 6 bits, LANES 1 and
/// 4, and the multi-method softmaxes of [`MULTI_DEFAULT`].
pub fn default_set() -> Vec<RtlConfig> {
    let mut v = Vec::new();
    for u in RTL_UNITS {
        for bits in [8, 6] {
            for lanes in [1, 4] {
                v.push(RtlConfig::new(u, bits, lanes).expect("default configurations are supported"));
            }
        }
    }
    for &(methods, bits, lanes) in MULTI_DEFAULT {
        let unit = multi_unit(methods).expect("default subsets are valid");
        v.push(RtlConfig::new(&unit, bits, lanes).expect("default configurations are supported"));
    }
    v
}

/// Generate Verilog for a block and rename rust_hdl's `top` to `name`.
pub fn emit<U: Block>(uut: &mut U, name: &str, header: &str) -> String {
    uut.connect_all();
    let v = generate_verilog(uut);
    let v = v
        .replace("module top(", &format!("module {name}("))
        .replace("top$", &format!("{name}$"))
        .replace("endmodule // top\n", &format!("endmodule // {name}\n"));
    format!("{header}{}\n", v.trim())
}

macro_rules! gelu_ibert {
    ($b:literal, $l:literal, $name:expr, $h:expr) => {
        emit(
            &mut gelu_ibert::GeluIbert::<
                $b,
                $l,
                { $b * $l },
                { $b + 2 },
                { 2 * ($b + 2) + 2 },
                { $b + 2 * ($b + 2) + 2 },
                { $l * ($b + 2 * ($b + 2) + 2) },
            >::default(),
            $name,
            $h,
        )
    };
}

/// One row-buffer softmax configuration: `$ty::<B, L, B·L, X = B+20, X·NQ, AW, OW·L>`.
macro_rules! row_softmax {
    ($ty:ident, $nq:literal, $ow:literal, $b:literal, $l:literal, $aw:literal, $name:expr, $h:expr) => {
        emit(&mut $ty::<$b, $l, { $b * $l }, { $b + 20 }, { ($b + 20) * $nq }, $aw, { $ow * $l }>::default(), $name, $h)
    };
}

/// Every (bits, lanes) of a row-buffer softmax; AW = log2(1024 / LANES).
macro_rules! row_softmax_table {
    ($ty:ident, $nq:literal, $ow:literal, $bits:expr, $lanes:expr, $name:expr, $h:expr; $($b:literal),*) => {
        match ($bits, $lanes) {
            $(
                ($b, 1) => row_softmax!($ty, $nq, $ow, $b, 1, 10, $name, $h),
                ($b, 2) => row_softmax!($ty, $nq, $ow, $b, 2, 9, $name, $h),
                ($b, 4) => row_softmax!($ty, $nq, $ow, $b, 4, 8, $name, $h),
                ($b, 8) => row_softmax!($ty, $nq, $ow, $b, 8, 7, $name, $h),
                ($b, 16) => row_softmax!($ty, $nq, $ow, $b, 16, 6, $name, $h),
            )*
            _ => unreachable!("RtlConfig::new checked the configuration"),
        }
    };
}

macro_rules! gelu_ivit {
    ($b:literal, $l:literal, $name:expr, $h:expr) => {
        emit(&mut gelu_ivit::GeluIvit::<$b, { $b + 1 }, $l, { $b * $l }, { $b + 20 }, { ($b + 20) * 23 }, { $b + 9 }, { $l * ($b + 9) }>::default(), $name, $h)
    };
}

macro_rules! gelu_ivit_table {
    ($bits:expr, $lanes:expr, $name:expr, $h:expr; $($b:literal),*) => {
        match ($bits, $lanes) {
            $(
                ($b, 1) => gelu_ivit!($b, 1, $name, $h),
                ($b, 2) => gelu_ivit!($b, 2, $name, $h),
                ($b, 4) => gelu_ivit!($b, 4, $name, $h),
                ($b, 8) => gelu_ivit!($b, 8, $name, $h),
                ($b, 16) => gelu_ivit!($b, 16, $name, $h),
            )*
            _ => unreachable!("RtlConfig::new checked the configuration"),
        }
    };
}

macro_rules! gelu_ibert_table {
    ($bits:expr, $lanes:expr, $name:expr, $h:expr; $($b:literal),*) => {
        match ($bits, $lanes) {
            $(
                ($b, 1) => gelu_ibert!($b, 1, $name, $h),
                ($b, 2) => gelu_ibert!($b, 2, $name, $h),
                ($b, 4) => gelu_ibert!($b, 4, $name, $h),
                ($b, 8) => gelu_ibert!($b, 8, $name, $h),
                ($b, 16) => gelu_ibert!($b, 16, $name, $h),
            )*
            _ => unreachable!("RtlConfig::new checked the configuration"),
        }
    };
}

/// One row-buffer LayerNorm configuration: `$ty::<B, L, B·L, B+1, 2B+2, 2B+10, 2B+11, B+11, B+32, (B+32)·L, AW, ...>`.
macro_rules! ln_ivit {
    ($b:literal, $l:literal, $aw:literal, $name:expr, $h:expr) => {
        emit(
            &mut LayerNormIvit::<
                $b,
                $l,
                { $b * $l },
                { $b + 1 },
                { 2 * $b + 2 },
                { 2 * $b + 10 },
                { 2 * $b + 11 },
                { $b + 11 },
                { $b + 32 },
                { ($b + 32) * $l },
                $aw,
            >::default(),
            $name,
            $h,
        )
    };
}

/// As `ln_ivit`, plus the digit square root's H = W/2 and H + 3.
macro_rules! ln_ibert {
    ($b:literal, $l:literal, $aw:literal, $name:expr, $h:expr) => {
        emit(
            &mut LayerNormIbert::<
                $b,
                $l,
                { $b * $l },
                { $b + 1 },
                { 2 * $b + 2 },
                { 2 * $b + 10 },
                { 2 * $b + 11 },
                { $b + 11 },
                { $b + 32 },
                { ($b + 32) * $l },
                $aw,
                { $b + 5 },
                { $b + 8 },
            >::default(),
            $name,
            $h,
        )
    };
}

/// Every (bits, lanes) of a LayerNorm; AW = log2(1024 / LANES).
macro_rules! ln_table {
    ($m:ident, $bits:expr, $lanes:expr, $name:expr, $h:expr; $($b:literal),*) => {
        match ($bits, $lanes) {
            $(
                ($b, 1) => $m!($b, 1, 10, $name, $h),
                ($b, 2) => $m!($b, 2, 9, $name, $h),
                ($b, 4) => $m!($b, 4, 8, $name, $h),
                ($b, 8) => $m!($b, 8, 7, $name, $h),
                ($b, 16) => $m!($b, 16, 6, $name, $h),
            )*
            _ => unreachable!("RtlConfig::new checked the configuration"),
        }
    };
}

/// One `layernorm_fqvit` configuration; the widths follow from B (see `hdl::layernorm_fqvit`).
macro_rules! ln_fqvit {
    ($b:literal, $l:literal, $aw:literal, $name:expr, $h:expr) => {
        emit(
            &mut layernorm_fqvit::LayerNormFqvit::<
                $b,
                $l,
                { $b * $l },
                { $b + 4 },
                { 2 * ($b + 4) },
                { $b + 14 },
                { 2 * $b + 16 },
                { 2 * $b + 17 },
                { 2 * $b + 29 },
                { 2 * ($b + 14) },
                { 2 * $b + 26 },
                { $b + 13 },
                { $b + 16 },
                { $b + 14 },
                { $b + 46 },
                { 3 * $b + 58 },
                { $b + 22 },
                { 2 * $b + 24 },
                { 2 * $b + 26 },
                { 32 * $l },
                $aw,
            >::default(),
            $name,
            $h,
        )
    };
}

/// One multi-method softmax configuration; `$p`, `$f`, `$s` are 1 for the methods present.
macro_rules! multi {
    ($p:literal, $f:literal, $s:literal, $ob:literal, $ma:literal, $mo:literal, $ms:literal, $po:literal, $b:literal, $l:literal, $aw:literal, $name:expr, $h:expr) => {
        emit(
            &mut softmax_multi::SoftmaxMulti::<
                $b,
                $l,
                { $b * $l },
                { $b + 20 },
                { ($b + 20) * 30 },
                { ($b + 20) * 15 },
                $aw,
                $ob,
                { $ob * $l },
                { $p * $l },
                { $f * $l },
                { $s * $l },
                $p,
                $f,
                $s,
                $ma,
                $mo,
                $ms,
                $po,
            >::default(),
            $name,
            $h,
        )
    };
}

/// Every generated (subset, bits, lanes) of the multi-method softmax. Output lanes are 16 bits
/// with I-ViT, else 9; the shared multiplier is E (32 bits with I-ViT, else I-BERT's 17) times
/// the 34-bit factor, sliced to the bits the present methods read.
macro_rules! multi_table {
    ($methods:expr, $bits:expr, $lanes:expr, $name:expr, $h:expr; $($b:literal),*) => {{
        use Method::{FqVit, IBert, IVit};
        match ($methods, $bits, $lanes) {
            $(
                ([IBert, FqVit, IVit], $b, 1) => multi!(1, 1, 1, 16, 32, 18, 16, 8, $b, 1, 10, $name, $h),
                ([IBert, FqVit, IVit], $b, 4) => multi!(1, 1, 1, 16, 32, 18, 16, 8, $b, 4, 8, $name, $h),
                ([IBert, IVit], $b, 1) => multi!(1, 0, 1, 16, 32, 18, 16, 8, $b, 1, 10, $name, $h),
                ([IBert, IVit], $b, 4) => multi!(1, 0, 1, 16, 32, 18, 16, 8, $b, 4, 8, $name, $h),
                ([IBert, FqVit], $b, 1) => multi!(1, 1, 0, 9, 17, 10, 24, 0, $b, 1, 10, $name, $h),
                ([IBert, FqVit], $b, 4) => multi!(1, 1, 0, 9, 17, 10, 24, 0, $b, 4, 8, $name, $h),
                ([FqVit, IVit], $b, 1) => multi!(0, 1, 1, 16, 32, 16, 16, 0, $b, 1, 10, $name, $h),
                ([FqVit, IVit], $b, 4) => multi!(0, 1, 1, 16, 32, 16, 16, 0, $b, 4, 8, $name, $h),
            )*
            _ => unreachable!("RtlConfig::new checked the configuration"),
        }
    }};
}

/// The Verilog of one configuration (deterministic: regenerating gives the same bytes).
pub fn verilog(cfg: &RtlConfig) -> String {
    let m = cfg.manifest();
    let header = format!(
        "// {name}: generated by `mnq rtl` from src/hdl/{unit}.rs through rust_hdl; do not edit.\n// {bits}-bit inputs, {lanes} lane(s), {ob}-bit outputs per lane. Latency {lat} cycles, row period {rp} cycles.\n// Configuration registers: {regs}.\n",
        name = m.name,
        unit = cfg.unit,
        bits = cfg.bits,
        lanes = cfg.lanes,
        ob = m.out_bits_per_lane,
        lat = m.latency_cycles,
        rp = m.row_period_cycles,
        regs = m.config_registers.join("; "),
    );
    let name = cfg.name();
    if let Some(methods) = cfg.methods() {
        return multi_table!(methods.as_slice(), cfg.bits, cfg.lanes, &name, &header; 6, 8);
    }
    match cfg.unit.as_str() {
        "gelu_ibert" => gelu_ibert_table!(cfg.bits, cfg.lanes, &name, &header; 4, 6, 8, 10, 12, 16),
        "gelu_ivit" => gelu_ivit_table!(cfg.bits, cfg.lanes, &name, &header; 4, 6, 8, 10, 12),
        "softmax_ivit" => row_softmax_table!(SoftmaxIvit, 15, 16, cfg.bits, cfg.lanes, &name, &header; 4, 6, 8, 10, 12),
        "softmax_ibert" => row_softmax_table!(SoftmaxIbert, 30, 9, cfg.bits, cfg.lanes, &name, &header; 4, 6, 8, 10, 12),
        "softmax_fqvit" => row_softmax_table!(SoftmaxFqvit, 30, 5, cfg.bits, cfg.lanes, &name, &header; 4, 6, 8, 10, 12),
        "layernorm_ivit" => ln_table!(ln_ivit, cfg.bits, cfg.lanes, &name, &header; 4, 6, 8, 10, 12, 16),
        "layernorm_ibert" => ln_table!(ln_ibert, cfg.bits, cfg.lanes, &name, &header; 4, 6, 8, 10, 12, 16),
        "layernorm_fqvit" => ln_table!(ln_fqvit, cfg.bits, cfg.lanes, &name, &header; 6, 8),
        _ => unreachable!("RtlConfig::new checked the unit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_names_are_canonical_and_bad_subsets_refused() {
        assert_eq!(multi_unit(&[Method::IVit, Method::IBert]).unwrap(), "softmax_multi_ibert_ivit");
        assert_eq!(multi_methods("softmax_multi_ibert_fqvit_ivit"), Some(vec![Method::IBert, Method::FqVit, Method::IVit]));
        // Only the canonical order names a unit, so each subset has one file and one cost row.
        assert_eq!(multi_methods("softmax_multi_ivit_ibert"), None);
        assert_eq!(multi_methods("softmax_multi_ivit"), None);
        assert_eq!(multi_methods("softmax_ivit"), None);
        assert!(matches!(multi_unit(&[Method::IVit]), Err(HdlError::Methods(m)) if m.contains("softmax_ivit")));
        assert!(matches!(multi_unit(&[Method::IVit, Method::IVit]), Err(HdlError::Methods(_))));
        assert_eq!(RtlConfig::new("softmax_multi_ibert_ivit", 8, 2), Err(HdlError::MultiLanes(2)));
        assert!(matches!(RtlConfig::new("softmax_multi_ibert_ivit", 10, 1), Err(HdlError::Bits { .. })));
        let c = RtlConfig::new("softmax_multi_ibert_ivit", 6, 4).unwrap();
        assert_eq!((c.cfg_addr_bits(), c.out_bits(), c.single(Method::IVit).unit.as_str()), (8, 16, "softmax_ivit"));
        assert_eq!(RtlConfig::new("softmax_multi_ibert_fqvit", 8, 1).unwrap().out_bits(), 9);
    }
}
