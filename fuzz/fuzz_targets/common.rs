//! Shared by the fuzz targets: a valid CRC32 for arbitrary bytes.
//!
//! Almost every mutation of a real file breaks its trailing CRC32 (codec-spec §4.3), which
//! would stop the decoder at the integrity check. Each target therefore runs twice: on the
//! input as given (exercises the structural checks and the CRC itself) and with the last
//! four bytes replaced by the CRC32 of everything before them (reaches the semantic checks,
//! the payload groups and the entropy decoder, i.e. what a hostile file with a valid CRC
//! reaches).

/// `data` with its last 4 bytes replaced by the little-endian CRC32 of the rest (unchanged
/// when shorter than 4 bytes).
pub fn with_valid_crc(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if let Some(body) = v.len().checked_sub(4) {
        let crc = crc32fast::hash(&v[..body]);
        v[body..].copy_from_slice(&crc.to_le_bytes());
    }
    v
}
