//! Real JPEG baselines through libjpeg-turbo / MozJPEG (the `mozjpeg` crate).
//!
//! Two variants:
//! - [`JpegVariant::Turbo`] (`jpeg`): MozJPEG's `JCP_FASTEST` profile, which the crate documents
//!   as "libjpeg v6 settings … identical with libjpeg-turbo": baseline (sequential), 4:2:0,
//!   standard Annex K quantisation tables scaled by quality, optimised Huffman tables, no
//!   trellis quantisation, no scan optimisation. This is what Pillow's
//!   `save(quality=q, optimize=True)` does, and it is checked against
//!   `shared/baselines/kodak_dev.csv`.
//! - [`JpegVariant::Moz`] (`mozjpeg`): the crate's default tuning (`JCP_MAX_COMPRESSION`:
//!   trellis quantisation, progressive scans with scan optimisation, MozJPEG's own tables),
//!   a stronger second baseline.
//!
//! libjpeg reports errors by unwinding; every call into it is wrapped in `catch_unwind`, so a
//! libjpeg error becomes a [`JpegError`], never a panic that escapes.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::media::Image;

/// Which JPEG encoder configuration to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum JpegVariant {
    /// libjpeg-turbo-equivalent settings (codec name `jpeg`).
    Turbo,
    /// MozJPEG's default tuning with trellis quantisation (codec name `mozjpeg`).
    Moz,
}

impl JpegVariant {
    /// Codec name used in reports (`jpeg` or `mozjpeg`).
    pub fn name(self) -> &'static str {
        match self {
            JpegVariant::Turbo => "jpeg",
            JpegVariant::Moz => "mozjpeg",
        }
    }

    /// One-line description of the settings, for reports.
    pub fn description(self) -> &'static str {
        match self {
            JpegVariant::Turbo => {
                "JPEG, libjpeg-turbo settings via mozjpeg JCP_FASTEST: baseline, 4:2:0, \
                 Annex K tables, optimised Huffman tables, no trellis"
            }
            JpegVariant::Moz => {
                "MozJPEG default tuning (JCP_MAX_COMPRESSION): 4:2:0, trellis quantisation, \
                 progressive with scan optimisation"
            }
        }
    }
}

/// Errors from the JPEG baseline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JpegError {
    #[error("invalid JPEG quality {0} (expected 1..=100)")]
    Quality(u8),
    #[error("unsupported image for JPEG: {0}")]
    Image(String),
    #[error("libjpeg error: {0}")]
    Lib(String),
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "unknown libjpeg failure".to_string()
    }
}

fn check_image(img: &Image) -> Result<mozjpeg::ColorSpace, JpegError> {
    let cs = match img.channels {
        1 => mozjpeg::ColorSpace::JCS_GRAYSCALE,
        3 => mozjpeg::ColorSpace::JCS_RGB,
        c => return Err(JpegError::Image(format!("{c} channels (expected 1 or 3)"))),
    };
    let expected = (img.width as usize)
        .checked_mul(img.height as usize)
        .and_then(|n| n.checked_mul(usize::from(img.channels)));
    if expected != Some(img.data.len()) {
        return Err(JpegError::Image(format!(
            "data length {} does not match {}x{}x{}",
            img.data.len(),
            img.width,
            img.height,
            img.channels
        )));
    }
    if img.width == 0 || img.height == 0 || img.width > 65_500 || img.height > 65_500 {
        return Err(JpegError::Image(format!(
            "size {}x{} (expected 1..=65500 per side)",
            img.width, img.height
        )));
    }
    Ok(cs)
}

/// libjpeg's `jpeg_set_quality(cinfo, quality, force_baseline = TRUE)` table for `base`, as
/// Pillow uses it: `scale = q < 50 ? 5000 / q : 200 - 2q` (integers), entry
/// `clamp((base * scale + 50) / 100, 1, 255)`.
///
/// The crate only exposes `jpeg_set_quality` with `force_baseline = FALSE` (entries up to
/// 32767 below quality ~25, which changes rate and PSNR), so the table is built with
/// [`mozjpeg::qtable::QTable::scaled`] at an equivalent float quality. That scaling rounds in
/// `f32`; libjpeg's integer rounding has ties only at exact `.5`, so the scale is raised by a
/// relative 1e-5 to round those ties up as libjpeg does (far below the 0.01 spacing of
/// libjpeg's fractions). A unit test checks all 100 qualities against the integer formula.
fn turbo_qtable(base: &mozjpeg::qtable::QTable, quality: u8) -> mozjpeg::qtable::QTable {
    let q = f32::from(quality.clamp(1, 100));
    let scale = if quality < 50 {
        f32::from(5000 / u16::from(quality.max(1))) / 100.0
    } else {
        (200.0 - 2.0 * q) / 100.0
    } * (1.0 + 1e-5);
    // Invert mozjpeg's `quality_scaling`: 50 / q for q < 50, (100 - q) / 50 otherwise.
    let fq = if scale > 1.0 {
        50.0 / scale
    } else {
        (100.0 - 50.0 * scale).min(100.0)
    };
    base.scaled(fq, fq)
}

