//! `inr decode`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

use super::{check_output, json_psnr, load_input, path_str, print_json, read_inr, say, Ctx};

/// Decode a .inr file into an image (PNG, BMP, PPM/PGM or TIFF by extension) or a WAV file.
///
/// The network is a continuous function, so it can be rendered at any size with --size or
/// --scale. With --ref, the PSNR of the decoded image against the original and the bpp
/// (8 x .inr file bytes / coded pixels) are printed. The output format follows the extension:
/// png (default), bmp, ppm/pgm/pnm, tif/tiff. Written atomically; an existing file is
/// replaced only with --force.
#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// Input .inr file.
    #[arg(value_name = "IN.inr")]
    pub input: PathBuf,
    /// Output image (or .wav for an audio file).
    #[arg(short, long, value_name = "OUT.png")]
    pub output: PathBuf,
    /// Render at this size instead of the coded one, e.g. 1536x1024.
    #[arg(long, value_name = "WxH", value_parser = parse_size, conflicts_with = "scale")]
    pub size: Option<Size>,
    /// Render at F times the coded size (rounded, at least 1 pixel), e.g. 2 or 0.5.
    #[arg(long, value_name = "F", value_parser = parse_scale)]
    pub scale: Option<f64>,
    /// Original image: print the PSNR of the decoded image against it, and the bpp.
    #[arg(long = "ref", value_name = "ORIGINAL")]
    pub reference: Option<PathBuf>,
    /// Drop a translucent alpha channel of the --ref image (compare colours only).
    #[arg(long)]
    pub ignore_alpha: bool,
    /// A base file (.inrb) the input may have been coded from, besides the embedded ones
    /// (repeatable).
    #[arg(long = "base", value_name = "FILE.inrb")]
    pub bases: Vec<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub limits: super::LimitArgs,
}

/// A render size `WxH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

/// Parse `WxH` (or `WXH`) with both sides at least 1.
pub fn parse_size(s: &str) -> Result<Size, String> {
    let err = || format!("invalid size {s:?} (expected WxH with W, H >= 1, e.g. 512x384)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(err)?;
    let w: u32 = w.trim().parse().map_err(|_| err())?;
    let h: u32 = h.trim().parse().map_err(|_| err())?;
    if w == 0 || h == 0 {
        return Err(err());
    }
    Ok(Size {
        width: w,
        height: h,
    })
}

/// Parse a finite scale factor > 0.
pub fn parse_scale(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!(
            "invalid scale {s:?} (expected a number > 0, e.g. 2 or 0.5)"
        )),
    }
}

/// `round(n * f)`, at least 1.
///
/// # Errors
/// When the result does not fit in a `u32`.
pub fn scale_dim(n: u32, f: f64) -> anyhow::Result<u32> {
    let v = (f64::from(n) * f).round().max(1.0);
    if v > f64::from(u32::MAX) {
        anyhow::bail!(
            "scaled size {v} is too large (expected at most {})",
            u32::MAX
        );
    }
    // In [1, u32::MAX] and integral, so the cast is exact.
    Ok(v as u32)
}

pub fn run(args: DecodeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    check_output(&args.input, &args.output, args.force)?;
    let limits = args.limits.limits();
    let bytes = read_inr(&args.input, &limits)?;
    if inr::format::peek_modality(&bytes).ok() == Some(inr::format::MODALITY_AUDIO) {
        return super::audio::decode(args, &bytes, ctx);
    }
    inr::media::OutputFormat::from_path(&args.output)?;
    let bases = super::load_bases(&args.bases)?;
    let reference = match &args.reference {
        Some(p) => {
            let l = load_input(p, args.ignore_alpha)?;
            ctx.notes(&l.notes);
            Some(l.image)
        }
        None => None,
    };
    let decode = |size: Option<(u32, u32)>| {
        let opts = inr::DecodeOptions {
            size,
            bases: bases.clone(),
            limits: limits.clone(),
        };
        inr::decode(&bytes, &opts).map_err(|e| {
            super::decode_context(e, format!("cannot decode {}", args.input.display()))
        })
    };

    let start = Instant::now();
    // The coded size is known after a decode at the native size; that decode is only done
    // separately when rendering at another size needs it (--scale, or --size with --ref).
    let (img, coded) = match (args.size, args.scale) {
        (None, None) => {
            let img = decode(None)?;
            let coded = (img.width, img.height);
            (img, Some(coded))
        }
        (Some(s), _) => {
            let coded = match reference {
                Some(_) => {
                    let native = decode(None)?;
                    Some((native.width, native.height))
                }
                None => None,
            };
            (decode(Some((s.width, s.height)))?, coded)
        }
        (None, Some(f)) => {
            let native = decode(None)?;
            let coded = (native.width, native.height);
            let size = (scale_dim(coded.0, f)?, scale_dim(coded.1, f)?);
            let img = if size == coded {
                native
            } else {
                decode(Some(size))?
            };
            (img, Some(coded))
        }
    };
    let secs = start.elapsed().as_secs_f64();

    inr::media::save_image(&args.output, &img, args.force)?;

    let file_bytes = bytes.len() as u64;
    let quality = match (&reference, coded) {
        (Some(r), Some((w, h))) => {
            let psnr = inr::metrics::psnr(r, &img).context(
                "cannot compare with the reference (render at its size to compute PSNR)",
            )?;
            Some((psnr, inr::metrics::bpp(file_bytes, w, h)?))
        }
        _ => None,
    };
    if ctx.json {
        let mut v = serde_json::json!({
            "input": path_str(&args.input),
            "output": path_str(&args.output),
            "width": img.width,
            "height": img.height,
            "channels": img.channels,
            "bytes": file_bytes,
            "time_s": secs,
        });
        if let (Some((psnr, bpp)), Some(obj)) = (quality, v.as_object_mut()) {
            obj.insert("psnr".into(), json_psnr(psnr));
            obj.insert("bpp".into(), bpp.into());
        }
        print_json(&v)
    } else {
        if !ctx.quiet {
            eprintln!(
                "decoded {}x{} in {secs:.2} s -> {}",
                img.width,
                img.height,
                args.output.display()
            );
        }
        match quality {
            Some((psnr, bpp)) => say(format_args!(
                "PSNR {} dB  bpp {bpp:.3}  bytes {file_bytes}",
                inr::metrics::format_psnr(psnr)
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_syntax() {
        assert_eq!(
            parse_size("512x384"),
            Ok(Size {
                width: 512,
                height: 384
            })
        );
        assert_eq!(parse_size("3X2").map(|s| (s.width, s.height)), Ok((3, 2)));
        for bad in [
            "", "512", "x384", "512x", "0x5", "5x0", "-1x4", "axb", "1x2x3", "1.5x2",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scale_syntax_and_rounding() {
        assert_eq!(parse_scale("2"), Ok(2.0));
        assert_eq!(parse_scale("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "x"] {
            assert!(parse_scale(bad).is_err(), "{bad:?}");
        }
        assert_eq!(scale_dim(17, 0.5).unwrap(), 9); // 8.5 rounds away from zero
        assert_eq!(scale_dim(3, 0.01).unwrap(), 1);
        assert_eq!(scale_dim(16, 2.0).unwrap(), 32);
        assert!(scale_dim(u32::MAX, 2.0).is_err());
    }
}
