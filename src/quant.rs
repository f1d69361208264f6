//! Uniform per-tensor quantization: choice of step, quantize, dequantize.
//!
//! A tensor is coded as integer symbols `q` in `[-m, m]`, `m = 2^(bits-1) - 1`, and a step
//! [`Step`] that is exactly representable in f32; the decoder's weight is `q as f32 * step`.

use crate::format::Step;

/// Largest symbol magnitude for a bit width.
pub fn max_symbol(bits: u8) -> i32 {
    (1i32 << (bits - 1)) - 1
}

/// Quantize with a given step, clamping to `[-m, m]`.
pub fn quantize(w: &[f32], step: Step, bits: u8) -> Vec<i32> {
    let s = step.to_f32();
    let m = max_symbol(bits);
    w.iter()
        .map(|&v| ((v / s).round() as i32).clamp(-m, m))
        .collect()
}

/// Quantize-dequantize in place (the "fake quantization" of quantization-aware training).
pub fn fake_quant_into(w: &[f32], step: Step, bits: u8, out: &mut [f32]) {
    let s = step.to_f32();
    let m = max_symbol(bits) as f32;
    for (o, &v) in out.iter_mut().zip(w) {
        *o = (v / s).round().clamp(-m, m) * s;
    }
}

/// Choose the step that minimises the squared quantization error, searching clipping
/// ranges from the full range down to 40% of it. Never returns a zero step.
pub fn choose_step(w: &[f32], bits: u8) -> Step {
    let max_abs = w.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let m = max_symbol(bits) as f32;
    if max_abs == 0.0 || !max_abs.is_finite() {
        return Step::from_f32(1e-3);
    }
    let mut best = (f64::INFINITY, Step::from_f32(max_abs / m));
    for i in 0..=24 {
        let clip = max_abs * (1.0 - 0.025 * i as f32);
        let step = Step::from_f32(clip / m);
        let s = step.to_f32();
        let err: f64 = w
            .iter()
            .map(|&v| {
                let d = (v / s).round().clamp(-m, m) * s - v;
                (d * d) as f64
            })
            .sum();
        if err < best.0 {
            best = (err, step);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::QTensor;

    fn dequantize(q: &[i32], step: Step) -> Vec<f32> {
        QTensor {
            step,
            bits: 16,
            symbols: q.to_vec(),
        }
        .dequantize()
    }

    #[test]
    fn roundtrip_error_is_at_most_half_a_step_inside_the_range() {
        let w: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 0.2).collect();
        let step = choose_step(&w, 8);
        let q = quantize(&w, step, 8);
        assert!(q.iter().all(|&v| v.abs() <= 127));
        let d = dequantize(&q, step);
        let s = step.to_f32();
        let clipped = w.iter().filter(|v| v.abs() > 127.0 * s).count();
        for (a, b) in w.iter().zip(&d) {
            if a.abs() <= 127.0 * s {
                assert!((a - b).abs() <= 0.5 * s * 1.0001);
            }
        }
        assert!(clipped < 100);
        let mut fq = vec![0.0; w.len()];
        fake_quant_into(&w, step, 8, &mut fq);
        assert_eq!(fq, d);
    }

    #[test]
    fn constant_and_zero_tensors_are_legal() {
        let z = vec![0.0f32; 10];
        let s = choose_step(&z, 6);
        assert!(s.to_f32() > 0.0);
        assert!(quantize(&z, s, 6).iter().all(|&v| v == 0));
        let c = vec![0.3f32; 10];
        let s = choose_step(&c, 6);
        let d = dequantize(&quantize(&c, s, 6), s);
        assert!(d.iter().all(|&v| (v - 0.3).abs() < 0.01));
    }
}
