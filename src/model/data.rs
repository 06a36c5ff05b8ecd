//! Images and labels from the contract's `.npy` files, and `reference.npz` (inputs + PyTorch logits).

use super::{Manifest, ModelError};
use ndarray::ArrayD;
use ndarray_npy::{NpzReader, ReadNpyExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
enum Pixels {
    /// uint8 pixels, normalised on access: `(p/255 − mean_c)/std_c`.
    U8(Vec<u8>),
    /// Already normalised float32 values.
    F32(Vec<f32>),
}

/// A set of images shaped for one model, normalised on access.
#[derive(Debug, Clone)]
pub struct Images {
    /// File they came from.
    pub path: PathBuf,
    n: usize,
    /// Values per image.
    per_image: usize,
    chans: usize,
    pixels: Pixels,
    mean: Vec<f32>,
    std: Vec<f32>,
    /// Class labels, when a labels file was given.
    pub labels: Option<Vec<usize>>,
}

fn img_err(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::Images { path: path.to_path_buf(), what: what.into() }
}

/// Check a `.npy` header against the file's length before a reader allocates what it claims.
fn check_npy(path: &Path) -> Result<crate::io::npy::NpyHeader, ModelError> {
    crate::io::npy::check_file(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => img_err(path, e.to_string()),
        _ => ModelError::Io { path: path.to_path_buf(), source: e },
    })
}

/// The shape of the array in a `.npy` file, from its header (checked against the file's length),
/// without reading the data: how many images a file holds, before loading it.
pub fn npy_shape(path: &Path) -> Result<Vec<usize>, ModelError> {
    check_npy(path).map(|h| h.shape)
}

/// Check an image array's shape against the manifest; returns the number of images.
fn check_shape(path: &Path, shape: &[usize], m: &Manifest) -> Result<usize, ModelError> {
    let (c, s) = (m.in_chans, m.img_size);
    let ok = match shape {
        [_, h, w] => c == 1 && *h == s && *w == s,
        [_, ch, h, w] => *ch == c && *h == s && *w == s,
        _ => false,
    };
    if !ok || shape[0] == 0 {
        let want = if c == 1 { format!("[N, {s}, {s}] or [N, 1, {s}, {s}]") } else { format!("[N, {c}, {s}, {s}]") };
        return Err(img_err(path, format!("images have shape {shape:?} but the model takes {want} (N ≥ 1)")));
    }
    Ok(shape[0])
}

