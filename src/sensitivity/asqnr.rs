//! ASQNR, the seed's Eq. 10, and the SQNR diff of its Eq. 11.
//!
//! For one tap (the input or the output of one non-linear layer) the accumulator is fed image by
//! image with the float model's tensor `x` and the quantised model's dequantised tensor `q`. Per
//! image it forms `E[x²] / E[(x − q)²]`; ASQNR is the mean of these ratios over the images, in
//! decibels: `20·log10` by default, as the paper writes Eq. 10 ([`Convention::Amplitude20`]), or
//! `10·log10`, the power-ratio convention ([`Convention::Power10`]). Every report says which.
//!
//! Zero error makes a ratio infinite. Rather than let one exact image turn the batch mean into
//! `+inf` (which JSON cannot hold and which breaks every sum downstream), each per-image ratio is
//! clamped to [[`RATIO_FLOOR`], [`RATIO_CAP`]]: an exact image counts as `1e15` (300 dB in the
//! amplitude convention, 150 dB in the power one), far above any quantiser (8 bits gives about
//! `1e4`) and at the level of float64 rounding. [`Asqnr::capped_images`] says how many images hit
//! the cap so that a report can flag it. An image with no signal but some error has ratio 0 and is
//! clamped to the floor.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest per-image ratio `E[x²]/E[(x−q)²]`; an exact image (zero error) counts as this.
pub const RATIO_CAP: f64 = 1e15;
/// Smallest per-image ratio; an image with zero signal and non-zero error counts as this.
pub const RATIO_FLOOR: f64 = 1e-15;

/// How a power ratio becomes decibels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    /// `20·log10(ratio)`, as the seed writes Eq. 10 (although the ratio is one of powers).
    #[default]
    Amplitude20,
    /// `10·log10(ratio)`, the usual convention for a ratio of powers.
    Power10,
}

impl Convention {
    /// Decibels of a power ratio under this convention.
    pub fn db(self, ratio: f64) -> f64 {
        self.factor() * ratio.log10()
    }

    /// The multiplier of `log10`: 20 or 10.
    pub fn factor(self) -> f64 {
        match self {
            Convention::Amplitude20 => 20.0,
            Convention::Power10 => 10.0,
        }
    }

    /// One line for reports saying which convention the decibels use.
    pub fn describe(self) -> &'static str {
        match self {
            Convention::Amplitude20 => "20·log10 of the power ratio, as the seed writes Eq. 10 (amplitude convention)",
            Convention::Power10 => "10·log10 of the power ratio (power convention)",
        }
    }
}

impl std::fmt::Display for Convention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Convention::Amplitude20 => "20log10",
            Convention::Power10 => "10log10",
        })
    }
}

/// Why an ASQNR could not be accumulated or computed.
#[derive(Debug, Error, PartialEq)]
pub enum AsqnrError {
    /// The float and the quantised tensor of one image differ in length.
    #[error("{tap}: image {image} has {x} float values but {q} quantised values; feed the same tensor of both models")]
    LengthMismatch {
        /// Tap the accumulator is for.
        tap: String,
        /// Index of the image being fed.
        image: usize,
        /// Length of the float slice.
        x: usize,
        /// Length of the quantised slice.
        q: usize,
    },
    /// An image with no values.
    #[error("{tap}: image {image} is empty; a tap must hold at least one value per image")]
    Empty {
        /// Tap the accumulator is for.
        tap: String,
        /// Index of the image being fed.
        image: usize,
    },
    /// A NaN or infinite value in a tap.
    #[error("{tap}: image {image} has a non-finite {which} value {value} at element {index}; the model run that produced it diverged")]
    NonFinite {
        /// Tap the accumulator is for.
        tap: String,
        /// Index of the image being fed.
        image: usize,
        /// "float" or "quantised".
        which: &'static str,
        /// Element index within the image.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A batch whose length is not a multiple of the image size.
    #[error("{tap}: a batch of {len} values is not a whole number of images of {image_len} values")]
    BadBatch {
        /// Tap the accumulator is for.
        tap: String,
        /// Values in the batch.
        len: usize,
        /// Values per image.
        image_len: usize,
    },
    /// ASQNR asked for before any image was fed.
    #[error("{tap}: no images were fed, so there is no ASQNR")]
    NoImages {
        /// Tap the accumulator is for.
        tap: String,
    },
}

impl AsqnrError {
    /// The same error for image `image` of a larger batch (for images measured apart, [`Asqnr::extend`]).
    pub fn at_image(mut self, at: usize) -> Self {
        match &mut self {
            AsqnrError::LengthMismatch { image, .. } | AsqnrError::Empty { image, .. } | AsqnrError::NonFinite { image, .. } => *image = at,
            _ => {}
        }
        self
    }
}

/// Accumulates the per-image SQNR of one tap over a batch of images (seed Eq. 10).
/// Serialised with the ratios as their bit patterns, so that a shard's accumulator read back by
/// `mnq merge` is the one it wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asqnr {
    tap: String,
    #[serde(with = "f64_bits")]
    ratios: Vec<f64>,
    capped: usize,
    floored: usize,
    elements: usize,
}

