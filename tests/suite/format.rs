//! Container and entropy-layer tests: round trips, golden bytes, corruption and limits.

use inr::entropy::{self, EntropyError};
use inr::format::{
    estimate_file_bits, inspect, max_abs_for_bits, read_file, write_file, Arch, FormatError,
    GroupInfo, InrFile, Limits, QTensor, Step, MAGIC,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tiny_arch() -> Arch {
    Arch {
        coord_dims: 2,
        out_channels: 1,
        width: 2,
        depth: 1,
        pe_freqs: 0,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    }
}

/// The golden file: 4x3 gray image, 2 -> 2 -> 1 network (4 tensors, 9 parameters), mixed
/// precision: W0, b0 and b1 at 12 bits, W1 at 4 bits (so the 4-bit group comes first in the
/// payload although its tensor is not the first one).
fn golden() -> InrFile {
    let step = |mantissa, exponent| Step { mantissa, exponent };
    InrFile {
        width: 4,
        height: 3,
        arch: tiny_arch(),
        bits: 12,
        tensors: vec![
            QTensor {
                step: step(0x8001, 16),
                bits: 12,
                symbols: vec![2047, -2047, 0, 3],
            },
            QTensor {
                step: step(1, 0),
                bits: 12,
                symbols: vec![-1, 1],
            },
            QTensor {
                step: step(0xABCD, 64),
                bits: 4,
                symbols: vec![7, -3],
            },
            QTensor {
                step: step(40000, 20),
                bits: 12,
                symbols: vec![0],
            },
        ],
        base_id: None,
        masks: Vec::new(),
        seeded_masks: false,
        base_masks: false,
        codebooks: Vec::new(),
    }
}

/// A random file with the given bit width per tensor (header bits = their maximum).
fn random_file_bits(rng: &mut ChaCha8Rng, arch: Arch, bits: &[u8]) -> InrFile {
    assert_eq!(bits.len(), arch.num_tensors());
    let tensors = arch
        .tensor_lens()
        .into_iter()
        .zip(bits)
        .map(|(n, &b)| {
            let max = (1i32 << (b - 1)) - 1;
            let spread = rng.gen_range(1..=max);
            QTensor {
                step: Step::from_f32(rng.gen_range(1e-4f32..0.5)),
                bits: b,
                symbols: (0..n).map(|_| rng.gen_range(-spread..=spread)).collect(),
            }
        })
        .collect();
    InrFile {
        width: rng.gen_range(1..=300),
        height: rng.gen_range(1..=300),
        arch,
        bits: *bits.iter().max().unwrap(),
        tensors,
        base_id: None,
        masks: Vec::new(),
        seeded_masks: false,
        base_masks: false,
        codebooks: Vec::new(),
    }
}

fn random_file(rng: &mut ChaCha8Rng, arch: Arch, bits: u8) -> InrFile {
    random_file_bits(rng, arch, &vec![bits; arch.num_tensors()])
}

/// The SIREN-style split: first layer and every bias at `hi` bits, other weights at `lo`.
fn siren_bits(arch: Arch, hi: u8, lo: u8) -> Vec<u8> {
    (0..arch.num_tensors())
        .map(|i| if i < 2 || i % 2 == 1 { hi } else { lo })
        .collect()
}

/// Splits a payload into its groups (§4.2): `(length field offset in payload, group bytes)`.
fn groups_of(payload: &[u8]) -> Vec<(usize, &[u8])> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < payload.len() {
        let n = u32::from_le_bytes(payload[pos..pos + 4].try_into().unwrap()) as usize;
        out.push((pos, &payload[pos + 4..pos + 4 + n]));
        pos += 4 + n;
    }
    assert_eq!(pos, payload.len());
    out
}

