//! Image input and output.
//!
//! # Input policy
//!
//! [`load_image`] and [`decode_image_bytes`] accept everything the `image` crate decodes
//! (PNG, JPEG, BMP, PNM/PPM/PGM, TIFF, GIF, WebP, QOI, TGA is *not* supported because it has
//! no signature, ...). The format is detected from the file **content**, never from the
//! extension. Every input is turned into an 8-bit [`Image`] of 1 to 4 channels:
//!
//! - **gray stays gray**: a luminance image gives 1 channel; colour images give 3 (RGB).
//! - **alpha**: an alpha channel whose every sample is fully opaque (the maximum value of its
//!   bit depth) is dropped; this is lossless. Any other alpha channel is kept as a last
//!   channel (gray + alpha: 2, RGBA: 4) when [`LoadOptions::keep_alpha`] is set (the CLI's
//!   `encode`, `eval`, `decode --ref` and `batch`: the grid mode codes alpha, codec-spec §13.1);
//!   it is dropped when [`LoadOptions::ignore_alpha`] is set (the CLI flag `--ignore-alpha`:
//!   the colour samples are kept as they are, not blended onto any background, and a note says
//!   so); otherwise it is an error ([`MediaError::TranslucentAlpha`]).
//! - **16-bit** samples are rounded to the nearest 8-bit value
//!   (`round(v * 255 / 65535)`, no ties exist) and a note is reported in
//!   [`LoadedImage::notes`], because format v1 codes 8-bit precision.
//! - **orientation** metadata (EXIF in JPEG, TIFF, WebP) is applied, so the image is coded
//!   the way viewers show it; a note says so.
//! - **32-bit float** samples (HDR, OpenEXR) are clamped to `[0, 1]` and rounded to 8 bits
//!   without tone mapping (NaN becomes 0), also with a note.
//!
//! Absurd sizes are refused before the pixels are decoded ([`MediaLimits`]).
//!
//! # Output
//!
//! [`save_image`] writes PNG, BMP, PNM (PGM for gray, PPM for RGB) or TIFF, chosen by the
//! extension, atomically through [`crate::util::write_atomic`]. PNG stores alpha, TIFF and BMP
//! store RGBA but not gray + alpha, and PNM none ([`MediaError::AlphaNotStored`]).

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

/// An 8-bit interleaved image: `channels` is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA);
/// alpha, when present, is the last sample of each pixel (straight, not premultiplied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

impl Image {
    /// Number of pixels, `width * height`.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Whether the last channel is alpha (2 or 4 channels).
    pub fn has_alpha(&self) -> bool {
        matches!(self.channels, 2 | 4)
    }

    /// Check the invariants: both sides at least 1, `channels` is 1 ..= 4 and
    /// `data.len() == width * height * channels`.
    ///
    /// # Errors
    /// [`MediaError::InvalidImage`] naming the violated invariant.
    pub fn validate(&self) -> Result<(), MediaError> {
        if self.width == 0 || self.height == 0 {
            return Err(MediaError::InvalidImage(format!(
                "size {}x{} (expected width and height >= 1)",
                self.width, self.height
            )));
        }
        if !(1..=4).contains(&self.channels) {
            return Err(MediaError::InvalidImage(format!(
                "{} channels (expected 1 ..= 4)",
                self.channels
            )));
        }
        let expected = self
            .pixels()
            .checked_mul(u64::from(self.channels))
            .and_then(|n| usize::try_from(n).ok());
        if expected != Some(self.data.len()) {
            return Err(MediaError::InvalidImage(format!(
                "{} samples for {}x{}x{} (expected width * height * channels)",
                self.data.len(),
                self.width,
                self.height,
                self.channels
            )));
        }
        Ok(())
    }
}

/// Size limits checked before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
    /// Largest accepted input file, in bytes.
    pub max_file_bytes: u64,
    /// Largest buffer the image decoder may allocate, in bytes.
    pub max_alloc: u64,
}

