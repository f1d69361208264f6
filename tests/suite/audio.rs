//! Audio: WAV in, WAV out (codec-spec §11). Tiny synthetic clips written with hound in temp
//! directories; quality bands, exact restoration of the WAV format, odd lengths, silence,
//! clipping, determinism across thread counts, and hostile inputs (WAV and .inr).

use std::path::Path;

use assert_cmd::Command;
use inr::audio::{
    decode_wav_bytes, load_wav, sample_value, to_sample, Audio, AudioError, Sample, SampleKind,
};
use inr::format::{self, FormatError, Limits};

use crate::common;
use common::{decode_and_measure, fix_crc, spec, tone};
use inr::{decode_audio, encode_audio, eval_audio, AudioEncodeConfig, Preset};

fn cfg() -> AudioEncodeConfig {
    AudioEncodeConfig {
        preset: Preset::Medium,
        width: Some(12),
        steps: Some(150),
        window: Some(256),
        ..Default::default()
    }
}

fn encode(a: &Audio, c: &AudioEncodeConfig) -> inr::AudioEncoded {
    let mut src = a.clone();
    encode_audio(&mut src, c, &mut |_: &inr::Progress| {}).unwrap()
}

#[test]
fn mono_16bit_round_trip_quality_and_determinism() {
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 1500, 0.5);
    let e = encode(&a, &cfg());
    let (psnr, snr) = decode_and_measure(&e.bytes, &a);
    // The encoder reports exactly what the decoder produces.
    assert!(
        (psnr - e.quality.psnr).abs() < 1e-9,
        "{psnr} {}",
        e.quality.psnr
    );
    assert!((snr - e.quality.snr).abs() < 1e-9);
    assert!(psnr > 35.0 && snr > 15.0, "psnr {psnr} snr {snr}");
    let dur = 1500.0 / 8000.0;
    assert!((e.quality.kbps - 8.0 * e.bytes.len() as f64 / dur / 1000.0).abs() < 1e-9);
    assert_eq!(e.windows, 6); // ceil(1500 / 256)
                              // Same bytes on 1 and 2 threads.
    let one = encode(
        &a,
        &AudioEncodeConfig {
            threads: Some(1),
            ..cfg()
        },
    );
    let two = encode(
        &a,
        &AudioEncodeConfig {
            threads: Some(2),
            ..cfg()
        },
    );
    assert_eq!(one.bytes, two.bytes);
    assert_eq!(one.bytes, e.bytes);
    // The header says audio; the image decoder refuses it with a modality error.
    assert_eq!(
        format::peek_modality(&e.bytes).unwrap(),
        format::MODALITY_AUDIO
    );
    let info = inr::inspect(&e.bytes).unwrap();
    assert_eq!(info.modality, "audio");
    assert_eq!(info.total_bytes, e.bytes.len() as u64);
    assert_eq!(info.audio.as_ref().unwrap().windows, 6);
    assert!(matches!(
        inr::decode(&e.bytes, &Default::default()),
        Err(inr::DecodeError::Format(FormatError::InvalidField {
            field: "modality",
            ..
        }))
    ));
}

#[test]
fn stereo_float_round_trip_codes_channels_jointly() {
    let a = tone(spec(11025, 2, SampleKind::Float, 32), 1200, 0.7);
    let e = encode(&a, &cfg());
    let (psnr, snr) = decode_and_measure(&e.bytes, &a);
    assert!(psnr > 33.0 && snr > 12.0, "psnr {psnr} snr {snr}");
    let info = inr::inspect(&e.bytes).unwrap();
    assert_eq!(info.arch.out_channels, 2); // one network with 2 outputs per window
    assert_eq!(info.arch.coord_dims, 1);
}

#[test]
fn eight_and_24_bit_formats_are_restored() {
    for bits in [8u8, 24, 32] {
        let a = tone(spec(8000, 1, SampleKind::Int, bits), 700, 0.5);
        let c = AudioEncodeConfig {
            steps: Some(60),
            ..cfg()
        };
        let e = encode(&a, &c);
        let (psnr, _) = decode_and_measure(&e.bytes, &a);
        assert!(psnr > 25.0, "{bits}-bit psnr {psnr}");
    }
}

