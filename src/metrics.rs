//! Distortion and rate metrics.
//!
//! - [`mse`]: one mean squared error over **all** 8-bit samples of all channels (not a mean
//!   of per-channel values), computed with an exact integer sum, so it is deterministic.
//!   For an image with alpha (2 or 4 channels) the colour samples are compared
//!   **premultiplied**, `c · α / 255` with each image's own alpha, and alpha as it is: the
//!   error of the images composited over black, plus alpha's. So the colour of a fully
//!   transparent pixel does not count, and a translucent pixel's in proportion to its opacity.
//!   Without alpha this is the plain MSE.
//! - [`psnr`]: `10 * log10(255^2 / mse)` in dB. Identical images give `f64::INFINITY`;
//!   `serde_json` writes non-finite numbers as `null`, so JSON output reports an infinite
//!   PSNR as `null` (and text output as `inf`).
//! - [`bpp`]: bits per pixel of a file, `8 * bytes / (width * height)`, always from the real
//!   file size.

use crate::media::Image;

/// Errors of the metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error(
        "image shapes differ: {a_width}x{a_height} with {a_channels} channel(s) vs \
         {b_width}x{b_height} with {b_channels} channel(s) (expected equal size and channels)"
    )]
    ShapeMismatch {
        a_width: u32,
        a_height: u32,
        a_channels: u8,
        b_width: u32,
        b_height: u32,
        b_channels: u8,
    },
    #[error("invalid image: {0}")]
    InvalidImage(#[from] crate::media::MediaError),
    #[error("image has no pixels (expected width and height >= 1)")]
    Empty,
}

/// Mean squared error over all samples of all channels.
///
/// # Errors
/// [`MetricsError::ShapeMismatch`] when width, height or channels differ,
/// [`MetricsError::InvalidImage`] when either image breaks its invariants
/// ([`Image::validate`]).
pub fn mse(a: &Image, b: &Image) -> Result<f64, MetricsError> {
    if (a.width, a.height, a.channels) != (b.width, b.height, b.channels) {
        return Err(MetricsError::ShapeMismatch {
            a_width: a.width,
            a_height: a.height,
            a_channels: a.channels,
            b_width: b.width,
            b_height: b.height,
            b_channels: b.channels,
        });
    }
    a.validate()?;
    b.validate()?;
    Ok(mse_samples_in(&a.data, &b.data, a.channels))
}

/// [`mse_samples`] for interleaved pixels of `channels` samples: with alpha (2 or 4
/// channels, alpha last) the colours are compared premultiplied (see the module docs), else
/// the plain MSE. An incomplete last pixel is ignored.
pub fn mse_samples_in(a: &[u8], b: &[u8], channels: u8) -> f64 {
    if !matches!(channels, 2 | 4) {
        return mse_samples(a, b);
    }
    let c = usize::from(channels);
    // Premultiplied colour differences are in units of 1/255: |c1·α1 − c2·α2| ≤ 255², whose
    // square is below 2^32, so a u128 sum is exact; alpha terms are scaled by 255² to match.
    let (mut sum, mut n) = (0u128, 0u64);
    for (pa, pb) in a.chunks_exact(c).zip(b.chunks_exact(c)) {
        let (aa, ab) = (u64::from(pa[c - 1]), u64::from(pb[c - 1]));
        for k in 0..c - 1 {
            let d = (u64::from(pa[k]) * aa).abs_diff(u64::from(pb[k]) * ab);
            sum += u128::from(d * d);
        }
        let d = aa.abs_diff(ab) * 255;
        sum += u128::from(d * d);
        n += c as u64;
    }
    if n == 0 {
        0.0
    } else {
        sum as f64 / (65_025.0 * n as f64)
    }
}

/// Mean squared error of two equally long 8-bit sample slices (0 for empty slices).
/// Extra samples of the longer slice are ignored; use [`mse`] for checked images.
pub fn mse_samples(a: &[u8], b: &[u8]) -> f64 {
    // Each term is at most 255^2 < 2^16, so the u64 sum is exact for up to 2^48 samples.
    let (sum, n) = a.iter().zip(b).fold((0u64, 0u64), |(s, n), (&x, &y)| {
        let d = u64::from(x.abs_diff(y));
        (s + d * d, n + 1)
    });
    if n == 0 {
        0.0
    } else {
        sum as f64 / n as f64
    }
}

