//! Full decode (`inr::decode`: container, entropy decoding, dequantization, rendering) and
//! the container round trip (`format::read_file` -> `write_file` -> `read_file`).
//!
//! Limits are lowered so that one input costs milliseconds (the defaults allow 2^24
//! parameters, 2^26 grid latents and 2^28 pixels: bounded, but seconds per input). Invariants checked on
//! success: output size matches the header, and a file the reader accepts re-serialises to a
//! file the reader accepts with identical contents (the writer may pick the other entropy
//! model mode, so bytes need not be identical).
#![no_main]

use inr::format::{self, Limits};
use inr::DecodeOptions;
use libfuzzer_sys::fuzz_target;

mod common;

fn limits() -> Limits {
    Limits {
        max_pixels: 1 << 14,
        max_params: 1 << 14,
        max_latents: 1 << 14,
        max_samples: 1 << 14,
        ..Limits::default()
    }
}

/// Modulation-mode files (flag bit 2, §12): `decode` must agree with `read_mod_file`, except
/// that it may refuse a well-formed file whose base it lacks or that does not match the base.
fn check_mod(bytes: &[u8], limits: &Limits, opts: &DecodeOptions) {
    let parsed = format::read_mod_file(bytes, limits);
    let decoded = inr::decode(bytes, opts);
    match (&parsed, &decoded) {
        (Ok(f), Ok(img)) => {
            assert_eq!((img.width, img.height), (f.width, f.height));
            assert_eq!(img.data.len(), img.width as usize * img.height as usize * 3);
            let again = format::write_mod_file(f).expect("an accepted file re-serialises");
            let back = format::read_mod_file(&again, limits).expect("and is accepted again");
            assert_eq!(&back, f);
        }
        (Err(e), Err(_)) => {
            let _ = e.to_string();
        }
        (Ok(_), Err(inr::DecodeError::Base(_) | inr::DecodeError::Parameter(_))) => {}
        (Ok(_), Err(e)) => panic!("decode rejected a modulation file read_mod_file accepts: {e}"),
        (Err(e), Ok(_)) => panic!("decode accepted a file read_mod_file rejects: {e}"),
    }
}

/// Grid-mode files (flag bit 3, §13): `decode` must agree with `read_grid_file` (except that
/// a shared-synthesis file, §13.8, may name a base the decoder does not have or that does not
/// fit it), and an accepted file re-serialises to the same contents.
fn check_grid(bytes: &[u8], limits: &Limits, opts: &DecodeOptions) {
    let parsed = format::read_grid_file(bytes, limits);
    let decoded = inr::decode(bytes, opts);
    match (&parsed, &decoded) {
        (Ok(f), Ok(img)) => {
            assert_eq!((img.width, img.height), (f.width, f.height));
            let c = usize::from(f.arch.out_channels);
            assert_eq!(img.data.len(), img.width as usize * img.height as usize * c);
            let again = format::write_grid_file(f).expect("an accepted file re-serialises");
            let back = format::read_grid_file(&again, limits).expect("and is accepted again");
            assert_eq!(&back, f);
        }
        (Err(e), Err(_)) => {
            let _ = e.to_string();
        }
        (Ok(_), Err(inr::DecodeError::Format(_))) => {} // e.g. an output-size limit
        (Ok(f), Err(inr::DecodeError::Base(_) | inr::DecodeError::Parameter(_)))
            if f.base_id.is_some() => {}
        (Ok(_), Err(e)) => panic!("decode rejected a grid file read_grid_file accepts: {e}"),
        (Err(e), Ok(_)) => panic!("decode accepted a file read_grid_file rejects: {e}"),
    }
}