#[test]
fn odd_length_and_window_longer_than_clip() {
    // 1000 = 3 * 256 + 232: the last window is short.
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 1000, 0.4);
    let e = encode(&a, &cfg());
    assert_eq!(e.windows, 4);
    let (psnr, _) = decode_and_measure(&e.bytes, &a);
    assert!(psnr > 35.0, "{psnr}");
    // A single frame, and a clip shorter than one window.
    for frames in [1usize, 37] {
        let a = tone(spec(8000, 1, SampleKind::Int, 16), frames, 0.4);
        let e = encode(&a, &cfg());
        assert_eq!(e.windows, 1);
        decode_and_measure(&e.bytes, &a);
    }
}

#[test]
fn silence_stays_silent() {
    let s = spec(8000, 1, SampleKind::Int, 16);
    let a = Audio {
        spec: s,
        samples: vec![0.0; 600],
    };
    let e = encode(&a, &cfg());
    let (_, samples) = decode_audio(&e.bytes, &Limits::default()).unwrap();
    let peak = samples
        .iter()
        .map(|&v| sample_value(&s, v).abs())
        .fold(0.0, f64::max);
    assert!(peak < 1e-3, "peak {peak}");
    // PSNR is finite or infinite but never NaN; SNR of silence is not a number we report
    // as positive.
    assert!(!e.quality.psnr.is_nan() && e.quality.psnr > 60.0);
    assert!(!(e.quality.snr > 0.0 && e.quality.snr.is_finite()));
}

#[test]
fn output_mapping_is_clipping_safe() {
    for bits in [8u8, 16, 24, 32] {
        let s = spec(8000, 1, SampleKind::Int, bits);
        let half = 1i64 << (bits - 1);
        for (v, want) in [
            (0.0f32, 0i64),
            (1.0, half - 1),
            (5.0, half - 1),
            (-1.0, -half),
            (-7.5, -half),
            (f32::INFINITY, half - 1),
            (f32::NEG_INFINITY, -half),
            (f32::NAN, 0),
        ] {
            assert_eq!(
                to_sample(&s, v),
                Sample::Int(want as i32),
                "{bits} bits, {v}"
            );
        }
    }
    let f = spec(8000, 1, SampleKind::Float, 32);
    assert_eq!(to_sample(&f, 3.0), Sample::Float(1.0));
    assert_eq!(to_sample(&f, -3.0), Sample::Float(-1.0));
    assert_eq!(to_sample(&f, f32::NAN), Sample::Float(0.0));
    // A full-scale square wave: overshoot of the network is clipped, never wrapped around.
    let s = spec(8000, 1, SampleKind::Int, 16);
    let samples = (0..800)
        .map(|i| {
            if (i / 40) % 2 == 0 {
                32767.0 / 32768.0
            } else {
                -1.0
            }
        })
        .collect();
    let a = Audio { spec: s, samples };
    let e = encode(&a, &cfg());
    let (_, snr) = decode_and_measure(&e.bytes, &a);
    assert!(snr > 5.0, "snr {snr}");
}

fn write_wav(path: &Path, a: &Audio) {
    inr::audio::save_wav(path, a, false).unwrap();
}

