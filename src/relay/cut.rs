//! Cutting a torn tail off one of the relay's files without deleting it.
//!
//! The mirror and the outbox cut on open only what is provably unacknowledged: the final,
//! incomplete frame or line a crash left mid-write. Even those bytes are kept: they are first
//! copied into the data directory's [`CUT_DIR`] (file and directory synced), then the file is
//! cut back and synced, and a warning names the file, the offset and the size. A file in the
//! format written before checksummed headers is converted on open, its old bytes kept here as
//! `<name>.v1` ([`convert`]).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::RelayError;

/// Where cut bytes go, inside the relay's data directory.
pub use crate::store::aside::CUT_DIR;

fn fail(what: &str, at: &Path) -> impl FnOnce(std::io::Error) -> RelayError {
    let context = format!("{what} {}", at.display());
    move |source| RelayError::Io { context, source }
}

/// Writes `bytes` into `dir/cut/<name>` (a free name: `.1`, `.2`... if taken), durably (the
/// copy, `cut/` and `dir` synced). Returns the copy's path.
pub(super) fn keep(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, RelayError> {
    let copy = crate::store::aside::keep_copy(dir, name, bytes).map_err(fail("keeping", dir))?;
    crate::store::file::sync_dir(dir).map_err(fail("syncing", dir))?;
    Ok(copy)
}

/// Copies `tail` (the bytes of `file`, at `path`, from `offset` to its end) into
/// `dir/cut/<name>.at-<offset>` ([`keep`]), then cuts `file` back to `offset` and syncs it.
/// Returns the copy's path.
pub(super) fn cut_tail(
    dir: &Path,
    path: &Path,
    file: &File,
    offset: usize,
    tail: &[u8],
) -> Result<PathBuf, RelayError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let copy = keep(dir, &format!("{name}.at-{offset}"), tail)?;
    file.set_len(offset as u64)
        .and_then(|()| file.sync_all())
        .map_err(fail("cutting", path))?;
    tracing::warn!(
        path = %path.display(),
        offset,
        bytes = tail.len(),
        copy = %copy.display(),
        "cut an interrupted write at the end of the file (it was never acknowledged); \
         the bytes are kept in the copy"
    );
    Ok(copy)
}

/// Replaces `dir/name` (whose bytes are `old`, in the format written before checksummed
/// headers) with `new`: the old bytes are kept as `cut/<name>.v1` ([`keep`]; never deleted),
/// the new ones written to `<name>.new` and synced, renamed in place, and `dir` synced.
/// A crash at any point leaves the old file or the new one in place, whole.
pub(super) fn convert(dir: &Path, name: &str, old: &[u8], new: &[u8]) -> Result<(), RelayError> {
    let copy = keep(dir, &format!("{name}.v1"), old)?;
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.new"));
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(fail("creating", &temp))?;
    out.write_all(new)
        .and_then(|()| out.sync_all())
        .map_err(fail("writing", &temp))?;
    fs::rename(&temp, &path).map_err(fail("renaming", &temp))?;
    crate::store::file::sync_dir(dir).map_err(fail("syncing", dir))?;
    tracing::warn!(
        path = %path.display(),
        old_bytes = old.len(),
        new_bytes = new.len(),
        copy = %copy.display(),
        "converted a file written before checksummed headers to the current format; the \
         old file is kept in the copy"
    );
    Ok(())
}
