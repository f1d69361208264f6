//! A committed v1 file decodes to pinned pixels (CRC32), on every machine: the decoder's
//! arithmetic is specified to the bit (codec-spec §6.2, §8). Regenerate the fixture and the
//! CRCs only on a deliberate format change: `INR_REGENERATE_GOLDEN=1 cargo test --test golden`
//! and copy the printed CRCs below.

use inr::{decode, encode_image, media::Image, DecodeOptions, EncodeConfig, Preset};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden_v1.inr");
/// CRC32 of the decoded samples at the coded size (32x24) and at 50x40.
const CRC_NATIVE: u32 = 0x86ef3cec;
const CRC_50X40: u32 = 0xbf197d60;

fn source() -> Image {
    let (w, h) = (32u32, 24u32);
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            data.push((128.0 + 100.0 * (7.0 * fx).sin() * (4.0 * fy).cos()) as u8);
            data.push((30.0 + 200.0 * fx * fy) as u8);
            data.push((210.0 - 160.0 * fy + 30.0 * (11.0 * fx).cos()) as u8);
        }
    }
    Image {
        width: w,
        height: h,
        channels: 3,
        data,
    }
}

#[test]
fn golden_file_decodes_to_pinned_pixels() {
    if std::env::var_os("INR_REGENERATE_GOLDEN").is_some() {
        let cfg = EncodeConfig {
            preset: Preset::Tiny,
            width: Some(16),
            depth: Some(3),
            steps: Some(300),
            ..Default::default()
        };
        let e = encode_image(&source(), &cfg, &mut |_: &inr::Progress| {}).unwrap();
        std::fs::write(FIXTURE, &e.bytes).unwrap();
    }
    let bytes = std::fs::read(FIXTURE).expect("tests/fixtures/golden_v1.inr");
    let native = decode(&bytes, &DecodeOptions::default()).unwrap();
    let big = decode(
        &bytes,
        &DecodeOptions {
            size: Some((50, 40)),
            ..Default::default()
        },
    )
    .unwrap();
    let (c1, c2) = (crc32fast::hash(&native.data), crc32fast::hash(&big.data));
    println!("CRC_NATIVE = {c1:#010x}; CRC_50X40 = {c2:#010x}");
    assert_eq!((native.width, native.height, native.channels), (32, 24, 3));
    // The network still represents the source (guards against pinning garbage).
    assert!(inr::metrics::psnr(&source(), &native).unwrap() > 22.0);
    assert_eq!(
        c1, CRC_NATIVE,
        "decoded pixels changed: decoder arithmetic is not bit-exact"
    );
    assert_eq!(c2, CRC_50X40);
}

#[test]
fn every_truncation_and_every_byte_change_of_a_real_file_is_an_error() {
    let bytes = std::fs::read(FIXTURE).expect("tests/fixtures/golden_v1.inr");
    for n in 0..bytes.len() {
        assert!(
            decode(&bytes[..n], &DecodeOptions::default()).is_err(),
            "truncated to {n}"
        );
    }
    let mut b = bytes.clone();
    for i in 0..b.len() {
        for x in 1..=255u8 {
            b[i] ^= x;
            assert!(
                decode(&b, &DecodeOptions::default()).is_err(),
                "byte {i} xor {x}"
            );
            assert!(inr::inspect(&b).is_err(), "inspect: byte {i} xor {x}");
            b[i] ^= x;
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode(&longer, &DecodeOptions::default()).is_err());
}
