//! Audio grid mode (codec-spec §14): round trips (mono 16-bit, stereo float, 8/24-bit), odd
//! lengths over several segments, silence, determinism across thread counts, the rate weight
//! moving the rate, and hostile files (truncation, damage, lying headers, wrong readers).

use inr::audio::{sample_value, to_sample, Audio, SampleKind};
use inr::format::{self, FormatError, Limits};

use crate::common;
use common::{decode_and_measure, fix_crc, spec, tone};
use inr::{decode_audio, encode_audio_grid, eval_audio, AudioGridEncodeConfig};

fn cfg(steps: usize) -> AudioGridEncodeConfig {
    let mut c = AudioGridEncodeConfig::default();
    c.fit.steps = steps;
    c
}

fn encode(a: &Audio, c: &AudioGridEncodeConfig) -> inr::AudioEncoded {
    let mut src = a.clone();
    encode_audio_grid(&mut src, c, &mut |_: &inr::Progress| {}).unwrap()
}

#[test]
fn mono_16bit_round_trip_quality_rate_and_determinism() {
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 3000, 0.5);
    let c = AudioGridEncodeConfig {
        threads: Some(1),
        ..cfg(150)
    };
    let e = encode(&a, &c);
    assert!(format::is_audio_grid_file(&e.bytes));
    let (psnr, snr) = decode_and_measure(&e.bytes, &a);
    // The encoder reports the decoder's quality, and eval agrees.
    assert!(
        (psnr - e.quality.psnr).abs() < 1e-9,
        "{psnr} vs {}",
        e.quality.psnr
    );
    let q = eval_audio(&e.bytes, &mut a.clone(), &Limits::default()).unwrap();
    assert!((q.psnr - psnr).abs() < 1e-9 && (q.snr - snr).abs() < 1e-9);
    // Quality band on a smooth tone (measured 47-48 dB at medium, 150 steps).
    assert!(psnr > 40.0 && snr > 15.0, "PSNR {psnr} SNR {snr}");
    // Same input and settings: same bytes, on any thread count.
    let again = encode(
        &a,
        &AudioGridEncodeConfig {
            threads: Some(2),
            ..c.clone()
        },
    );
    assert_eq!(again.bytes, e.bytes);
    // A larger rate weight gives a smaller file and a lower PSNR.
    let mut small = c.clone();
    small.fit.lambda = 0.01;
    let s = encode(&a, &small);
    assert!(
        s.bytes.len() < e.bytes.len(),
        "{} vs {}",
        s.bytes.len(),
        e.bytes.len()
    );
    assert!(s.quality.psnr < psnr);
    // inspect reports the layout.
    let info = format::inspect(&e.bytes).unwrap();
    assert_eq!(info.modality, "audio");
    assert_eq!(info.total_bytes, e.bytes.len() as u64);
    assert_eq!(
        info.header_bytes + info.side_info_bytes + info.payload_bytes + info.crc_bytes,
        info.total_bytes
    );
    let g = info.grid.expect("grid summary");
    assert_eq!(g.levels, c.levels);
    assert_eq!(info.audio.expect("audio summary").windows, 1);
}

#[test]
fn stereo_float_and_8_and_24_bit_formats_are_restored() {
    for s in [
        spec(11025, 2, SampleKind::Float, 32),
        spec(8000, 1, SampleKind::Int, 8),
        spec(8000, 1, SampleKind::Int, 24),
    ] {
        let a = tone(s, 1500, 0.6);
        let e = encode(&a, &cfg(100));
        let (psnr, _) = decode_and_measure(&e.bytes, &a);
        assert!(psnr > 33.0, "{s:?}: {psnr}");
    }
}

