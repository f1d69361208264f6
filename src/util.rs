//! Small shared helpers: atomic output files.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed and renamed over `path`, so a reader never sees a partial file and an
/// interrupted write leaves no output. Refuses to replace an existing file unless
/// `overwrite` is true (error kind `AlreadyExists`).
///
/// # Errors
/// Any I/O error, or `AlreadyExists` when `path` exists and `overwrite` is false.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> std::io::Result<()> {
    if !overwrite && path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists (use --force to overwrite)", path.display()),
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".inr-tmp-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    if overwrite {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        // persist_noclobber fails if the file appeared in the meantime.
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    Ok(())
}
