//! `inr batch`: failures, resume after interruption, sharding, merging.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use inr::batch::{
    list_inputs, merge_manifests, read_manifest, run_batch, select_shard, BatchCodec, BatchOptions,
    EncodedFile, InrBatchCodec, RowStatus, Shard,
};
use inr::media::Image;

/// A stand-in codec: `FAKE`, width, height (u32 LE), channels, then samples quantised to
/// multiples of 16. Counts encode calls.
#[derive(Default)]
struct FakeCodec {
    encodes: AtomicUsize,
}

impl BatchCodec for FakeCodec {
    fn encode(&self, img: &Image) -> Result<EncodedFile, String> {
        self.encodes.fetch_add(1, Ordering::SeqCst);
        let mut b = b"FAKE".to_vec();
        b.extend(img.width.to_le_bytes());
        b.extend(img.height.to_le_bytes());
        b.push(img.channels);
        b.extend(img.data.iter().map(|&x| x & 0xF0));
        let dec = self.decode(&b)?;
        let se: f64 = img
            .data
            .iter()
            .zip(&dec.data)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        let psnr = 10.0 * (255f64.powi(2) / (se / img.data.len() as f64)).log10();
        Ok(EncodedFile { bytes: b, psnr })
    }
    fn is_valid(&self, bytes: &[u8]) -> bool {
        self.decode(bytes).is_ok()
    }
    fn decode(&self, b: &[u8]) -> Result<Image, String> {
        if b.len() < 13 || &b[..4] != b"FAKE" {
            return Err("bad magic".into());
        }
        let w = u32::from_le_bytes(b[4..8].try_into().unwrap());
        let h = u32::from_le_bytes(b[8..12].try_into().unwrap());
        let c = b[12];
        if (w * h * u32::from(c)) as usize != b.len() - 13 {
            return Err("truncated".into());
        }
        Ok(Image {
            width: w,
            height: h,
            channels: c,
            data: b[13..].to_vec(),
        })
    }
}

fn png(path: &Path, seed: u32, gray: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if gray {
        image::GrayImage::from_fn(12, 9, |x, y| image::Luma([(x * 20 + y * seed) as u8]))
            .save(path)
            .unwrap();
    } else {
        image::RgbImage::from_fn(16, 10, |x, y| {
            image::Rgb([(x * 15) as u8, (y * 25) as u8, (seed * 40) as u8])
        })
        .save(path)
        .unwrap();
    }
}

/// in/a.png, in/b/c.png, in/b/d/e.jpg-named PNG, in/g.png (gray), in/notes.txt, in/broken.png
fn fixture(root: &Path) -> std::path::PathBuf {
    let inp = root.join("in");
    png(&inp.join("a.png"), 1, false);
    png(&inp.join("b/c.png"), 2, false);
    png(&inp.join("b/d/e.jpg"), 3, false); // wrong extension: content sniffing decides
    png(&inp.join("g.png"), 4, true);
    std::fs::write(inp.join("notes.txt"), "not an image").unwrap();
    let good = std::fs::read(inp.join("a.png")).unwrap();
    std::fs::write(inp.join("broken.png"), &good[..good.len() / 2]).unwrap();
    inp
}

fn quiet(_: &inr::batch::BatchEvent) {}

#[test]
fn corrupt_input_fails_alone_and_outputs_mirror_the_tree() {
    let t = tempfile::tempdir().unwrap();
    let inp = fixture(t.path());
    let out = t.path().join("out");
    let codec = FakeCodec::default();
    let s = run_batch(&inp, &out, &codec, &BatchOptions::default(), &quiet).unwrap();
    let names: Vec<&str> = s.rows.iter().map(|r| r.input.as_str()).collect();
    assert_eq!(
        names,
        ["a.png", "b/c.png", "b/d/e.jpg", "broken.png", "g.png"]
    );
    assert_eq!((s.encoded, s.kept, s.failed), (4, 0, 1));
    let broken = &s.rows[3];
    assert_eq!(broken.status, RowStatus::Failed);
    assert!(
        broken.error.contains("cannot read image"),
        "{}",
        broken.error
    );
    for r in s.rows.iter().filter(|r| r.status == RowStatus::Ok) {
        let bytes = std::fs::read(out.join(&r.output)).unwrap();
        assert_eq!(r.bytes, Some(bytes.len() as u64));
        assert!(r.psnr.unwrap() > 20.0 && r.psnr.unwrap() < 60.0);
    }
    assert!(out.join("b/d/e.inr").is_file());
    assert_eq!(
        codec
            .decode(&std::fs::read(out.join("g.inr")).unwrap())
            .unwrap()
            .channels,
        1
    );
    assert!(!out.join("notes.inr").exists());
    // The manifest on disk matches the summary.
    assert_eq!(read_manifest(&out.join("manifest.csv")).unwrap(), s.rows);
}