fn fix_crc(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

fn read(bytes: &[u8]) -> Result<InrFile, FormatError> {
    read_file(bytes, &Limits::default())
}

#[test]
fn golden_header_bytes_are_pinned() {
    let bytes = write_file(&golden()).unwrap();
    #[rustfmt::skip]
    let expected_head: &[u8] = &[
        0x89, b'I', b'N', b'R',   // 0  magic
        2,                        // 4  version
        1,                        // 5  modality = image
        0, 0,                     // 6  flags
        4, 0, 0, 0,               // 8  width
        3, 0, 0, 0,               // 12 height
        2, 1,                     // 16 coord_dims, out_channels
        2, 0,                     // 18 hidden width
        1, 0,                     // 20 depth, pe_freqs
        0xD0, 0x07,               // 22 pe_base_milli = 2000
        30, 0, 30, 0,             // 24 w0_first, w0_hidden
        12,                       // 28 bits = max of the tensor bits
        0,                        // 29 coder
        0x01, 0x80, 16, 12,       // 30 step 0: 0x8001 * 2^-16, 12 bits
        1, 0, 0, 12,              // 34 step 1: 1, 12 bits
        0xCD, 0xAB, 64, 4,        // 38 step 2: 0xABCD * 2^-64, 4 bits
        0x40, 0x9C, 20, 12,       // 42 step 3: 40000 * 2^-20, 12 bits
    ];
    assert_eq!(&bytes[..expected_head.len()], expected_head);
    // Payload length field, payload, CRC over everything before it.
    let plen = u32::from_le_bytes(bytes[46..50].try_into().unwrap()) as usize;
    assert_eq!(plen % 4, 0);
    assert_eq!(bytes.len(), 50 + plen + 4);
    let n = bytes.len() - 4;
    assert_eq!(
        u32::from_le_bytes(bytes[n..].try_into().unwrap()),
        crc32fast::hash(&bytes[..n])
    );
    // The payload is two groups, ascending bits: 4 bits = [W1], then 12 bits = [W0, b0, b1],
    // each exactly the entropy layer's output (checked against the spec reference coder too).
    let g = golden();
    let t = |i: usize| g.tensors[i].symbols.as_slice();
    let groups = groups_of(&bytes[50..50 + plen]);
    assert_eq!(groups.len(), 2);
    let g4 = entropy::encode_tensors(&[t(2)], 7).unwrap();
    let g12 = entropy::encode_tensors(&[t(0), t(1), t(3)], 2047).unwrap();
    assert_eq!(groups[0].1, g4);
    assert_eq!(groups[1].1, g12);
    assert_eq!(spec_reference::encode(&[t(2)], 7), g4);
    assert_eq!(spec_reference::encode(&[t(0), t(1), t(3)], 2047), g12);
    assert_eq!(plen, 4 + g4.len() + 4 + g12.len());
    // Whole-file regression pin (update only with a version bump).
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, GOLDEN_HEX);
    assert_eq!(read(&bytes).unwrap(), golden());
    // The same file as version 1 wrote it still decodes to the same content.
    let v1: Vec<u8> = (0..GOLDEN_V1_HEX.len() / 2)
        .map(|i| u8::from_str_radix(&GOLDEN_V1_HEX[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(read(&v1).unwrap(), golden());
    assert_eq!(inspect(&v1).unwrap().version, 1);
    let info = inspect(&bytes).unwrap();
    assert_eq!(info.bits, 12);
    assert_eq!(info.tensor_bits, vec![12, 12, 4, 12]);
    assert_eq!(
        info.groups,
        vec![
            GroupInfo {
                bits: 4,
                tensors: 1,
                bytes: g4.len() as u64
            },
            GroupInfo {
                bits: 12,
                tensors: 3,
                bytes: g12.len() as u64
            },
        ]
    );
    assert_eq!(info.side_info_bytes, 16 + 4 + 2 * 4);
    assert_eq!(info.payload_bytes, (g4.len() + g12.len()) as u64);
    assert_eq!(estimate_file_bits(&g).unwrap(), 8 * bytes.len() as u64);
}
const GOLDEN_HEX: &str = "89494e52020100000400000003000000020102000100d0071e001e000c000180100c0100000ccdab4004409c140c18000000040000005a62f3780c0000003ffff77f4c4683ea69c70b5320fbc0e9";
/// The golden file as format version 1 wrote it (identical layout without flags).
const GOLDEN_V1_HEX: &str = "89494e52010100000400000003000000020102000100d0071e001e000c000180100c0100000ccdab4004409c140c18000000040000005a62f3780c0000003ffff77f4c4683ea69c70b539db36a02";

#[test]
fn base_reference_section_is_pinned() {
    let mut g = golden();
    g.base_id = Some(0x0123_4567_89AB_CDEF);
    let bytes = write_file(&g).unwrap();
    assert_eq!(&bytes[6..8], &[1, 0], "flags: bit 0 = base reference");
    // The 8-byte base id follows the 4 step entries (30 + 16 = 46), little endian.
    assert_eq!(
        &bytes[46..54],
        &[0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01]
    );
    let plain = write_file(&golden()).unwrap();
    assert_eq!(bytes.len(), plain.len() + 8);
    assert_eq!(&bytes[54..bytes.len() - 4], &plain[46..plain.len() - 4]);
    assert_eq!(read(&bytes).unwrap(), g);
    let info = inspect(&bytes).unwrap();
    assert_eq!(info.base_id.as_deref(), Some("0123456789abcdef"));
    assert_eq!(info.side_info_bytes, 16 + 8 + 4 + 2 * 4);
    // Every truncation of it is an error.
    for n in 0..bytes.len() {
        assert!(read(&bytes[..n]).is_err(), "{n}");
    }
}

#[test]
fn round_trips_random_files_and_is_deterministic() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for case in 0..12 {
        let arch = Arch {
            coord_dims: 2,
            out_channels: if case % 2 == 0 { 3 } else { 1 },
            width: rng.gen_range(1..=24),
            depth: rng.gen_range(1..=5),
            pe_freqs: rng.gen_range(0..=6),
            pe_base_milli: rng.gen_range(1..=4000),
            w0_first: rng.gen_range(1..=60),
            w0_hidden: rng.gen_range(1..=60),
        };
        let bits = [2u8, 4, 6, 8, 10, 16][case % 6];
        let f = random_file(&mut rng, arch, bits);
        let bytes = write_file(&f).unwrap();
        assert_eq!(write_file(&f).unwrap(), bytes, "determinism");
        assert_eq!(read(&bytes).unwrap(), f);
        let info = inspect(&bytes).unwrap();
        assert_eq!(
            info.header_bytes + info.side_info_bytes + info.payload_bytes + info.crc_bytes,
            bytes.len() as u64
        );
        assert_eq!(info.total_bytes, bytes.len() as u64);
        assert_eq!(info.num_params, arch.num_params() as u64);
        assert_eq!(info.num_tensors, arch.tensor_lens().len());
        assert_eq!(
            (info.width, info.height, info.bits),
            (f.width, f.height, bits)
        );
        assert_eq!(info.tensor_bits, vec![bits; arch.num_tensors()]);
        assert_eq!(info.groups.len(), 1);
        let bpp = 8.0 * bytes.len() as f64 / (f.width as f64 * f.height as f64);
        assert!((info.bpp - bpp).abs() < 1e-12);
        serde_json::to_string(&info).unwrap();
    }
}

#[test]
fn mixed_precision_round_trips() {
    let mut rng = ChaCha8Rng::seed_from_u64(4242);
    for case in 0..16 {
        let arch = Arch {
            coord_dims: 2,
            out_channels: if case % 2 == 0 { 3 } else { 1 },
            width: rng.gen_range(1..=24),
            depth: rng.gen_range(1..=5),
            pe_freqs: rng.gen_range(0..=6),
            pe_base_milli: 2000,
            w0_first: 30,
            w0_hidden: 30,
        };
        let bits = match case % 4 {
            0 => siren_bits(arch, 14, 6),
            1 => siren_bits(arch, 12, 8),
            2 => siren_bits(arch, 16, 2),
            _ => (0..arch.num_tensors())
                .map(|_| rng.gen_range(2..=16))
                .collect(),
        };
        let f = random_file_bits(&mut rng, arch, &bits);
        let bytes = write_file(&f).unwrap();
        assert_eq!(write_file(&f).unwrap(), bytes, "determinism");
        assert_eq!(read(&bytes).unwrap(), f, "case {case}");
        assert_eq!(estimate_file_bits(&f).unwrap(), 8 * bytes.len() as u64);

        // Header bits = max; step table carries each tensor's bits at entry byte 3.
        let t = arch.num_tensors();
        assert_eq!(bytes[28], *bits.iter().max().unwrap());
        for (i, &b) in bits.iter().enumerate() {
            assert_eq!(bytes[30 + 4 * i + 3], b);
        }
        // Payload = one group per distinct bits value, ascending, each coding its tensors in
        // file order with that bits value's alphabet.
        let p0 = 30 + 4 * t;
        let plen = u32::from_le_bytes(bytes[p0..p0 + 4].try_into().unwrap()) as usize;
        let groups = groups_of(&bytes[p0 + 4..p0 + 4 + plen]);
        let mut distinct = bits.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(groups.len(), distinct.len());
        for ((_, g), &b) in groups.iter().zip(&distinct) {
            let refs: Vec<&[i32]> = f
                .tensors
                .iter()
                .filter(|q| q.bits == b)
                .map(|q| q.symbols.as_slice())
                .collect();
            assert_eq!(
                *g,
                entropy::encode_tensors(&refs, max_abs_for_bits(b)).unwrap()
            );
        }

        let info = inspect(&bytes).unwrap();
        assert_eq!(info.tensor_bits, bits);
        assert_eq!(info.bits, *bits.iter().max().unwrap());
        assert_eq!(
            info.groups.iter().map(|g| g.bits).collect::<Vec<_>>(),
            distinct
        );
        assert_eq!(
            info.groups.iter().map(|g| g.tensors).sum::<usize>(),
            arch.num_tensors()
        );
        assert_eq!(
            info.header_bytes + info.side_info_bytes + info.payload_bytes + info.crc_bytes,
            bytes.len() as u64
        );
        serde_json::to_string(&info).unwrap();
    }
}

#[test]
fn mixed_precision_costs_less_than_uniform_high_precision() {
    // Same symbols (all within 6 bits), coded with the hidden weights at 6 bits vs at 14:
    // the narrower alphabet must give a smaller file, so the groups really use their own range.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let arch = Arch {
        width: 32,
        depth: 3,
        ..tiny_arch()
    };
    let mixed = random_file_bits(&mut rng, arch, &siren_bits(arch, 14, 6));
    let mut uniform = mixed.clone();
    uniform.tensors.iter_mut().for_each(|t| t.bits = 14);
    let (a, b) = (write_file(&mixed).unwrap(), write_file(&uniform).unwrap());
    assert!(
        a.len() < b.len(),
        "mixed {} vs uniform {}",
        a.len(),
        b.len()
    );
    assert_eq!(read(&a).unwrap(), mixed);
    assert_eq!(read(&b).unwrap(), uniform);
}

#[test]
fn extreme_symbols_round_trip() {
    let arch = tiny_arch();
    for bits in [2u8, 16] {
        let m = (1i32 << (bits - 1)) - 1;
        let mut f = golden();
        f.bits = bits;
        f.tensors.iter_mut().for_each(|t| t.bits = bits);
        f.tensors[0].symbols = vec![m, -m, m, -m];
        f.tensors[1].symbols = vec![0, 0];
        f.tensors[2].symbols = vec![-m, -m];
        f.tensors[3].symbols = vec![m];
        assert_eq!(f.arch, arch);
        let bytes = write_file(&f).unwrap();
        assert_eq!(read(&bytes).unwrap(), f);
    }
    // Mixed extremes: 16-bit and 2-bit tensors side by side.
    let mut f = golden();
    f.bits = 16;
    for (t, (b, s)) in f.tensors.iter_mut().zip([
        (16u8, vec![32767, -32767, 0, 1]),
        (2, vec![-1, 1]),
        (16, vec![-32767, 32767]),
        (2, vec![1]),
    ]) {
        t.bits = b;
        t.symbols = s;
    }
    assert_eq!(read(&write_file(&f).unwrap()).unwrap(), f);
    // All zeros.
    let mut f = golden();
    for t in &mut f.tensors {
        t.symbols.iter_mut().for_each(|s| *s = 0);
    }
    assert_eq!(read(&write_file(&f).unwrap()).unwrap(), f);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = write_file(&golden()).unwrap();
    for n in 0..bytes.len() {
        let e = read(&bytes[..n]).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { .. }), "len {n}: {e}");
        assert!(inspect(&bytes[..n]).is_err());
    }
}

