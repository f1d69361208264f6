//! Small shared helpers: atomic output files.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed and renamed over `path`, so a reader never sees a partial file and an
/// interrupted write leaves no output. Refuses to replace an existing file unless
/// `overwrite` is true (error kind `AlreadyExists`). The file gets the usual mode for new
/// files (`0666` minus the umask on Unix). On any error the temporary file is removed.
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
    let mut builder = tempfile::Builder::new();
    builder.prefix(".inr-tmp-");
    // Like `fs::write`: mode 0666 minus the umask (tempfile's default 0600 would make every
    // output private to its owner).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir)?;
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