impl Default for MediaLimits {
    /// 16384 x 16384 at most, 64 Mpixel, 512 MiB files, 1 GiB decoder allocations.
    fn default() -> Self {
        MediaLimits {
            max_width: 16_384,
            max_height: 16_384,
            max_pixels: 1 << 26,
            max_file_bytes: 512 << 20,
            max_alloc: 1 << 30,
        }
    }
}

/// Options for [`load_image_with`] and [`decode_image_bytes_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Drop a translucent alpha channel instead of failing (colour samples are kept as they are).
    /// Takes precedence over `keep_alpha`.
    pub ignore_alpha: bool,
    /// Keep a translucent alpha channel as the image's last channel (2 or 4 channels) instead
    /// of failing. A fully opaque alpha channel is dropped either way.
    pub keep_alpha: bool,
    pub limits: MediaLimits,
}

/// A decoded input image plus what happened to it on the way in.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedImage {
    pub image: Image,
    /// The container format detected from the content.
    pub format: image::ImageFormat,
    /// The colour type as stored in the file, e.g. `Rgba16`.
    pub source_color: String,
    /// Lossy conversions the caller should report (16-bit rounding, dropped alpha, ...).
    pub notes: Vec<String>,
}

/// Errors of image input and output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input file is larger than {max} bytes")]
    FileTooLarge { max: u64 },
    #[error(
        "unrecognized image format (expected PNG, JPEG, BMP, PNM, TIFF, GIF, WebP, QOI, ...; \
         detected from the content, not the extension)"
    )]
    UnknownFormat,
    #[error("cannot decode {format:?} image")]
    Decode {
        format: image::ImageFormat,
        #[source]
        source: image::ImageError,
    },
    #[error(
        "image is {width}x{height} (expected at most {max_width}x{max_height} and {max_pixels} pixels)"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
        max_pixels: u64,
    },
    #[error(
        "image exceeds the size limits (expected at most {max_width}x{max_height} and \
         {max_pixels} pixels)"
    )]
    LimitsExceeded {
        max_width: u32,
        max_height: u32,
        max_pixels: u64,
    },
    #[error("image is {width}x{height} (expected width and height >= 1)")]
    Empty { width: u32, height: u32 },
    #[error(
        "image has a translucent alpha channel ({translucent} of {pixels} pixels are not fully \
         opaque) and alpha is not kept here; flatten it or pass --ignore-alpha to drop alpha"
    )]
    TranslucentAlpha { translucent: u64, pixels: u64 },
    #[error(
        "{format} files cannot store this image's alpha channel; write PNG (TIFF and BMP store \
         RGBA but not gray + alpha)"
    )]
    AlphaNotStored { format: &'static str },
    #[error("unsupported colour type {0} (expected gray, gray+alpha, RGB or RGBA)")]
    UnsupportedColor(String),
    #[error("invalid image: {0}")]
    InvalidImage(String),
    #[error(
        "unsupported output extension {ext:?} (expected png, bmp, ppm, pgm, pnm, tif or tiff)"
    )]
    UnsupportedOutputFormat { ext: String },
    #[error("cannot encode {format:?} image")]
    Encode {
        format: image::ImageFormat,
        #[source]
        source: image::ImageError,
    },
}

/// [`load_image_with`] with default options (translucent alpha is an error).
///
/// # Errors
/// See [`load_image_with`].
pub fn load_image(path: &Path) -> Result<LoadedImage, MediaError> {
    load_image_with(path, &LoadOptions::default())
}

/// Read and decode an image file following the policy in the [module docs](self).
///
/// # Errors
/// [`MediaError::Read`] when the file cannot be read, [`MediaError::FileTooLarge`] above
/// `limits.max_file_bytes`, and everything [`decode_image_bytes_with`] returns.
pub fn load_image_with(path: &Path, opts: &LoadOptions) -> Result<LoadedImage, MediaError> {
    let bytes = read_file_limited(path, opts.limits.max_file_bytes)?;
    decode_image_bytes_with(&bytes, opts)
}

