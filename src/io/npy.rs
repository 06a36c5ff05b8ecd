//! `.npy` headers read and checked against the bytes a file actually holds, before any reader
//! allocates what the header claims: a header that promises 10^12 values over 1.5 MB of data is
//! an error naming the field, not an allocation abort.

use std::io::Read;
use std::path::Path;

/// The most header bytes mnq reads (numpy itself writes a few hundred).
const MAX_HEADER: usize = 1 << 20;
/// Nesting depth of the header's Python literal beyond which it is refused (no deep recursion).
const MAX_DEPTH: usize = 16;

/// A parsed `.npy` header: the three fields numpy writes and where the data starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The dtype descriptor (`'<f4'`, `'|u1'`, ...).
    pub descr: String,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The array shape.
    pub shape: Vec<usize>,
    /// Bytes of one element of `descr`.
    pub item_size: usize,
    /// Offset of the first data byte.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Number of values the shape claims (checked: an overflowing product is an error earlier).
    pub fn values(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A small Python literal, as numpy writes headers (`{'descr': '<f4', 'shape': (2, 3), ...}`).
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Int(u128),
    Bool(bool),
    None,
    Seq(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Lit, String> {
        if depth > MAX_DEPTH {
            return Err(format!("the header nests deeper than {MAX_DEPTH} levels"));
        }
        self.ws();
        let c = *self.s.get(self.i).ok_or("the header ends in the middle of a value")?;
        match c {
            b'\'' | b'"' => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != c {
                    if self.s[self.i] == b'\\' {
                        self.i += 1;
                    }
                    self.i += 1;
                }
                if self.i >= self.s.len() {
                    return Err("a string in the header is not closed".into());
                }
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(Lit::Str(v))
            }
            b'(' | b'[' => {
                let close = if c == b'(' { b')' } else { b']' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(close) {
                        return Ok(Lit::Seq(items));
                    }
                    items.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        if self.eat(close) {
                            return Ok(Lit::Seq(items));
                        }
                        return Err("a tuple or list in the header is malformed".into());
                    }
                }
            }
            b'{' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(b'}') {
                        return Ok(Lit::Dict(items));
                    }
                    let k = self.value(depth + 1)?;
                    if !self.eat(b':') {
                        return Err("a dictionary entry in the header has no ':'".into());
                    }
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    if !self.eat(b',') {
                        if self.eat(b'}') {
                            return Ok(Lit::Dict(items));
                        }
                        return Err("the header dictionary is malformed".into());
                    }
                }
            }
            b'0'..=b'9' => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                // 'L' suffix of Python 2 longs.
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("").trim_end_matches('L');
                digits.parse::<u128>().map(Lit::Int).map_err(|_| format!("the number {digits} in the header is too large"))
            }
            _ => {
                for (word, lit) in [("True", Lit::Bool(true)), ("False", Lit::Bool(false)), ("None", Lit::None)] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(lit);
                    }
                }
                Err(format!("unexpected character '{}' in the header", char::from(c).escape_default()))
            }
        }
    }
}