#[test]
fn odd_lengths_span_several_segments() {
    // 2,500 frames in segments of 1,000: the last holds 500; a segment longer than the clip.
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 2500, 0.5);
    for (segment, n_seg) in [(1000, 3), (777, 4), (4096, 1)] {
        let c = AudioGridEncodeConfig { segment, ..cfg(80) };
        let e = encode(&a, &c);
        assert_eq!(e.windows, n_seg);
        let f = format::read_audio_grid_file(&e.bytes, &Limits::default()).unwrap();
        assert_eq!(f.segments.len() as u64, n_seg);
        assert_eq!(f.audio.window_len, segment);
        let (psnr, _) = decode_and_measure(&e.bytes, &a);
        assert!(psnr > 33.0, "segment {segment}: {psnr}");
        // Writing the parsed file again gives the same bytes (a canonical layout).
        assert_eq!(format::write_audio_grid_file(&f).unwrap(), e.bytes);
        let info = format::inspect(&e.bytes).unwrap();
        assert_eq!(
            info.header_bytes + info.side_info_bytes + info.payload_bytes + info.crc_bytes,
            e.bytes.len() as u64,
            "segment {segment}"
        );
        assert_eq!(info.audio.expect("audio").windows, n_seg);
    }
}

#[test]
fn silence_stays_silent() {
    let s = spec(8000, 2, SampleKind::Int, 16);
    let a = Audio {
        spec: s,
        samples: vec![0.0; 2 * 1200],
    };
    let e = encode(&a, &cfg(40));
    let (_, samples) = decode_audio(&e.bytes, &Limits::default()).unwrap();
    let peak = samples
        .iter()
        .map(|&v| sample_value(&s, v).abs())
        .fold(0.0, f64::max);
    // The encoder's constant candidate codes a silent segment exactly.
    assert_eq!(peak, 0.0);
    assert!(e.quality.psnr.is_infinite() || e.quality.psnr > 100.0);
}

#[test]
fn hostile_audio_grid_files_give_typed_errors() {
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 700, 0.5);
    let e = encode(
        &a,
        &AudioGridEncodeConfig {
            segment: 300,
            ..cfg(10)
        },
    );
    let bytes = e.bytes;
    let l = Limits::default();
    assert!(format::read_audio_grid_file(&bytes, &l).is_ok());
    // Every truncation and every single-byte flip is rejected (CRC or structure).
    for n in 0..bytes.len() {
        assert!(decode_audio(&bytes[..n], &l).is_err(), "prefix {n}");
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        assert!(decode_audio(&b, &l).is_err(), "flip at {i}");
    }
    // The sample limit is checked before decoding.
    let small = Limits {
        max_samples: 699,
        ..Limits::default()
    };
    assert!(matches!(
        format::read_audio_grid_file(&bytes, &small),
        Err(FormatError::LimitExceeded { value: 700, .. })
    ));
    // Lying headers with a valid CRC: a huge frame count with segments of one frame is
    // refused by the symbol bound before any allocation; a zero segment length or frame count,
    // a bad sample format and a nonzero width are invalid fields.
    let audio = 30; // the audio section follows the 30-byte fixed header
    let mut lies: Vec<Vec<u8>> = Vec::new();
    let mut b = bytes.clone();
    b[audio + 8..audio + 16].copy_from_slice(&u64::from(u32::MAX).to_le_bytes());
    b[audio + 16..audio + 20].copy_from_slice(&1u32.to_le_bytes());
    lies.push(b);
    let mut b = bytes.clone();
    b[audio + 16..audio + 20].copy_from_slice(&0u32.to_le_bytes());
    lies.push(b);
    let mut b = bytes.clone();
    b[audio + 8..audio + 16].copy_from_slice(&0u64.to_le_bytes());
    lies.push(b);
    let mut b = bytes.clone();
    b[audio + 5] = 7;
    lies.push(b);
    let mut b = bytes.clone();
    b[8] = 1; // width
    lies.push(b);
    let mut b = bytes.clone();
    b[14] = 2; // coord_dims: the step tables no longer line up
    lies.push(b);
    for (i, mut b) in lies.into_iter().enumerate() {
        fix_crc(&mut b);
        let r = format::read_audio_grid_file(&b, &l);
        assert!(r.is_err(), "lie {i} accepted");
        assert!(decode_audio(&b, &l).is_err(), "lie {i} decoded");
    }
    // Other readers name this one; this one names theirs.
    let err = format::read_audio_file(&bytes, &l).unwrap_err().to_string();
    assert!(err.contains("read_audio_grid_file"), "{err}");
    assert!(format::read_grid_file(&bytes, &l).is_err());
    let plain = inr::encode_audio(
        &mut a.clone(),
        &inr::AudioEncodeConfig {
            steps: Some(5),
            window: Some(256),
            ..Default::default()
        },
        &mut |_: &inr::Progress| {},
    )
    .unwrap();
    assert!(!format::is_audio_grid_file(&plain.bytes));
    assert!(format::read_audio_grid_file(&plain.bytes, &l).is_err());
}