/// A file name that is not UTF-8 is coded (the manifest names it lossily) and kept on resume.
#[cfg(unix)]
#[test]
fn non_utf8_file_names_are_coded_and_resumed() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    let name = std::ffi::OsStr::from_bytes(b"n\xffame.png");
    png(&inp.join(name), 1, false);
    let out = t.path().join("out");
    let codec = FakeCodec::default();
    let s = run_batch(&inp, &out, &codec, &BatchOptions::default(), &quiet).unwrap();
    assert_eq!((s.encoded, s.kept, s.failed), (1, 0, 0), "{:?}", s.rows);
    assert_eq!(s.rows[0].input, "n\u{fffd}ame.png");
    assert!(out
        .join(std::ffi::OsStr::from_bytes(b"n\xffame.inr"))
        .is_file());
    let s = run_batch(&inp, &out, &codec, &BatchOptions::default(), &quiet).unwrap();
    assert_eq!((s.encoded, s.kept, s.failed), (0, 1, 0), "{:?}", s.rows);
    assert_eq!(codec.encodes.load(Ordering::SeqCst), 1);
}

#[test]
fn resume_after_interruption_redoes_only_missing_work() {
    let t = tempfile::tempdir().unwrap();
    let inp = fixture(t.path());
    let out = t.path().join("out");
    let first = run_batch(
        &inp,
        &out,
        &FakeCodec::default(),
        &BatchOptions::default(),
        &quiet,
    )
    .unwrap();
    // Simulate an interruption: one output never written, and the manifest lost its last two
    // rows (one of them cut in the middle of a line).
    std::fs::remove_file(out.join("b/c.inr")).unwrap();
    let text = std::fs::read_to_string(out.join("manifest.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = format!(
        "{}\n{}",
        lines[..lines.len() - 2].join("\n"),
        &lines[lines.len() - 2][..7]
    );
    std::fs::write(out.join("manifest.csv"), cut).unwrap();
    let before_g = std::fs::metadata(out.join("g.inr"))
        .unwrap()
        .modified()
        .unwrap();

    let codec = FakeCodec::default();
    let second = run_batch(&inp, &out, &codec, &BatchOptions::default(), &quiet).unwrap();
    // Only b/c.png is encoded again (broken.png fails again); g.png's row is rebuilt from its
    // existing output without encoding.
    assert_eq!(codec.encodes.load(Ordering::SeqCst), 1);
    assert_eq!(
        std::fs::metadata(out.join("g.inr"))
            .unwrap()
            .modified()
            .unwrap(),
        before_g
    );
    assert_eq!(second.rows.len(), first.rows.len());
    for (a, b) in first.rows.iter().zip(&second.rows) {
        assert_eq!(
            (&a.input, &a.output, a.status, a.bytes),
            (&b.input, &b.output, b.status, b.bytes)
        );
        if let (Some(pa), Some(pb)) = (a.psnr, b.psnr) {
            assert!((pa - pb).abs() < 1e-3);
        }
    }
    // A third run has nothing to do.
    let codec = FakeCodec::default();
    let third = run_batch(&inp, &out, &codec, &BatchOptions::default(), &quiet).unwrap();
    assert_eq!(codec.encodes.load(Ordering::SeqCst), 0);
    assert_eq!((third.kept, third.failed), (4, 1));
}

#[test]
fn invalid_existing_output_is_not_overwritten_without_force() {
    let t = tempfile::tempdir().unwrap();
    let inp = fixture(t.path());
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("a.inr"), b"user data").unwrap();
    let s = run_batch(
        &inp,
        &out,
        &FakeCodec::default(),
        &BatchOptions::default(),
        &quiet,
    )
    .unwrap();
    let a = &s.rows[0];
    assert_eq!(a.status, RowStatus::Failed);
    assert!(a.error.contains("--force"), "{}", a.error);
    assert_eq!(std::fs::read(out.join("a.inr")).unwrap(), b"user data");
    let opts = BatchOptions {
        force: true,
        ..BatchOptions::default()
    };
    let s = run_batch(&inp, &out, &FakeCodec::default(), &opts, &quiet).unwrap();
    assert_eq!(s.rows[0].status, RowStatus::Ok);
    assert_ne!(std::fs::read(out.join("a.inr")).unwrap(), b"user data");
}

