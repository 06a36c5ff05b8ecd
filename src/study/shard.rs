//! `mnq run --shard K/N` and `mnq merge`: one study split over N processes (an array job).
//!
//! Every sum a run makes over images is mergeable exactly: ASQNR keeps its per-image ratios,
//! evaluations and attributions keep counts and [`ExactSum`](crate::model::ExactSum)s. A shard
//! computes each of those sums on its contiguous slice of the sensitivity and of the evaluation
//! images and writes it as a *partial* into the shared work folder; the pipeline's decisions
//! (table, rules, Pareto fronts: what to evaluate) need the sensitivity of all images, so a
//! shard runs in two stages:
//!
//! 1. the first `mnq run --shard K/N --work DIR` writes the sensitivity partials of slice K and
//!    stops (unless it is the last shard to finish, when it goes on to stage 2);
//! 2. the same command run again, once every shard has done stage 1, joins the sensitivity
//!    partials, takes the same decisions as a single run, and writes the evaluation and
//!    attribution partials of slice K;
//! 3. `mnq merge --work DIR` joins every partial and writes the report a single run writes,
//!    without a forward pass.
//!
//! Partials are written atomically and reused when present, so a shard that is run again does
//! nothing twice, and a killed shard leaves nothing half-written.

use super::{RunError, RunOptions};
use crate::io::write_atomic;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Shard `k` of `n` (1-based, `K/N` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// This shard, 1..=n.
    pub k: usize,
    /// Shards in all.
    pub n: usize,
}

impl std::str::FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("--shard {s:?}: give K/N with 1 ≤ K ≤ N, e.g. --shard 2/8 (SLURM: --shard $((SLURM_ARRAY_TASK_ID+1))/N for 0-based task ids)")
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if k == 0 || n == 0 || k > n {
            return Err(bad());
        }
        Ok(ShardSpec { k, n })
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// The images of shard `k` of `n` out of `len`: contiguous, in order, sizes differing by at most one.
pub fn slice(len: usize, s: ShardSpec) -> Range<usize> {
    (s.k - 1) * len / s.n..s.k * len / s.n
}

/// How a run gets the sums over images.
#[derive(Debug, Clone, Default)]
pub enum Mode {
    /// Computes everything on all images (a plain `mnq run`).
    #[default]
    Whole,
    /// Computes its slices and writes partials into `work` (`mnq run --shard`).
    Shard {
        /// Which shard.
        spec: ShardSpec,
        /// The shared work folder.
        work: PathBuf,
    },
    /// Reads every partial from `work`, computes nothing (`mnq merge`).
    Merge {
        /// Shards in all.
        n: usize,
        /// The shared work folder.
        work: PathBuf,
    },
}

/// One partial as written to the work folder.
#[derive(Debug, Serialize, Deserialize)]
struct Partial<T> {
    format: u32,
    key: String,
    shard: usize,
    of: usize,
    range: Range<usize>,
    total: usize,
    data: T,
}

fn shard_dir(work: &Path, k: usize, n: usize) -> PathBuf {
    work.join(format!("shard-{k}-of-{n}"))
}

fn partial_path(work: &Path, k: usize, n: usize, key: &str) -> PathBuf {
    shard_dir(work, k, n).join(format!("{key}.json"))
}

/// Write shard `spec`'s partial `key` (its sums over `range` of `total` images).
pub fn write<T: Serialize>(work: &Path, spec: ShardSpec, key: &str, range: Range<usize>, total: usize, data: &T) -> Result<(), RunError> {
    let p = Partial { format: 1, key: key.to_string(), shard: spec.k, of: spec.n, range, total, data };
    let text = serde_json::to_string(&p).map_err(|e| RunError::Input(format!("partial {key}: cannot serialise ({e})")))?;
    write_atomic(&partial_path(work, spec.k, spec.n, key), (text + "\n").as_bytes())?;
    Ok(())
}

/// Read shard `k`'s partial `key`, checked against the slice it must cover; `None` when absent.
fn read_one<T: DeserializeOwned>(work: &Path, k: usize, n: usize, key: &str, total: usize) -> Result<Option<T>, RunError> {
    let path = partial_path(work, k, n, key);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RunError::Input(format!("{}: cannot read ({e})", path.display()))),
    };
    let p: Partial<T> = serde_json::from_str(&text).map_err(|e| {
        RunError::Input(format!("{}: not a partial of this mnq ({e}); delete it and run shard {k}/{n} again", path.display()))
    })?;
    let want = slice(total, ShardSpec { k, n });
    if p.format != 1 || p.key != key || p.shard != k || p.of != n || p.total != total || p.range != want {
        return Err(RunError::Input(format!(
            "{}: written for images {:?} of {} (shard {}/{}), but this run's shard {k}/{n} covers {want:?} of {total}; the work folder holds another run's shards: use a fresh --work",
            path.display(),
            p.range,
            p.total,
            p.shard,
            p.of
        )));
    }
    Ok(Some(p.data))
}

/// This shard's own partial `key`, when it already wrote it.
pub fn read_own<T: DeserializeOwned>(work: &Path, spec: ShardSpec, key: &str, total: usize) -> Result<Option<T>, RunError> {
    read_one(work, spec.k, spec.n, key, total)
}

