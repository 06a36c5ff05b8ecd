//! Exhaustive tests over every 8-bit input code for the element-wise parts.

use mnq::fixed::{QTensor, Scale};
use mnq::units::{self, float, fqvit, Aux, Mode, Preset};

fn codes8(scale: f64) -> QTensor {
    QTensor::new((-128..=127).collect(), &[1, 256], Scale::PerTensor(scale), 8, true).unwrap()
}

#[test]
fn gelu_every_8bit_code() {
    let s = f64::from((8.0f64 / 127.0) as f32);
    let x = codes8(s);
    // (unit, preset, max |error| against exact-erf GELU over all 256 codes, measured)
    for (name, preset, bound) in
        [("gelu_ibert", Preset::Adapted, 0.06), ("gelu_ivit", Preset::Adapted, 0.16), ("gelu_ivit", Preset::Reference, 0.35)]
    {
        let unit = units::build(name, preset).unwrap();
        for mode in [Mode::Reference, Mode::Integer] {
            let out = unit.run(&x, &Aux::default(), mode).unwrap();
            let y = out.dequantize();
            let worst = (0..256).map(|i| (y[i] - float::gelu(x.data()[i] as f64 * s)).abs()).fold(0.0, f64::max);
            assert!(worst <= bound, "{name} {preset} {mode:?}: max error {worst} over all 8-bit codes");
            // Element-wise units: monotone non-decreasing from x = 0 up.
            if preset == Preset::Adapted && name == "gelu_ibert" {
                for i in 128..255 {
                    assert!(y[i + 1] >= y[i], "{name}: gelu({}) < gelu({})", x.data()[i + 1], x.data()[i]);
                }
            }
        }
    }
    // The reference I-BERT i-GELU at 8 bits: erf collapses to {-1, 0} (kernels.md §1.1).
    let unit = units::build("gelu_ibert", Preset::Reference).unwrap();
    let out = unit.run(&x, &Aux::default(), Mode::Integer).unwrap();
    let y = out.dequantize();
    let worst = (0..256).map(|i| (y[i] - float::gelu(x.data()[i] as f64 * s)).abs()).fold(0.0, f64::max);
    assert!(worst > 10.0, "the reference i-GELU breakage at 8 bits is expected (max error {worst})");
}

#[test]
fn exponentials_monotone_over_every_8bit_difference() {
    // Softmax exponentials depend only on d = max − q ∈ [0, 255]: one-hot rows probe each d.
    for s in [0.02f64, 0.06, 0.11, 0.3, 0.9] {
        for name in ["softmax_ibert", "softmax_ivit", "softmax_fqvit"] {
            for preset in [Preset::Reference, Preset::Adapted] {
                let unit = units::build(name, preset).unwrap();
                // Row: 127 followed by every code: outputs must be non-increasing in d.
                let mut q = vec![127i64];
                q.extend((-128..=126).rev());
                let x = QTensor::new(q.clone(), &[1, q.len()], Scale::PerTensor(f64::from(s as f32)), 8, true).unwrap();
                let out = unit.run(&x, &Aux::default(), Mode::Integer).unwrap();
                let p = out.dequantize();
                for i in 1..p.len() - 1 {
                    assert!(p[i + 1] <= p[i], "{name} {preset} s={s}: p(q={}) = {} > p(q={}) = {}", q[i + 1], p[i + 1], q[i], p[i]);
                }
            }
        }
    }
}

#[test]
fn requantiser_modes_agree_on_every_16bit_input() {
    let z: Vec<i64> = (-32768..=32767).collect();
    for (s_in, s_out) in [(3.1e-4f32, 7.6e-4f32), (2.9e-5, 0.052), (0.01, 0.0123), (1.7e-3, 0.31)] {
        let x = QTensor::new(z.clone(), &[1, z.len()], Scale::PerTensor(f64::from(s_in)), 16, true).unwrap();
        let aux = Aux { out_scale: Some(Scale::PerTensor(f64::from(s_out))), ..Aux::default() };
        for name in ["requant_ivit", "requant_ibert"] {
            let unit = units::build(name, Preset::Reference).unwrap();
            let a = unit.run(&x, &aux, Mode::Reference).unwrap();
            let b = unit.run(&x, &aux, Mode::Integer).unwrap();
            assert_eq!(a.values, b.values, "{name} s_in={s_in} s_out={s_out}");
            // And the dyadic result is within half an LSB (+ the multiplier's 2^-31 error) of the real ratio.
            let ratio = f64::from(s_in) / f64::from(s_out);
            for (zi, o) in z.iter().zip(&b.values) {
                let exact = *zi as f64 * ratio;
                if exact.abs() < 127.0 {
                    assert!((*o as f64 - exact).abs() <= 0.5 + exact.abs() * 1e-9 + 1e-9, "{name}: z={zi} -> {o}, exact {exact}");
                }
            }
        }
    }
}

#[test]
fn log2_quantiser_every_16bit_probability() {
    // p = q / 2^15 for every q: the exact integer quantiser against float64 log2 away from the
    // √2 boundaries, and against the reference's binary32 log2f.
    let mut differ_f32 = 0;
    for q in 1u64..=32768 {
        let exact = fqvit::log2_round_exact(q, 15);
        let p = q as f64 / 32768.0;
        let l = -p.log2();
        if (l - l.floor() - 0.5).abs() > 1e-9 {
            assert_eq!(exact, l.round() as i64, "q = {q}");
        }
        let (code, zero) = fqvit::log2_quant_f32(&[p as f32], 4)[0];
        let ex = fqvit::log2_quant_exact(p as f32, 4);
        if (code, zero) != ex {
            differ_f32 += 1;
        }
    }
    println!("log2 quantiser: {differ_f32} of 32768 16-bit probabilities differ between log2f and exact rounding");
    assert!(differ_f32 <= 16);
}

#[test]
fn log_round_every_16bit_integer() {
    for v in 1u128..=65536 {
        let p = (v as f64).log2().floor();
        let want = if v as f64 - 2f64.powf(p) >= 2f64.powf(p - 1.0) { p + 1.0 } else { p };
        assert_eq!(fqvit::log_round(v), want as u32, "v = {v}");
    }
}