#[test]
fn shards_partition_the_files_and_merge_back() {
    let t = tempfile::tempdir().unwrap();
    let inp = fixture(t.path());
    let all = list_inputs(&inp, None).unwrap();
    assert_eq!(all.len(), 5);
    let n = 3;
    let mut seen = Vec::new();
    for i in 0..n {
        seen.extend(select_shard(
            all.clone(),
            Some(Shard { index: i, count: n }),
        ));
    }
    seen.sort();
    assert_eq!(seen, all, "shards are disjoint and cover everything");

    let out = t.path().join("out");
    let jobs = BatchOptions {
        jobs: 2,
        ..BatchOptions::default()
    };
    let mut total = 0;
    for i in 0..n {
        let opts = BatchOptions {
            shard: Some(Shard { index: i, count: n }),
            ..jobs.clone()
        };
        let s = run_batch(&inp, &out, &FakeCodec::default(), &opts, &quiet).unwrap();
        assert!(s.manifest.ends_with(format!("manifest-{i}-of-{n}.csv")));
        total += s.rows.len();
    }
    assert_eq!(total, all.len());
    let (path, rows) = merge_manifests(&out).unwrap();
    assert_eq!(rows, all.len());
    let merged = read_manifest(&path).unwrap();
    let whole = run_batch(
        &inp,
        &t.path().join("out2"),
        &FakeCodec::default(),
        &jobs,
        &quiet,
    )
    .unwrap();
    let key = |r: &inr::batch::ManifestRow| (r.input.clone(), r.output.clone(), r.status, r.bytes);
    assert_eq!(
        merged.iter().map(key).collect::<Vec<_>>(),
        whole.rows.iter().map(key).collect::<Vec<_>>()
    );
    // Same input, same bytes.
    for r in whole.rows.iter().filter(|r| r.status == RowStatus::Ok) {
        assert_eq!(
            std::fs::read(out.join(&r.output)).unwrap(),
            std::fs::read(t.path().join("out2").join(&r.output)).unwrap()
        );
    }
}

#[test]
fn output_folder_inside_input_is_skipped() {
    let t = tempfile::tempdir().unwrap();
    let inp = fixture(t.path());
    let out = inp.join("compressed");
    run_batch(
        &inp,
        &out,
        &FakeCodec::default(),
        &BatchOptions::default(),
        &quiet,
    )
    .unwrap();
    png(&out.join("stray.png"), 9, false);
    let s = run_batch(
        &inp,
        &out,
        &FakeCodec::default(),
        &BatchOptions::default(),
        &quiet,
    )
    .unwrap();
    assert!(s.rows.iter().all(|r| !r.input.starts_with("compressed")));
}

#[test]

fn real_codec_batch_roundtrip() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    png(&inp.join("a.png"), 1, false);
    png(&inp.join("b/c.png"), 2, false);
    let out = t.path().join("out");
    let codec = InrBatchCodec {
        config: inr::EncodeConfig {
            preset: inr::Preset::Tiny,
            steps: Some(50),
            ..inr::EncodeConfig::default()
        },
    };
    let s = run_batch(&inp, &out, &codec, &BatchOptions::default(), &quiet).unwrap();
    assert_eq!(s.failed, 0, "{:?}", s.rows);
    for r in &s.rows {
        let bytes = std::fs::read(out.join(&r.output)).unwrap();
        assert!(inr::inspect(&bytes).is_ok());
        assert!(r.psnr.unwrap() > 10.0);
    }
    let s = run_batch(&inp, &out, &codec, &BatchOptions::default(), &quiet).unwrap();
    assert_eq!(s.kept, 2);
}

