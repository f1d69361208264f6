//! Decoder limits (`inr::Limits`): each one refuses before allocating or rendering, the CLI
//! flags `--max-pixels/--max-params/--max-latents/--max-work/--max-file-bytes` lower and raise them, the
//! error names the flag, and the encoder refuses up front what a default decoder would refuse.

use std::path::PathBuf;

use assert_cmd::Command;
use inr::format::{FormatError, Limits};
use inr::{decode, DecodeError, DecodeOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn golden() -> Vec<u8> {
    std::fs::read(fixture("golden_v1.inr")).unwrap()
}

fn limit_err(r: Result<inr::media::Image, DecodeError>) -> (&'static str, u64, u64) {
    match r {
        Err(DecodeError::Format(FormatError::LimitExceeded { what, value, limit })) => {
            (what, value, limit)
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}

fn with(limits: Limits) -> DecodeOptions {
    DecodeOptions {
        limits,
        ..Default::default()
    }
}

#[test]
fn every_limit_is_enforced_by_decode() {
    let bytes = golden();
    let info = inr::inspect(&bytes).unwrap();
    let (px, params) = (32 * 24, info.num_params);
    let d = Limits::default();
    // Exactly at each limit: accepted.
    let exact = Limits {
        max_pixels: px,
        max_params: params,
        max_file_bytes: bytes.len() as u64,
        max_section_bytes: info.payload_bytes + 4 * info.groups.len() as u64,
        max_work: px * params,
        ..d.clone()
    };
    decode(&bytes, &with(exact.clone())).unwrap();
    // One below: refused, naming the limit.
    let cases: [(Limits, &str); 5] = [
        (
            Limits {
                max_pixels: px - 1,
                ..exact.clone()
            },
            "pixel count",
        ),
        (
            Limits {
                max_params: params - 1,
                ..exact.clone()
            },
            "parameter count",
        ),
        (
            Limits {
                max_file_bytes: bytes.len() as u64 - 1,
                ..exact.clone()
            },
            "file size",
        ),
        (
            Limits {
                max_section_bytes: exact.max_section_bytes - 1,
                ..exact.clone()
            },
            "payload",
        ),
        (
            Limits {
                max_work: px * params - 1,
                ..exact.clone()
            },
            "rendering work",
        ),
    ];
    for (l, name) in cases {
        let (what, _, _) = limit_err(decode(&bytes, &with(l)));
        assert!(what.contains(name), "{what} vs {name}");
    }
    // The render size is checked against max_pixels and max_work too.
    let big = DecodeOptions {
        size: Some((1000, 1000)),
        ..with(Limits {
            max_pixels: 999_999,
            ..d.clone()
        })
    };
    assert_eq!(
        limit_err(decode(&bytes, &big)),
        ("output pixel count", 1_000_000, 999_999)
    );
    let big = DecodeOptions {
        size: Some((1000, 1000)),
        ..with(Limits {
            max_work: 1_000_000,
            ..d.clone()
        })
    };
    assert!(limit_err(decode(&bytes, &big)).0.contains("work"));
    // A zero side is a parameter error, not a limit.
    let zero = DecodeOptions {
        size: Some((0, 10)),
        ..Default::default()
    };
    assert!(matches!(
        decode(&bytes, &zero),
        Err(DecodeError::Parameter(_))
    ));
    // inspect_with applies the header limits (it does not render).
    assert!(matches!(
        inr::inspect_with(
            &bytes,
            &Limits {
                max_params: params - 1,
                ..d
            }
        ),
        Err(FormatError::LimitExceeded { .. })
    ));
}

/// A v1 file with a network of more than 2^24 parameters (default limit): width 4096, depth
/// 2, one gray output, every weight 0 with 2-bit symbols, 1x1 pixels. Built byte by byte
/// (codec-spec §3–§5) because the writer refuses files a default decoder would refuse.
fn oversized_network_file() -> (Vec<u8>, u64) {
    let arch = inr::format::Arch {
        coord_dims: 2,
        out_channels: 1,
        width: 4096,
        depth: 2,
        pe_freqs: 0,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    };
    let lens = arch.tensor_lens();
    let mut b = inr::format::MAGIC.to_vec();
    b.extend_from_slice(&[1, 1, 0, 0]); // version, modality image, flags
    b.extend_from_slice(&1u32.to_le_bytes()); // width
    b.extend_from_slice(&1u32.to_le_bytes()); // height
    b.extend_from_slice(&[2, 1]);
    b.extend_from_slice(&arch.width.to_le_bytes());
    b.extend_from_slice(&[arch.depth, arch.pe_freqs]);
    for v in [arch.pe_base_milli, arch.w0_first, arch.w0_hidden] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&[2, 0]); // bits, coder
    assert_eq!(b.len(), inr::format::HEADER_BYTES);
    for _ in &lens {
        b.extend_from_slice(&[1, 0, 0, 2]); // step 1 * 2^0, 2 bits
    }
    let zeros: Vec<Vec<i32>> = lens.iter().map(|&n| vec![0; n]).collect();
    let refs: Vec<&[i32]> = zeros.iter().map(|t| t.as_slice()).collect();
    let group = inr::entropy::encode_tensors(&refs, 1).unwrap();
    b.extend_from_slice(&(group.len() as u32 + 4).to_le_bytes());
    b.extend_from_slice(&(group.len() as u32).to_le_bytes());
    b.extend_from_slice(&group);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    (b, arch.num_params() as u64)
}

#[test]
fn raised_limits_decode_what_the_defaults_refuse() {
    let (bytes, params) = oversized_network_file();
    assert!(params > Limits::DEFAULT_MAX_PARAMS);
    assert_eq!(
        limit_err(decode(&bytes, &DecodeOptions::default())),
        ("parameter count", params, Limits::DEFAULT_MAX_PARAMS)
    );
    let raised = with(Limits {
        max_params: params,
        ..Limits::default()
    });
    let img = decode(&bytes, &raised).unwrap();
    // All weights are zero: the network outputs 0, i.e. mid-gray.
    assert_eq!((img.width, img.height, img.channels), (1, 1, 1));
    assert_eq!(img.data, vec![128]);

    // The same through the CLI: the error names the flag, and the flag raises the limit.
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("big.inr");
    std::fs::write(&f, &bytes).unwrap();
    let out = t.path().join("big.png");
    let o = Command::cargo_bin("inr")
        .unwrap()
        .arg("decode")
        .arg(&f)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("--max-params"), "{stderr}");
    assert!(!out.exists());
    let flag = params.to_string();
    Command::cargo_bin("inr")
        .unwrap()
        .arg("decode")
        .arg(&f)
        .arg("-o")
        .arg(&out)
        .args(["--max-params", &flag])
        .assert()
        .success();
    assert!(out.is_file());
    Command::cargo_bin("inr")
        .unwrap()
        .arg("info")
        .arg(&f)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("--max-params"));
    Command::cargo_bin("inr")
        .unwrap()
        .args(["info", "--json", "--max-params", &flag])
        .arg(&f)
        .assert()
        .success()
        .stdout(predicates::str::contains(format!(
            "\"num_params\":{params}"
        )));
}