/// Encode `img` as a complete JFIF file at `quality` (1..=100).
///
/// # Errors
/// [`JpegError::Quality`] for a quality outside 1..=100, [`JpegError::Image`] for an image
/// that is not 1 or 3 channels or whose buffer does not match its size, [`JpegError::Lib`]
/// if libjpeg reports an error.
///
/// # Panics
/// Never: libjpeg's unwinding errors are caught.
pub fn encode_jpeg(img: &Image, quality: u8, variant: JpegVariant) -> Result<Vec<u8>, JpegError> {
    if !(1..=100).contains(&quality) {
        return Err(JpegError::Quality(quality));
    }
    let cs = check_image(img)?;
    let run = || -> std::io::Result<Vec<u8>> {
        let mut c = mozjpeg::Compress::new(cs);
        if variant == JpegVariant::Turbo {
            // Resets every parameter to libjpeg-turbo's defaults (no trellis, no scan
            // optimisation, sequential, Annex K tables).
            c.set_fastest_defaults();
        }
        c.set_size(img.width as usize, img.height as usize);
        match variant {
            JpegVariant::Turbo => {
                c.set_luma_qtable(&turbo_qtable(&mozjpeg::qtable::AnnexK_Luma, quality));
                c.set_chroma_qtable(&turbo_qtable(&mozjpeg::qtable::AnnexK_Chroma, quality));
            }
            JpegVariant::Moz => c.set_quality(f32::from(quality)),
        }
        if cs == mozjpeg::ColorSpace::JCS_RGB {
            c.set_chroma_sampling_pixel_sizes((2, 2), (2, 2));
        }
        c.set_optimize_coding(true);
        let mut s = c.start_compress(Vec::new())?;
        s.write_scanlines(&img.data)?;
        s.finish()
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(JpegError::Lib(e.to_string())),
        Err(p) => Err(JpegError::Lib(panic_message(p))),
    }
}

/// Decode a JPEG file to 8-bit samples with `channels` (1 or 3) channels, using libjpeg-turbo's
/// default (accurate integer) IDCT and fancy upsampling, as Pillow does.
///
/// # Errors
/// [`JpegError::Lib`] on malformed data or a size that does not fit the header,
/// [`JpegError::Image`] for a channel count other than 1 or 3.
///
/// # Panics
/// Never: libjpeg's unwinding errors are caught.
pub fn decode_jpeg(bytes: &[u8], channels: u8) -> Result<Image, JpegError> {
    if channels != 1 && channels != 3 {
        return Err(JpegError::Image(format!(
            "{channels} channels (expected 1 or 3)"
        )));
    }
    let run = || -> std::io::Result<Image> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        let mut started = if channels == 3 {
            d.rgb()?
        } else {
            d.grayscale()?
        };
        let (w, h) = (started.width(), started.height());
        let data = started.read_scanlines::<u8>()?;
        started.finish()?;
        let width = u32::try_from(w).map_err(std::io::Error::other)?;
        let height = u32::try_from(h).map_err(std::io::Error::other)?;
        Ok(Image {
            width,
            height,
            channels,
            data,
        })
    };
    let img = match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(JpegError::Lib(e.to_string())),
        Err(p) => return Err(JpegError::Lib(panic_message(p))),
    };
    let expected = (img.width as usize)
        .checked_mul(img.height as usize)
        .and_then(|n| n.checked_mul(usize::from(channels)));
    if expected != Some(img.data.len()) {
        return Err(JpegError::Lib(format!(
            "decoded {} samples for {}x{}x{}",
            img.data.len(),
            img.width,
            img.height,
            channels
        )));
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mozjpeg::qtable::{AnnexK_Chroma, AnnexK_Luma, QTable};

    fn coeffs(t: &QTable) -> Vec<u32> {
        let s = format!("{t:?}");
        let inner = s
            .split('[')
            .nth(1)
            .and_then(|x| x.split(']').next())
            .unwrap();
        inner
            .split(',')
            .map(|x| x.trim().parse().unwrap())
            .collect()
    }

    #[test]
    fn turbo_tables_match_libjpeg_integer_formula_for_every_quality() {
        for base in [&AnnexK_Luma, &AnnexK_Chroma] {
            let b = coeffs(base);
            for q in 1u32..=100 {
                let scale = if q < 50 { 5000 / q } else { 200 - 2 * q };
                let want: Vec<u32> = b
                    .iter()
                    .map(|&c| ((c * scale + 50) / 100).clamp(1, 255))
                    .collect();
                assert_eq!(coeffs(&turbo_qtable(base, q as u8)), want, "quality {q}");
            }
        }
    }
}