/// `inr batch IN -o OUT` with `args`, run to completion.
fn cli_batch(inp: &Path, out: &Path, args: &[&[&str]]) -> assert_cmd::assert::Assert {
    let mut c = assert_cmd::Command::cargo_bin("inr").unwrap();
    c.arg("batch")
        .arg(inp)
        .arg("-o")
        .arg(out)
        .args(args.concat());
    c.assert()
}

#[test]
fn cli_batch_rejects_bad_shard_and_merges() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .args(["batch", "in", "-o", "out", "--shard", "3/3"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("0 <= i < n"));
    std::fs::write(
        out.join("manifest-0-of-2.csv"),
        "input,output,bytes,bpp,psnr,seconds,status,error\nb.png,b.inr,10,1.0,30.0,1.0,ok,\n",
    )
    .unwrap();
    std::fs::write(
        out.join("manifest-1-of-2.csv"),
        "input,output,bytes,bpp,psnr,seconds,status,error\na.png,a.inr,,,,0.1,failed,bad\n",
    )
    .unwrap();
    assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .arg("batch")
        .arg("--merge")
        .arg(&out)
        .arg("--quiet")
        .assert()
        .success();
    let rows = read_manifest(&out.join("manifest.csv")).unwrap();
    let inputs: Vec<&str> = rows.iter().map(|r| r.input.as_str()).collect();
    assert_eq!(inputs, ["a.png", "b.png"]);
}

#[test]

fn cli_batch_real_codec_then_resume() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    png(&inp.join("a.png"), 1, false);
    png(&inp.join("sub/b.png"), 2, true);
    let out = t.path().join("out");
    let run = || {
        let args = ["--preset", "tiny", "--steps", "50", "--json", "--quiet"];
        cli_batch(&inp, &out, &[&args]).success()
    };
    let first: serde_json::Value = serde_json::from_slice(&run().get_output().stdout).unwrap();
    assert_eq!(first["encoded"], 2);
    let second: serde_json::Value = serde_json::from_slice(&run().get_output().stdout).unwrap();
    assert_eq!(second["kept"], 2);
    assert!(out.join("sub/b.inr").is_file());
}

/// `inr batch --upsampling b-spline` writes grid files with flag bit 10 (codec-spec §13.5);
/// the flag is refused outside the grid modes.
#[test]
fn cli_batch_upsampling_reaches_the_files() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    png(&inp.join("a.png"), 1, false);
    let out = t.path().join("out");
    let batch = |extra: &[&str]| {
        cli_batch(
            &inp,
            &out,
            &[&["--steps", "30", "--quiet", "--force"], extra],
        )
    };
    batch(&["--upsampling", "b-spline"]).success();
    let bytes = std::fs::read(out.join("a.inr")).unwrap();
    let f = inr::format::read_grid_file(&bytes, &inr::Limits::default()).unwrap();
    assert_eq!(f.upsampling, inr::format::Upsampling::BSpline);
    batch(&["--upsampling", "b-spline", "--mode", "weights"])
        .failure()
        .stderr(predicates::str::contains(
            "--upsampling is for the grid modes",
        ));
}

/// `frames` of an 8 kHz mono tone as a 16-bit WAV file.
fn wav(path: &Path, hz: f32, frames: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..frames {
        let v = (std::f32::consts::TAU * hz * i as f32 / 8000.0).sin() * 12000.0;
        w.write_sample(v as i16).unwrap();
    }
    w.finalize().unwrap();
}

fn audio_grid(steps: usize) -> inr::batch::AudioMode {
    let mut c = inr::AudioGridEncodeConfig::default();
    c.fit.steps = steps;
    inr::batch::AudioMode::Grid(c)
}

