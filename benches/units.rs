//! Single-thread throughput of every unit in Integer mode on DeiT-shaped data:
//! softmax rows of 197 tokens (6 heads × 197 queries), GELU 197×768, LayerNorm 197×384.
//! Run: `cargo bench --bench units`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mnq::sensitivity::{sample, Dist};
use mnq::units::{self, float, Mode, Preset};

fn bench_units(c: &mut Criterion) {
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
                b.iter(|| black_box(unit.run(black_box(&s.q), &s.aux, Mode::Integer).unwrap()))
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
