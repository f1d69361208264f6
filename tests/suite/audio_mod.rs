//! Audio modulation mode (codec-spec §12.7): round trips (mono and stereo, odd lengths),
//! base checks, step monotonicity, rate control, meta-learning, hostile files. Tiny networks
//! and clips so it runs in seconds.

use crate::common;

use inr::audio::{Audio, AudioSpec, SampleKind};
use inr::base::{Base, BaseError, ModSpec};
use inr::format::{self, Arch, FormatError, Limits};
use inr::modulation::{self, Adam, LatentFit, ModMetaConfig, ModNet, Packed, Target};
use inr::{decode_audio_with, encode_audio_modulated, AudioModEncodeConfig, DecodeError};

fn arch(channels: u8) -> Arch {
    Arch {
        coord_dims: 1,
        out_channels: channels,
        width: 16,
        depth: 2,
        pe_freqs: 3,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    }
}

/// A few decaying tones whose pitches depend on `seed`; `channels` interleaved (the second
/// channel is a phase-shifted copy at another level).
fn clip(frames: usize, channels: u8, seed: u32) -> Audio {
    let f = [
        180.0 + 40.0 * (seed % 5) as f32,
        530.0 + 25.0 * (seed % 3) as f32,
    ];
    let mut samples = Vec::with_capacity(frames * usize::from(channels));
    for i in 0..frames {
        let t = i as f32 / 16_000.0;
        let env = 0.5 + 0.4 * (t * 7.0 + seed as f32).sin();
        for c in 0..channels {
            let ph = c as f32 * 0.9;
            let v = env
                * (0.4 * (std::f32::consts::TAU * f[0] * t + ph).sin()
                    + 0.2 * (std::f32::consts::TAU * f[1] * t).sin())
                * (1.0 - 0.3 * c as f32);
            // Quantize like a 16-bit WAV would.
            samples.push((v * 32768.0).round() / 32768.0);
        }
    }
    Audio {
        spec: AudioSpec {
            sample_rate: 16_000,
            channels,
            kind: SampleKind::Int,
            bits_per_sample: 16,
        },
        samples,
    }
}

fn base_of(net: &ModNet) -> Base {
    let spec = ModSpec {
        latent_dim: net.latent_dim as u8,
        cell: net.cell as u8,
    };
    Base::new_modulation(net.arch, spec, net.flat(), "test".into()).unwrap()
}

fn meta_cfg(iterations: usize) -> ModMetaConfig {
    ModMetaConfig {
        iterations,
        tasks: 2,
        crop_min: 256,
        crop_max: 512,
        inner: LatentFit {
            steps: 5,
            lr: 0.05,
            frac: 1.0,
            l2: 0.0,
        },
        outer_lr: 3e-3,
        noise: 0.0,
        seed: 5,
    }
}

fn enc_cfg(b: &Base) -> AudioModEncodeConfig {
    AudioModEncodeConfig {
        fit: LatentFit {
            steps: 20,
            lr: 0.05,
            frac: 1.0,
            l2: 0.0,
        },
        latent_step: 0.1,
        base: Some(b.clone()),
        ..AudioModEncodeConfig::default()
    }
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum();
    10.0 * (4.0 / (se / a.len() as f64).max(1e-12)).log10()
}

fn decoded_values(bytes: &[u8], b: &Base) -> (format::AudioHeader, Vec<f32>) {
    let (h, s) = decode_audio_with(bytes, &Limits::default(), std::slice::from_ref(b)).unwrap();
    let spec = inr::output_spec(&h);
    let v = s
        .into_iter()
        .map(|x| inr::audio::sample_value(&spec, x) as f32)
        .collect();
    (h, v)
}