#[test]
fn every_single_byte_change_is_an_error() {
    let bytes = write_file(&golden()).unwrap();
    let mut buf = bytes.clone();
    for pos in 0..bytes.len() {
        for x in 1..=255u8 {
            buf[pos] = bytes[pos] ^ x;
            assert!(read(&buf).is_err(), "pos {pos} xor {x:#04x} accepted");
            assert!(inspect(&buf).is_err(), "inspect: pos {pos} xor {x:#04x}");
        }
        buf[pos] = bytes[pos];
    }
}

#[test]
fn damaged_payload_with_valid_crc_never_panics() {
    // A hostile file can carry a valid CRC: decoding must still end in Ok or a typed error.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let arch = Arch {
        width: 8,
        depth: 2,
        ..tiny_arch()
    };
    let f = random_file(&mut rng, arch, 8);
    let bytes = write_file(&f).unwrap();
    let payload_start = 30 + 4 * arch.tensor_lens().len() + 4;
    let mut buf = bytes.clone();
    for pos in payload_start..bytes.len() - 4 {
        for x in [0x01u8, 0x80, 0xFF] {
            buf[pos] = bytes[pos] ^ x;
            fix_crc(&mut buf);
            let _ = read(&buf);
        }
        buf[pos] = bytes[pos];
    }
    // Appending a word to the (single) group, payload length, group length and CRC fixed up:
    // the entropy layer detects it.
    let plen = u32::from_le_bytes(bytes[payload_start - 4..payload_start].try_into().unwrap());
    let glen = u32::from_le_bytes(bytes[payload_start..payload_start + 4].try_into().unwrap());
    assert_eq!(plen, 4 + glen);
    let mut longer = bytes[..bytes.len() - 4].to_vec();
    longer[payload_start - 4..payload_start].copy_from_slice(&(plen + 4).to_le_bytes());
    longer[payload_start..payload_start + 4].copy_from_slice(&(glen + 4).to_le_bytes());
    longer.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0]);
    fix_crc(&mut longer);
    assert!(matches!(read(&longer), Err(FormatError::Entropy(_))));
    // Without the group length fix-up the word lies outside every group.
    longer[payload_start..payload_start + 4].copy_from_slice(&glen.to_le_bytes());
    fix_crc(&mut longer);
    assert!(matches!(
        read(&longer),
        Err(FormatError::PayloadGroups { used, len }) if used + 4 == len
    ));
}

