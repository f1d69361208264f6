//! Modulation-mode files (codec-spec §12): round trips, inspection, corruption, hostile
//! headers, and the separation from the image and audio layouts.

use inr::format::{
    inspect, inspect_with, is_modulation_file, mod_grid_dims, read_audio_file, read_file,
    read_mod_file, write_audio_file, write_file, write_mod_file, Arch, AudioHeader, AudioInrFile,
    FormatError, InrFile, Limits, ModInfo, ModInrFile, QTensor, SampleKind, Step, FLAG_MODULATIONS,
    MOD_FLAGS,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Offsets of the §12.1 layout.
const OFF_BASE: usize = 30;
const OFF_LATENT_DIM: usize = 38;
const OFF_CELL: usize = 39;
const OFF_STEPS: usize = 40;

fn arch() -> Arch {
    Arch {
        coord_dims: 2,
        out_channels: 3,
        width: 16,
        depth: 3,
        pe_freqs: 2,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    }
}

/// A random modulation file with one bit width per channel.
fn random_mod(rng: &mut ChaCha8Rng, width: u32, height: u32, cell: u8, bits: &[u8]) -> ModInrFile {
    let (gw, gh) = mod_grid_dims(width, height, cell);
    let n = (gw * gh) as usize;
    let channels = bits
        .iter()
        .map(|&b| {
            let max = (1i32 << (b - 1)) - 1;
            let spread = rng.gen_range(1..=max);
            QTensor {
                step: Step::from_f32(rng.gen_range(1e-4f32..0.5)),
                bits: b,
                symbols: (0..n).map(|_| rng.gen_range(-spread..=spread)).collect(),
            }
        })
        .collect();
    ModInrFile {
        width,
        height,
        arch: arch(),
        base_id: rng.gen(),
        latent_dim: bits.len() as u8,
        cell,
        channels,
    }
}

fn small() -> ModInrFile {
    random_mod(&mut ChaCha8Rng::seed_from_u64(1), 9, 5, 4, &[8, 3, 8])
}

fn fix_crc(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

fn read(bytes: &[u8]) -> Result<ModInrFile, FormatError> {
    read_mod_file(bytes, &Limits::default())
}

/// Assembles a modulation file by hand (§12.1) with a valid CRC, for hostile header values the
/// writer refuses.
#[allow(clippy::too_many_arguments)]
fn raw(
    flags: u16,
    width: u32,
    height: u32,
    bits: u8,
    latent_dim: u8,
    cell: u8,
    steps: &[[u8; 4]],
    payload: &[u8],
) -> Vec<u8> {
    let mut b = vec![0x89, b'I', b'N', b'R', 2, 1];
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&width.to_le_bytes());
    b.extend_from_slice(&height.to_le_bytes());
    b.extend_from_slice(&[2, 3, 16, 0, 3, 2, 0xd0, 0x07, 30, 0, 30, 0]);
    b.push(bits);
    b.push(0);
    b.extend_from_slice(&7u64.to_le_bytes());
    b.push(latent_dim);
    b.push(cell);
    for s in steps {
        b.extend_from_slice(s);
    }
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    b.extend_from_slice(&[0; 4]);
    fix_crc(&mut b);
    b
}

#[test]
fn grid_dims() {
    assert_eq!(mod_grid_dims(32, 24, 8), (5, 4));
    assert_eq!(mod_grid_dims(33, 1, 8), (6, 2));
    assert_eq!(mod_grid_dims(1, 1, 255), (2, 2));
    assert_eq!(mod_grid_dims(u32::MAX, 0, 0), (u32::MAX, 1)); // saturates, never panics
}

#[test]
fn round_trips_several_shapes_and_bit_widths() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for (w, h, cell, bits) in [
        (32u32, 24u32, 8u8, vec![8u8, 8, 8, 8]),
        (17, 5, 4, vec![6, 12, 2]),
        (1, 1, 2, vec![10]), // a single pixel: a 2x2 grid
        (3, 1, 255, vec![16, 3]),
        (100, 7, 3, (0..64).map(|i| 2 + (i % 15) as u8).collect()),
    ] {
        let f = random_mod(&mut rng, w, h, cell, &bits);
        let bytes = write_mod_file(&f).unwrap();
        assert!(is_modulation_file(&bytes));
        assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), MOD_FLAGS);
        assert_eq!(bytes[28], *bits.iter().max().unwrap(), "header bits = max");
        assert_eq!(read(&bytes).unwrap(), f, "{w}x{h} cell {cell}");
        assert_eq!(write_mod_file(&f).unwrap(), bytes, "deterministic");

        let info = inspect(&bytes).unwrap();
        let (gw, gh) = mod_grid_dims(w, h, cell);
        let latents = bits.len() as u64 * u64::from(gw) * u64::from(gh);
        assert_eq!(
            info.modulation,
            Some(ModInfo {
                latent_dim: bits.len() as u8,
                cell,
                grid_w: gw,
                grid_h: gh,
                latents,
            })
        );
        assert_eq!(info.num_params, latents);
        assert_eq!(info.num_tensors, bits.len());
        assert_eq!(info.tensor_bits, bits);
        assert_eq!(info.flags, MOD_FLAGS);
        assert_eq!(info.base_id, Some(format!("{:016x}", f.base_id)));
        assert_eq!((info.width, info.height, info.arch), (w, h, arch()));
        let mut distinct = bits.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(info.groups.len(), distinct.len());
        assert_eq!(
            info.header_bytes + info.side_info_bytes + info.payload_bytes + info.crc_bytes,
            bytes.len() as u64,
            "section sizes add up"
        );
        assert_eq!(info.total_bytes, bytes.len() as u64);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["modulation"]["latents"], latents);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = write_mod_file(&small()).unwrap();
    for n in 0..bytes.len() {
        let e = read(&bytes[..n]).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { .. }), "len {n}: {e}");
        assert!(inspect(&bytes[..n]).is_err(), "inspect len {n}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        read(&long),
        Err(FormatError::TrailingBytes { count: 1 })
    ));
}