impl Asqnr {
    /// An empty accumulator for the tap `tap` (named in errors, e.g. `blocks.0.norm1 output`).
    pub fn new(tap: impl Into<String>) -> Self {
        Asqnr { tap: tap.into(), ratios: Vec::new(), capped: 0, floored: 0, elements: 0 }
    }

    /// Feed one image: float tensor `x` and the quantised model's dequantised tensor `q` of the
    /// same tap. Returns the image's clamped ratio `E[x²]/E[(x−q)²]`. On error nothing is added.
    pub fn push<A: Copy + Into<f64>, B: Copy + Into<f64>>(&mut self, x: &[A], q: &[B]) -> Result<f64, AsqnrError> {
        let image = self.ratios.len();
        if x.len() != q.len() {
            return Err(AsqnrError::LengthMismatch { tap: self.tap.clone(), image, x: x.len(), q: q.len() });
        }
        if x.is_empty() {
            return Err(AsqnrError::Empty { tap: self.tap.clone(), image });
        }
        let (mut signal, mut noise) = (0.0f64, 0.0f64);
        for (index, (&a, &b)) in x.iter().zip(q).enumerate() {
            let (a, b): (f64, f64) = (a.into(), b.into());
            for (which, value) in [("float", a), ("quantised", b)] {
                if !value.is_finite() {
                    return Err(AsqnrError::NonFinite { tap: self.tap.clone(), image, which, index, value });
                }
            }
            signal += a * a;
            noise += (a - b) * (a - b);
        }
        // The 1/n of both means cancels.
        let ratio = if noise == 0.0 { RATIO_CAP } else { signal / noise };
        let clamped = ratio.clamp(RATIO_FLOOR, RATIO_CAP);
        if ratio >= RATIO_CAP {
            self.capped += 1;
        } else if ratio <= RATIO_FLOOR {
            self.floored += 1;
        }
        self.ratios.push(clamped);
        self.elements += x.len();
        Ok(clamped)
    }

    /// Append `later`'s images after this accumulator's, exactly as if they had been fed here in
    /// order (the per-image ratios are independent, so images can be measured apart and joined).
    pub fn extend(&mut self, later: Asqnr) {
        self.ratios.extend(later.ratios);
        self.capped += later.capped;
        self.floored += later.floored;
        self.elements += later.elements;
    }

    /// Feed a batch of whole images laid out one after another, `image_len` values each.
    pub fn push_batch<A: Copy + Into<f64>, B: Copy + Into<f64>>(&mut self, x: &[A], q: &[B], image_len: usize) -> Result<(), AsqnrError> {
        if image_len == 0 || !x.len().is_multiple_of(image_len) {
            return Err(AsqnrError::BadBatch { tap: self.tap.clone(), len: x.len(), image_len });
        }
        if x.len() != q.len() {
            return Err(AsqnrError::LengthMismatch { tap: self.tap.clone(), image: self.ratios.len(), x: x.len(), q: q.len() });
        }
        // Validate the whole batch first so that a bad image leaves the accumulator unchanged.
        let mut probe = self.clone();
        for (xi, qi) in x.chunks(image_len).zip(q.chunks(image_len)) {
            probe.push(xi, qi)?;
        }
        *self = probe;
        Ok(())
    }

    /// The tap this accumulator is for.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// Number of images fed.
    pub fn images(&self) -> usize {
        self.ratios.len()
    }

    /// Number of values fed over all images.
    pub fn elements(&self) -> usize {
        self.elements
    }

    /// Per-image clamped ratios, in the order fed.
    pub fn ratios(&self) -> &[f64] {
        &self.ratios
    }

    /// Images whose ratio was clamped to [`RATIO_CAP`] (exact or nearly exact images).
    pub fn capped_images(&self) -> usize {
        self.capped
    }

    /// Images whose ratio was clamped to [`RATIO_FLOOR`] (no signal, some error).
    pub fn floored_images(&self) -> usize {
        self.floored
    }

    /// Batch mean of the per-image ratios (the quantity inside the logarithm of Eq. 10).
    pub fn mean_ratio(&self) -> Result<f64, AsqnrError> {
        if self.ratios.is_empty() {
            return Err(AsqnrError::NoImages { tap: self.tap.clone() });
        }
        Ok(self.ratios.iter().sum::<f64>() / self.ratios.len() as f64)
    }

    /// ASQNR in decibels under `convention`.
    pub fn db(&self, convention: Convention) -> Result<f64, AsqnrError> {
        Ok(convention.db(self.mean_ratio()?))
    }

    /// Everything a report needs about this tap.
    pub fn summary(&self, convention: Convention) -> Result<AsqnrSummary, AsqnrError> {
        Ok(AsqnrSummary {
            tap: self.tap.clone(),
            images: self.images(),
            elements: self.elements,
            mean_ratio: self.mean_ratio()?,
            db: self.db(convention)?,
            convention,
            capped_images: self.capped,
            floored_images: self.floored,
        })
    }
}

