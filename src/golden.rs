//! Golden-vector runner: loads a case produced by the reference code (schema 1 of
//! `../shared/golden/README.md`), runs the matching unit in Reference mode with the
//! reference preset, and compares every output integer and the output scale with `runs.f64`.

use crate::fixed::{QTensor, Scale};
use crate::units::{fqvit, ibert, ivit, Aux, Method, Mode, Preset, Unit, UnitError};
use serde_json::Value;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors reading or interpreting a golden case.
#[derive(Debug, Error)]
pub enum GoldenError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid JSON (malformed or truncated).
    #[error("{path}: not valid JSON ({source}); is the file truncated?")]
    Json {
        /// File.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
    /// A field is missing or has the wrong type.
    #[error("{path}: field '{field}' is missing or malformed (expected {expected})")]
    Field {
        /// File.
        path: PathBuf,
        /// JSON path of the field.
        field: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A kernel this runner does not know.
    #[error("{path}: unknown kernel '{kernel}' of family '{family}' (known: IntSoftmax, IntGELU, IntLayerNorm, QIntSoftmax, QIntLayerNorm, fixedpoint_mul, Log2Quantizer)")]
    Kernel {
        /// File.
        path: PathBuf,
        /// Kernel string.
        kernel: String,
        /// Family string.
        family: String,
    },
    /// The unit refused the case.
    #[error("{path}: {source}")]
    Unit {
        /// File.
        path: PathBuf,
        /// Cause.
        source: UnitError,
    },
}

/// Result of one golden case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// Case id.
    pub id: String,
    /// Unit that ran it.
    pub unit: String,
    /// Number of output values compared.
    pub outputs: usize,
    /// Number of mismatching outputs.
    pub mismatches: usize,
    /// First mismatch: (index, expected, got).
    pub first: Option<(usize, i64, i64)>,
    /// Output-scale mismatch: (channel, expected, got).
    pub scale_mismatch: Option<(usize, f64, f64)>,
}

impl CaseResult {
    /// Whether every output and the scale matched.
    pub fn exact(&self) -> bool {
        self.mismatches == 0 && self.scale_mismatch.is_none()
    }

    /// One line: `id: exact` or the mismatch count and the first mismatch.
    pub fn line(&self) -> String {
        let mut s = if self.mismatches == 0 {
            format!("{} ({}): exact, {} outputs", self.id, self.unit, self.outputs)
        } else {
            let (i, e, g) = self.first.unwrap();
            format!(
                "{} ({}): {} of {} outputs mismatch; first at index {i}: expected {e}, got {g}",
                self.id, self.unit, self.mismatches, self.outputs
            )
        };
        if let Some((c, e, g)) = self.scale_mismatch {
            s.push_str(&format!("; output scale mismatch at channel {c}: expected {e:e}, got {g:e}"));
        }
        s
    }
}

struct Case<'a> {
    path: &'a Path,
    v: Value,
}

impl<'a> Case<'a> {
    fn get(&self, ptr: &str) -> Option<&Value> {
        self.v.pointer(ptr)
    }

    fn field(&self, ptr: &str, expected: &'static str) -> GoldenError {
        GoldenError::Field { path: self.path.to_path_buf(), field: ptr.to_string(), expected }
    }

    fn str(&self, ptr: &str) -> Result<&str, GoldenError> {
        self.get(ptr).and_then(Value::as_str).ok_or_else(|| self.field(ptr, "a string"))
    }

    fn u64(&self, ptr: &str) -> Result<u64, GoldenError> {
        self.get(ptr).and_then(Value::as_u64).ok_or_else(|| self.field(ptr, "a non-negative integer"))
    }

    fn ints(&self, ptr: &str) -> Result<Vec<i64>, GoldenError> {
        let arr = self.get(ptr).and_then(Value::as_array).ok_or_else(|| self.field(ptr, "an array of integers"))?;
        arr.iter()
            .map(|x| match x.as_i64() {
                Some(i) => Some(i),
                None => x.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18).map(|f| f as i64),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.field(ptr, "an array of integers"))
    }

    fn shape(&self, ptr: &str) -> Result<Vec<usize>, GoldenError> {
        Ok(self.ints(ptr)?.into_iter().map(|v| v.max(0) as usize).collect())
    }

    /// Float32 values from an `f32_bits` array.
    fn f32s(&self, ptr: &str) -> Result<Vec<f32>, GoldenError> {
        let bits = self.ints(&format!("{ptr}/f32_bits"))?;
        Ok(bits.into_iter().map(|b| f32::from_bits(b as u32)).collect())
    }

