//! Meta-learned audio bases (codec-spec §10.4, §11.10): Reptile over audio windows improves the
//! start, audio files coded from a base name it and decode only with it, the embedded base is
//! used by default. Tiny synthetic signals; every training is counted in steps, not seconds.

use inr::audio::{sample_value, to_sample, Audio, AudioSpec, SampleKind};
use inr::base::{Base, BaseError};
use inr::format::{self, Limits};
use inr::meta::{self, AudioMetaConfig, AudioTask};
use inr::{
    decode_audio, decode_audio_with, encode_audio, eval_audio_with, AudioEncodeConfig, BaseChoice,
    DecodeError, EncodeError, Preset,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn mono16(rate: u32) -> AudioSpec {
    AudioSpec {
        sample_rate: rate,
        channels: 1,
        kind: SampleKind::Int,
        bits_per_sample: 16,
    }
}

/// A family of signals: two partials (random frequencies in one band, random phases) under a
/// slow envelope, stored exactly as 16-bit samples.
fn family_clip(seed: u64, frames: usize, rate: u32) -> Audio {
    let spec = mono16(rate);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tau = std::f32::consts::TAU;
    let (f1, f2): (f32, f32) = (rng.gen_range(150.0..400.0), rng.gen_range(500.0..900.0));
    let (p1, p2): (f32, f32) = (rng.gen_range(0.0..tau), rng.gen_range(0.0..tau));
    let a2: f32 = rng.gen_range(0.2..0.5);
    let samples = (0..frames)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let env = 0.6 + 0.3 * (tau * 4.0 * t).sin();
            let v = 0.5 * env * ((tau * f1 * t + p1).sin() + a2 * (tau * f2 * t + p2).sin());
            sample_value(&spec, to_sample(&spec, v)) as f32
        })
        .collect();
    Audio { spec, samples }
}

const WINDOW: u32 = 128;

fn small_cfg() -> AudioEncodeConfig {
    AudioEncodeConfig {
        preset: Preset::Medium,
        window: Some(WINDOW),
        steps: Some(60),
        base: BaseChoice::None,
        ..Default::default()
    }
}

fn arch() -> inr::format::Arch {
    small_cfg().arch_and_window(&mono16(8000)).expect("arch").0
}

fn meta_cfg(iterations: usize) -> AudioMetaConfig {
    AudioMetaConfig {
        iterations,
        tasks: 4,
        inner_steps: 12,
        window: WINDOW,
        ..AudioMetaConfig::default()
    }
}

fn train_clips() -> Vec<Audio> {
    (0..4).map(|s| family_clip(s, 4000, 8000)).collect()
}

#[test]
fn audio_reptile_improves_psnr_after_k_steps_on_held_out_windows() {
    let arch = arch();
    let shape = inr::bench_api::shape_of(&arch);
    let random = inr::bench_api::siren_init(&shape, 0);
    let mut learned = random.clone();
    let cfg = meta_cfg(200);
    let done = meta::audio_train(
        &arch,
        &train_clips(),
        &cfg,
        &mut learned,
        0,
        &mut |_, _, _| true,
    );
    assert_eq!(done, 200);
    // Held-out windows: other members of the family (seeds never trained on).
    let held: Vec<AudioTask> = (100..106)
        .map(|s| AudioTask {
            samples: family_clip(s, WINDOW as usize, 8000).samples,
            channels: 1,
            sample_rate: 8000,
        })
        .collect();
    let k = 20;
    let before = meta::audio_validate(&arch, &held, &random, k, cfg.inner_lr);
    let after = meta::audio_validate(&arch, &held, &learned, k, cfg.inner_lr);
    eprintln!("PSNR after {k} steps: random {before:.2} dB, base {after:.2} dB");
    assert!(
        after > before + 1.0,
        "PSNR after {k} steps: base {after:.2} dB vs random {before:.2} dB"
    );
}

