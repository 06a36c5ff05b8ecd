//! Integer forward of a DeiT-Tiny-shaped model (dim 192, depth 12, 3 heads, 224×224 patch 16
//! = 197 tokens + distillation token, random weights), single method I-ViT at 8 bits:
//! images/s on 1 thread (one image at a time) and on 2 threads (a batch of 8 across a 2-thread
//! pool), plus the float f32 forward for comparison. Prints the process's peak resident memory
//! (VmHWM) at the end. `cargo bench --bench model`.
//!
//! `MNQ_BENCH_MODEL=DIR` runs the same benchmarks on an exported model directory (random
//! pixels as images) instead of the random DeiT-Tiny; `sim/bench_torch.py` uses it.
//!
//! `MNQ_CPU_TIME=48 cargo bench --bench model` instead times 48 forwards per method with the
//! thread's and the process's CPU time next to wall time (on a shared machine other processes
//! inflate wall time but hardly CPU time), on 1 thread and on a 2-thread pool, and prints the
//! peak memory of that run alone.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use mnq::model::manifest::InputNorm;
use mnq::model::quant::ActScales;
use mnq::model::{calibrate, write_random_model, Assignment, CalibOptions, Images, IntModel, Manifest, Model, QuantConfig};
use mnq::units::{Method, Preset};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The allocator the `mnq` command uses, so these figures are the command's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn deit_tiny() -> Manifest {
    Manifest {
        format: 1,
        name: "deit_tiny_random".into(),
        arch: "deit".into(),
        img_size: 224,
        in_chans: 3,
        patch_size: 16,
        embed_dim: 192,
        depth: 12,
        num_heads: 3,
        mlp_ratio: 4.0,
        num_classes: 1000,
        layer_scale: false,
        ln_eps: 1e-6,
        input: InputNorm { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] },
        labels: None,
        source: Some("random weights (benches/model.rs)".into()),
        swin: None,
        quant: None,
        extra: BTreeMap::new(),
    }
}

struct Setup {
    model: Model,
    qm: IntModel,
    scales: ActScales,
    images: Vec<Vec<f32>>,
    all: Images,
}

fn setup() -> Setup {
    setup_n(8)
}

fn setup_n(n: usize) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    // MNQ_BENCH_MODEL=DIR times an exported model (sim/bench_torch.py passes timm's) instead.
    let model = match std::env::var("MNQ_BENCH_MODEL") {
        Ok(d) => Model::load(std::path::Path::new(&d)).unwrap_or_else(|e| panic!("MNQ_BENCH_MODEL={d}: {e}")),
        Err(_) => {
            write_random_model(dir.path(), &deit_tiny(), 7).expect("write model");
            Model::load(dir.path()).expect("load model")
        }
    };
    let m = model.manifest.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let px: Vec<u8> = (0..n * m.image_len()).map(|_| rng.gen()).collect();
    let arr = ndarray::Array4::from_shape_vec([n, m.in_chans, m.img_size, m.img_size], px).expect("shape");
    let p = dir.path().join("imgs.npy");
    ndarray_npy::write_npy(&p, &arr).expect("write images");
    let imgs = Images::load_npy(&p, &m).expect("images");
    let mut calib = imgs.clone();
    calib.truncate(4);
    let q =
        calibrate(&model, &calib, &CalibOptions { weight_bits: 8, act_bits: 8, percentile: None, mse: false }, &|| {}).expect("calibrate");
    let units = Assignment::single(&model.layers, &m.name, 8, Method::IVit).resolve(&model.layers, "bench").expect("assignment");
    let scales = ActScales::from_section(&q, 8, &model.graph);
    let qm =
        IntModel::new(&model, &scales, QuantConfig { weight_bits: 8, act_bits: 8, preset: Preset::Adapted, units }).expect("integer model");
    let images = (0..n).map(|i| imgs.image(i)).collect();
    Setup { model, qm, scales, images, all: imgs }
}

