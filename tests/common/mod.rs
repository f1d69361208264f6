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
