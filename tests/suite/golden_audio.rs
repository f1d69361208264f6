//! A committed audio file (format v2, modality 2) decodes to pinned samples (CRC32) on every
//! machine: the 1-D evaluation and the output mapping are specified to the bit (codec-spec
//! §11.7, §11.8). Regenerate only on a deliberate format change:
//! `INR_REGENERATE_GOLDEN=1 cargo test --test golden_audio` and copy the printed CRC below.

use inr::audio::{sample_value, to_sample, Audio, AudioSpec, Sample, SampleKind};
use inr::format::Limits;
use inr::{decode_audio, encode_audio, AudioEncodeConfig};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/golden_audio_v2.inr"
);
/// CRC32 of the decoded 16-bit samples (little endian, channels interleaved).
const CRC_SAMPLES: u32 = 0x69437a1b;

/// 0.1 s of stereo 16-bit audio at 8 kHz (800 frames; the last of 4 windows is short).
fn source() -> Audio {
    let spec = AudioSpec {
        sample_rate: 8000,
        channels: 2,
        kind: SampleKind::Int,
        bits_per_sample: 16,
    };
    let mut samples = Vec::new();
    for i in 0..800 {
        let t = i as f32 / 8000.0;
        let a = 0.5 * (2.0 * std::f32::consts::PI * 300.0 * t).sin();
        let b = 0.3 * (2.0 * std::f32::consts::PI * 450.0 * t + 1.0).sin();
        for v in [a + 0.2 * b, b] {
            samples.push(sample_value(&spec, to_sample(&spec, v)) as f32);
        }
    }
    Audio { spec, samples }
}

fn crc_of(samples: &[Sample]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for s in samples {
        match *s {
            Sample::Int(q) => h.update(&(q as i16).to_le_bytes()),
            Sample::Float(f) => h.update(&f.to_le_bytes()),
        }
    }
    h.finalize()
}

#[test]
fn golden_audio_file_decodes_to_pinned_samples() {
    if std::env::var_os("INR_REGENERATE_GOLDEN").is_some() {
        let cfg = AudioEncodeConfig {
            width: Some(8),
            steps: Some(200),
            window: Some(224),
            ..Default::default()
        };
        let e = encode_audio(&mut source(), &cfg, &mut |_: &inr::Progress| {}).unwrap();
        std::fs::write(FIXTURE, &e.bytes).unwrap();
    }
    let bytes = std::fs::read(FIXTURE).expect("tests/fixtures/golden_audio_v2.inr");
    let (h, samples) = decode_audio(&bytes, &Limits::default()).unwrap();
    let crc = crc_of(&samples);
    println!("CRC_SAMPLES = {crc:#010x}");
    assert_eq!((h.frames, h.channels, h.window_len), (800, 2, 224));
    // The network still represents the source (guards against pinning garbage).
    let src = source();
    let mut d = inr::metrics::AudioDistortion::default();
    for (&x, &y) in src.samples.iter().zip(&samples) {
        d.add(f64::from(x), sample_value(&src.spec, y));
    }
    assert!(d.psnr() > 35.0, "psnr {}", d.psnr());
    assert_eq!(crc, CRC_SAMPLES, "decoded samples changed: not bit-exact");
}

#[test]
fn every_truncation_and_byte_change_of_the_audio_file_is_an_error() {
    let bytes = std::fs::read(FIXTURE).expect("tests/fixtures/golden_audio_v2.inr");
    let l = Limits::default();
    for n in 0..bytes.len() {
        assert!(decode_audio(&bytes[..n], &l).is_err(), "truncated to {n}");
    }
    let mut b = bytes.clone();
    for i in 0..b.len() {
        for x in [1u8, 0x80, 0xFF] {
            b[i] ^= x;
            assert!(decode_audio(&b, &l).is_err(), "byte {i} xor {x}");
            assert!(inr::inspect(&b).is_err(), "inspect: byte {i} xor {x}");
            b[i] ^= x;
        }
    }
}
