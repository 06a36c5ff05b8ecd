//! Cycle-model speed in clock cycles per second, to compare with Verilator's figure printed
//! by `mnq cosim`. Run: `cargo bench --bench cycle`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mnq::cosim::{sessions, CosimOptions};
use mnq::cycle;
use mnq::units::Preset;

fn bench_cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("cycle");
    for cfg in mnq::hdl::default_set() {
        let opts = CosimOptions {
            elements: 20_000,
            seed: 1,
            p_valid: 0.8,
            p_ready: 0.8,
            preset: Preset::Adapted,
            rtl_dir: "rtl".into(),
            work_dir: "target/cosim".into(),
            vcd: None,
        };
        let st = sessions(&cfg, &opts).unwrap().remove(0).stim;
        let cycles = cycle::run(cycle::model(&cfg).as_mut(), &st, st.beats.len(), u64::MAX).cycles;
        g.throughput(Throughput::Elements(cycles));
        g.bench_function(format!("{}/cycles", cfg.name()), |b| {
            b.iter(|| black_box(cycle::run(cycle::model(black_box(&cfg)).as_mut(), &st, st.beats.len(), u64::MAX)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_cycle);
criterion_main!(benches);