/// The exact i16 GEMM alone on DeiT-Tiny's shapes (qkv 197×192→576, fc2 197×768→192).
fn bench_gemm(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut g = c.benchmark_group("gemm_i16");
    for &(t, k, n) in &[(197usize, 192usize, 576usize), (197, 768, 192)] {
        let x: Vec<i16> = (0..t * k).map(|_| rng.gen_range(-128..128)).collect();
        let w: Vec<i16> = (0..n * k).map(|_| rng.gen_range(-128..128)).collect();
        let p = mnq::model::gemm::Packed::new(&w, n, k);
        let mut out = vec![0i32; t * n];
        g.throughput(Throughput::Elements((t * k * n) as u64));
        g.bench_function(format!("{t}x{k}x{n}"), |b| b.iter(|| mnq::model::gemm::gemm_i16(&x, t, &p, &mut out)));
        // Each kernel path this CPU runs, to show what the one `gemm_i16` picks buys.
        for path in ["scalar", "avx2", "avx512vnni"] {
            if mnq::model::gemm::gemm_path(path, &x, t, &p, &mut out).is_some() {
                g.bench_function(format!("{t}x{k}x{n}/{path}"), |b| b.iter(|| mnq::model::gemm::gemm_path(path, &x, t, &p, &mut out)));
            }
        }
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("deit_tiny_forward");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("integer_ivit8", "1_thread"), |b| {
        b.iter(|| s.qm.forward(&s.images[0], None).expect("forward"));
    });
    g.bench_function(BenchmarkId::new("float_f32", "1_thread"), |b| {
        b.iter(|| s.model.forward_float::<f32>(&s.images[0], None));
    });
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    g.throughput(Throughput::Elements(s.images.len() as u64));
    g.bench_function(BenchmarkId::new("integer_ivit8", "2_threads_batch8"), |b| {
        b.iter(|| pool.install(|| s.images.par_iter().map(|im| s.qm.forward(im, None).expect("forward").top1()).collect::<Vec<_>>()));
    });
    g.finish();
    for m in [Method::IBert, Method::FqVit] {
        let units = Assignment::single(&s.model.layers, "x", 8, m).resolve(&s.model.layers, "bench").expect("assignment");
        let cfg = QuantConfig { units, ..s.qm.config.clone() };
        let qm = IntModel::new(&s.model, &s.scales, cfg).expect("integer model");
        c.bench_function(&format!("deit_tiny_forward/integer_{}8/1_thread", m.name()), |b| {
            b.iter(|| qm.forward(&s.images[0], None).expect("forward"));
        });
    }
}

fn peak_rss() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
}

/// CPU time (user + system) of the calling thread in seconds, from /proc (10 ms ticks).
fn thread_cpu_s() -> Option<f64> {
    cpu_s("/proc/thread-self/stat")
}

/// CPU time (user + system) of the whole process (all threads) in seconds.
fn process_cpu_s() -> Option<f64> {
    cpu_s("/proc/self/stat")
}