#[test]
fn audio_training_is_deterministic_and_resumes_bit_for_bit() {
    let arch = arch();
    let shape = inr::bench_api::shape_of(&arch);
    let clips = train_clips();
    let cfg = meta_cfg(6);
    let mut a = inr::bench_api::siren_init(&shape, 0);
    meta::audio_train(&arch, &clips, &cfg, &mut a, 0, &mut |_, _, _| true);
    let mut b = inr::bench_api::siren_init(&shape, 0);
    let stopped = meta::audio_train(&arch, &clips, &cfg, &mut b, 0, &mut |i, _, _| i < 2);
    assert_eq!(stopped, 3);
    // Through a checkpoint file (as `inr meta-train --resume` does).
    let ckpt = Base::new_audio(arch, WINDOW, b, String::new()).expect("base");
    let mut c = Base::from_bytes(&ckpt.to_bytes().expect("bytes"), &Limits::default())
        .expect("parse")
        .params;
    meta::audio_train(&arch, &clips, &cfg, &mut c, 3, &mut |_, _, _| true);
    assert_eq!(a, c);
    // Tasks depend only on (seed, iteration, index).
    assert_eq!(
        meta::audio_task(&clips, &cfg, 5, 1),
        meta::audio_task(&clips, &cfg, 5, 1)
    );
    assert_ne!(
        meta::audio_task(&clips, &cfg, 5, 1),
        meta::audio_task(&clips, &cfg, 5, 2)
    );
    let t = meta::audio_task(&clips, &cfg, 7, 0);
    assert_eq!(t.samples.len(), WINDOW as usize);
    assert!(t.samples.iter().all(|v| v.abs() <= 1.0));
}

fn encode(a: &Audio, cfg: &AudioEncodeConfig) -> Result<inr::AudioEncoded, EncodeError> {
    let mut src = a.clone();
    encode_audio(&mut src, cfg, &mut |_: &inr::Progress| {})
}

#[test]
fn an_audio_file_coded_from_a_base_decodes_only_with_that_base() {
    let arch = arch();
    let shape = inr::bench_api::shape_of(&arch);
    let base = Base::new_audio(
        arch,
        WINDOW,
        inr::bench_api::siren_init(&shape, 42),
        "a".into(),
    )
    .expect("base");
    let clip = family_clip(7, 300, 8000);
    let cfg = AudioEncodeConfig {
        base: BaseChoice::Custom(base.clone()),
        ..small_cfg()
    };
    let e = encode(&clip, &cfg).expect("encode");
    assert_eq!(e.base_id, Some(base.id()));
    let info = inr::inspect(&e.bytes).expect("inspect");
    assert_eq!(info.base_id, Some(format!("{:016x}", base.id())));
    assert_eq!(info.flags, format::FLAG_BASE);
    assert_eq!(
        format::read_audio_file(&e.bytes, &Limits::default())
            .expect("read")
            .base_id,
        Some(base.id())
    );
    // Without the base: a typed error naming its id.
    let err = decode_audio(&e.bytes, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::Base(BaseError::Missing { id, .. }) if id == base.id()),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("{:016x}", base.id())));
    // Another base of the same architecture and window has another id: refused the same way.
    let other = Base::new_audio(arch, WINDOW, base.params.clone(), "b".into()).expect("b");
    assert_ne!(other.id(), base.id());
    assert!(matches!(
        decode_audio_with(&e.bytes, &Limits::default(), std::slice::from_ref(&other)),
        Err(DecodeError::Base(BaseError::Missing { .. }))
    ));
    // With the base: exactly what the encoder measured.
    let mut src = clip.clone();
    let q = eval_audio_with(
        &e.bytes,
        &mut src,
        &Limits::default(),
        std::slice::from_ref(&base),
    )
    .expect("eval");
    assert_eq!(q.psnr, e.quality.psnr);
    let (h, samples) =
        decode_audio_with(&e.bytes, &Limits::default(), std::slice::from_ref(&base)).expect("dec");
    assert_eq!(h.frames, 300);
    assert_eq!(samples.len(), 300);
    // Every truncation and byte flip of a file with a base reference is an error.
    let bases = std::slice::from_ref(&base);
    for n in 0..e.bytes.len() {
        assert!(
            decode_audio_with(&e.bytes[..n], &Limits::default(), bases).is_err(),
            "{n}"
        );
    }
    for i in 0..e.bytes.len() {
        let mut b = e.bytes.clone();
        b[i] ^= 0x41;
        assert!(
            decode_audio_with(&b, &Limits::default(), bases).is_err(),
            "{i}"
        );
    }
    // The same clip without a base: no base reference, flags 0, decodes alone.
    let plain = encode(&clip, &small_cfg()).expect("plain");
    assert_eq!(plain.base_id, None);
    assert_eq!(plain.bytes[6..8], [0, 0]);
    assert!(decode_audio(&plain.bytes, &Limits::default()).is_ok());
}

