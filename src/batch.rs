//! Batch compression of a folder tree (work in progress).

use std::path::Path;

/// Whether `path` is an image file: its first bytes are a known image signature, or its
/// extension is a known image extension (so a broken `.png` is still treated as an image and
/// reported as a failure rather than skipped silently).
pub fn looks_like_image(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 64];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let sniffed = head
        .get(..n)
        .is_some_and(|h| image::guess_format(h).is_ok());
    sniffed || image::ImageFormat::from_path(path).is_ok()
}