#[test]
fn wav_files_are_coded_as_audio_beside_images_and_resume() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    png(&inp.join("a.png"), 1, false);
    wav(&inp.join("clips/tone.wav"), 220.0, 800);
    wav(&inp.join("clips/named.bin"), 330.0, 800); // a WAV by content, whatever its name
    std::fs::write(inp.join("clips/broken.wav"), b"RIFF\x10\0\0\0WAVEfmt ").unwrap();
    let out = t.path().join("out");
    let codec = FakeCodec::default();
    let opts = BatchOptions {
        audio: audio_grid(40),
        ..BatchOptions::default()
    };
    let s = run_batch(&inp, &out, &codec, &opts, &quiet).unwrap();
    let inputs: Vec<&str> = s.rows.iter().map(|r| r.input.as_str()).collect();
    assert_eq!(
        inputs,
        [
            "a.png",
            "clips/broken.wav",
            "clips/named.bin",
            "clips/tone.wav"
        ]
    );
    assert_eq!((s.encoded, s.failed), (3, 1), "{:?}", s.rows);
    assert_eq!(
        codec.encodes.load(Ordering::SeqCst),
        1,
        "only the image goes to the codec"
    );
    // The image row has bpp, the audio rows kbps; both have the decoder's PSNR.
    let row = |i: &str| s.rows.iter().find(|r| r.input == i).unwrap();
    assert!(row("a.png").bpp.is_some() && row("a.png").kbps.is_none());
    assert!(row("clips/broken.wav").error.contains("cannot read audio"));
    for name in ["clips/named.bin", "clips/tone.wav"] {
        let r = row(name);
        assert_eq!(r.status, RowStatus::Ok);
        assert!(r.bpp.is_none());
        let bytes = std::fs::read(out.join(&r.output)).unwrap();
        assert!(inr::format::is_audio_grid_file(&bytes));
        assert_eq!(r.bytes, Some(bytes.len() as u64));
        let mut src = inr::audio::WavSource::open(&inp.join(name)).unwrap();
        let q = inr::eval_audio(&bytes, &mut src, &inr::Limits::default()).unwrap();
        assert!((r.kbps.unwrap() - q.kbps).abs() < 1e-3, "{r:?} vs {q:?}");
        assert!((r.psnr.unwrap() - q.psnr).abs() < 1e-3, "{r:?} vs {q:?}");
        assert!(q.psnr > 25.0, "{name}: {q:?}");
        // The same bytes as the audio encoder on its own with that configuration.
        let inr::batch::AudioMode::Grid(cfg) = &opts.audio else {
            unreachable!()
        };
        let mut src = inr::audio::WavSource::open(&inp.join(name)).unwrap();
        let alone = inr::encode_audio_grid(&mut src, cfg, &mut |_| {}).unwrap();
        assert_eq!(alone.bytes, bytes);
    }
    assert_eq!(read_manifest(&s.manifest).unwrap(), s.rows);

    // Resume: the valid outputs are kept; an output without its row is rebuilt by decoding,
    // audio included.
    let manifest = std::fs::read_to_string(&s.manifest).unwrap();
    let cut: String = manifest
        .lines()
        .filter(|l| !l.starts_with("clips/tone.wav"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&s.manifest, cut).unwrap();
    let again = run_batch(&inp, &out, &codec, &opts, &quiet).unwrap();
    assert_eq!((again.encoded, again.kept, again.failed), (1, 2, 1));
    let rebuilt = again
        .rows
        .iter()
        .find(|r| r.input == "clips/tone.wav")
        .unwrap();
    assert_eq!(rebuilt.seconds, None, "rebuilt, not encoded again");
    let before = row("clips/tone.wav");
    assert_eq!(
        (rebuilt.bytes, rebuilt.kbps, rebuilt.psnr),
        (before.bytes, before.kbps, before.psnr)
    );
    assert_eq!(codec.encodes.load(Ordering::SeqCst), 1);
}

#[test]
fn an_image_only_mode_fails_wav_files_alone() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    png(&inp.join("a.png"), 1, false);
    wav(&inp.join("b.wav"), 220.0, 800);
    let out = t.path().join("out");
    let opts = BatchOptions {
        audio: inr::batch::AudioMode::Refused("images only here".into()),
        ..BatchOptions::default()
    };
    let s = run_batch(&inp, &out, &FakeCodec::default(), &opts, &quiet).unwrap();
    assert_eq!((s.encoded, s.failed), (1, 1));
    assert_eq!(s.rows[1].input, "b.wav");
    assert_eq!(s.rows[1].error, "images only here");
    assert!(!out.join("b.inr").exists());
}

