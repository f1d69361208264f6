//! Bjøntegaard delta metrics (VCEG-M33): BD-rate and BD-PSNR between two rate–distortion
//! curves.
//!
//! Standard method: fit a cubic polynomial (least squares; degree `n-1` when a curve has only
//! `n < 4` points) to PSNR as a function of log10(rate) for BD-PSNR, and to log10(rate) as a
//! function of PSNR for BD-rate, integrate both fits over the interval where the curves
//! overlap and divide by its length. BD-rate is `(10^avg_diff - 1) * 100` percent: negative
//! means the test codec needs fewer bits than the anchor for the same quality.

/// Errors from the Bjøntegaard computations.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BdError {
    #[error("a curve has {got} points (expected at least 2 distinct ones)")]
    TooFewPoints { got: usize },
    #[error("a curve has a non-finite value or a rate <= 0 (expected finite PSNR and rate > 0)")]
    BadValue,
    #[error(
        "the curves do not overlap on the {axis} axis (anchor {a_lo}..{a_hi}, test {t_lo}..{t_hi})"
    )]
    NoOverlap {
        axis: &'static str,
        a_lo: f64,
        a_hi: f64,
        t_lo: f64,
        t_hi: f64,
    },
    #[error("the polynomial fit is singular (expected distinct sample positions)")]
    Singular,
}

/// One operating point: rate (e.g. bpp, > 0) and quality (PSNR in dB).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RdPoint {
    pub rate: f64,
    pub psnr: f64,
}

/// Least-squares polynomial fit of degree `deg`; returns coefficients c0..c_deg in the
/// normalised variable `(x - mid) / half`.
struct Poly {
    c: Vec<f64>,
    mid: f64,
    half: f64,
}

impl Poly {
    fn fit(xs: &[f64], ys: &[f64], deg: usize) -> Result<Poly, BdError> {
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mid = 0.5 * (lo + hi);
        let half = 0.5 * (hi - lo);
        if half.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(BdError::Singular);
        }
        let n = deg + 1;
        // Normal equations A c = b, A[i][j] = sum t^(i+j), b[i] = sum y t^i, t in [-1, 1].
        let mut a = vec![vec![0.0f64; n + 1]; n];
        for (&x, &y) in xs.iter().zip(ys) {
            let t = (x - mid) / half;
            let mut pows = vec![1.0f64; 2 * n];
            for k in 1..2 * n {
                pows[k] = pows[k - 1] * t;
            }
            for (i, row) in a.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().take(n).enumerate() {
                    *v += pows[i + j];
                }
                row[n] += y * pows[i];
            }
        }
        // Gaussian elimination with partial pivoting.
        for col in 0..n {
            let piv = (col..n)
                .max_by(|&r, &s| a[r][col].abs().total_cmp(&a[s][col].abs()))
                .unwrap_or(col);
            if a[piv][col].abs() < 1e-12 {
                return Err(BdError::Singular);
            }
            a.swap(col, piv);
            let prow = a[col].clone();
            for (r, row) in a.iter_mut().enumerate() {
                if r != col {
                    let f = row[col] / prow[col];
                    for (v, p) in row.iter_mut().zip(&prow).skip(col) {
                        *v -= f * p;
                    }
                }
            }
        }
        let c = (0..n).map(|i| a[i][n] / a[i][i]).collect();
        Ok(Poly { c, mid, half })
    }

    /// Integral of the polynomial over `x in [lo, hi]` (in the original variable).
    fn integral(&self, lo: f64, hi: f64) -> f64 {
        let prim = |x: f64| {
            let t = (x - self.mid) / self.half;
            let mut tp = t;
            let mut s = 0.0;
            for (k, c) in self.c.iter().enumerate() {
                s += c * tp / (k as f64 + 1.0);
                tp *= t;
            }
            s * self.half
        };
        prim(hi) - prim(lo)
    }
}

fn prepare(curve: &[RdPoint]) -> Result<(Vec<f64>, Vec<f64>), BdError> {
    if curve
        .iter()
        .any(|p| !p.rate.is_finite() || !p.psnr.is_finite() || p.rate <= 0.0)
    {
        return Err(BdError::BadValue);
    }
    let lr: Vec<f64> = curve.iter().map(|p| p.rate.log10()).collect();
    let q: Vec<f64> = curve.iter().map(|p| p.psnr).collect();
    let distinct = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.dedup();
        s.len()
    };
    let got = distinct(&lr).min(distinct(&q));
    if got < 2 {
        return Err(BdError::TooFewPoints { got });
    }
    Ok((lr, q))
}

fn range(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Average of `fit(test) - fit(anchor)` of `y` over the overlap of the `x` ranges.
fn avg_diff(
    ax: &[f64],
    ay: &[f64],
    tx: &[f64],
    ty: &[f64],
    axis: &'static str,
) -> Result<f64, BdError> {
    let (a_lo, a_hi) = range(ax);
    let (t_lo, t_hi) = range(tx);
    let lo = a_lo.max(t_lo);
    let hi = a_hi.min(t_hi);
    if hi <= lo {
        return Err(BdError::NoOverlap {
            axis,
            a_lo,
            a_hi,
            t_lo,
            t_hi,
        });
    }
    let pa = Poly::fit(ax, ay, (ax.len() - 1).min(3))?;
    let pt = Poly::fit(tx, ty, (tx.len() - 1).min(3))?;
    Ok((pt.integral(lo, hi) - pa.integral(lo, hi)) / (hi - lo))
}

/// BD-PSNR in dB of `test` relative to `anchor` (positive: `test` has higher quality at the
/// same rate).
///
/// # Errors
/// [`BdError::TooFewPoints`], [`BdError::BadValue`], [`BdError::NoOverlap`] (rates do not
/// overlap), [`BdError::Singular`].
pub fn bd_psnr(anchor: &[RdPoint], test: &[RdPoint]) -> Result<f64, BdError> {
    let (alr, aq) = prepare(anchor)?;
    let (tlr, tq) = prepare(test)?;
    avg_diff(&alr, &aq, &tlr, &tq, "log-rate")
}

/// BD-rate in percent of `test` relative to `anchor` (negative: `test` needs fewer bits for the
/// same quality).
///
/// # Errors
/// As [`bd_psnr`], with [`BdError::NoOverlap`] when the PSNR ranges do not overlap.
pub fn bd_rate(anchor: &[RdPoint], test: &[RdPoint]) -> Result<f64, BdError> {
    let (alr, aq) = prepare(anchor)?;
    let (tlr, tq) = prepare(test)?;
    let d = avg_diff(&aq, &alr, &tq, &tlr, "PSNR")?;
    Ok((10f64.powf(d) - 1.0) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_fit_recovers_cubic() {
        let xs: Vec<f64> = (0..7).map(|i| f64::from(i) * 0.3 - 1.0).collect();
        let f = |x: f64| 2.0 - x + 0.5 * x * x + 0.25 * x * x * x;
        let ys: Vec<f64> = xs.iter().map(|&x| f(x)).collect();
        let p = Poly::fit(&xs, &ys, 3).unwrap();
        // Exact integral of f over [-0.5, 0.5]: 2 + 0.5/12*... computed numerically.
        let exact = {
            let prim =
                |x: f64| 2.0 * x - x * x / 2.0 + 0.5 * x.powi(3) / 3.0 + 0.25 * x.powi(4) / 4.0;
            prim(0.5) - prim(-0.5)
        };
        assert!((p.integral(-0.5, 0.5) - exact).abs() < 1e-9);
    }
}