/// Read a whole file, refusing files larger than `max` bytes (checked while reading, so a
/// growing file or a special file cannot exhaust memory).
///
/// # Errors
/// [`MediaError::Read`] on I/O errors, [`MediaError::FileTooLarge`] above `max` bytes.
pub fn read_file_limited(path: &Path, max: u64) -> Result<Vec<u8>, MediaError> {
    let read_err = |source| MediaError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > max) {
        return Err(MediaError::FileTooLarge { max });
    }
    Ok(bytes)
}

/// [`decode_image_bytes_with`] with default options.
///
/// # Errors
/// See [`decode_image_bytes_with`].
pub fn decode_image_bytes(bytes: &[u8]) -> Result<LoadedImage, MediaError> {
    decode_image_bytes_with(bytes, &LoadOptions::default())
}

/// Decode an in-memory image following the policy in the [module docs](self).
///
/// # Errors
/// [`MediaError::UnknownFormat`] when the content matches no known signature,
/// [`MediaError::TooLarge`] / [`MediaError::Empty`] for refused sizes (checked before the
/// pixels are decoded), [`MediaError::Decode`] for corrupt data,
/// [`MediaError::TranslucentAlpha`] unless `ignore_alpha` or `keep_alpha`, and
/// [`MediaError::UnsupportedColor`] for colour types outside the policy.
pub fn decode_image_bytes_with(
    bytes: &[u8],
    opts: &LoadOptions,
) -> Result<LoadedImage, MediaError> {
    let lim = &opts.limits;
    if u64::try_from(bytes.len()).map_or(true, |n| n > lim.max_file_bytes) {
        return Err(MediaError::FileTooLarge {
            max: lim.max_file_bytes,
        });
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| MediaError::UnknownFormat)?;
    let format = reader.format().ok_or(MediaError::UnknownFormat)?;
    let decode_err = |source| MediaError::Decode { format, source };

    let mut ilim = image::Limits::default();
    ilim.max_image_width = Some(lim.max_width);
    ilim.max_image_height = Some(lim.max_height);
    ilim.max_alloc = Some(lim.max_alloc);
    reader.limits(ilim.clone());
    let decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => MediaError::LimitsExceeded {
            max_width: lim.max_width,
            max_height: lim.max_height,
            max_pixels: lim.max_pixels,
        },
        e => decode_err(e),
    })?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    if width == 0 || height == 0 {
        return Err(MediaError::Empty { width, height });
    }
    if width > lim.max_width
        || height > lim.max_height
        || u64::from(width) * u64::from(height) > lim.max_pixels
    {
        return Err(too_large(width, height, lim));
    }
    ilim.reserve(image::ImageDecoder::total_bytes(&decoder))
        .map_err(|_| too_large(width, height, lim))?;
    let mut decoder = decoder;
    // Broken orientation metadata is ignored rather than fatal: the pixels are still valid.
    let orientation = image::ImageDecoder::orientation(&mut decoder)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut dynimg = image::DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    if dynimg.width() != width || dynimg.height() != height {
        return Err(decode_err(image::ImageError::Decoding(
            image::error::DecodingError::new(
                format.into(),
                "decoded size differs from the header size",
            ),
        )));
    }
    let source_color = format!("{:?}", dynimg.color());
    let mut notes = Vec::new();
    if orientation != image::metadata::Orientation::NoTransforms {
        dynimg.apply_orientation(orientation);
        notes.push(format!(
            "orientation metadata applied ({orientation:?}): coded as {}x{}",
            dynimg.width(),
            dynimg.height()
        ));
    }
    let image = convert(dynimg, opts, &mut notes)?;
    Ok(LoadedImage {
        image,
        format,
        source_color,
        notes,
    })
}

fn too_large(width: u32, height: u32, lim: &MediaLimits) -> MediaError {
    MediaError::TooLarge {
        width,
        height,
        max_width: lim.max_width,
        max_height: lim.max_height,
        max_pixels: lim.max_pixels,
    }
}