#[test]
fn mono_and_stereo_round_trips_restore_the_clip_and_match_the_encoder() {
    for channels in [1u8, 2] {
        let net = ModNet::init(arch(channels), 4, 16, 1);
        let b = base_of(&net);
        let mut a = clip(3001, channels, 0); // not a multiple of the cell
        a.spec.bits_per_sample = 24;
        let e1 = encode_audio_modulated(&mut a.clone(), &enc_cfg(&b), &mut |_| {}).unwrap();
        let e2 = encode_audio_modulated(&mut a.clone(), &enc_cfg(&b), &mut |_| {}).unwrap();
        assert_eq!(e1.bytes, e2.bytes, "same input and flags, same bytes");
        assert!(format::is_audio_modulation_file(&e1.bytes));
        assert_eq!(e1.base_id, Some(b.id()));
        let (h, v) = decoded_values(&e1.bytes, &b);
        assert_eq!(
            (h.sample_rate, h.channels, h.bits_per_sample, h.frames),
            (16_000, channels, 24, 3001)
        );
        assert_eq!(v.len(), a.samples.len());
        let p = psnr(&v, &a.samples);
        assert!(
            (p - e1.quality.psnr).abs() < 1e-6,
            "encoder reports the decoder's PSNR: {p} vs {}",
            e1.quality.psnr
        );
        // The file is read back field for field.
        let f = format::read_audio_mod_file(&e1.bytes, &Limits::default()).unwrap();
        assert_eq!(f.cell(), 16);
        assert_eq!(f.channels.len(), 4);
        assert_eq!(f.channels[0].symbols.len(), 3001usize.div_ceil(16) + 1);
        let info = inr::inspect(&e1.bytes).unwrap();
        assert_eq!(info.modality, "audio");
        assert!(info.modulation.is_some() && info.audio.is_some());
    }
}

#[test]
fn the_output_does_not_depend_on_the_thread_count() {
    let net = ModNet::init(arch(1), 4, 16, 2);
    let b = base_of(&net);
    let a = clip(5000, 1, 1);
    let mut c1 = enc_cfg(&b);
    c1.threads = Some(1);
    let mut c2 = enc_cfg(&b);
    c2.threads = Some(2);
    let e1 = encode_audio_modulated(&mut a.clone(), &c1, &mut |_| {}).unwrap();
    let e2 = encode_audio_modulated(&mut a.clone(), &c2, &mut |_| {}).unwrap();
    assert_eq!(e1.bytes, e2.bytes);
}

#[test]
fn more_latent_steps_never_give_a_worse_fit() {
    let net = ModNet::init(arch(1), 4, 16, 3);
    let pk = Packed::new(&net);
    let a = clip(2000, 1, 2);
    let tgt = Target::audio(&net, a.samples.clone());
    let mut last = f64::NEG_INFINITY;
    for steps in [0, 3, 10, 30] {
        let fit = LatentFit {
            steps,
            lr: 0.05,
            frac: 1.0,
            l2: 0.0,
        };
        let z = modulation::fit_latents(&net, &pk, &tgt, &fit, 0, &mut |_| {});
        let y = modulation::render_audio(&net, &z, 2000, 0, 2000);
        let p = psnr(&y, &a.samples);
        assert!(p >= last - 1e-9, "{steps} steps: {p} < {last}");
        last = p;
    }
    assert!(
        last > psnr(&vec![0.0; 2000], &a.samples),
        "fitting beats silence"
    );
}

#[test]
fn rendering_in_ranges_equals_rendering_the_whole_clip() {
    let net = ModNet::init(arch(2), 3, 10, 4);
    let frames = 1234u32;
    let nodes = frames.div_ceil(10) as usize + 1;
    let z: Vec<f32> = (0..nodes * 3)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.05)
        .collect();
    let all = modulation::render_audio(&net, &z, frames, 0, frames);
    let mut parts = Vec::new();
    for (s, l) in [(0u32, 7u32), (7, 500), (507, 3), (510, 724)] {
        parts.extend(modulation::render_audio(&net, &z, frames, s, l));
    }
    assert_eq!(all, parts);
}