/// Audio grid files (modality 2, flag bit 3, §14): `decode_audio` must agree with
/// `read_audio_grid_file` (no base is involved); on success the sample count matches the
/// header and an accepted file re-serialises to the same contents.
fn check_audio_grid(bytes: &[u8], limits: &Limits) {
    let parsed = format::read_audio_grid_file(bytes, limits);
    let decoded = inr::decode_audio(bytes, limits);
    match (&parsed, &decoded) {
        (Ok(f), Ok((h, samples))) => {
            assert_eq!(h, &f.audio);
            assert_eq!(
                samples.len() as u64,
                f.audio.frames * u64::from(f.audio.channels)
            );
            let again = format::write_audio_grid_file(f).expect("an accepted file re-serialises");
            let back =
                format::read_audio_grid_file(&again, limits).expect("and is accepted again");
            assert_eq!(&back, f);
        }
        (Err(e), Err(_)) => {
            let _ = e.to_string();
        }
        (Ok(_), Err(e)) => panic!("decode_audio rejected a file read_audio_grid_file accepts: {e}"),
        (Err(e), Ok(_)) => panic!("decode_audio accepted a file read_audio_grid_file rejects: {e}"),
    }
}

/// Files whose masks are their base's support (flag bit 9, §4.6.2): `read_file` stops at
/// `BaseMasksNeedBase` (no embedded base is sparse, so `decode` cannot have the base either);
/// `read_file_with_base` is then run with base weights of the header's parameter count (zeros
/// at a pattern chosen by the input, so the counts sometimes match and sometimes do not) and
/// of one weight fewer. On success the file re-serialises and reads back the same.
fn check_base_masks(bytes: &[u8], limits: &Limits) {
    let Ok(info) = format::inspect(bytes) else {
        return;
    };
    let n = info.num_params as usize; // <= limits.max_params: read_file checked it first
    let period = 1 + bytes.iter().fold(0usize, |a, &b| a + usize::from(b)) % 4;
    let base: Vec<f32> = (0..n)
        .map(|i| if i % period == 0 { 0.0 } else { 0.25 })
        .collect();
    match format::read_file_with_base(bytes, limits, Some(&base)) {
        Ok(f) => {
            assert!(f.base_masks);
            let again = format::write_file(&f).expect("an accepted file re-serialises");
            let back = format::read_file_with_base(&again, limits, Some(&base))
                .expect("and is accepted again");
            assert_eq!(back, f);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if n > 0 {
        assert!(format::read_file_with_base(bytes, limits, Some(&base[1..])).is_err());
    }
}

fn check(bytes: &[u8]) {
    let limits = limits();
    if format::is_audio_grid_file(bytes) {
        return check_audio_grid(bytes, &limits);
    }
    if format::is_grid_file(bytes) {
        let opts = DecodeOptions {
            limits: limits.clone(),
            ..Default::default()
        };
        return check_grid(bytes, &limits, &opts);
    }
    if format::is_modulation_file(bytes) {
        let opts = DecodeOptions {
            limits: limits.clone(),
            ..Default::default()
        };
        return check_mod(bytes, &limits, &opts);
    }
    let parsed = format::read_file(bytes, &limits);
    if let Err(format::FormatError::BaseMasksNeedBase { .. }) = parsed {
        check_base_masks(bytes, &limits);
    }
    let opts = DecodeOptions {
        limits: limits.clone(),
        ..Default::default()
    };
    let decoded = inr::decode(bytes, &opts);
    match (&parsed, &decoded) {
        (Ok(f), Ok(img)) => {
            assert_eq!((img.width, img.height), (f.width, f.height));
            assert_eq!(img.channels, f.arch.out_channels);
            assert_eq!(
                img.data.len(),
                f.width as usize * f.height as usize * usize::from(f.arch.out_channels)
            );
            let again = format::write_file(f).expect("an accepted file re-serialises");
            let back = format::read_file(&again, &limits).expect("and is accepted again");
            assert_eq!(&back, f);
        }
        (Err(e), Err(_)) => {
            let _ = e.to_string();
        }
        // At the coded size, pixels <= 2^14 and parameters <= 2^14 keep the render work far
        // below its limit, so nothing may refuse a file the container accepts.
        (Ok(_), Err(e)) => panic!("decode rejected a file read_file accepts: {e}"),
        (Err(e), Ok(_)) => panic!("decode accepted a file read_file rejects: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&common::with_valid_crc(data));
});
