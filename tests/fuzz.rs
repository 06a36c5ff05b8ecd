//! Fuzzing the readers of user files (issue 17): manifest, assignment, `.npy` (user tensors and
//! images) and JSON tensors, over random bytes and over random mutations of valid files. A
//! reader may refuse anything, but must never panic, abort on an allocation or hang, and what
//! it accepts must be consistent. Runs briefly in CI (`cargo test --release --test fuzz`);
//! `PROPTEST_CASES=100000` runs it for longer.

use mnq::io::{npy, parse_json_input, read_input, InputFile, Values};
use mnq::model::manifest::bounds;
use mnq::model::{layers_of, Assignment, Images, Manifest};
use proptest::prelude::*;
use std::path::Path;

/// Cases per target: 1024 in CI (a few seconds), more with `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024)
}

/// Splice points that stress size checks: huge, negative, fractional and overflowing numbers.
const TOKENS: &[&str] = &[
    "1000000000",
    "99999999999999999999",
    "18446744073709551615",
    "-1",
    "0",
    "1.5",
    "1e308",
    "-1e308",
    "NaN",
    "null",
    "[]",
    "{}",
    "\"",
    "(1000000000000, 28, 28)",
    "(4294967296, 4294967296)",
    "'<f8'",
    "'|O'",
    "True",
    "\u{0}",
];

#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite the byte at a position (modulo the length).
    Set(usize, u8),
    /// Insert a token at a position.
    Splice(usize, usize),
    /// Remove a range.
    Cut(usize, usize),
    /// Keep only a prefix.
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let e = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Edit::Splice(i, t)),
        (any::<usize>(), 0usize..16).prop_map(|(i, n)| Edit::Cut(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(e, 0..6)
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len().max(1);
        match *e {
            Edit::Set(i, b) => {
                if !v.is_empty() {
                    v[i % n] = b;
                }
            }
            Edit::Splice(i, t) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, TOKENS[t].bytes());
            }
            Edit::Cut(i, k) => {
                let at = i % n;
                let end = (at + k).min(v.len());
                if at < end {
                    v.drain(at..end);
                }
            }
            Edit::Truncate(i) => v.truncate(i % n),
        }
    }
    v
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifest_text() -> Vec<u8> {
    std::fs::read(root().join("sim/models/deit_tiny_fmnist/manifest.json")).unwrap()
}

fn swin_text() -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/swin_random/manifest.json")).unwrap()
}

fn assignment_text() -> Vec<u8> {
    let m = Manifest::parse(std::str::from_utf8(&manifest_text()).unwrap(), Path::new("m.json")).unwrap();
    let a = Assignment::single(&layers_of(&m), &m.name, 8, mnq::units::Method::IVit);
    serde_json::to_vec_pretty(&a).unwrap()
}

/// A small valid `.npy`: uint8 images [3, 28, 28], or float32 [2, 5].
fn npy_bytes(images: bool) -> Vec<u8> {
    let (descr, shape, data) = if images { ("|u1", "(3, 28, 28)", 3 * 28 * 28) } else { ("<f4", "(2, 5)", 40) };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend((0..data).map(|i| if images { (i % 251) as u8 } else { [0u8, 0, 0x80, 0x3f][i % 4] }));
    v
}

fn json_tensor_text() -> Vec<u8> {
    br#"{"q": [1, -2, 3, 4, 5, 6], "shape": [2, 3], "scale": 0.5, "gamma": [1, 1, 1], "beta": [0, 0.1, 0], "zero_point": 3, "out_scale": 0.25}"#
        .to_vec()
}

/// What an accepted tensor file must satisfy.
fn consistent(f: &InputFile) -> Result<(), TestCaseError> {
    let n = match &f.values {
        Values::Int(v) => v.len(),
        Values::Float(v) => {
            prop_assert!(v.iter().all(|x| x.is_finite()));
            v.len()
        }
    };
    prop_assert!(n > 0);
    prop_assert_eq!(f.shape.iter().product::<usize>(), n);
    Ok(())
}

fn check_manifest(bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(m) = Manifest::parse(&text, Path::new("fuzz/manifest.json")) {
        // Accepted sizes are within the stated bounds, so building the graph is cheap.
        prop_assert!(m.depth <= bounds::DEPTH && m.embed_dim <= bounds::EMBED_DIM && m.tokens() <= bounds::TOKENS);
        let layers = layers_of(&m);
        prop_assert!(layers.len() <= 3 * bounds::DEPTH + 64);
        for l in &layers {
            prop_assert!((l.elements() as u128) <= bounds::LAYER_ELEMENTS, "{} has {} elements", l.name, l.elements());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn manifest_reader(edits in edits(), swin in any::<bool>()) {
        check_manifest(&apply(if swin { swin_text() } else { manifest_text() }, &edits))?;
    }

    #[test]
    fn manifest_reader_on_noise(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_manifest(&bytes)?;
    }

    #[test]
    fn assignment_reader(edits in edits()) {
        let bytes = apply(assignment_text(), &edits);
        let m = Manifest::parse(std::str::from_utf8(&manifest_text()).unwrap(), Path::new("m.json")).unwrap();
        if let Ok(a) = Assignment::parse(&String::from_utf8_lossy(&bytes), "fuzz") {
            // Resolving against the model either names a problem or gives one unit per layer.
            if let Ok(units) = a.resolve(&layers_of(&m), "fuzz") {
                prop_assert_eq!(units.len(), layers_of(&m).len());
            }
        }
    }

    #[test]
    fn json_tensor_reader(edits in edits()) {
        let bytes = apply(json_tensor_text(), &edits);
        if let Ok(f) = parse_json_input(&String::from_utf8_lossy(&bytes), Path::new("fuzz.json")) {
            consistent(&f)?;
        }
    }

    #[test]
    fn json_tensor_reader_on_noise(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(f) = parse_json_input(&String::from_utf8_lossy(&bytes), Path::new("fuzz.json")) {
            consistent(&f)?;
        }
    }

    #[test]
    fn npy_readers(edits in edits(), images in any::<bool>()) {
        let bytes = apply(npy_bytes(images), &edits);
        if let Ok(h) = npy::header_of_bytes(&bytes) {
            prop_assert_eq!(h.data_offset + (h.values() * h.item_size) as u64, bytes.len() as u64);
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.npy");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(f) = read_input(&p) {
            consistent(&f)?;
        }
        let m = Manifest::parse(std::str::from_utf8(&manifest_text()).unwrap(), Path::new("m.json")).unwrap();
        if let Ok(im) = Images::load_npy(&p, &m) {
            prop_assert!(!im.is_empty());
            prop_assert_eq!(im.image(im.len() - 1).len(), m.image_len());
        }
        let _ = Images::load_npy(&npy_path(d.path()), &m).and_then(|im| im.with_labels(&p, 10));
    }

    #[test]
    fn npy_readers_on_noise(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut v = b"\x93NUMPY".to_vec();
        v.extend(bytes);
        let _ = npy::header_of_bytes(&v);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.npy");
        std::fs::write(&p, &v).unwrap();
        if let Ok(f) = read_input(&p) {
            consistent(&f)?;
        }
    }
}

/// A valid image file beside the fuzzed one, for the label reader.
fn npy_path(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("images.npy");
    std::fs::write(&p, npy_bytes(true)).unwrap();
    p
}
