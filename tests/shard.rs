//! `mnq run --shard K/N` and `mnq merge` on the bundled model: the merged report equals the
//! single run's file for file (run time aside), whatever the number of shards; bad shard use is
//! refused with the way out.

use std::path::Path;
use std::process::{Command, Output};

fn mnq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnq")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("mnq runs")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// `--attr-images 17` cuts the attribution inside a shard's slice (3 shards: 10 | 7 | 0 images;
// 4 shards: 7 | 8 | 2 | 0), so its exact merge covers shards with part of, and none of, it.
const STUDY: [&str; 11] =
    ["run", "--quiet", "--bits", "8", "--sens-images", "10", "--images", "30", "--attribution=ops", "--attr-images", "17"];

fn files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

/// A report's file with what legitimately differs between two runs (wall time, threads) blanked.
fn normalised(dir: &Path, f: &str) -> Vec<u8> {
    let bytes = std::fs::read(dir.join(f)).unwrap();
    match f {
        "results.json" => {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v.as_object_mut().unwrap().remove("threads");
            serde_json::to_vec(&v).unwrap()
        }
        "index.md" => {
            let t = String::from_utf8(bytes).unwrap();
            let first = t.lines().find(|l| l.starts_with("Command:")).expect("index.md names its command").to_string();
            let cut = first.rfind(" (").expect("run time in brackets");
            t.replace(&first, &first[..cut]).into_bytes()
        }
        _ => bytes,
    }
}

fn shard_study(work: &Path, out: &Path, n: usize, extra: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    for stage in 1..=2 {
        for k in 1..=n {
            let spec = format!("{k}/{n}");
            let mut a: Vec<&str> = STUDY.to_vec();
            a.extend_from_slice(extra);
            a.extend(["--out", out.to_str().unwrap(), "--shard", &spec, "--work", work.to_str().unwrap()]);
            let s = ok(&mnq(&a));
            assert!(!out.exists(), "shard {spec} (stage {stage}) wrote the report folder");
            lines.push(s);
        }
    }
    lines
}

#[test]
fn merged_shards_equal_the_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let mut a = STUDY.to_vec();
    a.extend(["--out", whole.to_str().unwrap()]);
    ok(&mnq(&a));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(whole.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["attribution"][0]["attribution"]["images"], 17, "--attr-images 17");
    let md = std::fs::read_to_string(whole.join("attribution_8b.md")).unwrap();
    assert!(md.contains("the first 17 of the 30 evaluation images (`--attr-images 17`)"), "{md}");
    // 3 shards: the histogram images (first 4 of the split) straddle shards 1 and 2. 4 shards:
    // uneven slices (10 sensitivity images: 2, 3, 2, 3).
    for n in [3usize, 4] {
        let work = dir.path().join(format!("work{n}"));
        let out = dir.path().join(format!("merged{n}"));
        let lines = shard_study(&work, &out, n, &[]);
        assert!(lines[0].contains("stage 1 of 2"), "{}", lines[0]);
        assert!(lines[2 * n - 1].contains("stage 2 of 2"), "{}", lines[2 * n - 1]);
        let s = ok(&mnq(&["merge", "--quiet", "--work", work.to_str().unwrap(), "--out", out.to_str().unwrap()]));
        assert!(s.contains("wrote"), "{s}");
        assert_eq!(files(&whole), files(&out), "{n} shards: other files");
        for f in files(&whole) {
            assert!(normalised(&whole, &f) == normalised(&out, &f), "{n} shards: {f} differs from the single run's");
        }
    }
}

#[test]
fn shard_misuse_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let (work, out) = (dir.path().join("work"), dir.path().join("out"));
    let w = work.to_str().unwrap();
    // Merge before any shard ran: no options record.
    let o = mnq(&["merge", "--work", w, "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("options.json"), "{}", String::from_utf8_lossy(&o.stderr));
    // Stage 1 of shard 1 only, then a merge: the missing shards are named.
    let mut a = STUDY.to_vec();
    a.extend(["--out", out.to_str().unwrap(), "--shard", "1/2", "--work", w]);
    assert!(ok(&mnq(&a)).contains("stage 1 of 2"));
    let o = mnq(&["merge", "--work", w, "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("shards 2 of 2") && err.contains("--shard K/2"), "{err}");
    assert!(!out.exists(), "a failed merge left a report");
    // A shard with other options, or another shard count, in the same work folder.
    for (flag, value, named) in [("--images", "20", "images"), ("--shard", "2/3", "shards 3")] {
        let mut a = STUDY.to_vec();
        a.extend(["--out", out.to_str().unwrap(), "--work", w]);
        if flag == "--shard" {
            a.extend([flag, value]);
        } else {
            a.retain(|x| *x != "30" && *x != "--images");
            a.extend([flag, value, "--shard", "2/2"]);
        }
        let o = mnq(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("other options") && err.contains(named), "{flag} {value}: {err}");
    }
    // Malformed specs and a shard without a work folder.
    for bad in ["0/2", "3/2", "x"] {
        let mut a = STUDY.to_vec();
        a.extend(["--shard", bad, "--work", w]);
        let o = mnq(&a);
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("K/N"), "{bad}");
    }
    let mut a = STUDY.to_vec();
    a.extend(["--shard", "1/2"]);
    assert!(!mnq(&a).status.success());
}