#[test]
fn rate_target_lands_at_or_just_below_the_requested_kbps() {
    let net = ModNet::init(arch(1), 6, 16, 5);
    let b = base_of(&net);
    let a = clip(8000, 1, 3);
    let free = encode_audio_modulated(&mut a.clone(), &enc_cfg(&b), &mut |_| {}).unwrap();
    let target = 0.6 * free.quality.kbps;
    let mut cfg = enc_cfg(&b);
    cfg.target_kbps = Some(target);
    let e = encode_audio_modulated(&mut a.clone(), &cfg, &mut |_| {}).unwrap();
    assert!(
        e.quality.kbps <= target && e.quality.kbps >= 0.9 * target,
        "{} kbit/s for a target of {target}",
        e.quality.kbps
    );
}

#[test]
fn meta_training_improves_the_fit_on_held_aside_clips() {
    let init = ModNet::init(arch(1), 4, 16, 6);
    let mut net = init.clone();
    let train: Vec<Audio> = (0..4).map(|k| clip(4000, 1, k)).collect();
    let held: Vec<Vec<f32>> = (10..12).map(|k| clip(2000, 1, k).samples).collect();
    let cfg = meta_cfg(60);
    let mut opt = Adam::new(net.params.len() + net.map.len());
    for i in 0..cfg.iterations {
        modulation::meta_train_step_audio(&mut net, &mut opt, &train, &cfg, i);
    }
    let fit = LatentFit {
        steps: 10,
        ..cfg.inner
    };
    let before = modulation::validate_audio(&init, &held, &fit);
    let after = modulation::validate_audio(&net, &held, &fit);
    assert!(
        after > before + 0.5,
        "meta-learning: {before:.2} dB -> {after:.2} dB after 10 latent steps"
    );
}

#[test]
fn base_checks_name_the_missing_base_and_refuse_the_wrong_kind() {
    let net = ModNet::init(arch(1), 4, 16, 7);
    let b = base_of(&net);
    let a = clip(1000, 1, 4);
    let e = encode_audio_modulated(&mut a.clone(), &enc_cfg(&b), &mut |_| {}).unwrap();
    // Without the base: refused, the error names it.
    match decode_audio_with(&e.bytes, &Limits::default(), &[]) {
        Err(DecodeError::Base(BaseError::Missing { id, .. })) => assert_eq!(id, b.id()),
        other => panic!("expected a missing base, got {other:?}"),
    }
    // Another audio modulation base: not the one named, refused.
    let other = base_of(&ModNet::init(arch(1), 4, 16, 8));
    assert!(matches!(
        decode_audio_with(&e.bytes, &Limits::default(), &[other]),
        Err(DecodeError::Base(BaseError::Missing { .. }))
    ));
    // A file naming an audio *weight* base is refused as the wrong kind.
    let wb = Base::new_audio(arch(1), 16, vec![0.0; arch(1).num_params()], "w".into()).unwrap();
    let mut f = format::read_audio_mod_file(&e.bytes, &Limits::default()).unwrap();
    f.base_id = wb.id();
    let bytes = format::write_audio_mod_file(&f).unwrap();
    assert!(matches!(
        decode_audio_with(&bytes, &Limits::default(), &[wb]),
        Err(DecodeError::Base(BaseError::WrongKind { .. }))
    ));
    // An audio modulation base round-trips through its file, with modality 2.
    let bytes = b.to_bytes().unwrap();
    assert_eq!(bytes[4..6], [2, 2]);
    assert_eq!(Base::from_bytes(&bytes, &Limits::default()).unwrap(), b);
    // The encoder refuses a clip whose channel count is not the base's.
    let stereo = clip(1000, 2, 0);
    assert!(encode_audio_modulated(&mut stereo.clone(), &enc_cfg(&b), &mut |_| {}).is_err());
}