#[test]
fn manifests_without_the_kbps_column_are_still_read() {
    let old = "input,output,bytes,bpp,psnr,seconds,status,error\n\
               a.png,a.inr,120,0.500000,31.2500,1.500,ok,\n\
               b.png,b.inr,,,,,failed,\"cannot read image: x, y\"\n";
    let rows = inr::batch::parse_manifest(old);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].bytes, rows[0].bpp, rows[0].kbps),
        (Some(120), Some(0.5), None)
    );
    assert_eq!((rows[0].psnr, rows[0].seconds), (Some(31.25), Some(1.5)));
    assert_eq!(rows[1].error, "cannot read image: x, y");
    // Written back, they have the new column and parse to the same rows.
    let text: String = rows
        .iter()
        .map(inr::batch::ManifestRow::to_csv_line)
        .collect();
    assert!(text.starts_with("a.png,a.inr,120,0.500000,,31.2500,1.500,ok,,\n"));
    assert_eq!(inr::batch::parse_manifest(&text), rows);
    // Manifests with `kbps` but without `mode` (before stop 34) too.
    let nine = "input,output,bytes,bpp,kbps,psnr,seconds,status,error\n\
                a.png,a.inr,120,0.500000,,31.2500,1.500,ok,\n\
                t.wav,t.inr,99,,12.5000,40.0000,,ok,\n";
    let rows9 = inr::batch::parse_manifest(nine);
    assert_eq!(rows9[0], rows[0]);
    assert_eq!((rows9[1].kbps, rows9[1].mode.as_str()), (Some(12.5), ""));
    assert_eq!(
        inr::batch::parse_manifest("x,y,1,,,,,ok,,,\n"),
        vec![],
        "11 fields"
    );
}

#[test]
fn rows_off_their_rate_target_are_listed() {
    let row = |input: &str, bpp: Option<f64>, kbps: Option<f64>, status: RowStatus| {
        inr::batch::ManifestRow {
            input: input.into(),
            output: String::new(),
            bytes: Some(100),
            bpp,
            kbps,
            psnr: Some(30.0),
            seconds: None,
            status,
            error: String::new(),
            mode: String::new(),
        }
    };
    let rows = vec![
        row("in.png", Some(0.2574), None, RowStatus::Ok),
        row("over.png", Some(0.2576), None, RowStatus::Ok),
        row("under.png", Some(0.2424), None, RowStatus::Ok),
        row("low.png", Some(0.2426), None, RowStatus::Ok),
        row("failed.png", None, None, RowStatus::Failed),
        row("in.wav", None, Some(15.6), RowStatus::Ok),
        row("over.wav", None, Some(16.01), RowStatus::Ok),
        row("under.wav", None, Some(15.5), RowStatus::Ok),
    ];
    let names = |bpp, kbps| -> Vec<String> {
        inr::batch::off_target(&rows, bpp, kbps)
            .iter()
            .map(|r| r.input.clone())
            .collect()
    };
    // Images: ±3 %; audio: −3 % … 0 % (a bitrate is a cap).
    assert_eq!(
        names(Some(0.25), Some(16.0)),
        ["over.png", "under.png", "over.wav", "under.wav"]
    );
    assert_eq!(names(Some(0.25), None), ["over.png", "under.png"]);
    assert_eq!(names(None, Some(16.0)), ["over.wav", "under.wav"]);
    assert!(names(None, None).is_empty());
}