#[test]
fn bad_settings_are_refused_before_fitting() {
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 100, 0.5);
    for c in [
        AudioGridEncodeConfig {
            segment: 0,
            ..cfg(5)
        },
        AudioGridEncodeConfig {
            net_bits: vec![],
            ..cfg(5)
        },
        AudioGridEncodeConfig {
            levels: 17,
            ..cfg(5)
        },
        cfg(0),
    ] {
        let r = encode_audio_grid(&mut a.clone(), &c, &mut |_: &inr::Progress| {});
        assert!(r.is_err(), "{c:?}");
    }
}

#[test]
fn kbps_target_lands_at_or_just_under_the_rate() {
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 8000, 0.5);
    for t in [8.0, 20.0] {
        let c = AudioGridEncodeConfig {
            target_kbps: Some(t),
            ..cfg(60)
        };
        let e = encode(&a, &c);
        let k = e.quality.kbps;
        assert!(k <= t && k >= 0.85 * t, "target {t}: {k} kbit/s");
        let (psnr, _) = decode_and_measure(&e.bytes, &a);
        assert!((psnr - e.quality.psnr).abs() < 1e-9);
    }
    let bad = AudioGridEncodeConfig {
        target_kbps: Some(0.0),
        ..cfg(5)
    };
    assert!(encode_audio_grid(&mut a.clone(), &bad, &mut |_: &inr::Progress| {}).is_err());
}

#[test]
fn cli_encode_decode_info_eval_in_grid_mode() {
    use assert_cmd::Command;
    let dir = tempfile::tempdir().unwrap();
    let a = tone(spec(8000, 2, SampleKind::Int, 24), 2000, 0.5);
    let wav = dir.path().join("in.wav");
    inr::audio::save_wav(&wav, &a, false).unwrap();
    let inr_path = dir.path().join("x.inr");
    let out = dir.path().join("out.wav");
    let enc = Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "--threads", "2", "encode"])
        .arg(&wav)
        .arg("-o")
        .arg(&inr_path)
        .args(["--mode", "grid", "--steps", "60", "--preset", "small"])
        .output()
        .unwrap();
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&enc.stdout).unwrap();
    assert_eq!(j["modality"], "audio");
    assert_eq!(j["preset"], "grid-small");
    let bytes = std::fs::read(&inr_path).unwrap();
    assert!(format::is_audio_grid_file(&bytes));
    assert_eq!(j["bytes"].as_u64().unwrap(), bytes.len() as u64);
    let dec = Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "decode"])
        .arg(&inr_path)
        .arg("-o")
        .arg(&out)
        .arg("--ref")
        .arg(&wav)
        .output()
        .unwrap();
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&dec.stdout).unwrap();
    let back = inr::audio::load_wav(&out).unwrap();
    assert_eq!(back.spec, a.spec);
    assert_eq!(back.frames(), a.frames());
    assert!((d["psnr"].as_f64().unwrap() - j["psnr"].as_f64().unwrap()).abs() < 1e-9);
    let info = Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "info"])
        .arg(&inr_path)
        .output()
        .unwrap();
    assert!(info.status.success());
    let i: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(i["info"]["modality"], "audio");
    assert_eq!(i["info"]["grid"]["levels"], 8);
    assert_eq!(i["info"]["audio"]["channels"], 2);
    // --bpp is for images; an existing output is kept without --force.
    let again = Command::cargo_bin("inr")
        .unwrap()
        .args(["encode"])
        .arg(&wav)
        .arg("-o")
        .arg(&inr_path)
        .args(["--mode", "grid", "--steps", "5"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read(&inr_path).unwrap(), bytes);
    let bpp = Command::cargo_bin("inr")
        .unwrap()
        .args(["encode"])
        .arg(&wav)
        .arg("-o")
        .arg(dir.path().join("y.inr"))
        .args(["--mode", "grid", "--bpp", "0.5"])
        .output()
        .unwrap();
    assert!(!bpp.status.success());
}