/// Bytes per element of a simple numpy dtype descriptor; `None` for what mnq cannot size.
fn item_size(descr: &str) -> Option<usize> {
    let d = descr.trim_start_matches(['<', '>', '|', '=']);
    let kind = d.chars().next()?;
    let rest = &d[kind.len_utf8()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let n: usize = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    match kind {
        '?' if rest.is_empty() => Some(1),
        'b' | 'i' | 'u' | 'f' | 'c' | 'S' | 'a' | 'V' if n > 0 => Some(n),
        'U' if n > 0 => n.checked_mul(4),
        'M' | 'm' if n > 0 => Some(n),
        _ => None,
    }
}

/// Read and check the header of a `.npy` stream of `total_len` bytes: the magic string, a
/// header no longer than the stream, the three fields, and a shape whose data (values ×
/// element size) is exactly what follows the header. Errors say which field is wrong.
pub fn read_header<R: Read>(r: &mut R, total_len: u64) -> Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|_| format!("only {total_len} bytes: too short for a .npy header; is the file truncated?"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic string at the start)".into());
    }
    let (len_bytes, utf8) = match (pre[6], pre[7]) {
        (1, 0) => (2usize, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        (a, b) => return Err(format!("unsupported .npy format version {a}.{b} (numpy writes 1.0, 2.0 or 3.0)")),
    };
    let mut lb = [0u8; 4];
    r.read_exact(&mut lb[..len_bytes]).map_err(|_| "the file ends inside its header length; is it truncated?".to_string())?;
    let header_len = u32::from_le_bytes(lb) as usize;
    let data_offset = 8 + len_bytes as u64 + header_len as u64;
    if header_len > MAX_HEADER || data_offset > total_len {
        return Err(format!(
            "the header claims to be {header_len} bytes long but the file holds {total_len} bytes; the file is truncated or its header is wrong"
        ));
    }
    let mut buf = vec![0u8; header_len];
    r.read_exact(&mut buf).map_err(|_| "the file ends inside its header; is it truncated?".to_string())?;
    if !utf8 && !buf.is_ascii() {
        return Err("the header is not ASCII".into());
    }
    let mut p = Parser { s: &buf, i: 0 };
    let dict = match p.value(0)? {
        Lit::Dict(d) => d,
        _ => return Err("the header is not a dictionary".into()),
    };
    let field = |name: &str| dict.iter().find(|(k, _)| *k == Lit::Str(name.into())).map(|(_, v)| v);
    let descr = match field("descr") {
        Some(Lit::Str(s)) => s.clone(),
        Some(_) => return Err("header field 'descr' is a structured dtype; mnq reads plain numeric arrays".into()),
        None => return Err("the header has no 'descr' field".into()),
    };
    let fortran_order = match field("fortran_order") {
        Some(Lit::Bool(b)) => *b,
        _ => return Err("header field 'fortran_order' is missing or not True/False".into()),
    };
    let shape: Vec<usize> = match field("shape") {
        Some(Lit::Seq(items)) => items
            .iter()
            .map(|v| match v {
                Lit::Int(n) => {
                    usize::try_from(*n).map_err(|_| format!("header field 'shape' has a dimension {n} beyond this machine's sizes"))
                }
                _ => Err("header field 'shape' must be a tuple of non-negative integers".to_string()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("header field 'shape' is missing or not a tuple".into()),
    };
    let item = item_size(&descr).ok_or_else(|| format!("header field 'descr' is '{descr}', a dtype mnq cannot read"))?;
    let values = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let bytes = values.and_then(|v| v.checked_mul(item)).and_then(|b| u64::try_from(b).ok());
    let avail = total_len - data_offset;
    match bytes {
        Some(b) if b == avail => {}
        _ => {
            let claim = match bytes {
                Some(b) => format!("{} values of {item} bytes ('descr' '{descr}'), {b} bytes", values.unwrap_or(0)),
                None => "more values than this machine can address".into(),
            };
            let tuple = match shape.as_slice() {
                [d] => format!("({d},)"),
                _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
            };
            return Err(format!(
                "header field 'shape' {tuple} claims {claim}, but the file holds {avail} bytes of data after its {data_offset}-byte header; {}",
                if bytes.is_some_and(|b| b < avail) { "the header is wrong or the file has trailing bytes" } else { "the file is truncated or its header is wrong" }
            ));
        }
    }
    Ok(NpyHeader { descr, fortran_order, shape, item_size: item, data_offset })
}

/// [`read_header`] of a file on disk, checked against its length.
pub fn check_file(path: &Path) -> Result<NpyHeader, std::io::Error> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    read_header(&mut f, len).map_err(|what| std::io::Error::new(std::io::ErrorKind::InvalidData, what))
}

/// [`read_header`] of every `.npy` member of an `.npz` archive (uncompressed, as `np.savez`
/// writes it): each member's claimed size must fit the archive and its header its size.
pub fn check_npz(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut z = zip::ZipArchive::new(f).map_err(|e| format!("not a readable .npz ({e})"))?;
    for i in 0..z.len() {
        let mut m = z.by_index(i).map_err(|e| format!("not a readable .npz ({e})"))?;
        let name = m.name().to_string();
        if m.compression() != zip::CompressionMethod::Stored {
            return Err(format!("member '{name}' is compressed; write the archive with np.savez (uncompressed)"));
        }
        if m.size() != m.compressed_size() || m.size() > file_len {
            return Err(format!("member '{name}' claims {} bytes but the archive holds {file_len}; is it truncated?", m.size()));
        }
        if name.ends_with(".npy") {
            let size = m.size();
            read_header(&mut m, size).map_err(|w| format!("member '{name}': {w}"))?;
        }
    }
    Ok(())
}

/// [`read_header`] over an in-memory `.npy` (the fuzz target's entry point).
pub fn header_of_bytes(bytes: &[u8]) -> Result<NpyHeader, String> {
    read_header(&mut &bytes[..], bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: usize) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn header_fields_and_sizes() {
        let b = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24);
        let h = header_of_bytes(&b).unwrap();
        assert_eq!((h.descr.as_str(), h.fortran_order, h.shape.clone(), h.item_size), ("<f4", false, vec![2, 3], 4));
        assert_eq!(header_of_bytes(&npy("{'descr': '|u1', 'fortran_order': False, 'shape': (), }", 1)).unwrap().values(), 1);
        // A header claiming far more data than the file holds names the field.
        let lie = npy("{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000, 28, 28), }", 1000);
        let e = header_of_bytes(&lie).unwrap_err();
        assert!(e.contains("'shape'") && e.contains("784000000000000 bytes") && e.contains("truncated"), "{e}");
        let over = npy("{'descr': '<i8', 'fortran_order': False, 'shape': (18446744073709551615, 4), }", 8);
        assert!(header_of_bytes(&over).unwrap_err().contains("address"));
        assert!(header_of_bytes(&npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", 4)).is_err());
        assert!(header_of_bytes(&npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", 8)).unwrap_err().contains("descr"));
        assert!(header_of_bytes(b"\x93NUMPY\x01\x00\xff\xff{").unwrap_err().contains("header claims"));
        let deep = format!("{{'descr': '<f4', 'x': {}{}}}", "(".repeat(100), ")".repeat(100));
        assert!(header_of_bytes(&npy(&deep, 0)).unwrap_err().contains("nests"));
    }
}