#[test]
fn every_single_byte_change_is_an_error() {
    let bytes = write_mod_file(&small()).unwrap();
    let mut buf = bytes.clone();
    for pos in 0..bytes.len() {
        for x in 1..=255u8 {
            buf[pos] = bytes[pos] ^ x;
            assert!(read(&buf).is_err(), "pos {pos} xor {x:#04x} accepted");
            assert!(inspect(&buf).is_err(), "inspect: pos {pos} xor {x:#04x}");
            assert!(read_file(&buf, &Limits::default()).is_err());
        }
        buf[pos] = bytes[pos];
    }
}

#[test]
fn damaged_file_with_valid_crc_never_panics() {
    let f = small();
    let bytes = write_mod_file(&f).unwrap();
    let mut buf = bytes.clone();
    for pos in 0..bytes.len() - 4 {
        for x in [0x01u8, 0x04, 0x80, 0xFF] {
            buf[pos] = bytes[pos] ^ x;
            fix_crc(&mut buf);
            if let Ok(g) = read(&buf) {
                assert_ne!(g, f, "pos {pos} xor {x:#04x} decoded to the original");
            }
            let _ = inspect(&buf);
        }
        buf[pos] = bytes[pos];
    }
}

#[test]
fn hostile_headers_give_typed_errors() {
    let bytes = write_mod_file(&small()).unwrap();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        fix_crc(&mut b);
        read(&b)
    };
    let field_of = |r: Result<ModInrFile, FormatError>| match r {
        Err(FormatError::InvalidField { field, .. }) => field,
        other => panic!("expected InvalidField, got {other:?}"),
    };
    // latent_dim 0: no steps and no payload groups, the structure is consistent.
    let zero = raw(MOD_FLAGS, 9, 5, 8, 0, 4, &[], &[]);
    assert_eq!(field_of(read(&zero)), "latent_dim");
    assert!(inspect(&zero).is_err());
    for cell in [0u8, 1] {
        assert_eq!(field_of(edit(&|b| b[OFF_CELL] = cell)), "cell");
    }
    // A latent grid far beyond max_params (16384^2 pixels is within the pixel limit).
    let huge = raw(
        MOD_FLAGS,
        16384,
        16384,
        8,
        1,
        2,
        &[[0, 0x80, 16, 8]],
        &[0; 8],
    );
    assert!(matches!(
        read(&huge),
        Err(FormatError::LimitExceeded { what, .. }) if what.starts_with("latent count")
    ));
    assert!(inspect(&huge).is_err());
    // Caller limits: latent count, rendering work, file size, pixels.
    let lat = 3 * 4 * 3; // latent_dim x grid of 9x5 at cell 4
    assert!(read_mod_file(
        &bytes,
        &Limits {
            max_params: lat - 1,
            ..Limits::default()
        }
    )
    .is_err());
    assert!(read_mod_file(
        &bytes,
        &Limits {
            max_params: arch().num_params() as u64,
            ..Limits::default()
        }
    )
    .is_ok());
    let work = 45 * (arch().num_params() as u64 + 3 * 3 * 16);
    for (limits, what) in [
        (
            Limits {
                max_work: work - 1,
                ..Limits::default()
            },
            "rendering work",
        ),
        (
            Limits {
                max_file_bytes: bytes.len() as u64 - 1,
                ..Limits::default()
            },
            "file size",
        ),
        (
            Limits {
                max_pixels: 44,
                ..Limits::default()
            },
            "pixel count",
        ),
    ] {
        let e = read_mod_file(&bytes, &limits).unwrap_err();
        assert!(
            matches!(&e, FormatError::LimitExceeded { what: w, .. } if w.starts_with(what)),
            "{what}: {e}"
        );
        assert!(inspect_with(&bytes, &limits).is_err());
    }
    assert!(read_mod_file(
        &bytes,
        &Limits {
            max_work: work,
            ..Limits::default()
        }
    )
    .is_ok());
    // Flags: unknown bits, modulations without the base reference, extra known bits.
    assert!(matches!(
        edit(&|b| b[6] |= 0x08),
        Err(FormatError::UnknownFlags { flags: 0x0D, .. })
    ));
    assert!(matches!(
        edit(&|b| b[7] = 0x80),
        Err(FormatError::UnknownFlags { .. })
    ));
    for flags in [FLAG_MODULATIONS, FLAG_MODULATIONS | 2, MOD_FLAGS | 2] {
        let e = edit(&|b| b[6..8].copy_from_slice(&flags.to_le_bytes()));
        assert_eq!(field_of(e), "flags", "{flags:#x}");
    }
    // Other header fields.
    assert_eq!(field_of(edit(&|b| b[29] = 1)), "coder");
    assert_eq!(field_of(edit(&|b| b[28] = 17)), "bits");
    assert_eq!(field_of(edit(&|b| b[28] = 3)), "bits"); // not the max of the channels
    assert_eq!(field_of(edit(&|b| b[16] = 1)), "coord_dims");
    assert_eq!(field_of(edit(&|b| b[8..12].fill(0))), "image width");
    assert!(matches!(
        edit(&|b| b[8..12].copy_from_slice(&u32::MAX.to_le_bytes())),
        Err(FormatError::LimitExceeded { .. })
    ));
    assert_eq!(
        field_of(edit(&|b| b[OFF_STEPS..OFF_STEPS + 2].fill(0))),
        "step mantissa"
    );
    assert_eq!(field_of(edit(&|b| b[OFF_STEPS + 2] = 65)), "step exponent");
    assert_eq!(field_of(edit(&|b| b[OFF_STEPS + 3] = 1)), "channel bits");
    // Group length not a multiple of 4 / payload groups not filling the payload.
    let plen_at = OFF_STEPS + 4 * 3;
    let g0 = plen_at + 4;
    let e = edit(&|b| {
        let v = u32::from_le_bytes(b[g0..g0 + 4].try_into().unwrap());
        b[g0..g0 + 4].copy_from_slice(&(v - 2).to_le_bytes());
    });
    assert_eq!(field_of(e), "payload group length");
    // A payload length beyond the file is "truncated", never allocated.
    let mut b = bytes.clone();
    b[plen_at..plen_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        read(&b),
        Err(FormatError::Truncated {
            what: "entropy payload",
            ..
        })
    ));
    // The base id is not validated by the container (the decoder looks it up, §4.5).
    let f = read(&{
        let mut b = bytes.clone();
        b[OFF_BASE] ^= 1;
        fix_crc(&mut b);
        b
    })
    .unwrap();
    assert_eq!(f.base_id, small().base_id ^ 1);
    // latent_dim changed: the step table and everything after it move.
    assert!(edit(&|b| b[OFF_LATENT_DIM] = 2).is_err());
    assert!(edit(&|b| b[OFF_LATENT_DIM] = 255).is_err());
}

