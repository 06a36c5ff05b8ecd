//! Helpers shared by the integration tests.
#![allow(dead_code)]

use mnq::fixed::{QTensor, Scale};
use mnq::units::Aux;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// The shared golden folder (`../shared/golden` from the project root).
pub fn golden_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden");
    assert!(d.is_dir(), "golden folder {} is missing: the tests need ../shared/golden beside the project", d.display());
    d
}

/// A seeded RNG.
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Random signed tensor of `rows × c` codes at `bits`, values spread over the whole range.
pub fn random_tensor(r: &mut impl Rng, rows: usize, c: usize, bits: u32, scale: f64) -> QTensor {
    let hi = (1i64 << (bits - 1)) - 1;
    let lo = -(1i64 << (bits - 1));
    let spread = r.gen_range(1..=hi.max(1));
    let centre = r.gen_range(lo..=hi);
    let q = (0..rows * c).map(|_| (centre + r.gen_range(-spread..=spread)).clamp(lo, hi)).collect();
    QTensor::new(q, &[rows, c], Scale::PerTensor(scale), bits, true).unwrap()
}

/// LayerNorm aux with random float32 affine parameters.
pub fn ln_aux(r: &mut impl Rng, c: usize) -> Aux {
    Aux {
        gamma: Some((0..c).map(|_| r.gen_range(0.3f32..1.7) * if r.gen_bool(0.1) { -1.0 } else { 1.0 }).collect()),
        beta: Some((0..c).map(|_| r.gen_range(-0.5f32..0.5)).collect()),
        ..Aux::default()
    }
}
