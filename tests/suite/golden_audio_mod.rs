//! A committed audio modulation file (codec-spec §12.7) and its committed base decode to pinned
//! samples (CRC32) on every machine: the node shifts, the per-frame blend, the periodic
//! features and the output mapping are specified to the bit. Regenerate only on a deliberate
//! format change: `INR_REGENERATE_GOLDEN=1 cargo test --test golden_audio_mod` and copy the
//! printed CRC below.

use inr::audio::{sample_value, to_sample, Audio, AudioSpec, Sample, SampleKind};
use inr::base::{Base, ModSpec};
use inr::format::{Arch, Limits};
use inr::modulation::ModNet;
use inr::{decode_audio_with, encode_audio_modulated, AudioModEncodeConfig, LatentFit};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/golden_audio_mod_v2.inr"
);
const BASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/golden_audio_mod_base.inrb"
);
/// CRC32 of the decoded 16-bit samples (little endian).
const CRC_SAMPLES: u32 = 0x500318b0;

/// 0.1 s of mono 16-bit audio at 8 kHz (801 frames: not a multiple of the cell).
fn source() -> Audio {
    let spec = AudioSpec {
        sample_rate: 8000,
        channels: 1,
        kind: SampleKind::Int,
        bits_per_sample: 16,
    };
    let samples = (0..801)
        .map(|i| {
            let t = i as f32 / 8000.0;
            let v = 0.5 * (std::f32::consts::TAU * 250.0 * t).sin()
                + 0.2 * (std::f32::consts::TAU * 610.0 * t + 1.0).sin();
            sample_value(&spec, to_sample(&spec, v)) as f32
        })
        .collect();
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
fn golden_audio_modulation_file_decodes_to_pinned_samples() {
    if std::env::var_os("INR_REGENERATE_GOLDEN").is_some() {
        let arch = Arch {
            coord_dims: 1,
            out_channels: 1,
            width: 16,
            depth: 2,
            pe_freqs: 3,
            pe_base_milli: 2000,
            w0_first: 30,
            w0_hidden: 30,
        };
        // A briefly meta-trained base (on the source itself: this pins arithmetic, not
        // generalisation).
        let mut net = ModNet::init(arch, 8, 8, 42);
        let mcfg = inr::modulation::ModMetaConfig {
            iterations: 200,
            tasks: 2,
            crop_min: 256,
            crop_max: 512,
            inner: LatentFit {
                steps: 10,
                lr: 0.05,
                frac: 1.0,
                l2: 0.0,
            },
            outer_lr: 3e-3,
            noise: 0.0,
            seed: 1,
        };
        let mut opt = inr::modulation::Adam::new(net.params.len() + net.map.len());
        for i in 0..mcfg.iterations {
            inr::modulation::meta_train_step_audio(&mut net, &mut opt, &[source()], &mcfg, i);
        }
        let spec = ModSpec {
            latent_dim: 8,
            cell: 8,
        };
        let b = Base::new_modulation(arch, spec, net.flat(), "golden".into()).unwrap();
        std::fs::write(BASE, b.to_bytes().unwrap()).unwrap();
        let cfg = AudioModEncodeConfig {
            fit: LatentFit {
                steps: 100,
                lr: 0.05,
                frac: 1.0,
                l2: 0.0,
            },
            latent_step: 0.05,
            base: Some(b),
            ..Default::default()
        };
        let e = encode_audio_modulated(&mut source(), &cfg, &mut |_: &inr::Progress| {}).unwrap();
        std::fs::write(FIXTURE, &e.bytes).unwrap();
    }
    let bytes = std::fs::read(FIXTURE).expect("tests/fixtures/golden_audio_mod_v2.inr");
    let base = Base::from_bytes(&std::fs::read(BASE).unwrap(), &Limits::default()).unwrap();
    let (h, samples) = decode_audio_with(&bytes, &Limits::default(), &[base]).unwrap();
    let crc = crc_of(&samples);
    println!("CRC_SAMPLES = {crc:#010x}");
    assert_eq!((h.frames, h.channels, h.window_len), (801, 1, 8));
    // The latents still represent the source (guards against pinning garbage).
    let src = source();
    let mut d = inr::metrics::AudioDistortion::default();
    for (&x, &y) in src.samples.iter().zip(&samples) {
        d.add(f64::from(x), sample_value(&src.spec, y));
    }
    println!("psnr {:.2}", d.psnr());
    assert!(d.psnr() > 25.0, "psnr {}", d.psnr());
    assert_eq!(crc, CRC_SAMPLES, "decoded samples changed: not bit-exact");
}