#[test]
fn damaged_mixed_file_with_valid_crc_never_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let arch = Arch {
        width: 8,
        depth: 2,
        ..tiny_arch()
    };
    let f = random_file_bits(&mut rng, arch, &siren_bits(arch, 14, 6));
    let bytes = write_file(&f).unwrap();
    let mut buf = bytes.clone();
    // Step table (including the bits bytes), payload length and payload.
    for pos in 30..bytes.len() - 4 {
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
fn bits_fields_and_payload_groups_are_validated() {
    let bytes = write_file(&golden()).unwrap();
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        edit(&mut b);
        fix_crc(&mut b);
        b
    };
    // Header bits must equal the largest tensor bits (12).
    for hb in [4u8, 11, 13, 16] {
        let b = with(&|b| b[28] = hb);
        for r in [read(&b).map(|_| ()), inspect(&b).map(|_| ())] {
            assert!(
                matches!(r, Err(FormatError::InvalidField { field: "bits", value, .. }) if value == u64::from(hb)),
                "header bits {hb}: {r:?}"
            );
        }
    }
    // Tensor bits outside 2..=16 (entry byte 3 of step 2).
    for tb in [0u8, 1, 17, 255] {
        let b = with(&|b| b[41] = tb);
        assert!(
            matches!(read(&b), Err(FormatError::InvalidField { field: "tensor bits", value, .. }) if value == u64::from(tb)),
            "tensor bits {tb}"
        );
    }
    // Step 2 moved from 4 to 12 bits: one group only, so the second group is left over.
    let b = with(&|b| b[41] = 12);
    assert!(matches!(read(&b), Err(FormatError::PayloadGroups { .. })));
    // Step 2 moved to another valid width with the same group structure: never the original.
    for tb in [2u8, 3, 5, 11] {
        let b = with(&|b| b[41] = tb);
        if let Ok(g) = read(&b) {
            assert_ne!(g, golden());
        }
    }
    // Group length beyond the payload: truncated group, not sliced.
    let plen = u32::from_le_bytes(bytes[46..50].try_into().unwrap());
    let b = with(&|b| b[50..54].copy_from_slice(&plen.to_le_bytes()));
    assert!(matches!(
        read(&b),
        Err(FormatError::Truncated {
            what: "payload group",
            ..
        })
    ));
    let b = with(&|b| b[50..54].copy_from_slice(&u32::MAX.to_le_bytes()));
    assert!(matches!(read(&b), Err(FormatError::InvalidField { .. })));
    let b = with(&|b| b[50..54].copy_from_slice(&(u32::MAX - 3).to_le_bytes()));
    assert!(matches!(
        read(&b),
        Err(FormatError::Truncated {
            what: "payload group",
            ..
        })
    ));
    // Group length not a whole number of words.
    let b = with(&|b| b[50..54].copy_from_slice(&2u32.to_le_bytes()));
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField {
            field: "payload group length",
            ..
        })
    ));
    // Empty payload: the first group length itself is missing.
    let mut b = bytes[..46].to_vec();
    b.extend_from_slice(&[0; 8]);
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::Truncated {
            what: "payload group length",
            ..
        })
    ));
    // A word after the last group.
    let mut b = bytes[..bytes.len() - 4].to_vec();
    b[46..50].copy_from_slice(&(plen + 4).to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::PayloadGroups { used, len }) if used == u64::from(plen) && len == used + 4
    ));
    assert!(inspect(&b).is_err());
}

