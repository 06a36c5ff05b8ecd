//! Reading user tensors (JSON or `.npy`) and writing results atomically, so that a failed run
//! never leaves a partial file behind and never clobbers what the user had.

use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub mod npy;

/// Errors of tensor input and output.
#[derive(Debug, Error)]
pub enum IoError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file's content is not a tensor mnq understands.
    #[error("{path}: {what}")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong and what is expected.
        what: String,
    },
}

/// The numbers of an input file: integers or floats.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Integer codes.
    Int(Vec<i64>),
    /// Real values (to be quantised).
    Float(Vec<f64>),
}

/// An input tensor and the optional extras a JSON input may carry.
#[derive(Debug, Clone, PartialEq)]
pub struct InputFile {
    /// The numbers.
    pub values: Values,
    /// Shape (last dimension = row).
    pub shape: Vec<usize>,
    /// Scale given in the file (number or per-channel list).
    pub scale: Option<Vec<f64>>,
    /// LayerNorm weight.
    pub gamma: Option<Vec<f32>>,
    /// LayerNorm bias.
    pub beta: Option<Vec<f32>>,
    /// Zero point of an asymmetric input.
    pub zero_point: Option<i64>,
    /// Output scale of the next quantiser.
    pub out_scale: Option<f64>,
}

fn fmt_err(path: &Path, what: impl Into<String>) -> IoError {
    IoError::Format { path: path.to_path_buf(), what: what.into() }
}

/// Read an input tensor from `.json` or `.npy` (chosen by extension).
pub fn read_input(path: &Path) -> Result<InputFile, IoError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => read_npy(path),
        Some("json") => read_json(path),
        _ => Err(fmt_err(path, "unsupported input file type: use .json or .npy")),
    }
}

fn read_npy(path: &Path) -> Result<InputFile, IoError> {
    // The header is checked against the file's length first: the readers below allocate what
    // the header claims.
    npy::check_file(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => fmt_err(path, e.to_string()),
        _ => IoError::Io { path: path.to_path_buf(), source: e },
    })?;
    let open = || std::fs::File::open(path).map_err(|source| IoError::Io { path: path.to_path_buf(), source });
    macro_rules! try_int {
        ($t:ty) => {
            if let Ok(a) = ArrayD::<$t>::read_npy(open()?) {
                let shape = a.shape().to_vec();
                return finish(path, Values::Int(a.iter().map(|&v| v as i64).collect()), shape);
            }
        };
    }
    try_int!(i8);
    try_int!(i16);
    try_int!(i32);
    try_int!(i64);
    try_int!(u8);
    try_int!(u16);
    try_int!(u32);
    if let Ok(a) = ArrayD::<f32>::read_npy(open()?) {
        let shape = a.shape().to_vec();
        return finish(path, Values::Float(a.iter().map(|&v| f64::from(v)).collect()), shape);
    }
    match ArrayD::<f64>::read_npy(open()?) {
        Ok(a) => {
            let shape = a.shape().to_vec();
            finish(path, Values::Float(a.iter().cloned().collect()), shape)
        }
        Err(e) => Err(fmt_err(path, format!("not a readable .npy array of integers or floats ({e}); is the file truncated or of another dtype (supported: int8..int64, uint8..uint32, float32, float64, C order)?"))),
    }
}

fn finish(path: &Path, values: Values, shape: Vec<usize>) -> Result<InputFile, IoError> {
    let shape = if shape.is_empty() { vec![1] } else { shape };
    check_values(path, &values, &shape)?;
    Ok(InputFile { values, shape, scale: None, gamma: None, beta: None, zero_point: None, out_scale: None })
}

fn check_values(path: &Path, values: &Values, shape: &[usize]) -> Result<(), IoError> {
    let n = match values {
        Values::Int(v) => v.len(),
        Values::Float(v) => {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(fmt_err(
                    path,
                    format!("value {} at index {i} is not finite; remove NaN and infinities before quantising", v[i]),
                ));
            }
            v.len()
        }
    };
    let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match want {
        _ if n == 0 => Err(fmt_err(path, "holds no values; a tensor needs at least one")),
        Some(w) if w == n => Ok(()),
        Some(w) => Err(fmt_err(path, format!("shape {shape:?} needs {w} values but the file has {n}"))),
        None => Err(fmt_err(path, format!("shape {shape:?} claims more values than this machine can address; the file has {n}"))),
    }
}