/// Clips of one family: a few partials whose frequencies and envelope depend on the seed.
fn family_clip(seed: u64, frames: usize) -> Audio {
    let s = spec(8000, 1, SampleKind::Int, 16);
    let f0 = 150.0 + 40.0 * (seed % 5) as f32;
    let samples = (0..frames)
        .map(|i| {
            let t = i as f32 / 8000.0;
            let env =
                0.5 + 0.4 * (2.0 * std::f32::consts::PI * (1.0 + seed as f32 * 0.3) * t).sin();
            let v = (2.0 * std::f32::consts::PI * f0 * t).sin()
                + 0.5 * (2.0 * std::f32::consts::PI * 2.0 * f0 * t + 0.7).sin()
                + 0.25 * (2.0 * std::f32::consts::PI * 3.0 * f0 * t + 1.3).sin();
            sample_value(&s, to_sample(&s, 0.35 * env * v)) as f32
        })
        .collect();
    Audio { spec: s, samples }
}

#[test]
fn audio_grid_meta_training_helps_held_out_clips_and_is_deterministic() {
    use inr::grid_meta::{self, AudioGridMetaConfig};
    let ecfg = AudioGridEncodeConfig {
        threads: Some(2),
        ..AudioGridEncodeConfig::default()
    };
    let arch = ecfg.arch(1);
    let train: Vec<Audio> = (0..4).map(|s| family_clip(s, 4000)).collect();
    let mcfg = AudioGridMetaConfig {
        iterations: 40,
        budget: 40,
        crop: 2048,
        ..AudioGridMetaConfig::default()
    };
    let init = inr::grid::init_params(&arch, 0);
    let mut params = init.clone();
    grid_meta::train_audio(&arch, &train, &mcfg, &mut params, 0, &mut |_, _, _| true);
    // Deterministic, and resuming after 15 iterations gives the same bits.
    let mut again = init.clone();
    grid_meta::train_audio(&arch, &train, &mcfg, &mut again, 0, &mut |i, _, _| {
        i + 1 < 15
    });
    grid_meta::train_audio(&arch, &train, &mcfg, &mut again, 15, &mut |_, _, _| true);
    assert_eq!(params, again);
    let base = inr::base::Base::new_audio_grid(arch, params, "test".into()).unwrap();
    // Held-out clips of the family, 40-step encodes: MSE + λ·bits per frame falls.
    let cost = |b: inr::BaseChoice| {
        let mut c = AudioGridEncodeConfig {
            base: b,
            ..ecfg.clone()
        };
        c.fit.steps = 40;
        let mut total = 0.0;
        for s in 10..13 {
            let a = family_clip(s, 3000);
            let e = encode(&a, &c);
            let mse = 10f64.powf(-e.quality.psnr / 10.0);
            total += mse + f64::from(c.fit.lambda) * e.bytes.len() as f64 * 8.0 / 3000.0;
        }
        total
    };
    let random = cost(inr::BaseChoice::None);
    let learned = cost(inr::BaseChoice::Custom(base.clone()));
    assert!(
        learned < 0.95 * random,
        "base {learned:.3e} vs random {random:.3e}"
    );
    // The base round-trips as an audio grid base and is refused where it does not belong.
    let back = inr::base::Base::from_bytes(&base.to_bytes().unwrap(), &Limits::default()).unwrap();
    assert!(back.grid && back.grid_audio && back.is_audio());
    assert_eq!(back.kind(), "audio grid");
    assert_eq!(back.id(), base.id());
    let img = inr::media::Image {
        width: 8,
        height: 8,
        channels: 1,
        data: vec![100; 64],
    };
    let g = inr::GridEncodeConfig {
        base: inr::BaseChoice::Custom(base.clone()),
        ..Default::default()
    };
    let err = inr::encode_grid(&img, &g, &mut |_: &inr::Progress| {}).unwrap_err();
    assert!(err.to_string().contains("audio grid"), "{err}");
    // A stereo clip starts from a mono base (its output copied per channel) and decodes
    // without it; an image grid base is refused for audio.
    let stereo = tone(spec(8000, 2, SampleKind::Int, 16), 500, 0.5);
    let c = AudioGridEncodeConfig {
        base: inr::BaseChoice::Custom(base.clone()),
        ..cfg(5)
    };
    assert_eq!(c.start_id(2), Some(base.id()));
    let e = encode(&stereo, &c);
    let (psnr, _) = decode_and_measure(&e.bytes, &stereo);
    assert!((psnr - e.quality.psnr).abs() < 1e-9);
    let image_base = inr::base::embedded_grid_for(&inr::grid_arch(&Default::default(), 3))
        .expect("embedded image grid base")
        .clone();
    let c = AudioGridEncodeConfig {
        base: inr::BaseChoice::Custom(image_base),
        ..cfg(5)
    };
    let mono = tone(spec(8000, 1, SampleKind::Int, 16), 500, 0.5);
    assert!(encode_audio_grid(&mut mono.clone(), &c, &mut |_: &inr::Progress| {}).is_err());
}