#[test]
fn wav_io_round_trips_and_rejects_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, bits) in [
        (SampleKind::Int, 8u8),
        (SampleKind::Int, 16),
        (SampleKind::Int, 24),
        (SampleKind::Int, 32),
        (SampleKind::Float, 32),
    ] {
        let a = tone(spec(22050, 2, kind, bits), 300, 0.8);
        let p = dir.path().join(format!("{bits}{kind:?}.wav"));
        write_wav(&p, &a);
        let b = load_wav(&p).unwrap();
        assert_eq!(b.spec, a.spec);
        assert_eq!(b.samples, a.samples, "{bits} {kind:?}");
        // Writing never replaces a file without overwrite.
        assert!(inr::audio::save_wav(&p, &a, false).is_err());
    }
    let good = std::fs::read(dir.path().join("16Int.wav")).unwrap();
    // Truncations and garbage: errors, never panics.
    for n in [0usize, 4, 11, 12, 30, 44, good.len() - 3] {
        assert!(decode_wav_bytes(&good[..n]).is_err(), "prefix {n}");
    }
    assert!(matches!(
        decode_wav_bytes(b"definitely not a RIFF/WAVE file at all"),
        Err(AudioError::Wav(_))
    ));
    // An empty clip.
    let empty = Audio {
        spec: spec(8000, 1, SampleKind::Int, 16),
        samples: vec![],
    };
    let p = dir.path().join("empty.wav");
    write_wav(&p, &empty);
    assert!(matches!(load_wav(&p), Err(AudioError::Empty)));
    // Non-finite float samples.
    let mut nan = tone(spec(8000, 1, SampleKind::Float, 32), 10, 0.5);
    nan.samples[3] = f32::NAN;
    let p = dir.path().join("nan.wav");
    let mut w = inr::audio::WavSink::create(&p, nan.spec, false).unwrap();
    w.push(
        &nan.samples
            .iter()
            .map(|&v| Sample::Float(v))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    w.finish().unwrap();
    assert!(matches!(
        load_wav(&p),
        Err(AudioError::NonFinite { index: 3 })
    ));
    // An unsupported format: 16-bit float (patched header).
    let mut b = good.clone();
    b[20] = 3; // WAVE_FORMAT_IEEE_FLOAT with 16 bits per sample
    assert!(decode_wav_bytes(&b).is_err());
}

#[test]
fn hostile_audio_inr_files_give_typed_errors() {
    let a = tone(spec(8000, 1, SampleKind::Int, 16), 600, 0.5);
    let e = encode(
        &a,
        &AudioEncodeConfig {
            steps: Some(20),
            ..cfg()
        },
    );
    let bytes = e.bytes;
    let l = Limits::default();
    assert!(format::read_audio_file(&bytes, &l).is_ok());
    // The sample limit (frames x channels = 600 here) is checked before decoding.
    let small = Limits {
        max_samples: 599,
        ..Limits::default()
    };
    assert!(matches!(
        format::read_audio_file(&bytes, &small),
        Err(FormatError::LimitExceeded { value: 600, .. })
    ));
    // Every truncation and every single-byte flip is rejected (CRC or structure).
    for n in 0..bytes.len() {
        assert!(decode_audio(&bytes[..n], &l).is_err(), "prefix {n}");
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert!(decode_audio(&b, &l).is_err(), "flip at {i}");
    }
    // Valid CRC, invalid fields (offsets: codec-spec §3, §11.2).
    let patch = |off: usize, v: &[u8]| {
        let mut b = bytes.clone();
        b[off..off + v.len()].copy_from_slice(v);
        fix_crc(&mut b);
        format::read_audio_file(&b, &l)
    };
    let field = |r: Result<_, FormatError>| match r {
        Err(FormatError::InvalidField { field, .. }) => field,
        Err(FormatError::LimitExceeded { what, .. }) => what,
        other => panic!("{:?}", other.map(|_: format::AudioInrFile| ())),
    };
    assert_eq!(field(patch(8, &[1])), "width/height");
    assert_eq!(field(patch(16, &[2])), "coord_dims");
    assert_eq!(field(patch(17, &[2])), "out_channels");
    assert_eq!(field(patch(30, &[0, 0, 0, 0])), "sample rate");
    assert_eq!(field(patch(34, &[0])), "channels");
    assert_eq!(field(patch(35, &[7])), "sample format");
    assert_eq!(field(patch(36, &[12])), "bits per sample");
    assert_eq!(field(patch(37, &[1])), "audio section reserved byte");
    assert_eq!(field(patch(38, &[0; 8])), "frame count");
    assert_eq!(field(patch(46, &[0; 4])), "window length");
    // A huge clip claimed by a tiny file: refused before allocating.
    assert!(matches!(
        patch(38, &u32::MAX.to_le_bytes()),
        Err(FormatError::LimitExceeded { .. }) | Err(FormatError::Entropy(_))
    ));
    let r = patch(38, &u32::MAX.to_le_bytes());
    assert!(r.is_err());
    // Future versions and image readers.
    let mut b = bytes.clone();
    b[4] = 3;
    assert!(matches!(
        format::read_audio_file(&b, &l),
        Err(FormatError::UnsupportedVersion { found: 3 })
    ));
    // An image file is not an audio file.
    let img = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/golden_v1.inr"
    ))
    .unwrap();
    assert!(matches!(
        format::read_audio_file(&img, &l),
        Err(FormatError::UnsupportedVersion { found: 1 })
    ));
    // The reference must be the same clip.
    let mut other = tone(spec(8000, 1, SampleKind::Int, 16), 599, 0.5);
    assert!(eval_audio(&bytes, &mut other, &l).is_err());
}

