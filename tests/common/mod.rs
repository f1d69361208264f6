//! Helpers shared by the sparsity and weight-sharing tests.
#![allow(dead_code)]

use inr::media::Image;

/// A smooth RGB test image with some texture (deterministic).
pub fn test_image(w: u32, h: u32) -> Image {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let fx = x as f32 / w as f32;
            let fy = y as f32 / h as f32;
            data.push((128.0 + 100.0 * (9.0 * fx).sin() * (5.0 * fy).cos()) as u8);
            data.push((40.0 + 180.0 * fx * fy + 20.0 * (13.0 * fy).sin()) as u8);
            data.push((200.0 - 150.0 * fy + 30.0 * (11.0 * fx).cos()) as u8);
        }
    }
    Image {
        width: w,
        height: h,
        channels: 3,
        data,
    }
}

/// Recomputes the trailing CRC32 of a damaged file (so that the field checks are reached).
pub fn fix_crc(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

/// Every single-byte change (CRC fixed, so the field checks are reached) gives an error or
/// another valid file, never a panic and never the same file; every truncation is an error.
/// `read` parses a file, `inspect` only inspects it (must not panic either).
pub fn assert_flips_and_truncations_are_caught<T: PartialEq + std::fmt::Debug, E>(
    bytes: &[u8],
    original: &T,
    read: impl Fn(&[u8]) -> Result<T, E>,
    inspect: impl Fn(&[u8]),
) {
    for i in 0..bytes.len() - 4 {
        for x in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.to_vec();
            b[i] ^= x;
            fix_crc(&mut b);
            if let Ok(g) = read(&b) {
                assert_ne!(
                    &g, original,
                    "byte {i} changed but the file decodes identically"
                );
            }
            inspect(&b);
        }
    }
    for n in 0..bytes.len() {
        assert!(
            read(&bytes[..n]).is_err(),
            "truncation to {n} bytes accepted"
        );
    }
}