#[test]
fn mono_clips_start_from_the_embedded_audio_grid_base() {
    let c = AudioGridEncodeConfig::default();
    let embedded = inr::base::embedded_audio_grid_for(&c.arch(1)).expect("embedded base");
    assert!(embedded.grid_audio);
    assert_eq!(c.start_id(1), Some(embedded.id()));
    // Clips of several channels start from it too (its output copied to every channel).
    assert_eq!(c.start_id(2), Some(embedded.id()));
    let none = AudioGridEncodeConfig {
        base: inr::BaseChoice::None,
        ..AudioGridEncodeConfig::default()
    };
    assert_eq!(none.start_id(1), None);
    // The start changes the file; both decode without any base.
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 1500, 0.5);
    let from_base = encode(&a, &cfg(30));
    let random = encode(
        &a,
        &AudioGridEncodeConfig {
            base: inr::BaseChoice::None,
            ..cfg(30)
        },
    );
    assert_ne!(from_base.bytes, random.bytes);
    for e in [&from_base, &random] {
        let (psnr, _) = decode_and_measure(&e.bytes, &a);
        assert!((psnr - e.quality.psnr).abs() < 1e-9);
    }
}

/// Segment flags 3 (§14.2, §5.10): a predicted segment's five contexts split by the
/// prediction's fraction. Both predicted codings round-trip to the same samples; the flags
/// byte says which; the writer refuses a split without a predictor or another context set;
/// the reader refuses flags 2; the encoder keeps the smallest coding of each segment.
#[test]
fn segments_split_by_the_prediction_fraction_round_trip_and_are_checked() {
    use inr::entropy::GridContexts;
    use inr::format::{GridSegment, LevelPredictor, SEGMENT_PREDICTED, SEGMENT_SPLIT};
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 700, 0.5);
    let e = encode(
        &a,
        &AudioGridEncodeConfig {
            segment: 300,
            ..cfg(60)
        },
    );
    let l = Limits::default();
    let f = format::read_audio_grid_file(&e.bytes, &l).unwrap();
    let levels = usize::from(f.arch.coord_dims);
    // The encoder's choice per segment is the smallest of its codings.
    for (k, seg) in f.segments.iter().enumerate() {
        let frames = f.audio.window_frames(k as u64);
        let own = format::audio_grid_segment_bytes(&f.arch, frames, seg).unwrap();
        if seg.predictor.is_some() {
            for contexts in [GridContexts::Five, GridContexts::FiveSplit] {
                let other = GridSegment {
                    contexts,
                    ..seg.clone()
                };
                let n = format::audio_grid_segment_bytes(&f.arch, frames, &other).unwrap();
                assert!(own <= n, "segment {k}: {own} vs {n}");
            }
            let plain = GridSegment {
                predictor: None,
                contexts: GridContexts::Five,
                ..seg.clone()
            };
            let n = format::audio_grid_segment_bytes(&f.arch, frames, &plain).unwrap();
            assert!(own <= n, "segment {k}: {own} vs plain {n}");
        }
    }
    // Segment 0 predicted with a fixed predictor, unsplit and split.
    let pred = vec![
        LevelPredictor {
            coefs: [100, 0, 0, 0, 20],
            res_bits: 16,
        };
        levels
    ];
    let with = |contexts| {
        let mut g = f.clone();
        g.segments[0].predictor = Some(pred.clone());
        g.segments[0].contexts = contexts;
        g
    };
    let (unsplit, split) = (with(GridContexts::Five), with(GridContexts::FiveSplit));
    let (ub, sb) = (
        format::write_audio_grid_file(&unsplit).unwrap(),
        format::write_audio_grid_file(&split).unwrap(),
    );
    // The first segment's flags byte follows the header, the audio section and the length.
    let seg0 = 30 + 20 + 4;
    assert_eq!(ub[seg0], SEGMENT_PREDICTED);
    assert_eq!(sb[seg0], SEGMENT_PREDICTED | SEGMENT_SPLIT);
    assert_ne!(ub, sb);
    assert_eq!(format::read_audio_grid_file(&sb, &l).unwrap(), split);
    assert_eq!(format::read_audio_grid_file(&ub, &l).unwrap(), unsplit);
    let samples = |b: &[u8]| decode_audio(b, &l).unwrap().1;
    assert_eq!(samples(&sb), samples(&ub));
    assert_eq!(samples(&ub), samples(&e.bytes));
    // The writer refuses a split without a predictor, and the image files' context sets.
    for (predictor, contexts) in [
        (None, GridContexts::FiveSplit),
        (Some(pred.clone()), GridContexts::Twelve),
        (Some(pred.clone()), GridContexts::TwelveSplit),
    ] {
        let mut g = f.clone();
        g.segments[0].predictor = predictor;
        g.segments[0].contexts = contexts;
        assert!(matches!(
            format::write_audio_grid_file(&g),
            Err(FormatError::InvalidField { .. })
        ));
    }
    // Flags 2 (split without prediction) is invalid; flags 3 on an unsplit stream decodes to
    // an error or other samples, never a panic.
    let mut b = sb.clone();
    b[seg0] = SEGMENT_SPLIT;
    fix_crc(&mut b);
    let err = format::read_audio_grid_file(&b, &l).unwrap_err();
    assert!(err.to_string().contains("segment flags"), "{err}");
    let mut b = ub.clone();
    b[seg0] = SEGMENT_PREDICTED | SEGMENT_SPLIT;
    fix_crc(&mut b);
    if let Ok(d) = decode_audio(&b, &l) {
        assert_ne!(d.1, samples(&ub));
    }
}