#[test]
fn unsuitable_bases_are_refused_by_the_encoder() {
    let arch = arch();
    let shape = inr::bench_api::shape_of(&arch);
    let b = Base::new_audio(
        arch,
        WINDOW,
        inr::bench_api::siren_init(&shape, 1),
        "".into(),
    )
    .expect("base");
    let clip = family_clip(3, 200, 8000);
    // Another window length than the base's.
    let cfg = AudioEncodeConfig {
        window: Some(WINDOW * 2),
        base: BaseChoice::Custom(b.clone()),
        ..small_cfg()
    };
    assert!(matches!(
        encode(&clip, &cfg),
        Err(EncodeError::Parameter(_))
    ));
    // An image base.
    let img = inr::base::embedded()
        .iter()
        .find(|b| b.audio_window.is_none() && b.modulation.is_none())
        .expect("an embedded image base")
        .clone();
    let cfg = AudioEncodeConfig {
        window: None,
        base: BaseChoice::Custom(img),
        ..small_cfg()
    };
    assert!(matches!(
        encode(&clip, &cfg),
        Err(EncodeError::Parameter(_))
    ));
    // A stereo clip and a mono base.
    let spec = AudioSpec {
        channels: 2,
        ..mono16(8000)
    };
    let stereo = Audio {
        spec,
        samples: vec![0.25; 400],
    };
    let cfg = AudioEncodeConfig {
        base: BaseChoice::Custom(b),
        ..small_cfg()
    };
    assert!(matches!(
        encode(&stereo, &cfg),
        Err(EncodeError::Parameter(_))
    ));
}

#[test]
fn the_embedded_audio_base_is_the_default_for_16khz_mono_medium() {
    let spec = mono16(16_000);
    let cfg = AudioEncodeConfig {
        steps: Some(40),
        ..AudioEncodeConfig::default()
    };
    let (arch, window) = cfg.arch_and_window(&spec).expect("plan");
    let emb = inr::base::embedded_audio_for(&arch, window).expect("an embedded audio base");
    assert_eq!(emb.audio_window, Some(512));
    let clip = family_clip(11, 1600, 16_000);
    let e = encode(&clip, &cfg).expect("encode");
    assert_eq!(e.base_id, Some(emb.id()));
    // Found without being passed; decodes to what the encoder measured.
    let (_, samples) = decode_audio(&e.bytes, &Limits::default()).expect("decode");
    assert_eq!(samples.len(), 1600);
    let mut src = clip.clone();
    let q = inr::eval_audio(&e.bytes, &mut src, &Limits::default()).expect("eval");
    assert_eq!(q.psnr, e.quality.psnr);
    assert!(q.psnr > 30.0, "{}", q.psnr);
    // Same input and flags, same bytes.
    assert_eq!(encode(&clip, &cfg).expect("again").bytes, e.bytes);
    // `--base none` opts out; other presets (other windows) have no base.
    let none = AudioEncodeConfig {
        base: BaseChoice::None,
        ..cfg.clone()
    };
    assert_eq!(encode(&clip, &none).expect("none").base_id, None);
    let tiny = AudioEncodeConfig {
        preset: Preset::Tiny,
        ..cfg
    };
    assert_eq!(encode(&clip, &tiny).expect("tiny").base_id, None);
}