#[test]
fn cli_batch_codes_wav_in_the_audio_grid_mode_and_refuses_kbps_in_the_weight_mode() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    wav(&inp.join("tone.wav"), 220.0, 8000);
    let out = t.path().join("out");
    let run = |extra: &[&str]| {
        cli_batch(
            &inp,
            &out,
            &[&["--json", "--quiet", "--steps", "30"], extra],
        )
    };
    let a = run(&["--kbps", "16"]).success();
    let v: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["encoded"], 1);
    let kbps = v["rows"][0]["kbps"].as_f64().unwrap();
    assert!((16.0 * 0.97..=16.0).contains(&kbps), "{v}");
    assert!(v["rows"][0]["bpp"].is_null());
    assert_eq!(v["off_target"], serde_json::json!([]));
    let bytes = std::fs::read(out.join("tone.inr")).unwrap();
    assert!(inr::format::is_audio_grid_file(&bytes));
    assert_eq!(v["rows"][0]["mode"], "grid", "{v}");
    let manifest = std::fs::read_to_string(out.join("manifest.csv")).unwrap();
    assert!(
        manifest.starts_with(inr::batch::MANIFEST_HEADER),
        "{manifest}"
    );
    assert!(
        manifest.lines().nth(1).unwrap().ends_with(",ok,,grid"),
        "{manifest}"
    );
    // A target below what the header alone costs: the file is kept, warned about and listed.
    let a = run(&["--kbps", "0.05", "--force"]).success();
    let v: serde_json::Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["encoded"], 1, "{v}");
    assert!(v["rows"][0]["kbps"].as_f64().unwrap() > 0.05, "{v}");
    assert_eq!(v["off_target"], serde_json::json!(["tone.wav"]));
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(
        err.contains("tone.wav") && err.contains("off the target 0.05 kbit/s"),
        "{err}"
    );
    // --kbps with the weight mode is a clean error; grid-shared fails the WAV file alone.
    run(&["--mode", "weights", "--kbps", "12", "--force"])
        .failure()
        .stderr(predicates::str::contains(
            "--kbps needs the audio grid or modulation mode",
        ));
    let r = run(&["--mode", "grid-shared", "--force"]).failure();
    let v: serde_json::Value = serde_json::from_slice(&r.get_output().stdout).unwrap();
    assert_eq!(v["failed"], 1);
    assert!(v["rows"][0]["error"]
        .as_str()
        .unwrap()
        .contains("codes images only"));
}

/// The fake codec run the way the real encoders run: inside a thread pool of its own (as
/// `threads: Some(n)` does), recording how many files are in flight at once.
struct PooledCodec {
    inner: FakeCodec,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl BatchCodec for PooledCodec {
    fn encode(&self, img: &Image) -> Result<EncodedFile, String> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| e.to_string())?;
        let r = pool.install(|| {
            std::thread::sleep(std::time::Duration::from_millis(30));
            self.inner.encode(img)
        });
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }
    fn is_valid(&self, bytes: &[u8]) -> bool {
        self.inner.is_valid(bytes)
    }
    fn decode(&self, b: &[u8]) -> Result<Image, String> {
        self.inner.decode(b)
    }
}

/// At most `jobs` files are encoded at once, also when each encode runs in a thread pool of
/// its own (a rayon worker waiting on another pool would start the next file meanwhile).
#[test]
fn jobs_bound_the_files_in_flight() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    for i in 0..8 {
        png(&inp.join(format!("f{i}.png")), i, false);
    }
    for jobs in [1, 2] {
        let codec = PooledCodec {
            inner: FakeCodec::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        };
        let opts = BatchOptions {
            jobs,
            ..BatchOptions::default()
        };
        let out = t.path().join(format!("out{jobs}"));
        let s = run_batch(&inp, &out, &codec, &opts, &quiet).unwrap();
        assert_eq!((s.encoded, s.failed), (8, 0));
        let names: Vec<&str> = s.rows.iter().map(|r| r.input.as_str()).collect();
        assert_eq!(
            names,
            ["f0.png", "f1.png", "f2.png", "f3.png", "f4.png", "f5.png", "f6.png", "f7.png"]
        );
        let max = codec.max_in_flight.load(Ordering::SeqCst);
        assert!(max <= jobs, "{max} files in flight with {jobs} jobs");
    }
}