#[test]
fn readers_refuse_each_others_files_by_name_and_hostile_files_give_errors() {
    let net = ModNet::init(arch(1), 3, 8, 9);
    let b = base_of(&net);
    let a = clip(700, 1, 5);
    let e = encode_audio_modulated(&mut a.clone(), &enc_cfg(&b), &mut |_| {}).unwrap();
    let lim = Limits::default();
    for err in [
        format::read_mod_file(&e.bytes, &lim).unwrap_err(),
        format::read_audio_file(&e.bytes, &lim).unwrap_err(),
    ] {
        assert!(
            err.to_string().contains("read_audio_mod_file"),
            "names the right reader: {err}"
        );
    }
    // Truncations and single-byte damage: errors, never panics or a wrong success.
    for n in 0..e.bytes.len() {
        assert!(format::read_audio_mod_file(&e.bytes[..n], &lim).is_err());
    }
    for i in 0..e.bytes.len() {
        let mut bad = e.bytes.clone();
        bad[i] ^= 0x5a;
        assert!(
            decode_audio_with(&bad, &lim, std::slice::from_ref(&b)).is_err(),
            "flipped byte {i} was accepted"
        );
    }
    // A valid CRC over a hostile frame count (audio section offset 8 after the 30-byte
    // header): the latent limit, checked before anything is allocated or decoded.
    let mut bad = e.bytes.clone();
    bad[38..46].copy_from_slice(&u64::from(u32::MAX).to_le_bytes());
    let n = bad.len();
    let crc = crc32fast::hash(&bad[..n - 4]);
    bad[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        format::read_audio_mod_file(&bad, &lim),
        Err(FormatError::LimitExceeded { .. })
    ));
    let mut f = format::read_audio_mod_file(&e.bytes, &lim).unwrap();
    f.audio.frames = u64::from(u32::MAX);
    assert!(matches!(
        format::write_audio_mod_file(&f),
        Err(FormatError::LimitExceeded { .. })
    ));
    // window_len must be the cell.
    let mut f = format::read_audio_mod_file(&e.bytes, &lim).unwrap();
    f.audio.window_len = 9;
    assert!(format::write_audio_mod_file(&f).is_err());
}

fn write_wav(path: &std::path::Path, a: &Audio) {
    inr::audio::save_wav(path, a, true).unwrap();
}

#[test]
fn cli_meta_train_encode_decode_info_eval_in_audio_modulation_mode() {
    use assert_cmd::Command;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clips");
    std::fs::create_dir(&data).unwrap();
    for k in 0..2 {
        write_wav(&data.join(format!("c{k}.wav")), &clip(3000, 1, k));
    }
    let base = dir.path().join("a.inrb");
    let train = || {
        let mut c = Command::cargo_bin("inr").unwrap();
        c.args([
            "--quiet",
            "meta-train",
            "--modality",
            "audio",
            "--mode",
            "modulations",
        ])
        .arg(&data)
        .arg("-o")
        .arg(&base)
        .args(common::TINY_AUDIO_MOD_BASE_ARGS)
        .args(["--force", "--checkpoint-every", "2"]);
        c
    };
    train().assert().success();
    let first = std::fs::read(&base).unwrap();
    train().assert().success();
    assert_eq!(std::fs::read(&base).unwrap(), first, "deterministic");
    let b = Base::from_bytes(&first, &Limits::default()).unwrap();
    assert!(b.is_audio() && b.modulation.is_some());

    let wav = dir.path().join("x.wav");
    write_wav(&wav, &clip(2500, 1, 7));
    let out = dir.path().join("x.inr");
    let enc = Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "encode", "--mode", "modulations", "--steps", "5"])
        .arg(&wav)
        .arg("-o")
        .arg(&out)
        .arg("--base")
        .arg(&base)
        .assert()
        .success();
    let j: serde_json::Value = serde_json::from_slice(&enc.get_output().stdout).unwrap();
    assert_eq!(j["modality"], "audio");
    assert_eq!(j["preset"], "modulations");
    let info = Command::cargo_bin("inr")
        .unwrap()
        .arg("info")
        .arg(&out)
        .assert()
        .success();
    let text = String::from_utf8_lossy(&info.get_output().stdout).to_string();
    assert!(
        text.contains("mode: modulations") && text.contains("frames"),
        "{text}"
    );
    // Without the base the decoder refuses the file and names the base.
    let dec = dir.path().join("y.wav");
    let fail = Command::cargo_bin("inr")
        .unwrap()
        .arg("decode")
        .arg(&out)
        .arg("-o")
        .arg(&dec)
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&fail.get_output().stderr).to_string();
    assert!(err.contains(&format!("{:016x}", b.id())), "{err}");
    Command::cargo_bin("inr")
        .unwrap()
        .arg("decode")
        .arg(&out)
        .arg("-o")
        .arg(&dec)
        .arg("--base")
        .arg(&base)
        .assert()
        .success();
    let back = inr::audio::load_wav(&dec).unwrap();
    assert_eq!(back.frames(), 2500);
    let ev = Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "eval"])
        .arg(&wav)
        .arg(&out)
        .arg("--base")
        .arg(&base)
        .assert()
        .success();
    let e: serde_json::Value = serde_json::from_slice(&ev.get_output().stdout).unwrap();
    assert!(
        (e["psnr"].as_f64().unwrap() - j["psnr"].as_f64().unwrap()).abs() < 1e-6,
        "eval measures what encode reported"
    );
    // --kbps needs the modulation or grid mode; audio takes no --bpp.
    for extra in [
        &["--mode", "weights", "--kbps", "8"][..],
        &["--bpp", "0.5"][..],
    ] {
        Command::cargo_bin("inr")
            .unwrap()
            .arg("encode")
            .arg(&wav)
            .arg("-o")
            .arg(dir.path().join("z.inr"))
            .args(extra)
            .assert()
            .failure();
    }
}