#[test]
fn writer_refuses_what_a_default_reader_rejects() {
    let f = small();
    let bad = |g: ModInrFile| write_mod_file(&g).unwrap_err();
    assert!(matches!(
        bad(ModInrFile {
            latent_dim: 0,
            channels: vec![],
            ..f.clone()
        }),
        FormatError::InvalidField {
            field: "latent_dim",
            ..
        }
    ));
    for cell in [0, 1] {
        assert!(matches!(
            bad(ModInrFile { cell, ..f.clone() }),
            FormatError::InvalidField { field: "cell", .. }
        ));
    }
    assert!(matches!(
        bad(ModInrFile {
            latent_dim: 4,
            ..f.clone()
        }),
        FormatError::TensorCount {
            expected: 4,
            found: 3
        }
    ));
    assert!(matches!(
        bad(ModInrFile {
            cell: 2,
            ..f.clone()
        }),
        FormatError::TensorLength { index: 0, .. }
    ));
    let mut g = f.clone();
    g.channels[1].bits = 17;
    assert!(matches!(bad(g), FormatError::InvalidField { .. }));
    let mut g = f.clone();
    g.channels[1].symbols[2] = 4; // 3 bits: -3..=3
    assert!(matches!(
        bad(g),
        FormatError::Entropy(inr::entropy::EntropyError::SymbolOutOfRange { tensor: 1, .. })
    ));
    let mut g = f.clone();
    g.channels[2].step.mantissa = 0;
    assert!(matches!(bad(g), FormatError::InvalidField { .. }));
    assert!(matches!(
        bad(ModInrFile {
            width: 16384,
            height: 16384,
            cell: 2,
            ..f.clone()
        }),
        FormatError::LimitExceeded { .. }
    ));
    assert!(matches!(
        bad(ModInrFile {
            width: 0,
            ..f.clone()
        }),
        FormatError::InvalidField { .. }
    ));
    let mut a = arch();
    a.coord_dims = 1;
    assert!(matches!(
        bad(ModInrFile { arch: a, ..f }),
        FormatError::InvalidField { .. }
    ));
}

