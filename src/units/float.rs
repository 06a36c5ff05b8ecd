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
}