/// Segment flags 4 (§14.2, §5.11 with one-row inputs): a segment of at least 2^15 latents
/// gets an ARM when that is its smallest coding; the ARM-coded latents decode to the same
/// samples as the same latents coded plain; the writer and reader check the combination;
/// damaged ARM headers are typed errors; `arm: None` never fits one.
#[test]
fn arm_coded_segments_round_trip_and_are_checked() {
    use inr::entropy::GridContexts;
    use inr::format::{GridSegment, LevelPredictor, SEGMENT_ARM};
    // 20,000 frames: 39,998 latents in one segment (8 levels).
    let a = family_clip(3, 20_000);
    let e = encode(&a, &cfg(60));
    let l = Limits::default();
    let f = format::read_audio_grid_file(&e.bytes, &l).unwrap();
    let seg = &f.segments[0];
    let arm = seg
        .arm
        .clone()
        .expect("the ARM is the smallest coding of this clip");
    assert!(seg.predictor.is_none() && seg.contexts == GridContexts::Five);
    assert_eq!(arm.levels, usize::from(f.arch.coord_dims));
    let seg0 = 30 + 20 + 4;
    assert_eq!(e.bytes[seg0], SEGMENT_ARM);
    assert_eq!(format::write_audio_grid_file(&f).unwrap(), e.bytes);
    // The same latents coded plain: a larger file, the same samples.
    let mut plain = f.clone();
    plain.segments[0].arm = None;
    let pb = format::write_audio_grid_file(&plain).unwrap();
    assert!(
        pb.len() > e.bytes.len(),
        "{} vs {}",
        pb.len(),
        e.bytes.len()
    );
    let samples = |b: &[u8]| decode_audio(b, &l).unwrap().1;
    assert_eq!(samples(&pb), samples(&e.bytes));
    let frames = f.audio.window_frames(0);
    let own = format::audio_grid_segment_bytes(&f.arch, frames, seg).unwrap();
    let n = format::audio_grid_segment_bytes(&f.arch, frames, &plain.segments[0]).unwrap();
    assert!(own < n, "{own} vs {n}");
    // The writer refuses an ARM with a predictor or a split, of other levels, or with the
    // prior models.
    let pred = vec![
        LevelPredictor {
            coefs: [100, 0, 0, 0, 20],
            res_bits: 16,
        };
        arm.levels
    ];
    let mut fewer = arm.clone();
    fewer.levels -= 1;
    fewer.b1.truncate(fewer.levels * fewer.width);
    for s in [
        GridSegment {
            predictor: Some(pred),
            ..seg.clone()
        },
        GridSegment {
            contexts: GridContexts::FiveSplit,
            ..seg.clone()
        },
        GridSegment {
            arm: Some(fewer),
            ..seg.clone()
        },
        // Audio segments have no prior models (§5.11.1 is for image grid files).
        GridSegment {
            arm: Some(arm.clone().with_prior_models(true)),
            ..seg.clone()
        },
    ] {
        let mut g = f.clone();
        g.segments[0] = s;
        assert!(matches!(
            format::write_audio_grid_file(&g),
            Err(FormatError::InvalidField { .. })
        ));
    }
    // The reader refuses flags 5 and 6, and an ARM header of width 0 or 33 or 9 fractional
    // bits; every byte of the header damaged, and every truncation, is an error or other
    // samples, never a panic.
    let t = f.arch.tensor_lens().len() + usize::from(f.arch.coord_dims);
    let hdr = seg0 + 1 + 4 * t;
    for (at, v) in [(seg0, 5u8), (seg0, 6), (hdr, 0), (hdr, 33), (hdr + 1, 9)] {
        let mut b = e.bytes.clone();
        b[at] = v;
        fix_crc(&mut b);
        assert!(
            format::read_audio_grid_file(&b, &l).is_err(),
            "byte {at} = {v}"
        );
    }
    for at in hdr..hdr + 3 + arm.levels {
        for v in [0u8, 1, 2, 7, 16, 17, 255] {
            let mut b = e.bytes.clone();
            b[at] = v;
            fix_crc(&mut b);
            let _ = decode_audio(&b, &l);
        }
    }
    for cut in (0..e.bytes.len()).step_by(97) {
        assert!(format::read_audio_grid_file(&e.bytes[..cut], &l).is_err());
    }
    // Without the ARM fit, no segment has one.
    let off = encode(
        &a,
        &AudioGridEncodeConfig {
            arm: None,
            ..cfg(60)
        },
    );
    let g = format::read_audio_grid_file(&off.bytes, &l).unwrap();
    assert!(g.segments.iter().all(|s| s.arm.is_none()));
    assert!(off.bytes.len() > e.bytes.len());
    // The CLI: `info` shows the ARM, `--arm off` writes the file without one, and `--arm` is
    // refused outside the grid mode.
    use assert_cmd::Command;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("clip.wav");
    inr::audio::save_wav(&wav, &a, false).unwrap();
    let run = |out: &str, extra: &[&str]| {
        Command::cargo_bin("inr")
            .unwrap()
            .args(["--threads", "2", "encode"])
            .arg(&wav)
            .arg("-o")
            .arg(dir.path().join(out))
            .args(["--steps", "60"])
            .args(extra)
            .output()
            .unwrap()
    };
    let info = |out: &str| -> serde_json::Value {
        let o = Command::cargo_bin("inr")
            .unwrap()
            .args(["--json", "info"])
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success());
        serde_json::from_slice(&o.stdout).unwrap()
    };
    assert!(run("a.inr", &[]).status.success());
    assert!(run("b.inr", &["--arm", "off"]).status.success());
    assert_eq!(std::fs::read(dir.path().join("a.inr")).unwrap(), e.bytes);
    assert_eq!(std::fs::read(dir.path().join("b.inr")).unwrap(), off.bytes);
    let (ia, ib) = (info("a.inr"), info("b.inr"));
    assert_eq!(ia["info"]["grid"]["arm"]["width"], 12);
    assert!(ia["info"]["grid"]["arm"]["stream_bytes"].as_u64().unwrap() > 0);
    assert!(ib["info"]["grid"]["arm"].is_null());
    let w = run("c.inr", &["--mode", "weights", "--arm", "off"]);
    assert!(!w.status.success());
    assert!(String::from_utf8_lossy(&w.stderr).contains("--arm"));
}