/// Every sample of `k`-sample pixels converted with `to8`; when `has_alpha`, sample `k - 1`
/// is alpha and translucent pixels are counted with `opaque`.
fn pack<T: Copy>(
    samples: &[T],
    k: usize,
    has_alpha: bool,
    opaque: impl Fn(T) -> bool,
    to8: impl Fn(T) -> u8,
) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(samples.len());
    let mut translucent = 0u64;
    for px in samples.chunks_exact(k.max(1)) {
        out.extend(px.iter().map(|&v| to8(v)));
        if has_alpha && px.last().is_some_and(|&a| !opaque(a)) {
            translucent += 1;
        }
    }
    (out, translucent)
}

/// Round a 16-bit sample to the nearest 8-bit value: `round(v * 255 / 65535)`.
pub fn u16_to_u8(v: u16) -> u8 {
    // (65535 * 255 + 32767) / 65535 = 255, so the result always fits.
    ((u32::from(v) * 255 + 32_767) / 65_535) as u8
}

/// Clamp a float sample to `[0, 1]` and round it to 8 bits; NaN becomes 0.
pub fn f32_to_u8(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        // In [0, 255] after the clamp, so the cast is exact.
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

fn convert(
    img: image::DynamicImage,
    opts: &LoadOptions,
    notes: &mut Vec<String>,
) -> Result<Image, MediaError> {
    let color = img.color();
    let (width, height) = (img.width(), img.height());
    let gray = !color.has_color();
    let has_alpha = color.has_alpha();
    let cc = color.channel_count();
    let bits = if cc == 0 {
        0
    } else {
        8 * u32::from(color.bytes_per_pixel()) / u32::from(cc)
    };
    let colour: usize = if gray { 1 } else { 3 };
    let k = colour + usize::from(has_alpha);
    // Every sample is converted (alpha included); an alpha channel that is not kept is
    // stripped below, once its translucent pixels are counted.
    let (mut data, translucent) = match (bits, gray, has_alpha) {
        (8, true, false) => (img.into_luma8().into_raw(), 0),
        (8, false, false) => (img.into_rgb8().into_raw(), 0),
        (8, true, true) => pack(
            img.into_luma_alpha8().as_raw(),
            k,
            true,
            |a| a == u8::MAX,
            |v| v,
        ),
        (8, false, true) => pack(img.into_rgba8().as_raw(), k, true, |a| a == u8::MAX, |v| v),
        (16, true, false) => pack(img.into_luma16().as_raw(), k, false, |_| true, u16_to_u8),
        (16, false, false) => pack(img.into_rgb16().as_raw(), k, false, |_| true, u16_to_u8),
        (16, true, true) => pack(
            img.into_luma_alpha16().as_raw(),
            k,
            true,
            |a| a == u16::MAX,
            u16_to_u8,
        ),
        (16, false, true) => pack(
            img.into_rgba16().as_raw(),
            k,
            true,
            |a| a == u16::MAX,
            u16_to_u8,
        ),
        (32, false, false) => pack(img.into_rgb32f().as_raw(), k, false, |_| true, f32_to_u8),
        (32, false, true) => pack(
            img.into_rgba32f().as_raw(),
            k,
            true,
            |a| a >= 1.0,
            f32_to_u8,
        ),
        _ => return Err(MediaError::UnsupportedColor(format!("{color:?}"))),
    };
    match bits {
        16 => {
            notes.push("16-bit samples rounded to 8 bits (format v1 codes 8-bit precision)".into())
        }
        32 => notes.push(
            "32-bit float samples clamped to [0, 1] and rounded to 8 bits (no tone mapping)".into(),
        ),
        _ => {}
    }
    let pixels = u64::from(width) * u64::from(height);
    let keep_alpha = translucent > 0 && !opts.ignore_alpha;
    if keep_alpha && !opts.keep_alpha {
        return Err(MediaError::TranslucentAlpha {
            translucent,
            pixels,
        });
    }
    if translucent > 0 && opts.ignore_alpha {
        notes.push(format!(
            "alpha channel dropped (--ignore-alpha): {translucent} of {pixels} pixels were not \
             fully opaque; their colour is kept unblended"
        ));
    }
    if has_alpha && !keep_alpha {
        data = data
            .chunks_exact(k)
            .flat_map(|px| px[..colour].iter().copied())
            .collect();
    }
    let image = Image {
        width,
        height,
        channels: (colour + usize::from(keep_alpha)) as u8,
        data,
    };
    image.validate()?;
    Ok(image)
}

/// Output image formats of [`save_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputFormat {
    Png,
    Bmp,
    /// Binary PGM for gray, PPM for RGB.
    Pnm,
    Tiff,
}

