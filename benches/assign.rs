//! Exact assignment optimiser and Pareto fronts on 49-layer instances (12 blocks × {norm1,
//! softmax, norm2, GELU} + final norm, DeiT-Tiny shapes). Costs are synthetic but shaped like
//! the real ones: one area per unit type, latency = rows × ⌈row length / lanes⌉ + a per-row
//! overhead, so that all blocks cost the same and only the criterion differs per layer.
//! * `m3`: 3 methods per op (9 unit types, 3 candidates per layer);
//! * `v10`: 10 variants per op (3 methods × lanes 1, 2, 4, plus one; 30 types, 10 candidates);
//! * `rand`: 3 candidates per layer with independent random latencies per layer (worst case
//!   for the latency fronts).
//!
//! Run: `cargo bench --bench assign`. Front sizes are printed once to stderr.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mnq::sensitivity::assign::{optimise, pareto, Arch, Axis, Budget, Choice, Layer, Problem, Sense};
use rand::{Rng, SeedableRng};
use std::time::Duration;

const D: u64 = 192;
const T: u64 = 197;
const HEADS: u64 = 3;

/// (op, rows per image, row length) of the 49 non-linear layers of DeiT-Tiny.
fn layers() -> Vec<(&'static str, String, u64, u64)> {
    let mut v = Vec::new();
    for b in 0..12 {
        v.push(("layernorm", format!("blocks.{b}.norm1"), T, D));
        v.push(("softmax", format!("blocks.{b}.attn.softmax"), HEADS * T, T));
        v.push(("layernorm", format!("blocks.{b}.norm2"), T, D));
        v.push(("gelu", format!("blocks.{b}.mlp.act"), T, 4 * D));
    }
    v.push(("layernorm", "norm".into(), T, D));
    v
}

/// Unit variants of an op: (name, area, lanes, per-row overhead).
fn variants(op: &str, per_op: usize) -> Vec<(String, f64, u64, u64)> {
    let methods = [("ibert", 1.0, 40), ("ivit", 0.7, 34), ("fqvit", 0.5, 12)];
    let base = match op {
        "softmax" => 9000.0,
        "gelu" => 3000.0,
        _ => 7000.0,
    };
    let mut v = Vec::new();
    for lanes in [1u64, 2, 4, 8] {
        for (m, f, ovh) in methods {
            if v.len() < per_op {
                v.push((format!("{op}_{m}_l{lanes}"), (base * f * (0.4 + 0.6 * lanes as f64)).round(), lanes, ovh));
            }
        }
    }
    v
}

fn instance(per_op: usize, random_latency: bool, seed: u64) -> Problem {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let layers = layers()
        .into_iter()
        .map(|(op, name, rows, len)| Layer {
            name,
            options: variants(op, per_op)
                .into_iter()
                .map(|(unit, area, lanes, ovh)| {
                    let latency = if random_latency { rng.gen_range(10_000..200_000) } else { rows * (len.div_ceil(lanes) + ovh) };
                    Choice { unit, criterion: rng.gen_range(-12.0..4.0), area, latency }
                })
                .collect(),
        })
        .collect();
    Problem { criterion: "synthetic SQNR diff (dB)".into(), sense: Sense::Minimise, layers }
}

/// Budgets halfway between the cheapest and the most accurate assignment.
fn budget(p: &Problem, arch: Arch) -> Budget {
    let free = optimise(p, arch, &Budget::none()).unwrap();
    let a = pareto(p, arch, Axis::Area, &Budget::none()).unwrap();
    let l = pareto(p, arch, Axis::Latency, &Budget::none()).unwrap();
    Budget { area: Some((a[0].area + free.area) / 2.0), latency: Some((l[0].latency + free.latency) / 2) }
}

fn bench_assign(c: &mut Criterion) {
    let mut g = c.benchmark_group("assign");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (tag, p) in [("m3", instance(3, false, 1)), ("v10", instance(10, false, 2)), ("rand", instance(3, true, 3))] {
        for arch in [Arch::Shared, Arch::Dataflow] {
            let b = budget(&p, arch);
            let area_only = Budget { latency: None, ..b };
            let lat_only = Budget { area: None, ..b };
            let fa = pareto(&p, arch, Axis::Area, &Budget::none()).unwrap().len();
            let fl = pareto(&p, arch, Axis::Latency, &Budget::none()).unwrap().len();
            eprintln!("{tag}/{arch}: area front {fa} points, latency front {fl} points, budget {b:?}");
            g.bench_function(format!("{tag}/{arch}/optimise_area"), |x| x.iter(|| black_box(optimise(&p, arch, &area_only).unwrap())));
            g.bench_function(format!("{tag}/{arch}/optimise_latency"), |x| x.iter(|| black_box(optimise(&p, arch, &lat_only).unwrap())));
            g.bench_function(format!("{tag}/{arch}/optimise_both"), |x| x.iter(|| black_box(optimise(&p, arch, &b).unwrap())));
            g.bench_function(format!("{tag}/{arch}/pareto_area"), |x| {
                x.iter(|| black_box(pareto(&p, arch, Axis::Area, &Budget::none()).unwrap()))
            });
            g.bench_function(format!("{tag}/{arch}/pareto_latency"), |x| {
                x.iter(|| black_box(pareto(&p, arch, Axis::Latency, &Budget::none()).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_assign);
criterion_main!(benches);