fn cpu_s(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// With `MNQ_CPU_TIME=N`: the thread CPU time per integer forward over N forwards, a figure that
/// other processes on a shared machine disturb much less than wall time.
fn cpu_time_report() {
    let Some(n) = std::env::var("MNQ_CPU_TIME").ok().and_then(|v| v.parse::<usize>().ok()) else {
        return;
    };
    let s = setup();
    for m in [Method::IVit, Method::IBert, Method::FqVit] {
        let units = Assignment::single(&s.model.layers, "x", 8, m).resolve(&s.model.layers, "bench").expect("assignment");
        let qm = IntModel::new(&s.model, &s.scales, QuantConfig { units, ..s.qm.config.clone() }).expect("integer model");
        qm.forward(&s.images[0], None).expect("forward");
        let (c0, w0) = (thread_cpu_s(), std::time::Instant::now());
        for i in 0..n {
            qm.forward(&s.images[i % s.images.len()], None).expect("forward");
        }
        let wall = w0.elapsed().as_secs_f64();
        if let (Some(a), Some(b)) = (c0, thread_cpu_s()) {
            println!(
                "integer_{}8 1 thread: {:.1} ms CPU per image, {:.1} ms wall per image ({n} images)",
                m.name(),
                1e3 * (b - a) / n as f64,
                1e3 * wall / n as f64
            );
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let batches = n.div_ceil(s.images.len());
        let (c0, w0) = (process_cpu_s(), std::time::Instant::now());
        for _ in 0..batches {
            pool.install(|| s.images.par_iter().for_each(|im| drop(qm.forward(im, None).expect("forward"))));
        }
        let (wall, imgs) = (w0.elapsed().as_secs_f64(), (batches * s.images.len()) as f64);
        if let (Some(a), Some(b)) = (c0, process_cpu_s()) {
            println!(
                "integer_{}8 2 threads, batches of {}: {:.1} ms wall per image, {:.1} ms CPU per image ({} images)",
                m.name(),
                s.images.len(),
                1e3 * wall / imgs,
                1e3 * (b - a) / imgs,
                imgs
            );
        }
    }
    let (c0, w0) = (thread_cpu_s(), std::time::Instant::now());
    for i in 0..n / 4 {
        s.model.forward_float::<f32>(&s.images[i % s.images.len()], None);
    }
    if let (Some(a), Some(b)) = (c0, thread_cpu_s()) {
        let k = (n / 4).max(1) as f64;
        println!(
            "float_f32 (mnq) 1 thread: {:.1} ms CPU, {:.1} ms wall per image",
            1e3 * (b - a) / k,
            1e3 * w0.elapsed().as_secs_f64() / k
        );
    }
}

/// The sensitivity analysis of `mnq run` (issue goal: under 2 minutes on 2 cores): the float
/// model once beside the three single-method integer models, every tap into the ASQNRs, over
/// 32 images on the default (all-core) rayon pool.
fn bench_sensitivity(c: &mut Criterion) {
    let s = setup_n(32);
    let models: Vec<IntModel> = [Method::IBert, Method::FqVit, Method::IVit]
        .into_iter()
        .map(|m| {
            let units = Assignment::single(&s.model.layers, "x", 8, m).resolve(&s.model.layers, "bench").expect("assignment");
            IntModel::new(&s.model, &s.scales, QuantConfig { units, ..s.qm.config.clone() }).expect("integer model")
        })
        .collect();
    let bar = indicatif::ProgressBar::hidden();
    let mut g = c.benchmark_group("sensitivity_pass");
    g.sample_size(10);
    g.throughput(Throughput::Elements(s.all.len() as u64));
    g.bench_function("deit_tiny_32_images_float_and_3_methods", |b| {
        b.iter(|| mnq::study::sensitivity(&s.model, &models.iter().collect::<Vec<_>>(), &s.all, 0, &bar).expect("sensitivity"))
    });
    g.finish();
}

/// The layer-level attribution's integer variants (the base model, every layer exact alone,
/// each op kind exact, all exact) on one image, one thread: each model run on its own against
/// one prefix-shared run (`forward_shared`, the way `mnq run` evaluates them).
fn bench_shared(c: &mut Criterion) {
    let s = setup_n(1);
    let base = s.qm.config.units.clone();
    let qms: Vec<IntModel> = mnq::model::attribution::variants(&s.model.layers, &base, true)
        .into_iter()
        .filter(|v| v.kind != mnq::model::attribution::VariantKind::UnitsOnly)
        .map(|v| IntModel::new(&s.model, &s.scales, QuantConfig { units: v.units, ..s.qm.config.clone() }).expect("integer model"))
        .collect();
    let refs: Vec<&IntModel> = qms.iter().collect();
    let mut g = c.benchmark_group(format!("attribution_variants_{}", qms.len()));
    g.sample_size(10);
    g.bench_function("independent", |b| {
        b.iter(|| refs.iter().map(|q| q.forward(&s.images[0], None).expect("forward")).collect::<Vec<_>>())
    });
    g.bench_function("prefix_shared", |b| b.iter(|| mnq::model::forward_shared(&refs, &s.images[0]).expect("forward")));
    g.finish();
}

criterion_group!(benches, bench_gemm, bench, bench_sensitivity, bench_shared);

fn main() {
    cpu_time_report();
    if std::env::var("MNQ_CPU_TIME").is_ok() {
        if let Some(p) = peak_rss() {
            println!("peak resident memory (VmHWM): {p}");
        }
        return;
    }
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
    if let Some(p) = peak_rss() {
        println!("peak resident memory of this benchmark process (VmHWM): {p}");
    }
}