#[test]
fn cli_encode_decode_info_eval_on_wav() {
    let dir = tempfile::tempdir().unwrap();
    let a = tone(spec(8000, 2, SampleKind::Int, 24), 900, 0.5);
    let wav = dir.path().join("in.wav");
    write_wav(&wav, &a);
    let inr_path = dir.path().join("x.inr");
    let out = dir.path().join("out.wav");
    let enc = Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "--threads", "2", "encode"])
        .arg(&wav)
        .arg("-o")
        .arg(&inr_path)
        .args([
            "--mode", "weights", "--steps", "60", "--window", "256", "--width", "8",
        ])
        .output()
        .unwrap();
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&enc.stdout).unwrap();
    assert_eq!(j["modality"], "audio");
    let bytes = std::fs::read(&inr_path).unwrap();
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
    let back = load_wav(&out).unwrap();
    assert_eq!(back.spec, a.spec);
    assert_eq!(back.frames(), a.frames());
    assert!((d["psnr"].as_f64().unwrap() - j["psnr"].as_f64().unwrap()).abs() < 1e-9);
    let ev = Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "eval"])
        .arg(&wav)
        .arg(&inr_path)
        .output()
        .unwrap();
    assert!(ev.status.success());
    let v: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(v["psnr"], j["psnr"]);
    assert_eq!(v["snr"], j["snr"]);
    let info = Command::cargo_bin("inr")
        .unwrap()
        .args(["info"])
        .arg(&inr_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success() && text.contains("sample_rate: 8000"),
        "{text}"
    );
    // Decoding audio to an image name, or over an existing file without --force, fails.
    let fail = Command::cargo_bin("inr")
        .unwrap()
        .args(["decode"])
        .arg(&inr_path)
        .arg("-o")
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    assert!(!fail.status.success());
    let fail = Command::cargo_bin("inr")
        .unwrap()
        .args(["decode"])
        .arg(&inr_path)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!fail.status.success());
    // A corrupt WAV input gets a clean error, not a panic.
    let bad = dir.path().join("bad.wav");
    let mut raw = std::fs::read(&wav).unwrap();
    raw.truncate(40);
    std::fs::write(&bad, raw).unwrap();
    let fail = Command::cargo_bin("inr")
        .unwrap()
        .args(["encode"])
        .arg(&bad)
        .arg("-o")
        .arg(dir.path().join("bad.inr"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&fail.stderr);
    assert_eq!(fail.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error:") && !err.contains("panick"),
        "{err}"
    );
}