impl OutputFormat {
    /// The format for `path`'s extension (case-insensitive): `png` or no extension → PNG,
    /// `bmp`, `ppm`/`pgm`/`pnm`, `tif`/`tiff`.
    ///
    /// # Errors
    /// [`MediaError::UnsupportedOutputFormat`] for any other extension.
    pub fn from_path(path: &Path) -> Result<Self, MediaError> {
        let Some(ext) = path.extension() else {
            return Ok(OutputFormat::Png);
        };
        let ext = ext.to_string_lossy().to_ascii_lowercase();
        match ext.as_str() {
            "png" => Ok(OutputFormat::Png),
            "bmp" => Ok(OutputFormat::Bmp),
            "ppm" | "pgm" | "pnm" => Ok(OutputFormat::Pnm),
            "tif" | "tiff" => Ok(OutputFormat::Tiff),
            _ => Err(MediaError::UnsupportedOutputFormat { ext }),
        }
    }

    fn image_format(self) -> image::ImageFormat {
        match self {
            OutputFormat::Png => image::ImageFormat::Png,
            OutputFormat::Bmp => image::ImageFormat::Bmp,
            OutputFormat::Pnm => image::ImageFormat::Pnm,
            OutputFormat::Tiff => image::ImageFormat::Tiff,
        }
    }
}

/// Encode `img` in memory. The output is deterministic.
///
/// # Errors
/// [`MediaError::InvalidImage`] when `img` breaks its invariants, [`MediaError::Encode`]
/// when the encoder fails.
pub fn encode_image_bytes(img: &Image, format: OutputFormat) -> Result<Vec<u8>, MediaError> {
    img.validate()?;
    let color = match img.channels {
        1 => image::ExtendedColorType::L8,
        2 => image::ExtendedColorType::La8,
        3 => image::ExtendedColorType::Rgb8,
        _ => image::ExtendedColorType::Rgba8,
    };
    match (format, img.channels) {
        (OutputFormat::Pnm, 2 | 4) => return Err(MediaError::AlphaNotStored { format: "PNM" }),
        (OutputFormat::Bmp | OutputFormat::Tiff, 2) => {
            return Err(MediaError::AlphaNotStored {
                format: if format == OutputFormat::Bmp {
                    "BMP"
                } else {
                    "TIFF"
                },
            })
        }
        _ => {}
    }
    let fmt = format.image_format();
    let mut out = Cursor::new(Vec::new());
    image::write_buffer_with_format(&mut out, &img.data, img.width, img.height, color, fmt)
        .map_err(|source| MediaError::Encode {
            format: fmt,
            source,
        })?;
    Ok(out.into_inner())
}