#[test]
fn version_magic_flags_and_trailing_bytes() {
    let bytes = write_file(&golden()).unwrap();
    let mut b = bytes.clone();
    b[4] = 3; // future version, CRC left stale: the version is reported first
    assert!(matches!(
        read(&b),
        Err(FormatError::UnsupportedVersion { found: 3 })
    ));
    assert!(matches!(
        inspect(&b),
        Err(FormatError::UnsupportedVersion { found: 3 })
    ));
    b[4] = 0;
    assert!(matches!(
        read(&b),
        Err(FormatError::UnsupportedVersion { found: 0 })
    ));
    let mut b = bytes.clone();
    b[0] = b'I';
    assert!(matches!(read(&b), Err(FormatError::BadMagic { .. })));
    assert!(matches!(
        read(b"GIF89a...."),
        Err(FormatError::BadMagic { .. })
    ));
    let mut b = bytes.clone();
    b[6] = 0x40; // bits 0..=5 are defined (§3.4); bit 6 is not
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::UnknownFlags { flags: 64, .. })
    ));
    // Flag bit 3 is a grid-mode file (§13): another layout, named in the error.
    let mut b = bytes.clone();
    b[6] = 0x08;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField { field: "flags", expected, .. })
            if expected.contains("grid")
    ));
    // Flag bit 2 is a modulation-mode file (§12): another layout, named in the error.
    let mut b = bytes.clone();
    b[6] = 0x04;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField { field: "flags", expected, .. })
            if expected.contains("modulation")
    ));
    // Version 1 defines no flags at all, not even the base reference.
    let mut b = bytes.clone();
    b[4] = 1;
    b[6] = 0x01;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::UnknownFlags {
            flags: 1,
            version: 1,
            ..
        })
    ));
    let mut b = bytes.clone();
    b[5] = 2; // audio: reserved
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField {
            field: "modality",
            ..
        })
    ));
    let mut b = bytes.clone();
    b[29] = 1; // unknown coder
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField { field: "coder", .. })
    ));
    let mut b = bytes.clone();
    b.push(0);
    assert!(matches!(
        read(&b),
        Err(FormatError::TrailingBytes { count: 1 })
    ));
    let mut b = bytes.clone();
    let n = b.len();
    b[n - 1] ^= 0x40;
    assert!(matches!(read(&b), Err(FormatError::CrcMismatch { .. })));
}

