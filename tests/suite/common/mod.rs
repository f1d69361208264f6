//! Helpers shared by the sparsity, weight-sharing and audio tests.
#![allow(dead_code)]

use inr::media::Image;

/// `inr meta-train --modality audio --mode modulations` arguments (after the data folder and
/// `-o`) for a tiny audio modulation base that trains in well under a second.
pub const TINY_AUDIO_MOD_BASE_ARGS: [&str; 18] = [
    "--width",
    "8",
    "--depth",
    "2",
    "--latent-dim",
    "3",
    "--cell",
    "16",
    "--freqs",
    "3",
    "--iterations",
    "4",
    "--inner-steps",
    "2",
    "--crop-min",
    "256",
    "--crop-max",
    "512",
];

/// A smooth RGB test image with some texture (deterministic).
pub fn test_image(w: u32, h: u32) -> Image {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let fx = x as f32 / w as f32;
            let fy = y as f32 / h as f32;
            data.push((128.0 + 100.0 * (9.0 * fx).sin() * (5.0 * fy).cos()) as u8);
            data.push((40.0 + 180.0 * fx * fy + 20.0 * (13.0 * fy).sin()) as u8);
            data.push((200.0 - 150.0 * fy + 30.0 * (11.0 * fx).cos()) as u8);
        }
    }
    Image {
        width: w,
        height: h,
        channels: 3,
        data,
    }
}

/// Recomputes the trailing CRC32 of a damaged file (so that the field checks are reached).
pub fn fix_crc(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

/// Every single-byte change (CRC fixed, so the field checks are reached) gives an error or
/// another valid file, never a panic and never the same file; every truncation is an error.
/// `read` parses a file, `inspect` only inspects it (must not panic either).
pub fn assert_flips_and_truncations_are_caught<T: PartialEq + std::fmt::Debug, E>(
    bytes: &[u8],
    original: &T,
    read: impl Fn(&[u8]) -> Result<T, E>,
    inspect: impl Fn(&[u8]),
) {
    for i in 0..bytes.len() - 4 {
        for x in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.to_vec();
            b[i] ^= x;
            fix_crc(&mut b);
            if let Ok(g) = read(&b) {
                assert_ne!(
                    &g, original,
                    "byte {i} changed but the file decodes identically"
                );
            }
            inspect(&b);
        }
    }
    for n in 0..bytes.len() {
        assert!(
            read(&bytes[..n]).is_err(),
            "truncation to {n} bytes accepted"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Audio (tests/audio.rs, tests/audio_grid.rs).
// ---------------------------------------------------------------------------------------------

use inr::audio::{sample_value, to_sample, Audio, AudioSpec, Sample, SampleKind};

pub fn spec(rate: u32, channels: u8, kind: SampleKind, bits: u8) -> AudioSpec {
    AudioSpec {
        sample_rate: rate,
        channels,
        kind,
        bits_per_sample: bits,
    }
}

/// A few partials with an envelope; channel c is detuned so channels differ.
pub fn tone(spec: AudioSpec, frames: usize, amp: f32) -> Audio {
    let mut samples = Vec::with_capacity(frames * usize::from(spec.channels));
    for i in 0..frames {
        let t = i as f32 / spec.sample_rate as f32;
        let env = 0.6 + 0.4 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
        for c in 0..spec.channels {
            let f = 220.0 * (1.0 + 0.25 * f32::from(c));
            let v = (2.0 * std::f32::consts::PI * f * t).sin()
                + 0.4 * (2.0 * std::f32::consts::PI * 2.0 * f * t + 0.3).sin();
            samples.push(amp * env * v / 1.4);
        }
    }
    // Store exactly representable values (as a WAV of this format holds them).
    let samples = samples
        .into_iter()
        .map(|v| sample_value(&spec, to_sample(&spec, v)) as f32)
        .collect();
    Audio { spec, samples }
}

/// Decode, check the restored format and length, and return PSNR and SNR recomputed here.
pub fn decode_and_measure(bytes: &[u8], a: &Audio) -> (f64, f64) {
    let (h, samples) = inr::decode_audio(bytes, &inr::Limits::default()).unwrap();
    assert_eq!(h.sample_rate, a.spec.sample_rate);
    assert_eq!(h.channels, a.spec.channels);
    assert_eq!(h.sample_kind, a.spec.kind);
    assert_eq!(h.bits_per_sample, a.spec.bits_per_sample);
    assert_eq!(h.frames, a.frames());
    assert_eq!(samples.len(), a.samples.len());
    let mut d = inr::metrics::AudioDistortion::default();
    for (&x, &s) in a.samples.iter().zip(&samples) {
        match (a.spec.kind, s) {
            (SampleKind::Int, Sample::Int(_)) | (SampleKind::Float, Sample::Float(_)) => {}
            other => panic!("sample type {other:?}"),
        }
        d.add(f64::from(x), sample_value(&a.spec, s));
    }
    (d.psnr(), d.snr())
}
