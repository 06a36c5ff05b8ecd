//! Single-thread throughput of every unit in Integer mode on DeiT-shaped data:
//! softmax rows of 197 tokens (6 heads × 197 queries), GELU 197×768, LayerNorm 197×384.
//! Run: `cargo bench --bench units` (`MNQ_BENCH_PER_CALL=1`: the median of single calls, see
//! [`median_call`]).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mnq::sensitivity::{sample, Dist};
use mnq::units::{self, float, Mode, Preset};
use std::time::{Duration, Instant};

/// `iters` times the median time of one call of `f`: with `MNQ_BENCH_PER_CALL=1` each sample
/// times every call alone and reports its median (as `sim/bench_torch_units.py` times PyTorch),
/// so that on a loaded machine a call preempted by another process does not count.
fn median_call<T>(iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let mut t: Vec<Duration> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            black_box(f());
            t0.elapsed()
        })
        .collect();
    t.sort_unstable();
    t[t.len() / 2] * u32::try_from(iters).unwrap_or(u32::MAX)
}

fn bench_units(c: &mut Criterion) {
    let per_call = std::env::var("MNQ_BENCH_PER_CALL").is_ok_and(|v| v == "1");
    let mut g = c.benchmark_group("units");
    for name in units::unit_names() {
        let unit = units::build(name, Preset::Reference).unwrap();
        let Some(dist) = Dist::for_op(unit.op()) else { continue };
        let rows = match dist {
            Dist::Attention => 6 * 197,
            _ => 197,
        };
        let s = sample(unit.as_ref(), 8, dist, rows, 1).unwrap();
        g.throughput(Throughput::Elements(s.q.data().len() as u64));
        for preset in [Preset::Reference, Preset::Adapted] {
            let unit = units::build(name, preset).unwrap();
            g.bench_function(format!("{name}/{preset}/integer"), |b| {
                let run = || black_box(unit.run(black_box(&s.q), &s.aux, Mode::Integer).unwrap());
                if per_call {
                    b.iter_custom(|iters| median_call(iters, run))
                } else {
                    b.iter(run)
                }
            });
        }
        if name == "softmax_ivit" {
            let x = s.x.clone();
            g.bench_function("softmax_float64/rust", |b| b.iter(|| black_box(float::softmax(black_box(&x), 197))));
        }
    }
    g.finish();
}

criterion_group!(benches, bench_units);
criterion_main!(benches);