/// ASQNR of one tap, ready to serialise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsqnrSummary {
    /// Tap name.
    pub tap: String,
    /// Images averaged over.
    pub images: usize,
    /// Values over all images.
    pub elements: usize,
    /// Batch mean of the clamped per-image ratios.
    pub mean_ratio: f64,
    /// ASQNR in decibels under `convention`.
    pub db: f64,
    /// Which decibel convention `db` uses.
    pub convention: Convention,
    /// Images clamped to [`RATIO_CAP`].
    pub capped_images: usize,
    /// Images clamped to [`RATIO_FLOOR`].
    pub floored_images: usize,
}

/// SQNR diff of a layer (seed Eq. 11): ASQNR(output) − ASQNR(input), both in `convention`.
///
/// Both accumulators must cover the same images (checked by count).
pub fn sqnr_diff(input: &Asqnr, output: &Asqnr, convention: Convention) -> Result<f64, AsqnrError> {
    let (i, o) = (input.db(convention)?, output.db(convention)?);
    if input.images() != output.images() {
        return Err(AsqnrError::LengthMismatch {
            tap: format!("{} / {}", input.tap, output.tap),
            image: input.images().min(output.images()),
            x: input.images(),
            q: output.images(),
        });
    }
    Ok(o - i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_image_ratio_is_exact() {
        let mut a = Asqnr::new("t");
        // signal 1+4+9 = 14, noise 0.25+0+0 = 0.25
        let r = a.push(&[1.0f64, 2.0, 3.0], &[1.5f64, 2.0, 3.0]).unwrap();
        assert_eq!(r, 56.0);
        assert_eq!(a.db(Convention::Power10).unwrap(), 10.0 * 56f64.log10());
        assert_eq!(a.db(Convention::Amplitude20).unwrap(), 20.0 * 56f64.log10());
    }

    #[test]
    fn mean_is_over_ratios_not_over_pooled_powers() {
        let mut a = Asqnr::new("t");
        a.push(&[2.0f32], &[1.0f32]).unwrap(); // ratio 4
        a.push(&[10.0f32, 0.0], &[9.0f32, 0.0]).unwrap(); // ratio 100
        assert_eq!(a.mean_ratio().unwrap(), 52.0);
    }

    #[test]
    fn exact_and_empty_signal_images_are_clamped_and_counted() {
        let mut a = Asqnr::new("t");
        assert_eq!(a.push(&[1.0f32, -2.0], &[1.0f32, -2.0]).unwrap(), RATIO_CAP);
        assert_eq!(a.push(&[0.0f32], &[0.0f32]).unwrap(), RATIO_CAP);
        assert_eq!(a.push(&[0.0f32], &[0.5f32]).unwrap(), RATIO_FLOOR);
        assert_eq!((a.capped_images(), a.floored_images()), (2, 1));
        let s = a.summary(Convention::Amplitude20).unwrap();
        assert!(s.db.is_finite());
        assert!(serde_json::to_string(&s).unwrap().contains("\"capped_images\":2"));
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        let mut a = Asqnr::new("blocks.0.norm1 output");
        a.push(&[1.0f32], &[0.5f32]).unwrap();
        let before = a.clone();
        let e = a.push(&[1.0f32, f32::NAN], &[1.0f32, 1.0]).unwrap_err();
        assert!(e.to_string().contains("blocks.0.norm1 output") && e.to_string().contains("NaN"), "{e}");
        assert!(matches!(a.push(&[1.0f32], &[f32::INFINITY]), Err(AsqnrError::NonFinite { which: "quantised", .. })));
        assert!(matches!(a.push(&[1.0f32, 2.0], &[1.0f32]), Err(AsqnrError::LengthMismatch { .. })));
        assert!(matches!(a.push::<f32, f32>(&[], &[]), Err(AsqnrError::Empty { .. })));
        assert!(matches!(a.push_batch(&[1.0f32, 2.0, 3.0], &[1.0f32, 2.0, 3.0], 2), Err(AsqnrError::BadBatch { .. })));
        assert!(a.push_batch(&[1.0f32, 2.0, 3.0, f32::NAN], &[1.0f32, 2.0, 3.0, 4.0], 2).is_err());
        assert_eq!(a, before);
        assert!(matches!(Asqnr::new("t").db(Convention::Power10), Err(AsqnrError::NoImages { .. })));
    }

    #[test]
    fn sqnr_diff_is_output_minus_input() {
        let mut i = Asqnr::new("in");
        let mut o = Asqnr::new("out");
        i.push(&[1.0f64], &[0.9f64]).unwrap();
        o.push(&[1.0f64], &[0.99f64]).unwrap();
        let d = sqnr_diff(&i, &o, Convention::Power10).unwrap();
        assert!((d - 20.0).abs() < 1e-9, "{d}");
        o.push(&[1.0f64], &[0.99f64]).unwrap();
        assert!(sqnr_diff(&i, &o, Convention::Power10).is_err());
    }
}

/// Serde of `Vec<f64>` as the values' IEEE bit patterns (exact, whatever the JSON float parser).
pub mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write the bit patterns.
    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.to_bits()))
    }

    /// Read the bit patterns back.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?.into_iter().map(f64::from_bits).collect())
    }
}