#[test]
fn the_training_pass_measures_exactly_what_the_renderer_outputs() {
    for channels in [1u8, 2] {
        let net = ModNet::init(arch(channels), 3, 12, 10);
        let pk = Packed::new(&net);
        let a = clip(3000, channels, 6);
        let tgt = Target::audio(&net, a.samples.clone());
        let nodes = 3000usize.div_ceil(12) + 1;
        let z: Vec<f32> = (0..nodes * 3)
            .map(|i| ((i * 29 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let out = modulation::pass(&net, &pk, &tgt, &net.node_shifts(&z), 1.0, 0, false);
        let y = modulation::render_audio(&net, &z, 3000, 0, 3000);
        let se: f64 = y
            .iter()
            .zip(&a.samples)
            .map(|(&p, &q)| f64::from(p - q).powi(2))
            .sum();
        assert_eq!(out.count, a.samples.len());
        let rel = (out.sse - se).abs() / se;
        assert!(rel < 1e-4, "pass {} vs render {se}", out.sse);
    }
}

#[test]
fn base_files_whose_modality_does_not_match_the_network_are_refused() {
    let fix = |b: &mut Vec<u8>| {
        let n = b.len();
        let crc = crc32fast::hash(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    };
    // An audio modulation base relabelled as an image one (modality 1, coord_dims 1).
    let audio = base_of(&ModNet::init(arch(1), 4, 16, 11))
        .to_bytes()
        .unwrap();
    let mut b = audio.clone();
    b[5] = 1;
    fix(&mut b);
    assert!(Base::from_bytes(&b, &Limits::default()).is_err());
    // An image modulation base relabelled as audio (modality 2, coord_dims 2).
    let img_arch = Arch {
        coord_dims: 2,
        out_channels: 3,
        ..arch(1)
    };
    let img = base_of(&ModNet::init(img_arch, 4, 16, 12))
        .to_bytes()
        .unwrap();
    assert_eq!(img[5], 1);
    let mut b = img.clone();
    b[5] = 2;
    fix(&mut b);
    assert!(Base::from_bytes(&b, &Limits::default()).is_err());
    // Unchanged, both parse, and only the audio one is an audio base.
    assert!(Base::from_bytes(&audio, &Limits::default())
        .unwrap()
        .is_audio());
    assert!(!Base::from_bytes(&img, &Limits::default())
        .unwrap()
        .is_audio());
}