impl Images {
    /// Read uint8 images (`[N, H, W]` for one channel, or `[N, C, H, W]`) or already normalised
    /// float32 `[N, C, H, W]` from a `.npy` file, checking the size against the manifest.
    pub fn load_npy(path: &Path, m: &Manifest) -> Result<Images, ModelError> {
        check_npy(path)?;
        let open = || std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source });
        let pixels;
        let n;
        if let Ok(a) = ArrayD::<u8>::read_npy(open()?) {
            n = check_shape(path, a.shape(), m)?;
            pixels = Pixels::U8(a.iter().copied().collect());
        } else {
            match ArrayD::<f32>::read_npy(open()?) {
                Ok(a) => {
                    n = check_shape(path, a.shape(), m)?;
                    pixels = Pixels::F32(a.iter().copied().collect());
                }
                Err(e) => {
                    return Err(img_err(
                        path,
                        format!(
                            "not a readable .npy of uint8 pixels or float32 normalised images ({e}); is it truncated or of another dtype?"
                        ),
                    ))
                }
            }
        }
        Images::build(path, n, pixels, m)
    }

    fn build(path: &Path, n: usize, pixels: Pixels, m: &Manifest) -> Result<Images, ModelError> {
        if let Pixels::F32(v) = &pixels {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(img_err(path, format!("value {} at index {i} is not finite", v[i])));
            }
        }
        Ok(Images {
            path: path.to_path_buf(),
            n,
            per_image: m.image_len(),
            chans: m.in_chans,
            pixels,
            mean: m.input.mean.iter().map(|&v| v as f32).collect(),
            std: m.input.std.iter().map(|&v| v as f32).collect(),
            labels: None,
        })
    }

    /// Attach labels from a `.npy` of non-negative integers `[N]`, checked against `classes`.
    pub fn with_labels(mut self, path: &Path, classes: usize) -> Result<Images, ModelError> {
        check_npy(path)?;
        let open = || std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source });
        let v: Vec<i64> = if let Ok(a) = ArrayD::<u8>::read_npy(open()?) {
            a.iter().map(|&x| i64::from(x)).collect()
        } else if let Ok(a) = ArrayD::<i64>::read_npy(open()?) {
            a.iter().copied().collect()
        } else if let Ok(a) = ArrayD::<i32>::read_npy(open()?) {
            a.iter().map(|&x| i64::from(x)).collect()
        } else {
            return Err(img_err(path, "not a readable .npy of integer labels (uint8, int32 or int64)"));
        };
        if v.len() != self.n {
            return Err(img_err(path, format!("{} labels for {} images in {}", v.len(), self.n, self.path.display())));
        }
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| **x < 0 || (classes > 0 && **x as usize >= classes)) {
            return Err(img_err(path, format!("label {x} at index {i} is outside 0..{classes}")));
        }
        self.labels = Some(v.into_iter().map(|x| x as usize).collect());
        Ok(self)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Keep only the first `n` images (and labels).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.n {
            return;
        }
        self.n = n;
        match &mut self.pixels {
            Pixels::U8(v) => v.truncate(n * self.per_image),
            Pixels::F32(v) => v.truncate(n * self.per_image),
        }
        if let Some(l) = &mut self.labels {
            l.truncate(n);
        }
    }

    /// Keep only images `range` (and their labels): one shard's slice of a split.
    pub fn slice(&mut self, range: std::ops::Range<usize>) {
        let (lo, hi) = (range.start.min(self.n), range.end.min(self.n).max(range.start.min(self.n)));
        let p = self.per_image;
        match &mut self.pixels {
            Pixels::U8(v) => *v = v[lo * p..hi * p].to_vec(),
            Pixels::F32(v) => *v = v[lo * p..hi * p].to_vec(),
        }
        if let Some(l) = &mut self.labels {
            *l = l[lo..hi].to_vec();
        }
        self.n = hi - lo;
    }

    /// A copy of the first `n` images (all when fewer).
    pub fn prefix(&self, n: usize) -> Images {
        let n = n.min(self.n);
        let p = self.per_image;
        Images {
            path: self.path.clone(),
            n,
            per_image: p,
            chans: self.chans,
            pixels: match &self.pixels {
                Pixels::U8(v) => Pixels::U8(v[..n * p].to_vec()),
                Pixels::F32(v) => Pixels::F32(v[..n * p].to_vec()),
            },
            mean: self.mean.clone(),
            std: self.std.clone(),
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
        }
    }

    /// Image `i`, normalised, `[C, H, W]`.
    pub fn image(&self, i: usize) -> Vec<f32> {
        let r = i * self.per_image..(i + 1) * self.per_image;
        let plane = self.per_image / self.chans;
        match &self.pixels {
            Pixels::F32(v) => v[r].to_vec(),
            Pixels::U8(v) => v[r]
                .iter()
                .enumerate()
                .map(|(j, &p)| {
                    let c = j / plane;
                    (f32::from(p) / 255.0 - self.mean[c]) / self.std[c]
                })
                .collect(),
        }
    }
}

/// `reference.npz` written by `sim/export.py`: normalised inputs and PyTorch's logits (or features).
#[derive(Debug, Clone)]
pub struct Reference {
    /// The inputs.
    pub images: Images,
    /// Logits (or features) per input.
    pub outputs: Vec<Vec<f32>>,
}

impl Reference {
    /// Read `reference.npz` (uncompressed `np.savez`) and check it against the manifest.
    pub fn load(path: &Path, m: &Manifest) -> Result<Reference, ModelError> {
        let f = std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        crate::io::npy::check_npz(path).map_err(|w| img_err(path, w))?;
        let mut z = NpzReader::new(f).map_err(|e| img_err(path, format!("not a readable .npz ({e})")))?;
        let inputs: ArrayD<f32> = z.by_name("inputs").map_err(|e| img_err(path, format!("no float32 array 'inputs' ({e})")))?;
        let key = if m.num_classes > 0 { "logits" } else { "features" };
        let out: ArrayD<f32> = z.by_name(key).map_err(|e| img_err(path, format!("no float32 array '{key}' ({e})")))?;
        let n = check_shape(path, inputs.shape(), m)?;
        let k = if m.num_classes > 0 { m.num_classes } else { m.feature_dim() };
        if out.shape() != [n, k] {
            return Err(img_err(path, format!("'{key}' has shape {:?}, expected [{n}, {k}]", out.shape())));
        }
        let images = Images::build(path, n, Pixels::F32(inputs.iter().copied().collect()), m)?;
        let flat: Vec<f32> = out.iter().copied().collect();
        let outputs = flat.chunks_exact(k).map(<[f32]>::to_vec).collect();
        Ok(Reference { images, outputs })
    }
}