#[test]
fn hostile_headers_hit_limits_before_allocating() {
    let bytes = write_file(&golden()).unwrap();
    // Absurd image size with a valid CRC.
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(read(&b), Err(FormatError::LimitExceeded { .. })));
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&60000u32.to_le_bytes());
    b[12..16].copy_from_slice(&60000u32.to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::LimitExceeded {
            what: "pixel count",
            ..
        })
    ));
    let mut b = bytes.clone();
    b[12..16].copy_from_slice(&0u32.to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(read(&b), Err(FormatError::InvalidField { .. })));
    // Absurd network: 65535 wide, 64 Fourier features (depth 1 keeps the step table size).
    let mut b = bytes.clone();
    b[18..20].copy_from_slice(&u16::MAX.to_le_bytes());
    b[21] = 64;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::LimitExceeded {
            what: "parameter count",
            ..
        })
    ));
    // Payload length far beyond the file: truncated, not allocated.
    let mut b = bytes.clone();
    b[46..50].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        read(&b),
        Err(FormatError::Truncated {
            what: "entropy payload",
            ..
        })
    ));
    // Tighter caller limits.
    let strict = Limits {
        max_pixels: 11,
        ..Limits::default()
    };
    assert!(matches!(
        read_file(&bytes, &strict),
        Err(FormatError::LimitExceeded { .. })
    ));
    let strict = Limits {
        max_params: 8,
        ..Limits::default()
    };
    assert!(matches!(
        read_file(&bytes, &strict),
        Err(FormatError::LimitExceeded { .. })
    ));
    let strict = Limits {
        max_file_bytes: bytes.len() as u64 - 1,
        ..Limits::default()
    };
    assert!(matches!(
        read_file(&bytes, &strict),
        Err(FormatError::LimitExceeded { .. })
    ));
    // Bad step with a valid CRC.
    let mut b = bytes.clone();
    b[30..34].copy_from_slice(&[0, 0, 5, 12]);
    fix_crc(&mut b);
    assert!(matches!(read(&b), Err(FormatError::InvalidField { .. })));
    let mut b = bytes.clone();
    b[32] = 65;
    fix_crc(&mut b);
    assert!(matches!(read(&b), Err(FormatError::InvalidField { .. })));
}

#[test]
fn writer_rejects_inconsistent_files() {
    let mut f = golden();
    f.tensors.pop();
    assert!(matches!(
        write_file(&f),
        Err(FormatError::TensorCount {
            expected: 4,
            found: 3
        })
    ));
    let mut f = golden();
    f.tensors[2].symbols.push(0);
    assert!(matches!(
        write_file(&f),
        Err(FormatError::TensorLength { index: 2, .. })
    ));
    // A symbol outside its own tensor's range (though inside the header's 12 bits); the
    // error names the tensor by its file index.
    let mut f = golden();
    f.tensors[2].symbols[0] = 8; // tensor 2 has 4 bits -> |s| <= 7
    assert!(matches!(
        write_file(&f),
        Err(FormatError::Entropy(EntropyError::SymbolOutOfRange {
            tensor: 2,
            index: 0,
            value: 8,
            max_abs: 7
        }))
    ));
    let mut f = golden();
    f.tensors[3].symbols[0] = -2048; // 12 bits -> |s| <= 2047; third tensor of its group
    assert!(matches!(
        write_file(&f),
        Err(FormatError::Entropy(EntropyError::SymbolOutOfRange {
            tensor: 3,
            max_abs: 2047,
            ..
        }))
    ));
    for bits in [0u8, 1, 17] {
        let mut f = golden();
        f.bits = bits;
        assert!(matches!(
            write_file(&f),
            Err(FormatError::InvalidField { field: "bits", .. })
        ));
        let mut f = golden();
        f.tensors[2].bits = bits;
        assert!(matches!(
            write_file(&f),
            Err(FormatError::InvalidField {
                field: "tensor bits",
                ..
            })
        ));
    }
    // Header bits must be the maximum of the tensor bits.
    for bits in [4u8, 11, 13, 16] {
        let mut f = golden();
        f.bits = bits;
        assert!(matches!(
            write_file(&f),
            Err(FormatError::InvalidField { field: "bits", .. })
        ));
    }
    let mut f = golden();
    f.tensors[0].step.mantissa = 0;
    assert!(matches!(
        write_file(&f),
        Err(FormatError::InvalidField { .. })
    ));
    let mut f = golden();
    f.width = 0;
    assert!(write_file(&f).is_err());
    let mut f = golden();
    f.arch.out_channels = 4;
    assert!(write_file(&f).is_err());
}

