//! Reference mode against Integer mode: where the pure-integer datapath differs from the
//! float64 replay of the published code, how often and by how many LSB, on the golden inputs
//! and on random inputs. The figures are printed (run with `--nocapture`) and bounded here.

mod common;

use common::{golden_dir, ln_aux, random_tensor, rng};
use mnq::fixed::{QTensor, Scale};
use mnq::units::{self, Aux, Mode, Preset};
use rand::Rng;

/// (differing outputs, total outputs, largest difference in LSB)
fn diff(unit: &dyn units::Unit, x: &QTensor, aux: &Aux) -> (usize, usize, i64) {
    let a = unit.run(x, aux, Mode::Reference).unwrap();
    let b = unit.run(x, aux, Mode::Integer).unwrap();
    assert_eq!(a.scale, b.scale, "{}: output scale differs between modes", unit.name());
    let mut n = 0;
    let mut worst = 0;
    for (p, q) in a.values.iter().zip(&b.values) {
        if p != q {
            n += 1;
            worst = worst.max((p - q).abs());
        }
    }
    (n, a.values.len(), worst)
}

fn random_case(name: &str, r: &mut impl Rng) -> (QTensor, Aux) {
    match name {
        "softmax_ibert" | "softmax_ivit" | "softmax_fqvit" => {
            let bits = r.gen_range(4..=16);
            let s = r.gen_range(0.005..0.6) * 8.0 / (1u64 << (bits - 1)) as f64 * 16.0;
            let c = r.gen_range(1..=256);
            (random_tensor(r, 4, c, bits, f64::from(s as f32)), Aux::default())
        }
        "gelu_ibert" | "gelu_ivit" => {
            let bits = r.gen_range(4..=16);
            let s = 8.0 / ((1u64 << (bits - 1)) - 1) as f64 * r.gen_range(0.5..2.0);
            let c = r.gen_range(1..=256);
            (random_tensor(r, 4, c, bits, f64::from(s as f32)), Aux::default())
        }
        "layernorm_ibert" | "layernorm_ivit" => {
            let bits = r.gen_range(4..=22);
            let c = r.gen_range(2..=512);
            (random_tensor(r, 4, c, bits, 0.01), ln_aux(r, c))
        }
        "layernorm_fqvit" => {
            let bits = r.gen_range(4..=8u32);
            let c = r.gen_range(2..=512);
            let top = (1i64 << bits) - 1;
            let zp = r.gen_range(0..=top);
            let base = r.gen_range(0.01f64..0.2);
            let scales: Vec<f64> = (0..c).map(|_| f64::from((base * 2f64.powi(r.gen_range(0..4))) as f32)).collect();
            let q = (0..4 * c).map(|_| r.gen_range(0..=top)).collect();
            let x = QTensor::new(q, &[4, c], Scale::PerChannel(scales), bits, false).unwrap();
            let mut aux = ln_aux(r, c);
            aux.zero_point = zp;
            aux.out_scale = Some(Scale::PerTensor(f64::from(r.gen_range(0.005f32..0.05))));
            (x, aux)
        }
        "requant_ivit" | "requant_ibert" => {
            let bits = r.gen_range(8..=32);
            let s = f64::from(r.gen_range(1e-6f32..1e-3));
            let x = random_tensor(r, 4, 64, bits, s);
            let aux = Aux { out_scale: Some(Scale::PerTensor(f64::from(r.gen_range(0.01f32..0.1)))), ..Aux::default() };
            (x, aux)
        }
        "log2quant_fqvit" => {
            let q = (0..256).map(|_| r.gen_range(0..=32768)).collect();
            (QTensor::new(q, &[256], Scale::PerTensor(2f64.powi(-15)), 17, false).unwrap(), Aux::default())
        }
        _ => unreachable!("{name}"),
    }
}

#[test]
fn integer_mode_on_golden_inputs() {
    // kernels.md §4: every unit but the PTF LayerNorm (float statistics) and the float-path
    // log2 quantiser (libm log2f) reproduces runs.f64 in Integer mode too.
    let mut lines = Vec::new();
    for f in mnq::golden::case_files(&golden_dir()).unwrap() {
        let r = mnq::golden::run_file_mode(&f, Mode::Integer).unwrap();
        lines.push(r.line());
        match r.unit.as_str() {
            "layernorm_fqvit" => assert!(r.mismatches * 100 <= r.outputs, "{}", r.line()),
            "log2quant_fqvit" => assert!(r.mismatches <= 16, "{}", r.line()),
            _ => assert!(r.exact(), "Integer mode: {}", r.line()),
        }
    }
    println!("{}", lines.join("\n"));
}

#[test]
fn random_inputs_reference_vs_integer() {
    let mut r = rng(7);
    let mut report = Vec::new();
    for name in units::unit_names() {
        for preset in [Preset::Reference, Preset::Adapted] {
            let unit = units::build(name, preset).unwrap();
            let (mut n, mut total, mut worst) = (0, 0, 0);
            for _ in 0..200 {
                let (x, aux) = random_case(name, &mut r);
                let (a, b, c) = diff(unit.as_ref(), &x, &aux);
                n += a;
                total += b;
                worst = worst.max(c);
            }
            report.push(format!("{name:<16} {preset:<9} {n:>6} of {total:>7} outputs differ, max {worst} LSB"));
            // Bounds: exact units agree everywhere; the others differ by rounding only.
            match name {
                "softmax_ivit" | "gelu_ivit" | "layernorm_ivit" | "gelu_ibert" | "softmax_fqvit" => {
                    assert_eq!(n, 0, "{name} ({preset}): Integer mode must equal Reference mode")
                }
                "layernorm_ibert" => assert_eq!(n, 0, "{name}: isqrt equals floor(sqrt) below 2^50"),
                "requant_ivit" | "requant_ibert" => assert!(worst <= 1 && n * 1000 <= total, "{name}: {n}/{total}, {worst} LSB"),
                "softmax_ibert" => assert!(worst <= 1 && n * 100 <= total, "{name}: {n}/{total}, {worst} LSB"),
                "layernorm_fqvit" => assert!(worst <= 3 && n * 100 <= total, "{name}: {n}/{total}, {worst} LSB"),
                "log2quant_fqvit" => assert!(worst <= 1 && n * 100 <= total, "{name}: {n}/{total}"),
                _ => unreachable!(),
            }
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn softmax_ibert_requantiser_stress() {
    // kernels.md §1.2: the reference's float64 16-bit requantiser differs from a rational
    // one in ~7e-5 of outputs; measure how the dyadic hardware requantiser compares.
    let mut r = rng(11);
    let unit = units::build("softmax_ibert", Preset::Reference).unwrap();
    let (mut n, mut total, mut worst) = (0, 0, 0);
    for _ in 0..300 {
        let bits = 8;
        let s = f64::from(r.gen_range(0.02f32..0.3));
        let x = random_tensor(&mut r, 8, 197, bits, s);
        let (a, b, c) = diff(unit.as_ref(), &x, &Aux::default());
        n += a;
        total += b;
        worst = worst.max(c);
    }
    println!("softmax_ibert stress: {n} of {total} outputs differ between Reference and Integer mode, max {worst} LSB");
    assert!(worst <= 1 && n * 1000 <= total);
}