#[test]
fn cli_flags_lower_limits_and_name_themselves() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x.png");
    let run = |args: &[&str]| {
        let mut c = Command::cargo_bin("inr").unwrap();
        c.arg("decode")
            .arg(fixture("golden_v1.inr"))
            .arg("-o")
            .arg(&out)
            .args(args);
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    assert!(run(&["--max-pixels", "767"]).contains("--max-pixels"));
    assert!(run(&["--size", "100x100", "--max-pixels", "9999"]).contains("--max-pixels"));
    assert!(run(&["--max-params", "10"]).contains("--max-params"));
    assert!(run(&["--max-work", "1000"]).contains("--max-work"));
    assert!(run(&["--max-file-bytes", "100"]).contains("--max-file-bytes"));
    assert!(!out.exists());
    // A grid file's latents have their own limit (2^26 by default), named by its flag.
    let grid = t.path().join("g.inr");
    Command::cargo_bin("inr")
        .unwrap()
        .args(["--quiet", "encode"])
        .arg(fixture("rgb_16x16.png"))
        .arg("-o")
        .arg(&grid)
        .args(["--steps", "5", "--mode", "grid"])
        .assert()
        .success();
    let decode_grid = |args: &[&str]| {
        Command::cargo_bin("inr")
            .unwrap()
            .arg("decode")
            .arg(&grid)
            .arg("-o")
            .arg(&out)
            .args(args)
            .output()
            .unwrap()
    };
    // 16x16 at 8 levels: 256 + 64 + 16 + 4 + 1 + 1 + 1 + 1 = 344 latents.
    let o = decode_grid(&["--max-latents", "343"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("latent count") && err.contains("--max-latents"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(decode_grid(&["--max-latents", "344"]).status.success());
    std::fs::remove_file(&out).unwrap();
    // eval takes them too.
    Command::cargo_bin("inr")
        .unwrap()
        .arg("eval")
        .arg(fixture("rgb_16x16.png"))
        .arg(fixture("golden_v1.inr"))
        .args(["--max-pixels", "100"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("--max-pixels"));
    // Zero is a usage error.
    Command::cargo_bin("inr")
        .unwrap()
        .arg("decode")
        .arg(fixture("golden_v1.inr"))
        .arg("-o")
        .arg(&out)
        .args(["--max-pixels", "0"])
        .assert()
        .code(2);
}

#[test]
fn encoder_refuses_up_front_what_a_default_decoder_would_refuse() {
    // 4096x4096 gray with a 200-wide, 10-deep network: 16.8M pixels x 363k parameters is far
    // beyond the default rendering work; refused before any fitting.
    let img = inr::media::Image {
        width: 4096,
        height: 4096,
        channels: 1,
        data: vec![0; 4096 * 4096],
    };
    let cfg = inr::EncodeConfig {
        width: Some(200),
        depth: Some(10),
        steps: Some(1_000_000),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let r = inr::encode_image(&img, &cfg, &mut |_: &inr::Progress| {});
    assert!(
        matches!(&r, Err(inr::EncodeError::Parameter(m)) if m.contains("render")),
        "{r:?}"
    );
    assert!(t.elapsed().as_secs() < 5, "refused before fitting");
    // Too many parameters: 1024 wide, 20 deep is 20M > 2^24.
    let small = inr::media::Image {
        width: 8,
        height: 8,
        channels: 1,
        data: vec![0; 64],
    };
    let cfg = inr::EncodeConfig {
        width: Some(1024),
        depth: Some(20),
        steps: Some(1_000_000),
        ..Default::default()
    };
    let r = inr::encode_image(&small, &cfg, &mut |_: &inr::Progress| {});
    assert!(
        matches!(&r, Err(inr::EncodeError::Parameter(m)) if m.contains("parameter count")),
        "{r:?}"
    );
}

/// The fuzz seed corpus (`fuzz/seeds`) is made of real files that decode within the lowered
/// limits of the `decode` fuzz target (2^14 pixels and parameters), so the fuzzer starts from
/// inputs that reach the entropy decoder and the renderer.
#[test]
fn fuzz_seeds_decode_within_the_fuzz_limits() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let opts = with(Limits {
            max_pixels: 1 << 14,
            max_params: 1 << 14,
            ..Limits::default()
        });
        let img = decode(&bytes, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(img.width >= 1);
        n += 1;
    }
    assert!(n >= 5, "{n} seeds");
}