/// Write `img` to `path` in the format given by its extension ([`OutputFormat::from_path`]),
/// atomically; an existing file is replaced only when `overwrite` is true.
///
/// # Errors
/// [`MediaError::UnsupportedOutputFormat`], the errors of [`encode_image_bytes`], and
/// [`MediaError::Write`] (including an existing file without `overwrite`).
pub fn save_image(path: &Path, img: &Image, overwrite: bool) -> Result<(), MediaError> {
    let format = OutputFormat::from_path(path)?;
    let bytes = encode_image_bytes(img, format)?;
    crate::util::write_atomic(path, &bytes, overwrite).map_err(|source| MediaError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u16_rounding() {
        assert_eq!(u16_to_u8(0), 0);
        assert_eq!(u16_to_u8(u16::MAX), 255);
        // 128 * 255 / 65535 = 0.498 -> 0; 129 -> 0.502 -> 1.
        assert_eq!(u16_to_u8(128), 0);
        assert_eq!(u16_to_u8(129), 1);
        // Exact multiples of 257 map to v / 257.
        for v in 0..=255u16 {
            assert_eq!(u16_to_u8(v * 257), v as u8);
        }
        // Agrees with float rounding everywhere.
        for v in 0..=u16::MAX {
            let want = (f64::from(v) * 255.0 / 65535.0).round() as u8;
            assert_eq!(u16_to_u8(v), want, "v = {v}");
        }
    }

    #[test]
    fn f32_rounding() {
        assert_eq!(f32_to_u8(f32::NAN), 0);
        assert_eq!(f32_to_u8(-1.0), 0);
        assert_eq!(f32_to_u8(2.0), 255);
        assert_eq!(f32_to_u8(0.5), 128);
        assert_eq!(f32_to_u8(1.0 / 255.0), 1);
    }

    #[test]
    fn validate_rejects_bad_images() {
        let ok = Image {
            width: 2,
            height: 1,
            channels: 3,
            data: vec![0; 6],
        };
        assert!(ok.validate().is_ok());
        for c in [1u8, 2, 4] {
            let img = Image {
                channels: c,
                data: vec![0; 2 * usize::from(c)],
                ..ok.clone()
            };
            assert!(img.validate().is_ok(), "{c} channels");
        }
        for bad in [
            Image {
                channels: 5,
                data: vec![0; 10],
                ..ok.clone()
            },
            Image {
                channels: 0,
                data: vec![],
                ..ok.clone()
            },
            Image {
                data: vec![0; 5],
                ..ok.clone()
            },
            Image {
                width: 0,
                data: vec![],
                ..ok.clone()
            },
        ] {
            assert!(matches!(bad.validate(), Err(MediaError::InvalidImage(_))));
        }
    }

    #[test]
    fn output_format_by_extension() {
        let f = |s: &str| OutputFormat::from_path(Path::new(s)).ok();
        assert_eq!(f("a.png"), Some(OutputFormat::Png));
        assert_eq!(f("a.PNG"), Some(OutputFormat::Png));
        assert_eq!(f("a"), Some(OutputFormat::Png));
        assert_eq!(f("a.bmp"), Some(OutputFormat::Bmp));
        assert_eq!(f("a.pgm"), Some(OutputFormat::Pnm));
        assert_eq!(f("a.tif"), Some(OutputFormat::Tiff));
        assert_eq!(f("a.jpg"), None);
    }

    #[test]
    fn in_memory_round_trip_all_output_formats() {
        let data: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let rgb = Image {
            width: 5,
            height: 3,
            channels: 3,
            data,
        };
        let gray = Image {
            width: 3,
            height: 5,
            channels: 1,
            data: (0..15).collect(),
        };
        for img in [&rgb, &gray] {
            for fmt in [
                OutputFormat::Png,
                OutputFormat::Bmp,
                OutputFormat::Pnm,
                OutputFormat::Tiff,
            ] {
                let bytes = encode_image_bytes(img, fmt).unwrap();
                let back = decode_image_bytes(&bytes).unwrap();
                // BMP has no gray: it comes back as RGB with equal channels.
                if fmt == OutputFormat::Bmp && img.channels == 1 {
                    assert_eq!(back.image.channels, 3);
                    let g: Vec<u8> = back.image.data.chunks(3).map(|p| p[0]).collect();
                    assert_eq!(g, img.data, "{fmt:?}");
                } else {
                    assert_eq!(&back.image, img, "{fmt:?}");
                }
                assert!(back.notes.is_empty());
                // Deterministic bytes.
                assert_eq!(bytes, encode_image_bytes(img, fmt).unwrap());
            }
        }
    }
}