fn json_f64s(path: &Path, v: &Value, key: &str) -> Result<Option<Vec<f64>>, IoError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(vec![n.as_f64().unwrap_or(f64::NAN)])),
        Some(Value::Array(a)) => a
            .iter()
            .map(Value::as_f64)
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| fmt_err(path, format!("'{key}' must be a number or an array of numbers"))),
        Some(_) => Err(fmt_err(path, format!("'{key}' must be a number or an array of numbers"))),
    }
}

/// An integer code of a `q` array: a JSON integer, or a float with an exactly integral value.
fn json_int(path: &Path, key: &str, i: usize, v: &Value) -> Result<i64, IoError> {
    let bad = |why: &str| {
        fmt_err(
            path,
            format!("'{key}' value {v} at index {i} {why}; '{key}' holds integer codes (give real values as 'x', quantised with --scale)"),
        )
    };
    match v {
        Value::Number(n) => {
            if let Some(q) = n.as_i64() {
                return Ok(q);
            }
            if n.is_u64() {
                return Err(bad("is outside the 64-bit integer range"));
            }
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() != 0.0 {
                Err(bad("is not an integer"))
            } else if f.abs() >= 2f64.powi(53) {
                Err(bad("is too large to be an exact integer code (at most 2^53 written as a float)"))
            } else {
                Ok(f as i64)
            }
        }
        _ => Err(bad("is not a number")),
    }
}

/// Parse the text of a JSON input (`{"q": [...]}`, `{"x": [...]}` or a plain array); `path`
/// names the file in messages. This is [`read_input`] without the file system.
pub fn parse_json_input(text: &str, path: &Path) -> Result<InputFile, IoError> {
    let v: Value = serde_json::from_str(text).map_err(|e| fmt_err(path, format!("not valid JSON ({e}); is the file truncated?")))?;
    let (arr, obj, key) = match &v {
        Value::Array(a) => (a, None, None),
        Value::Object(o) => match (o.get("q"), o.get("x")) {
            (Some(Value::Array(a)), None) => (a, Some(&v), Some("q")),
            (None, Some(Value::Array(a))) => (a, Some(&v), Some("x")),
            _ => return Err(fmt_err(path, "expected an object with exactly one of 'q' (integers) or 'x' (floats), or a plain array")),
        },
        _ => return Err(fmt_err(path, "expected an object with 'q' or 'x', or a plain array")),
    };
    let values = match key {
        Some("q") => Values::Int(arr.iter().enumerate().map(|(i, x)| json_int(path, "q", i, x)).collect::<Result<_, _>>()?),
        Some(_) => Values::Float(
            arr.iter()
                .enumerate()
                .map(|(i, x)| x.as_f64().ok_or_else(|| fmt_err(path, format!("'x' value {x} at index {i} is not a number"))))
                .collect::<Result<_, _>>()?,
        ),
        // A plain array: integers when every entry is one, else floats.
        None => match arr.iter().map(Value::as_i64).collect::<Option<Vec<_>>>() {
            Some(q) => Values::Int(q),
            None => Values::Float(
                arr.iter().map(Value::as_f64).collect::<Option<Vec<_>>>().ok_or_else(|| fmt_err(path, "every value must be a number"))?,
            ),
        },
    };
    let n = match &values {
        Values::Int(v) => v.len(),
        Values::Float(v) => v.len(),
    };
    let shape = match obj.and_then(|o| o.get("shape")) {
        Some(s) => s
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect::<Option<Vec<_>>>())
            .ok_or_else(|| fmt_err(path, "'shape' must be an array of non-negative integers"))?,
        None => vec![n],
    };
    if shape.is_empty() {
        return Err(fmt_err(path, "'shape' must have at least one dimension"));
    }
    check_values(path, &values, &shape)?;
    let o = obj.cloned().unwrap_or(Value::Null);
    let to_f32 = |v: Option<Vec<f64>>| v.map(|v| v.into_iter().map(|x| x as f32).collect());
    Ok(InputFile {
        values,
        shape,
        scale: json_f64s(path, &o, "scale")?,
        gamma: to_f32(json_f64s(path, &o, "gamma")?),
        beta: to_f32(json_f64s(path, &o, "beta")?),
        zero_point: match o.get("zero_point") {
            None | Some(Value::Null) => None,
            Some(z) => Some(json_int(path, "zero_point", 0, z)?),
        },
        out_scale: json_f64s(path, &o, "out_scale")?.and_then(|v| v.first().copied()),
    })
}