#[test]
fn cli_rd_audio_measures_clips_beside_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clips");
    std::fs::create_dir(&data).unwrap();
    let s = spec(8000, 1, SampleKind::Int, 16);
    let (a, b) = (tone(s, 2000, 0.5), tone(s, 1500, 0.2));
    write_wav(&data.join("a.wav"), &a);
    write_wav(&data.join("b.wav"), &b);
    std::fs::write(data.join("notes.txt"), "not audio").unwrap();
    let csv = dir.path().join("base.csv");
    std::fs::write(
        &csv,
        "clip,codec,param,bytes,kbps,snr_db\n\
         a,opus,6,900,9.0,4.0\na,opus,8,1100,11.0,7.0\n\
         b,opus,6,700,9.5,3.0\nb,opus,8,900,12.0,6.0\n\
         missing,opus,6,1,1.0,1.0\n",
    )
    .unwrap();
    let out = dir.path().join("report");
    let run = |extra: &[&str]| {
        Command::cargo_bin("inr")
            .unwrap()
            .args([
                "--json",
                "--quiet",
                "--threads",
                "2",
                "rd",
                "--modality",
                "audio",
            ])
            .arg(&data)
            .arg("-o")
            .arg(&out)
            .arg("--baselines")
            .arg(&csv)
            .args(["--presets", "tiny,small", "--steps", "60", "--base", "none"])
            .args(extra)
            .output()
            .unwrap()
    };
    let r = run(&[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let names: Vec<&str> = v["codecs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["inr", "opus"]);
    let inr = &v["codecs"][0]["results"];
    assert_eq!(inr["param"], serde_json::json!(["tiny", "small"]));
    let kbps: Vec<f64> = (0..2).map(|i| inr["kbps"][i].as_f64().unwrap()).collect();
    assert!(kbps[1] > kbps[0], "{kbps:?}");
    assert!(inr["psnr"][0].as_f64().unwrap() > 15.0);
    assert!(inr["encode_s_per_audio_s"][0].as_f64().unwrap() > 0.0);
    // Baseline means are over both clips; they have no timings.
    let opus = &v["codecs"][1]["results"];
    assert!((opus["kbps"][0].as_f64().unwrap() - 9.25).abs() < 1e-9);
    assert!((opus["snr"][1].as_f64().unwrap() - 6.5).abs() < 1e-9);
    assert!(opus["encode_s"][0].is_null());
    assert_eq!(
        v["unmatched_baseline_clips"],
        serde_json::json!(["missing"])
    );
    assert_eq!(v["bd"][0]["anchor"], "opus");
    for f in [
        "rd.json", "rd.svg", "rd.png", "snr.svg", "snr.png", "a.csv", "b.csv",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The per-clip rows: an inr rate from the real file size, a baseline PSNR derived from its
    // SNR and the clip's energy.
    let rows = std::fs::read_to_string(out.join("a.csv")).unwrap();
    let ms = a.samples.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / 2000.0;
    let mut seen = 0;
    for line in rows.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (bytes, kbps, psnr, snr) = (
            f[2].parse::<f64>().unwrap(),
            f[3].parse::<f64>().unwrap(),
            f[4].parse::<f64>().unwrap(),
            f[5].parse::<f64>().unwrap(),
        );
        if f[0] == "inr" {
            assert!((kbps - 8.0 * bytes / 0.25 / 1000.0).abs() < 1e-3, "{line}");
        } else {
            assert_eq!(f[0], "opus");
            assert!(
                (psnr - (snr + 10.0 * (4.0 / ms).log10())).abs() < 1e-3,
                "{line}"
            );
            assert!(f[6].is_empty(), "{line}");
        }
        seen += 1;
    }
    assert_eq!(seen, 4);
    // Existing report files are kept without --force; image-only options are refused.
    let again = run(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let img_flag = run(&["--force", "--jpeg-qualities", "50"]);
    assert!(!img_flag.status.success());
    assert!(String::from_utf8_lossy(&img_flag.stderr).contains("applies to images only"));
    // The audio grid mode's curve beside them, with BD-rates against both.
    let g = run(&[
        "--force",
        "--grid-lambdas",
        "0.002,0.0002",
        "--grid-fit-steps",
        "30",
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let v: serde_json::Value = serde_json::from_slice(&g.stdout).unwrap();
    let names: Vec<&str> = v["codecs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["inr", "inr-grid", "opus"]);
    let grid = &v["codecs"][1]["results"];
    assert_eq!(
        grid["param"],
        serde_json::json!(["lambda=0.002", "lambda=0.0002"])
    );
    assert!(grid["kbps"][1].as_f64().unwrap() > grid["kbps"][0].as_f64().unwrap());
    let pairs: Vec<(String, String)> = v["bd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["codec"].as_str().unwrap_or_default().to_string(),
                b["anchor"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        pairs.contains(&("inr-grid".into(), "opus".into())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("inr-grid".into(), "inr".into())),
        "{pairs:?}"
    );
}

#[test]
fn cli_rd_refuses_a_baseline_csv_for_images() {
    let dir = tempfile::tempdir().unwrap();
    let r = Command::cargo_bin("inr")
        .unwrap()
        .arg("rd")
        .arg(dir.path())
        .arg("-o")
        .arg(dir.path().join("r"))
        .args(["--baselines", "x.csv"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--modality audio"));
}