/// PSNR in dB for a given MSE of 8-bit samples (peak 255); `f64::INFINITY` when `mse <= 0`.
pub fn psnr_from_mse(mse: f64) -> f64 {
    if mse <= 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// PSNR in dB of `b` against `a` over all samples (colours premultiplied by alpha in images
/// with alpha, see the module docs), peak 255; `f64::INFINITY` if identical.
///
/// # Errors
/// As [`mse`].
pub fn psnr(a: &Image, b: &Image) -> Result<f64, MetricsError> {
    Ok(psnr_from_mse(mse(a, b)?))
}

/// Bits per pixel: `8 * file_bytes / (width * height)`.
///
/// # Errors
/// [`MetricsError::Empty`] when `width * height == 0`.
pub fn bpp(file_bytes: u64, width: u32, height: u32) -> Result<f64, MetricsError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(MetricsError::Empty);
    }
    Ok(8.0 * file_bytes as f64 / pixels as f64)
}

/// Format a PSNR for humans with two decimals; an infinite PSNR prints as `inf`.
pub fn format_psnr(psnr: f64) -> String {
    if psnr.is_infinite() && psnr > 0.0 {
        "inf".to_string()
    } else {
        format!("{psnr:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32, c: u8, data: Vec<u8>) -> Image {
        Image {
            width: w,
            height: h,
            channels: c,
            data,
        }
    }

    #[test]
    fn alpha_images_compare_premultiplied_colours() {
        // Pixel 1: transparent in both, colours differ by 200: no error. Pixel 2: opaque,
        // colours differ by 3 and alpha by 0: 9. Pixel 3: alpha 51 (0.2) in both, colour differs
        // by 10: (0.2 · 10)^2 = 4. Pixel 4: colour equal (100), alpha 255 vs 0: colour term
        // 100^2, alpha term 255^2. Over 8 samples: (0 + 0 + 9 + 0 + 4 + 0 + 10000 + 65025) / 8.
        let a = img(4, 1, 2, vec![0, 0, 50, 255, 20, 51, 100, 255]);
        let b = img(4, 1, 2, vec![200, 0, 53, 255, 30, 51, 100, 0]);
        let want = (9.0 + 4.0 + 10_000.0 + 65_025.0) / 8.0;
        assert!(
            (mse(&a, &b).unwrap() - want).abs() < 1e-9,
            "{}",
            mse(&a, &b).unwrap()
        );
        // Opaque alpha everywhere: the plain MSE of the colours (over all samples).
        let c = img(1, 1, 4, vec![10, 20, 30, 255]);
        let d = img(1, 1, 4, vec![11, 18, 30, 255]);
        assert_eq!(mse(&c, &d).unwrap(), 5.0 / 4.0);
        assert_eq!(
            mse_samples_in(&c.data, &d.data, 3),
            mse_samples(&c.data, &d.data)
        );
    }

    #[test]
    fn mse_and_psnr_hand_computed() {
        // Differences 0, 1, 2, 3 over four samples: (0 + 1 + 4 + 9) / 4 = 3.5.
        let a = img(2, 2, 1, vec![10, 20, 30, 40]);
        let b = img(2, 2, 1, vec![10, 21, 28, 43]);
        assert_eq!(mse(&a, &b).unwrap(), 3.5);
        // 10 log10(65025 / 3.5) = 10 log10(18578.571...) = 42.690123...
        let p = psnr(&a, &b).unwrap();
        assert!((p - 42.690_123_165).abs() < 1e-6, "{p}");
        // Symmetric.
        assert_eq!(psnr(&b, &a).unwrap(), p);
    }

    #[test]
    fn one_mse_over_all_channels() {
        // One pixel, RGB: errors 255, 0, 0 -> MSE = 65025 / 3 (not a mean of per-channel PSNRs).
        let a = img(1, 1, 3, vec![0, 0, 0]);
        let b = img(1, 1, 3, vec![255, 0, 0]);
        assert_eq!(mse(&a, &b).unwrap(), 65025.0 / 3.0);
        // 10 log10(3) = 4.771212547...
        assert!((psnr(&a, &b).unwrap() - 4.771_212_547).abs() < 1e-8);
        // Maximal error everywhere: 0 dB.
        let w = img(1, 1, 3, vec![255; 3]);
        assert_eq!(psnr(&a, &w).unwrap(), 0.0);
    }

    #[test]
    fn identical_is_infinite_and_json_null() {
        let a = img(3, 1, 1, vec![1, 2, 3]);
        let p = psnr(&a, &a).unwrap();
        assert_eq!(p, f64::INFINITY);
        assert_eq!(format_psnr(p), "inf");
        assert_eq!(serde_json::to_string(&p).unwrap(), "null");
        assert_eq!(format_psnr(28.414), "28.41");
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = img(2, 1, 1, vec![0, 0]);
        let b = img(1, 2, 1, vec![0, 0]);
        assert!(matches!(
            mse(&a, &b),
            Err(MetricsError::ShapeMismatch { .. })
        ));
        let c = img(2, 1, 3, vec![0; 6]);
        assert!(matches!(
            psnr(&a, &c),
            Err(MetricsError::ShapeMismatch { .. })
        ));
        let bad = img(2, 1, 1, vec![0]);
        assert!(matches!(
            mse(&bad, &bad),
            Err(MetricsError::InvalidImage(_))
        ));
    }

    #[test]
    fn bpp_hand_computed() {
        // 14790 bytes on 768x512: 8 * 14790 / 393216 = 0.300903...
        let b = bpp(14_790, 768, 512).unwrap();
        assert!((b - 0.300_903_320_3).abs() < 1e-9, "{b}");
        assert_eq!(bpp(2, 4, 4).unwrap(), 1.0);
        assert!(matches!(bpp(10, 0, 5), Err(MetricsError::Empty)));
    }
}

/// Running distortion of audio samples (normalised to [-1, 1]), accumulated in f64.
#[derive(Debug, Clone, Copy, Default)]
pub struct AudioDistortion {
    /// Sum of squared errors.
    pub sse: f64,
    /// Sum of squared reference samples.
    pub energy: f64,
    /// Number of samples (all channels).
    pub n: u64,
}

impl AudioDistortion {
    /// Add one reference sample `x` and its reconstruction `y`.
    #[inline]
    pub fn add(&mut self, x: f64, y: f64) {
        self.sse += (x - y) * (x - y);
        self.energy += x * x;
        self.n += 1;
    }
    /// Mean squared error in the [-1, 1] scale (0 when empty).
    pub fn mse(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sse / self.n as f64
        }
    }
    /// PSNR in dB with the waveform mapped from [-1, 1] to [0, 1] (the COIN++ convention:
    /// peak 1, so `10 * log10(1 / (mse / 4))`); infinite for a perfect reconstruction.
    pub fn psnr(&self) -> f64 {
        let m = self.mse() / 4.0;
        if m <= 0.0 {
            f64::INFINITY
        } else {
            10.0 * (1.0 / m).log10()
        }
    }
    /// Signal-to-noise ratio in dB: `10 * log10(sum x^2 / sum (x - y)^2)`; infinite when the
    /// error is zero, negative infinity for a silent reference with a nonzero error.
    pub fn snr(&self) -> f64 {
        if self.sse <= 0.0 {
            f64::INFINITY
        } else if self.energy <= 0.0 {
            f64::NEG_INFINITY
        } else {
            10.0 * (self.energy / self.sse).log10()
        }
    }
}