fn read_json(path: &Path) -> Result<InputFile, IoError> {
    let text = std::fs::read_to_string(path).map_err(|source| IoError::Io { path: path.to_path_buf(), source })?;
    parse_json_input(&text, path)
}

/// Whether two paths name the same file (one of them may not exist yet).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    let canon = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = p.parent().filter(|q| !q.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

/// The nearest folder at or above `p` that exists (where a write would create what is missing).
fn existing_ancestor(p: &Path) -> PathBuf {
    let mut d = p.to_path_buf();
    loop {
        if d.as_os_str().is_empty() {
            return PathBuf::from(".");
        }
        if d.exists() {
            return d;
        }
        if !d.pop() {
            return PathBuf::from(".");
        }
    }
}

/// Create and remove a probe file in `dir` to learn, before any work, whether writes there succeed.
fn probe_dir(dir: &Path, out: &Path) -> Result<(), IoError> {
    if !dir.is_dir() {
        return Err(fmt_err(out, format!("cannot write here: {} is not a folder", dir.display())));
    }
    let probe = dir.join(format!(".mnq-write-probe.{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| fmt_err(out, format!("cannot write here ({e}); checked before starting, nothing was run")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Check, before any work, that `out` can be written as a file: not a folder, not one of
/// `inputs` (which a write would destroy), and in a folder where files can be created.
pub fn check_output(out: &Path, inputs: &[&Path]) -> Result<(), IoError> {
    if out.is_dir() {
        return Err(fmt_err(out, "is a folder; give a file name for the output"));
    }
    if out.file_name().is_none() {
        return Err(fmt_err(out, "output path has no file name"));
    }
    if let Some(i) = inputs.iter().find(|i| same_file(out, i)) {
        return Err(fmt_err(
            out,
            format!("is also an input ({}); writing it would destroy the input: choose another output path", i.display()),
        ));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    probe_dir(&existing_ancestor(parent), out)
}

/// Check, before any work, that files can be written into folder `dir` (created if missing)
/// and that it is none of `inputs`.
pub fn check_output_dir(dir: &Path, inputs: &[&Path]) -> Result<(), IoError> {
    if dir.exists() && !dir.is_dir() {
        return Err(fmt_err(dir, "is a file, not a folder; give a folder for the output"));
    }
    if let Some(i) = inputs.iter().find(|i| same_file(dir, i)) {
        return Err(fmt_err(dir, format!("is also an input ({}); choose another output folder", i.display())));
    }
    probe_dir(&existing_ancestor(dir), dir)
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let io = |source| IoError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().ok_or_else(|| fmt_err(path, "output path has no file name"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        std::fs::write(&p, r#"{"q": [1, 2, 3, 4], "shape": [2, 2], "scale": 0.5}"#).unwrap();
        let f = read_input(&p).unwrap();
        assert_eq!(f.values, Values::Int(vec![1, 2, 3, 4]));
        assert_eq!(f.shape, vec![2, 2]);
        assert_eq!(f.scale, Some(vec![0.5]));
        std::fs::write(&p, "[0.5, 1.5]").unwrap();
        assert_eq!(read_input(&p).unwrap().values, Values::Float(vec![0.5, 1.5]));
        std::fs::write(&p, r#"{"q": [1, 2, 3], "shape": [2, 2]}"#).unwrap();
        assert!(read_input(&p).unwrap_err().to_string().contains("needs 4 values"));
        std::fs::write(&p, r#"{"q": [1, 2"#).unwrap();
        assert!(read_input(&p).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn atomic_write_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.json");
        write_atomic(&p, b"{}").unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
