//! STUB — image I/O and coordinate grids.

/// An 8-bit interleaved image: `channels` is 1 (gray) or 3 (RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}