    /// A scale object (`shape` + `f32_bits` or `f64_hex`): per tensor if it has one value.
    fn scale(&self, ptr: &str) -> Result<Scale, GoldenError> {
        let vals: Vec<f64> = if self.get(&format!("{ptr}/f64_hex")).is_some() {
            let arr = self.get(&format!("{ptr}/f64_hex")).and_then(Value::as_array).ok_or_else(|| self.field(ptr, "f64_hex strings"))?;
            arr.iter()
                .map(|h| h.as_str().and_then(|s| u64::from_str_radix(s, 16).ok()).map(f64::from_bits))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.field(&format!("{ptr}/f64_hex"), "16-digit hex strings"))?
        } else {
            self.f32s(ptr)?.into_iter().map(f64::from).collect()
        };
        match vals.len() {
            0 => Err(self.field(ptr, "at least one scale value")),
            1 => Ok(Scale::PerTensor(vals[0])),
            _ => Ok(Scale::PerChannel(vals)),
        }
    }

    fn input(&self, unit: &'static str) -> Result<QTensor, GoldenError> {
        let q = self.ints("/input/q")?;
        let shape = self.shape("/input/shape")?;
        let bits = self.u64("/input/bits")? as u32;
        let signed = self.get("/input/signed").and_then(Value::as_bool).ok_or_else(|| self.field("/input/signed", "a boolean"))?;
        let scale = self.scale("/input/scale")?;
        QTensor::new(q, &shape, scale, bits, signed)
            .map_err(|source| GoldenError::Unit { path: self.path.to_path_buf(), source: UnitError::Input { unit, source } })
    }
}

/// Load and run one golden case file in Reference mode (the bit-exact target).
pub fn run_file(path: &Path) -> Result<CaseResult, GoldenError> {
    run_file_mode(path, Mode::Reference)
}

/// Load and run one golden case file in the given mode (Integer mode measures the hardware datapath).
pub fn run_file_mode(path: &Path, mode: Mode) -> Result<CaseResult, GoldenError> {
    let text = std::fs::read_to_string(path).map_err(|source| GoldenError::Io { path: path.to_path_buf(), source })?;
    let v: Value = serde_json::from_str(&text).map_err(|source| GoldenError::Json { path: path.to_path_buf(), source })?;
    run_case(path, v, mode)
}

fn compare(expected: &[i64], got: &[i64]) -> (usize, Option<(usize, i64, i64)>) {
    let mut n = 0;
    let mut first = None;
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        if e != g {
            n += 1;
            first.get_or_insert((i, *e, *g));
        }
    }
    if expected.len() != got.len() {
        n += expected.len().abs_diff(got.len());
        first.get_or_insert((expected.len().min(got.len()), 0, 0));
    }
    (n, first)
}

fn compare_scale(expected: &Scale, got: &Scale, channels: usize) -> Option<(usize, f64, f64)> {
    let n = match (expected, got) {
        (Scale::PerTensor(_), Scale::PerTensor(_)) => 1,
        _ => channels,
    };
    (0..n).find(|&c| expected.at(c).to_bits() != got.at(c).to_bits()).map(|c| (c, expected.at(c), got.at(c)))
}