fn plain_image() -> InrFile {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let a = arch();
    InrFile {
        width: 9,
        height: 5,
        arch: a,
        bits: 8,
        tensors: a
            .tensor_lens()
            .into_iter()
            .map(|n| QTensor {
                step: Step::from_f32(0.01),
                bits: 8,
                symbols: (0..n).map(|_| rng.gen_range(-100..=100)).collect(),
            })
            .collect(),
        base_id: Some(7),
        masks: Vec::new(),
        seeded_masks: false,
        base_masks: false,
        codebooks: Vec::new(),
    }
}

fn audio_file() -> AudioInrFile {
    let a = Arch {
        coord_dims: 1,
        out_channels: 1,
        width: 2,
        depth: 1,
        pe_freqs: 0,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    };
    let audio = AudioHeader {
        sample_rate: 8000,
        channels: 1,
        sample_kind: SampleKind::Int,
        bits_per_sample: 16,
        frames: 10,
        window_len: 10,
    };
    AudioInrFile {
        audio,
        arch: a,
        bits: 8,
        steps: vec![Step::from_f32(0.01); a.num_tensors()],
        tensor_bits: vec![8; a.num_tensors()],
        symbols: vec![1; a.num_params()],
        base_id: None,
    }
}

#[test]
fn image_audio_and_modulation_readers_refuse_each_other() {
    let modf = write_mod_file(&small()).unwrap();
    let e = read_file(&modf, &Limits::default()).unwrap_err();
    assert!(
        matches!(e, FormatError::InvalidField { field: "flags", expected, .. }
            if expected.contains("modulation-mode file")),
        "{e}"
    );
    assert!(e.to_string().contains("read_mod_file"), "{e}");
    assert!(read_audio_file(&modf, &Limits::default()).is_err());

    // A plain image (with and without a base reference), version 1 and 2.
    for base_id in [None, Some(7)] {
        let img = write_file(&InrFile {
            base_id,
            ..plain_image()
        })
        .unwrap();
        assert!(!is_modulation_file(&img));
        let e = read(&img).unwrap_err();
        assert!(
            matches!(e, FormatError::InvalidField { field: "flags", expected, .. }
                if expected.contains("plain image file")),
            "{e}"
        );
        let mut v1 = img.clone();
        v1[4] = 1;
        fix_crc(&mut v1);
        assert!(matches!(
            read(&v1),
            Err(FormatError::InvalidField {
                field: "version",
                ..
            })
        ));
    }
    // An audio file.
    let wav = write_audio_file(&audio_file()).unwrap();
    assert!(!is_modulation_file(&wav));
    let e = read(&wav).unwrap_err();
    assert!(
        matches!(e, FormatError::InvalidField { field: "modality", expected, .. }
            if expected.contains("audio file")),
        "{e}"
    );
    // Not an .inr file at all, future versions.
    assert!(!is_modulation_file(b"GIF89a"));
    assert!(!is_modulation_file(&[]));
    assert!(matches!(
        read(b"GIF89a........"),
        Err(FormatError::BadMagic { .. })
    ));
    let mut b = modf.clone();
    b[4] = 3;
    assert!(!is_modulation_file(&b));
    assert!(matches!(
        read(&b),
        Err(FormatError::UnsupportedVersion { found: 3 })
    ));
}