fn write_wav(path: &std::path::Path, a: &Audio) {
    inr::audio::save_wav(path, a, true).expect("write wav");
}

#[test]
fn cli_meta_train_audio_encode_decode_with_the_base_file() {
    use assert_cmd::Command;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("clips");
    std::fs::create_dir(&data).expect("mkdir");
    for s in 0..2 {
        write_wav(&data.join(format!("c{s}.wav")), &family_clip(s, 2000, 8000));
    }
    std::fs::write(data.join("notes.txt"), "not audio").expect("write");
    let base = dir.path().join("a.inrb");
    let out = Command::cargo_bin("inr")
        .expect("bin")
        .args([
            "--json",
            "--threads",
            "2",
            "meta-train",
            "--modality",
            "audio",
        ])
        .arg(&data)
        .arg("-o")
        .arg(&base)
        .args(["--iterations", "4", "--tasks", "2", "--inner-steps", "4"])
        .args(["--window", "128", "--checkpoint-every", "2"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["modality"], "audio");
    assert_eq!(j["window"], 128);
    let id = j["id"].as_str().expect("id").to_string();
    let b =
        Base::from_bytes(&std::fs::read(&base).expect("read"), &Limits::default()).expect("base");
    assert_eq!(format!("{:016x}", b.id()), id);
    assert_eq!(b.audio_window, Some(128));
    // --resume from the last checkpoint (iteration 4 of 4) gives the same base.
    let again = dir.path().join("b.inrb");
    std::fs::copy(
        dir.path().join("a.inrb.ckpt"),
        dir.path().join("b.inrb.ckpt"),
    )
    .expect("cp");
    let out = Command::cargo_bin("inr")
        .expect("bin")
        .args(["--json", "meta-train", "--modality", "audio"])
        .arg(&data)
        .arg("-o")
        .arg(&again)
        .args(["--iterations", "4", "--tasks", "2", "--inner-steps", "4"])
        .args(["--window", "128", "--checkpoint-every", "2", "--resume"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&again).expect("b"),
        std::fs::read(&base).expect("a")
    );
    // Encode from the base file, then decode without it (refused, naming the id) and with it.
    let wav = dir.path().join("in.wav");
    write_wav(&wav, &family_clip(9, 700, 8000));
    let inr_path = dir.path().join("x.inr");
    let enc = Command::cargo_bin("inr")
        .expect("bin")
        .args(["--json", "encode", "--mode", "weights"])
        .arg(&wav)
        .arg("-o")
        .arg(&inr_path)
        .arg("--base")
        .arg(&base)
        .args(["--steps", "30"])
        .output()
        .expect("run");
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&enc.stdout).expect("json");
    assert_eq!(e["base"], id.as_str());
    let dec = |with_base: bool| {
        let mut c = Command::cargo_bin("inr").expect("bin");
        c.args(["decode"])
            .arg(&inr_path)
            .arg("-o")
            .arg(dir.path().join("out.wav"))
            .arg("--force");
        if with_base {
            c.arg("--base").arg(&base);
        }
        c.output().expect("run")
    };
    let fail = dec(false);
    let err = String::from_utf8_lossy(&fail.stderr);
    assert_eq!(fail.status.code(), Some(1), "{err}");
    assert!(err.contains(&id) && !err.contains("panick"), "{err}");
    let ok = dec(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The audio base is refused for an image.
    let png = dir.path().join("x.png");
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]))
        .save(&png)
        .expect("png");
    let bad = Command::cargo_bin("inr")
        .expect("bin")
        .args(["encode"])
        .arg(&png)
        .arg("-o")
        .arg(dir.path().join("img.inr"))
        .arg("--base")
        .arg(&base)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("audio base"), "{err}");
}