/// Rate in kbit/s of a file of `bytes` holding `duration_s` seconds (0 for a zero duration).
/// Blockiness at a grid of `cell`-pixel tiles: the mean absolute difference between
/// neighbouring samples that straddle a tile border (columns `k*cell - 1 | k*cell`, and the
/// same for rows), divided by the mean absolute difference between all other neighbours.
/// About 1 when tile borders are invisible; a tiled codec with seams scores well above 1.
/// `None` when the image has no border or no interior neighbours (too small for `cell`).
pub fn seam_ratio(img: &Image, cell: u32) -> Option<f64> {
    let (w, h, c) = (
        img.width as usize,
        img.height as usize,
        img.channels as usize,
    );
    let cell = cell.max(1) as usize;
    let at = |x: usize, y: usize, k: usize| f64::from(img.data[(y * w + x) * c + k]);
    let (mut border, mut nb, mut inner, mut ni) = (0.0, 0u64, 0.0, 0u64);
    for y in 0..h {
        for x in 0..w {
            for k in 0..c {
                let v = at(x, y, k);
                if x + 1 < w {
                    let d = (at(x + 1, y, k) - v).abs();
                    if (x + 1) % cell == 0 {
                        border += d;
                        nb += 1;
                    } else {
                        inner += d;
                        ni += 1;
                    }
                }
                if y + 1 < h {
                    let d = (at(x, y + 1, k) - v).abs();
                    if (y + 1) % cell == 0 {
                        border += d;
                        nb += 1;
                    } else {
                        inner += d;
                        ni += 1;
                    }
                }
            }
        }
    }
    if nb == 0 || ni == 0 || inner == 0.0 {
        return None;
    }
    Some((border / nb as f64) / (inner / ni as f64))
}

pub fn kbps(bytes: u64, duration_s: f64) -> f64 {
    if duration_s > 0.0 {
        8.0 * bytes as f64 / duration_s / 1000.0
    } else {
        0.0
    }
}