#[test]
fn magic_constant() {
    assert_eq!(MAGIC, [0x89, b'I', b'N', b'R']);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn entropy_round_trip(
        max_abs in prop_oneof![Just(0u32), 1u32..4, 1u32..600, Just(32767u32)],
        raw in proptest::collection::vec(proptest::collection::vec(any::<i32>(), 0..300), 0..6),
    ) {
        let m = max_abs as i64;
        let tensors: Vec<Vec<i32>> = raw
            .into_iter()
            .map(|t| t.into_iter().map(|v| (i64::from(v).rem_euclid(2 * m + 1) - m) as i32).collect())
            .collect();
        let refs: Vec<&[i32]> = tensors.iter().map(|t| t.as_slice()).collect();
        let bytes = entropy::encode_tensors(&refs, max_abs).unwrap();
        let lens: Vec<usize> = tensors.iter().map(|t| t.len()).collect();
        prop_assert_eq!(entropy::estimate_bits(&refs, max_abs).unwrap(), 8 * bytes.len() as u64);
        prop_assert_eq!(entropy::decode_tensors(&bytes, &lens, max_abs).unwrap(), tensors);
    }

    #[test]
    fn entropy_decoder_survives_garbage(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        lens in proptest::collection::vec(0usize..200, 0..4),
        max_abs in 0u32..2000,
    ) {
        let _ = entropy::decode_tensors(&bytes, &lens, max_abs);
    }

    #[test]
    fn reader_survives_garbage(tail in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut bytes = vec![0x89, b'I', b'N', b'R', 1];
        bytes.extend_from_slice(&tail);
        let _ = read(&bytes);
        if bytes.len() >= 4 {
            fix_crc(&mut bytes);
            let _ = read(&bytes);
            let _ = inspect(&bytes);
        }
    }
}

/// Independent implementation of codec-spec.md §5.2–§5.4 (plain counts, big-number carries),
/// used to check that the spec describes the real encoder and decoder exactly.
mod spec_reference {
    const ONE: u64 = 1 << 24;

    struct Model {
        c: Vec<u64>,
    }
    impl Model {
        fn new(k: usize) -> Self {
            Model { c: vec![1; k] }
        }
        /// `cf(u)` for every `u` in `0..=K` (§5.3).
        fn cfs(&self) -> Vec<u64> {
            let k = self.c.len() as u64;
            let t: u64 = self.c.iter().sum();
            let mut cu = 0u64;
            let mut out = vec![];
            for u in 0..=self.c.len() {
                out.push(u as u64 + cu * (ONE - k) / t);
                if u < self.c.len() {
                    cu += self.c[u];
                }
            }
            out
        }
        fn update(&mut self, u: usize) {
            self.c[u] += 8;
            if self.c.iter().sum::<u64>() > 1 << 17 {
                self.c.iter_mut().for_each(|x| *x = x.div_ceil(2));
            }
        }
    }

    /// Number of carries propagated so far (the test checks that carries were exercised).
    pub static CARRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn carry(out: &mut [u32]) {
        CARRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for w in out.iter_mut().rev() {
            *w = w.wrapping_add(1);
            if *w != 0 {
                break;
            }
        }
    }