#[test]
fn read_rejects_group_structure_and_garbage_without_panicking() {
    // Hand-built: one channel of 8 bits with an empty group (a non-empty grid needs symbols).
    let f = raw(MOD_FLAGS, 9, 5, 8, 1, 4, &[[0, 0x80, 16, 8]], &[0; 4]);
    assert!(matches!(read(&f), Err(FormatError::Entropy(_))));
    assert!(inspect(&f).is_ok(), "inspect does not entropy-decode");
    // Payload with a word outside every group.
    let f = raw(MOD_FLAGS, 9, 5, 8, 1, 4, &[[0, 0x80, 16, 8]], &[0; 8]);
    assert!(matches!(
        read(&f),
        Err(FormatError::PayloadGroups { used: 4, len: 8 })
    ));
    // Payload length not a multiple of 4.
    let f = raw(MOD_FLAGS, 9, 5, 8, 1, 4, &[[0, 0x80, 16, 8]], &[0; 6]);
    assert!(matches!(
        read(&f),
        Err(FormatError::InvalidField {
            field: "payload length",
            ..
        })
    ));
    // Random tails after a valid header never panic.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let head = raw(MOD_FLAGS, 9, 5, 8, 2, 4, &[], &[]);
    for _ in 0..2000 {
        let mut b = head[..OFF_STEPS].to_vec();
        let n = rng.gen_range(0..80);
        b.extend((0..n).map(|_| rng.gen::<u8>()));
        if b.len() >= 4 && rng.gen_bool(0.5) {
            fix_crc(&mut b);
        }
        let _ = read(&b);
        let _ = inspect(&b);
    }
}

#[test]
fn cli_info_shows_modulation_files_and_bases() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.inr");
    std::fs::write(&file, write_mod_file(&small()).unwrap()).unwrap();
    let out = assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .arg("info")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "mode: modulations (latent grid 4x3, 3 channels, cell 4 px, 36 latents)",
        "modulation:",
        "  latent_dim: 3",
        "  grid_w: 4",
        "num_params: 36",
        "weights (decoded):",
    ] {
        assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
    }
    let out = assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "info"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info"]["modulation"]["cell"], 4);
    assert_eq!(v["weights"]["channels"][1]["bits"], 3);

    let spec = inr::base::ModSpec {
        latent_dim: 2,
        cell: 8,
    };
    let n = arch().num_params() + spec.map_len(&arch());
    let base = inr::base::Base::new_modulation(arch(), spec, vec![0.5; n], "m".into()).unwrap();
    let path = dir.path().join("b.inrb");
    std::fs::write(&path, base.to_bytes().unwrap()).unwrap();
    let out = assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .arg("info")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for want in ["base_kind: modulation", "  latent_dim: 2", "  cell: 8"] {
        assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
    }
}
