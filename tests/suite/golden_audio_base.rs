//! A committed audio file coded from the embedded audio base (format v2, modality 2, flag bit
//! 0, codec-spec §11.10) decodes to pinned samples (CRC32) on every machine: residuals plus
//! base weights (§6.2) then the 1-D evaluation (§11.7, §11.8). The fixture names
//! `bases/audio-medium.inrb` by id, so replacing that base breaks this test on purpose (old
//! files would no longer decode). Regenerate only on a deliberate change:
//! `INR_REGENERATE_GOLDEN=1 cargo test --test golden_audio_base` and copy the printed CRC.

use inr::audio::{sample_value, to_sample, Audio, AudioSpec, Sample, SampleKind};
use inr::base::BaseError;
use inr::format::Limits;
use inr::{decode_audio, encode_audio, AudioEncodeConfig, DecodeError};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/golden_audio_base_v2.inr"
);
/// CRC32 of the decoded 16-bit samples (little endian).
const CRC_SAMPLES: u32 = 0x44e0683a;

/// 0.1 s of mono 16-bit audio at 16 kHz (1,600 frames: three windows of 512 and one of 64).
fn source() -> Audio {
    let spec = AudioSpec {
        sample_rate: 16_000,
        channels: 1,
        kind: SampleKind::Int,
        bits_per_sample: 16,
    };
    let tau = std::f32::consts::TAU;
    let samples = (0..1600)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            let v = 0.4 * (tau * 220.0 * t).sin() + 0.15 * (tau * 660.0 * t + 0.5).sin();
            sample_value(&spec, to_sample(&spec, v)) as f32
        })
        .collect();
    Audio { spec, samples }
}

fn crc_of(samples: &[Sample]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for s in samples {
        if let Sample::Int(q) = *s {
            h.update(&(q as i16).to_le_bytes());
        }
    }
    h.finalize()
}

#[test]
fn golden_audio_file_from_the_embedded_base_decodes_to_pinned_samples() {
    if std::env::var_os("INR_REGENERATE_GOLDEN").is_some() {
        let cfg = AudioEncodeConfig {
            steps: Some(100),
            ..Default::default()
        };
        let e = encode_audio(&mut source(), &cfg, &mut |_: &inr::Progress| {}).unwrap();
        assert!(e.base_id.is_some());
        std::fs::write(FIXTURE, &e.bytes).unwrap();
    }
    let bytes = std::fs::read(FIXTURE).expect("tests/fixtures/golden_audio_base_v2.inr");
    let info = inr::inspect(&bytes).unwrap();
    let emb = inr::base::embedded()
        .iter()
        .find(|b| b.audio_window == Some(512))
        .expect("embedded audio base");
    assert_eq!(info.base_id, Some(format!("{:016x}", emb.id())));
    let (h, samples) = decode_audio(&bytes, &Limits::default()).unwrap();
    let crc = crc_of(&samples);
    println!("CRC_SAMPLES = {crc:#010x}");
    assert_eq!((h.frames, h.channels, h.window_len), (1600, 1, 512));
    let src = source();
    let mut d = inr::metrics::AudioDistortion::default();
    for (&x, &y) in src.samples.iter().zip(&samples) {
        d.add(f64::from(x), sample_value(&src.spec, y));
    }
    assert!(d.psnr() > 35.0, "psnr {}", d.psnr());
    assert_eq!(crc, CRC_SAMPLES, "decoded samples changed: not bit-exact");
    // The base id is covered by the CRC; with the id patched (and the CRC fixed) the decoder
    // refuses the file and names the id it lacks.
    let mut b = bytes.clone();
    let at = 50 + 4 * info.num_tensors;
    b[at] ^= 1;
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    let want = emb.id() ^ 1;
    assert!(matches!(
        decode_audio(&b, &Limits::default()),
        Err(DecodeError::Base(BaseError::Missing { id, .. })) if id == want
    ));
}