/// Whether this shard already wrote its partial `key` (its content is checked where it is read).
pub fn has_own(work: &Path, spec: ShardSpec, key: &str) -> bool {
    partial_path(work, spec.k, spec.n, key).is_file()
}

/// Every shard's partial `key` in shard order (so in image order), or the shards still missing.
pub fn read_all<T: DeserializeOwned>(work: &Path, n: usize, key: &str, total: usize) -> Result<Result<Vec<T>, Vec<usize>>, RunError> {
    let mut have = Vec::with_capacity(n);
    let mut missing = Vec::new();
    for k in 1..=n {
        match read_one(work, k, n, key, total)? {
            Some(t) => have.push(t),
            None => missing.push(k),
        }
    }
    Ok(if missing.is_empty() { Ok(have) } else { Err(missing) })
}

/// The options every shard of one study shares (all of `mnq run`'s but the progress bars),
/// recorded as `options.json` in the work folder: a shard with other options is refused, and
/// `mnq merge` reads them back.
fn options_path(work: &Path) -> PathBuf {
    work.join("options.json")
}

/// Record `o` in `work`, or check it against what the first shard recorded.
pub fn check_options(work: &Path, spec: ShardSpec, o: &RunOptions) -> Result<(), RunError> {
    let mine = serde_json::to_value(Recorded { shards: spec.n, options: o.clone() }).expect("options serialise");
    let path = options_path(work);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let theirs: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                RunError::Input(format!("{}: unreadable ({e}); is DIR another tool's folder? use a fresh --work", path.display()))
            })?;
            if theirs != mine {
                let diff: Vec<String> = match (&mine["options"], &theirs["options"]) {
                    (serde_json::Value::Object(a), serde_json::Value::Object(b)) => a
                        .iter()
                        .filter(|(k, v)| b.get(*k) != Some(v))
                        .map(|(k, v)| format!("{k} {v} (recorded {})", b.get(k).unwrap_or(&serde_json::Value::Null)))
                        .collect(),
                    _ => vec![],
                };
                let shards = if theirs["shards"] != mine["shards"] {
                    format!("shards {} (recorded {}); ", spec.n, theirs["shards"])
                } else {
                    String::new()
                };
                return Err(RunError::Input(format!(
                    "{}: this work folder belongs to a study with other options ({shards}{}); give every shard the same options, or use a fresh --work",
                    path.display(),
                    diff.join(", ")
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(&mine).expect("options serialise") + "\n";
            write_atomic(&path, text.as_bytes())?;
            Ok(())
        }
        Err(e) => Err(RunError::Input(format!("{}: cannot read ({e})", path.display()))),
    }
}

#[derive(Serialize, Deserialize)]
struct Recorded {
    shards: usize,
    options: RunOptions,
}

/// The options and the number of shards a work folder's study was run with (for `mnq merge`).
pub fn recorded_options(work: &Path) -> Result<(RunOptions, usize), RunError> {
    let path = options_path(work);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        RunError::Input(format!("{}: cannot read ({e}); is {} the --work folder of `mnq run --shard`?", path.display(), work.display()))
    })?;
    let r: Recorded =
        serde_json::from_str(&text).map_err(|e| RunError::Input(format!("{}: not an options record of this mnq ({e})", path.display())))?;
    Ok((r.options, r.shards))
}

/// "shards 2, 5" for an error message.
pub fn list(shards: &[usize]) -> String {
    shards.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_recorded_before_area_metric_read_as_nand2() {
        let d = tempfile::tempdir().unwrap();
        let o: RunOptions = serde_json::from_value(serde_json::json!({
            "model_dir": "m", "eval_images": "e", "eval_labels": "l", "calib_images": "c", "sens_images": 4,
            "images": null, "bits": [8], "arch": "shared", "area_budget": null, "latency_budget": null,
            "convention": "amplitude20", "max_pareto_eval": 6, "cost_table": "t", "rtl_manifest": "r",
            "attribution": "none", "out": "o"
        }))
        .expect("options without area_metric parse");
        assert_eq!(o.area_metric, crate::cost::AreaMetric::Nand2);
        let mut v = serde_json::to_value(Recorded { shards: 2, options: o }).unwrap();
        v["options"]["area_metric"] = "lut6".into();
        std::fs::write(options_path(d.path()), v.to_string()).unwrap();
        assert_eq!(recorded_options(d.path()).unwrap().0.area_metric, crate::cost::AreaMetric::Lut6);
    }

    #[test]
    fn slices_cover_the_split_in_order() {
        for len in [0, 1, 5, 16, 97] {
            for n in 1..=7 {
                let mut next = 0;
                for k in 1..=n {
                    let r = slice(len, ShardSpec { k, n });
                    assert_eq!(r.start, next, "len {len} n {n} k {k}");
                    assert!(r.len() <= len / n + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn shard_specs_parse_and_refuse() {
        assert_eq!("2/8".parse::<ShardSpec>().unwrap(), ShardSpec { k: 2, n: 8 });
        for bad in ["0/4", "5/4", "3", "a/b", "1/0", ""] {
            let e = bad.parse::<ShardSpec>().unwrap_err();
            assert!(e.contains("K/N"), "{bad}: {e}");
        }
    }
}