/// Run one parsed golden case.
pub fn run_case(path: &Path, v: Value, mode: Mode) -> Result<CaseResult, GoldenError> {
    let case = Case { path, v };
    let id = case.str("/id")?.to_string();
    let family = case.str("/family")?.to_string();
    let kernel = case.str("/kernel")?.to_string();
    let unit_err = |source: UnitError| GoldenError::Unit { path: path.to_path_buf(), source };
    let unknown = || GoldenError::Kernel { path: path.to_path_buf(), kernel: kernel.clone(), family: family.clone() };

    if kernel.starts_with("Log2Quantizer") {
        let bits = case.u64("/ctor/bit_type/bits")? as u32;
        let p: Vec<f32> = case.ints("/input/p_f32_bits")?.into_iter().map(|b| f32::from_bits(b as u32)).collect();
        let want_code = case.ints("/runs/f32/code")?;
        let want_zero = case.ints("/runs/f32/zero_mask")?;
        let got = match mode {
            Mode::Reference => fqvit::log2_quant_f32(&p, bits),
            Mode::Integer => p.iter().map(|&v| fqvit::log2_quant_exact(v, bits)).collect(),
        };
        let got_code: Vec<i64> = got.iter().map(|g| g.0).collect();
        let got_zero: Vec<i64> = got.iter().map(|g| i64::from(g.1)).collect();
        let (n1, f1) = compare(&want_code, &got_code);
        let (n2, f2) = compare(&want_zero, &got_zero);
        return Ok(CaseResult {
            id,
            unit: "log2quant_fqvit".into(),
            outputs: want_code.len() * 2,
            mismatches: n1 + n2,
            first: f1.or(f2),
            scale_mismatch: None,
        });
    }

    let mut aux = Aux::default();
    let (unit, x, out_ptr): (Box<dyn Unit>, QTensor, &str) = match (family.as_str(), kernel.as_str()) {
        ("ibert", k) if k.starts_with("IntSoftmax") => {
            let mut u = ibert::Softmax::preset(Preset::Reference);
            u.out_bits = case.u64("/ctor/output_bit")? as u32;
            (Box::new(u), case.input("softmax_ibert")?, "/runs/f64/out_int")
        }
        ("ivit", k) if k.starts_with("IntSoftmax") => {
            let mut u = ivit::Softmax::preset(Preset::Reference);
            u.out_bits = case.u64("/ctor/output_bit")? as u32;
            (Box::new(u), case.input("softmax_ivit")?, "/runs/f64/out_int")
        }
        ("fqvit", k) if k.starts_with("QIntSoftmax") => {
            let mut u = fqvit::Softmax::preset(Preset::Reference);
            u.bits = case.u64("/ctor/bit_type/bits")? as u32;
            aux.zero_point = case.get("/input/zero_point").and_then(Value::as_f64).unwrap_or(0.0) as i64;
            (Box::new(u), case.input("softmax_fqvit")?, "/runs/f64/out_code")
        }
        ("ibert", k) if k.starts_with("IntGELU") => {
            (Box::new(ibert::Gelu::preset(Preset::Reference)), case.input("gelu_ibert")?, "/runs/f64/out_int")
        }
        ("ivit", k) if k.starts_with("IntGELU") => {
            let mut u = ivit::Gelu::preset(Preset::Reference);
            u.out_bits = case.get("/ctor/output_bit").and_then(Value::as_u64).unwrap_or(8) as u32;
            (Box::new(u), case.input("gelu_ivit")?, "/runs/f64/out_int")
        }
        ("ibert", k) if k.starts_with("IntLayerNorm") => {
            let s0 = case.get("/state/shift_initial").and_then(Value::as_f64).unwrap_or(0.0) as u32;
            let dynamic = case.get("/state/overflow_handling").and_then(Value::as_bool).unwrap_or(true);
            let u = ibert::LayerNorm { shift: if dynamic { ibert::ShiftRule::Dynamic(s0) } else { ibert::ShiftRule::Frozen(s0) } };
            aux.gamma = Some(case.f32s("/params/weight")?);
            aux.beta = Some(case.f32s("/params/bias")?);
            (Box::new(u), case.input("layernorm_ibert")?, "/runs/f64/out_int")
        }
        ("ivit", k) if k.starts_with("IntLayerNorm") => {
            aux.gamma = Some(case.f32s("/params/weight")?);
            aux.beta = Some(case.f32s("/params/bias")?);
            (Box::new(ivit::LayerNorm::preset(Preset::Reference)), case.input("layernorm_ivit")?, "/runs/f64/out_int")
        }
        ("fqvit", k) if k.starts_with("QIntLayerNorm") => {
            aux.gamma = Some(case.f32s("/params/weight")?);
            aux.beta = Some(case.f32s("/params/bias")?);
            aux.zero_point =
                case.get("/input/zero_point").and_then(Value::as_f64).ok_or_else(|| case.field("/input/zero_point", "a number"))? as i64;
            aux.out_scale = Some(case.scale("/params/out_scale")?);
            (Box::new(fqvit::LayerNorm::preset(Preset::Reference)), case.input("layernorm_fqvit")?, "/runs/f64/out_int")
        }
        (fam @ ("ivit" | "ibert"), k) if k.starts_with("fixedpoint_mul") => {
            let method = if fam == "ibert" { Method::IBert } else { Method::IVit };
            let mut u = ivit::Requant::preset(Preset::Reference, method);
            u.out_bits = case.u64("/ctor/bit_num")? as u32;
            aux.out_scale = Some(case.scale("/input/z_scaling_factor")?);
            let x = case.input(u.name())?;
            if case.get("/input/identity_q").is_some() {
                let idq = case.ints("/input/identity_q")?;
                let ids = case.scale("/input/identity_scale")?;
                let t =
                    QTensor::new(idq, x.shape(), ids, 32, true).map_err(|source| unit_err(UnitError::Input { unit: "requant", source }))?;
                aux.identity = Some(t);
            }
            if case.get("/dyadic/m").is_some() {
                // The dyadic multipliers themselves are checked too: they are the hardware's constants.
                let (m, e) = (case.ints("/dyadic/m")?, case.ints("/dyadic/e")?);
                for (c, (mm, ee)) in m.iter().zip(&e).enumerate() {
                    let d = ivit::Requant::dyadic(x.scale.at(c), aux.out_scale.as_ref().unwrap().at(0));
                    if d.m != *mm || i64::from(d.e) != *ee {
                        return Ok(CaseResult {
                            id,
                            unit: u.name().into(),
                            outputs: m.len(),
                            mismatches: 1,
                            first: Some((c, *mm, d.m)),
                            scale_mismatch: None,
                        });
                    }
                }
            }
            (Box::new(u), x, "/runs/f64/out_int")
        }
        _ => return Err(unknown()),
    };
    let out = unit.run(&x, &aux, mode).map_err(unit_err)?;
    let want = case.ints(out_ptr)?;
    let (mismatches, first) = compare(&want, &out.values);
    let scale_mismatch = match case.get("/runs/f64/out_scale") {
        Some(_) => compare_scale(&case.scale("/runs/f64/out_scale")?, &out.scale, x.row_len()),
        None => None,
    };
    Ok(CaseResult { id, unit: unit.name().to_string(), outputs: want.len(), mismatches, first, scale_mismatch })
}

/// Every `*.json` file of a directory, sorted.
pub fn case_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    v.sort();
    Ok(v)
}