    /// Encodes with a given mode (0 = shared model, 1 = fresh model per tensor).
    pub fn encode_mode(tensors: &[&[i32]], m: i32, mode: u64) -> Vec<u8> {
        let k = (2 * m + 1) as usize;
        let mut model = Model::new(k);
        let (mut lower, mut range) = (0u64, u64::MAX);
        let mut out: Vec<u32> = vec![];
        // (cf, p, reset-before) for every coded symbol: the mode symbol first (§5.2).
        let mut steps = vec![(mode << 23, 1u64 << 23, None)];
        for (i, t) in tensors.iter().enumerate() {
            for (j, &v) in t.iter().enumerate() {
                let reset = mode == 1 && i > 0 && j == 0;
                steps.push((0, 0, Some(((v + m) as usize, reset))));
            }
        }
        let any = steps.len() > 1;
        for (c0, p0, sym) in steps {
            let (c, p) = match sym {
                None => (c0, p0),
                Some((u, reset)) => {
                    if reset {
                        model = Model::new(k);
                    }
                    let cf = model.cfs();
                    (cf[u], cf[u + 1] - cf[u])
                }
            };
            let scale = range >> 24;
            range = scale * p;
            let (l, ovf) = lower.overflowing_add(scale * c);
            lower = l;
            if ovf {
                carry(&mut out);
            }
            if range < 1 << 32 {
                out.push((lower >> 32) as u32);
                lower <<= 32;
                range <<= 32;
            }
            if let Some((u, _)) = sym {
                model.update(u);
            }
        }
        if any {
            let (point, ovf) = lower.overflowing_add((1 << 32) - 1);
            if ovf {
                carry(&mut out);
            }
            out.push((point >> 32) as u32);
            if (lower.wrapping_add(range) >> 32) == point >> 32 {
                out.push(0);
            }
        }
        out.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The encoder's choice: the shorter of both modes, ties to mode 0; empty input -> empty.
    pub fn encode(tensors: &[&[i32]], m: i32) -> Vec<u8> {
        if tensors.iter().all(|t| t.is_empty()) {
            return vec![];
        }
        let a = encode_mode(tensors, m, 0);
        let b = encode_mode(tensors, m, 1);
        if b.len() < a.len() {
            b
        } else {
            a
        }
    }

    pub fn decode(bytes: &[u8], lens: &[usize], m: i32) -> Option<Vec<i32>> {
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut next = words.iter().copied();
        let k = (2 * m + 1) as usize;
        let mut model = Model::new(k);
        let w0 = next.next();
        let w1 = next.next();
        let mut point = match (w0, w1) {
            (Some(a), Some(b)) => (u64::from(a) << 32) | u64::from(b),
            (Some(a), None) => u64::from(a) << 32,
            _ => 0,
        };
        let (mut lower, mut range) = (0u64, u64::MAX);
        let mut out = vec![];
        // Mode symbol (§5.2): fixed probability 1/2 each.
        let scale = range >> 24;
        let q = point.wrapping_sub(lower) / scale;
        let mode = q >> 23;
        lower = lower.wrapping_add(scale * (mode << 23));
        range = scale << 23;
        if range < 1 << 32 {
            lower <<= 32;
            range <<= 32;
            point = (point << 32) | u64::from(next.next().unwrap_or(0));
        }
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |acc, &n| {
                let s = *acc;
                *acc += n;
                Some(s)
            })
            .collect();
        let n: usize = lens.iter().sum();
        for i in 0..n {
            if mode == 1 && i > 0 && starts.contains(&i) {
                model = Model::new(k);
            }
            let scale = range >> 24;
            let q = point.wrapping_sub(lower) / scale;
            if q >= ONE {
                return None;
            }
            // Linear scan: u is the last index with cf(u) <= q (cf is increasing).
            let cf = model.cfs();
            let u = (0..k).rev().find(|&u| cf[u] <= q)?;
            if q >= cf[u + 1] {
                return None;
            }
            let (c, p) = (cf[u], cf[u + 1] - cf[u]);
            lower = lower.wrapping_add(scale * c);
            range = scale * p;
            if range < 1 << 32 {
                lower <<= 32;
                range <<= 32;
                point = (point << 32) | u64::from(next.next().unwrap_or(0));
            }
            model.update(u);
            out.push(u as i32 - m);
        }
        Some(out)
    }
}

#[test]
fn spec_reference_coder_matches_implementation() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for case in 0..40 {
        let m = [1i32, 3, 7, 31, 127, 511][case % 6];
        let n = rng.gen_range(0..3000);
        let spread = rng.gen_range(0..=m);
        // Mix narrow and wide symbols so carries and rescales both occur.
        let syms: Vec<i32> = (0..n)
            .map(|i| {
                if i % 97 == 0 {
                    rng.gen_range(-m..=m)
                } else {
                    rng.gen_range(-spread..=spread)
                }
            })
            .collect();
        let parts: Vec<&[i32]> = vec![&syms[..n / 3], &syms[n / 3..n / 2], &syms[n / 2..]];
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        let real = entropy::encode_tensors(&parts, m as u32).unwrap();
        assert_eq!(spec_reference::encode(&parts, m), real, "case {case}");
        for mode in [0, 1] {
            let r = spec_reference::encode_mode(&parts, m, mode);
            assert_eq!(
                entropy::decode_tensors(&r, &lens, m as u32).unwrap(),
                parts,
                "case {case}"
            );
        }
        assert_eq!(
            spec_reference::decode(&real, &lens, m),
            Some(syms),
            "case {case}"
        );
    }
    let carries = spec_reference::CARRIES.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("carries exercised: {carries}");
    assert!(carries > 0, "no carry was exercised");
}
