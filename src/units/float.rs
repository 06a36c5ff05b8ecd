//! Exact float64 references of the three operations, the yardstick of every error figure.

/// Softmax over each row of `x` (rows of length `c`), max-subtracted.
pub fn softmax(x: &[f64], c: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(c) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

/// GELU with the exact error function: `x · (1 + erf(x/√2)) / 2`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// LayerNorm over each row: `(x − mean) / sqrt(var + eps) · γ + β` (biased variance, as PyTorch).
pub fn layernorm(x: &[f64], c: usize, gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(c) {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps).sqrt();
        out.extend(row.iter().enumerate().map(|(i, v)| (v - mean) * inv * gamma[i] + beta[i]));
    }
    out
}

/// Fraction bits of the exact softmax's output integers: probabilities at `2^−15`, finer than
/// any unit's output, so the attribution baseline adds no output quantisation of its own.
pub const EXACT_SOFTMAX_FRAC: u32 = 15;

/// An operation computed in float64 on the dequantised input, for error attribution: the
/// integer model with this in place of a unit has only the linear quantisation left on that
/// layer. Softmax honours the mask (a masked element gets exactly 0) and outputs integers at
/// `2^−15`; GELU and LayerNorm (with `gamma`, `beta`, `eps`) output integers at a per-tensor
/// scale of `max|y| / 2^30`, so the next requantiser sees a 31-bit value as from a unit.
pub fn exact_output(op: super::Op, x: &crate::fixed::QTensor, aux: &super::Aux, eps: f64) -> Result<super::UnitOutput, String> {
    use super::{Encoding, Op, UnitOutput};
    use crate::fixed::Scale;
    let shape = x.q.shape().to_vec();
    let c = *shape.last().unwrap_or(&1);
    let xv = x.dequantize();
    let (y, scale) = match op {
        Op::Softmax => {
            let mask = aux.mask.as_deref();
            if mask.is_some_and(|m| m.len() != xv.len()) {
                return Err(format!("the mask has {} flags for {} inputs", mask.map_or(0, |m| m.len()), xv.len()));
            }
            let mut p = Vec::with_capacity(xv.len());
            for (r, row) in xv.chunks_exact(c.max(1)).enumerate() {
                let keep = |i: usize| mask.is_none_or(|m| !m[r * c + i]);
                let mx = (0..row.len()).filter(|&i| keep(i)).map(|i| row[i]).fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = (0..row.len()).map(|i| if keep(i) { (row[i] - mx).exp() } else { 0.0 }).collect();
                let s: f64 = e.iter().sum();
                p.extend(e.iter().map(|&v| if s > 0.0 { v / s } else { 0.0 }));
            }
            (p, 2f64.powi(-(EXACT_SOFTMAX_FRAC as i32)))
        }
        Op::Gelu | Op::LayerNorm => {
            if aux.mask.is_some() {
                return Err(format!("{} takes no mask", op.name()));
            }
            let y = if op == Op::Gelu {
                xv.iter().map(|&v| gelu(v)).collect::<Vec<f64>>()
            } else {
                let (g, b) = match (&aux.gamma, &aux.beta) {
                    (Some(g), Some(b)) if g.len() == c && b.len() == c => (g, b),
                    _ => return Err(format!("LayerNorm needs gamma and beta of {c} channels")),
                };
                let g: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
                let b: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
                layernorm(&xv, c, &g, &b, eps)
            };
            let m = y.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            (y, if m > 0.0 { m / f64::from(1u32 << 30) } else { 1.0 })
        }
        other => return Err(format!("{} has no exact float form here", other.name())),
    };
    if y.iter().any(|v| !v.is_finite()) {
        return Err(format!("the float64 {} gave a non-finite value", op.name()));
    }
    let values = y.iter().map(|&v| crate::fixed::round_half_even_f64(v / scale) as i64).collect();
    Ok(UnitOutput { values, shape, scale: Scale::PerTensor(scale), encoding: Encoding::Linear, conditions: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one() {
        let y = softmax(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], 3);
        assert!((y[..3].iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((y[3] - 1.0 / 3.0).abs() < 1e-12);
        assert!(y[2] > y[1] && y[1] > y[0]);
    }

    #[test]
    fn gelu_known_values() {
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(1.0) - 0.8413447460685429).abs() < 1e-12);
        assert!((gelu(-1.0) + 0.15865525393145707).abs() < 1e-12);
    }

    #[test]
    fn layernorm_normalises() {
        let y = layernorm(&[1.0, 2.0, 3.0, 4.0], 4, &[1.0; 4], &[0.0; 4], 0.0);
        assert!(y.iter().sum::<f64>().abs() < 1e-12);
        assert!((y.iter().map(|v| v * v).sum::<f64>() / 4.0 - 1.0).abs() < 1e-12);
    }

    fn tensor(v: Vec<i64>, shape: &[usize], s: f64, bits: u32) -> crate::fixed::QTensor {
        crate::fixed::QTensor::new(v, shape, crate::fixed::Scale::PerTensor(s), bits, true).unwrap()
    }

    #[test]
    fn exact_softmax_honours_the_mask_and_matches_float() {
        use crate::units::{Aux, Op};
        let x = tensor(vec![3, -7, 5, 0, 100, -128, 127, 1], &[2, 4], 0.05, 8);
        let mask: std::sync::Arc<[bool]> = vec![false, true, false, false, true, true, true, true].into();
        let aux = Aux { mask: Some(mask.clone()), ..Aux::default() };
        let o = exact_output(Op::Softmax, &x, &aux, 1e-6).unwrap();
        let y = o.dequantize();
        // Masked entries are exactly zero; a fully masked row is all zeros.
        for (i, m) in mask.iter().enumerate() {
            if *m {
                assert_eq!(o.values[i], 0, "element {i}");
            }
        }
        let kept: Vec<f64> = [3.0, 5.0, 0.0].iter().map(|v| v * 0.05).collect();
        let want = softmax(&kept, 3);
        for (got, w) in [y[0], y[2], y[3]].iter().zip(&want) {
            assert!((got - w).abs() <= 2f64.powi(-16), "{got} vs {w}");
        }
    }

    #[test]
    fn exact_gelu_and_layernorm_are_float_to_31_bits() {
        use crate::units::{Aux, Op};
        let x = tensor((-20..20).map(|v| v * 1000).collect(), &[4, 10], 1e-3, 16);
        let xv = x.dequantize();
        let g = exact_output(Op::Gelu, &x, &Aux::default(), 1e-6).unwrap().dequantize();
        let top = xv.iter().map(|&v| gelu(v).abs()).fold(0.0, f64::max);
        for (a, b) in g.iter().zip(&xv) {
            assert!((a - gelu(*b)).abs() <= top * 2f64.powi(-30), "{a} vs {}", gelu(*b));
        }
        let gamma: Vec<f32> = (0..10).map(|i| 0.5 + i as f32 / 10.0).collect();
        let beta: Vec<f32> = (0..10).map(|i| i as f32 / 20.0 - 0.2).collect();
        let aux = Aux { gamma: Some(gamma.clone()), beta: Some(beta.clone()), ..Aux::default() };
        let o = exact_output(Op::LayerNorm, &x, &aux, 1e-6).unwrap().dequantize();
        let want = layernorm(
            &xv,
            10,
            &gamma.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            &beta.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            1e-6,
        );
        let top = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (a, b) in o.iter().zip(&want) {
            assert!((a - b).abs() <= top * 2f64.powi(-30), "{a} vs {b}");
        }
        // A mask on a non-softmax op, or a LayerNorm without parameters, is refused.
        assert!(exact_output(Op::LayerNorm, &x, &Aux::default(), 1e-6).is_err());
        let masked = Aux { mask: Some(vec![false; 40].into()), ..Aux::default() };
        assert!(exact_output(Op::Gelu, &x, &masked, 1e-6).is_err());
    }
}