#[test]
fn cli_batch_codes_wav_in_the_modulation_mode_with_an_audio_base() {
    use assert_cmd::Command;
    let t = tempfile::tempdir().unwrap();
    let clips = t.path().join("clips");
    wav(&clips.join("c0.wav"), 220.0, 3000);
    wav(&clips.join("c1.wav"), 330.0, 3000);
    let base = t.path().join("a.inrb");
    Command::cargo_bin("inr")
        .unwrap()
        .args(["--quiet", "meta-train", "--modality", "audio"])
        .args(["--mode", "modulations"])
        .arg(&clips)
        .arg("-o")
        .arg(&base)
        .args(common::TINY_AUDIO_MOD_BASE_ARGS)
        .assert()
        .success();

    let inp = t.path().join("in");
    png(&inp.join("a.png"), 1, false);
    wav(&inp.join("tone.wav"), 440.0, 2000);
    let out = t.path().join("out");
    let run = |extra: &[&str]| {
        cli_batch(
            &inp,
            &out,
            &[&["--json", "--quiet", "--steps", "5", "--force"], extra],
        )
    };
    let rows = |a: &assert_cmd::assert::Assert| -> serde_json::Value {
        serde_json::from_slice(&a.get_output().stdout).unwrap()
    };
    let row = |v: &serde_json::Value, name: &str| -> serde_json::Value {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["input"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {name}: {v}"))
    };

    // The audio base codes the WAV file (and, without --mode, picks the modulation mode for
    // it); the image takes the embedded image modulation base with --mode modulations.
    let base_arg = base.to_str().unwrap();
    let a = run(&["--mode", "modulations", "--base", base_arg]).success();
    let v = rows(&a);
    assert_eq!(v["encoded"], 2, "{v}");
    assert_eq!(row(&v, "tone.wav")["mode"], "modulations", "{v}");
    assert!(row(&v, "tone.wav")["kbps"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(row(&v, "a.png")["mode"], "modulations", "{v}");
    let bytes = std::fs::read(out.join("tone.inr")).unwrap();
    assert!(inr::format::is_audio_modulation_file(&bytes));
    let b =
        inr::base::Base::from_bytes(&std::fs::read(&base).unwrap(), &Default::default()).unwrap();
    let (header, samples) = inr::decode_audio_with(&bytes, &inr::Limits::default(), &[b]).unwrap();
    assert_eq!((header.frames, samples.len()), (2000, 2000));
    // Without --mode the audio base's kind picks the WAV file's mode; images stay in a grid
    // mode (this small one may take the shared synthesis, when that codes it better).
    // --kbps reaches the WAV file's rate control (−3 % … 0 %).
    let v = rows(&run(&["--base", base_arg, "--kbps", "4"]).success());
    assert_eq!(row(&v, "tone.wav")["mode"], "modulations", "{v}");
    let image_mode = row(&v, "a.png")["mode"].clone();
    assert!(image_mode == "grid" || image_mode == "grid-shared", "{v}");
    let kbps = row(&v, "tone.wav")["kbps"].as_f64().unwrap();
    assert!((4.0 * 0.97..=4.0).contains(&kbps), "{v}");
    assert_eq!(v["off_target"], serde_json::json!([]), "{v}");

    // One base for each modality: the image modulation base (the embedded one, as a file)
    // and the audio one; two of one kind, or `none` beside a file, are refused.
    let image_base = concat!(env!("CARGO_MANIFEST_DIR"), "/bases/image-mod.inrb");
    let both = [
        "--mode",
        "modulations",
        "--base",
        image_base,
        "--base",
        base_arg,
    ];
    let v = rows(&run(&both).success());
    assert_eq!(v["encoded"], 2, "{v}");
    assert_eq!(row(&v, "a.png")["mode"], "modulations", "{v}");
    assert_eq!(row(&v, "tone.wav")["mode"], "modulations", "{v}");
    run(&["--base", base_arg, "--base", base_arg])
        .failure()
        .stderr(predicates::str::contains("two audio bases"));
    run(&["--base", "none", "--base", base_arg])
        .failure()
        .stderr(predicates::str::contains("stands alone"));
    // An audio base of another kind than --mode asks for: a clean error before any work.
    run(&["--mode", "weights", "--base", base_arg])
        .failure()
        .stderr(predicates::str::contains(
            "audio modulations base: WAV files take it with --mode modulations",
        ));
    run(&["--mode", "modulations", "--base", "none"])
        .failure()
        .stderr(predicates::str::contains("needs a base"));
    // This binary embeds no audio modulation base: without --base the WAV file alone fails,
    // with a row naming the missing base, and the image is still coded.
    let r = run(&["--mode", "modulations"]).failure();
    let v = rows(&r);
    assert_eq!(
        (v["encoded"].clone(), v["failed"].clone()),
        (1.into(), 1.into()),
        "{v}"
    );
    let err = row(&v, "tone.wav")["error"].as_str().unwrap().to_string();
    assert!(err.contains("no embedded audio modulation base"), "{err}");
}
