//! Cutting a torn tail off one of the relay's files without deleting it.
//!
//! The mirror and the outbox cut on open only what is provably unacknowledged: the final,
//! incomplete frame or line a crash left mid-write. Even those bytes are kept: they are first
//! copied into the data directory's [`CUT_DIR`] (file and directory synced), then the file is
//! cut back and synced, and a warning names the file, the offset and the size.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::RelayError;

/// Where cut bytes go, inside the relay's data directory.
pub const CUT_DIR: &str = "cut";

/// Copies `tail` (the bytes of `file`, at `path`, from `offset` to its end) into
/// `dir/cut/<name>.at-<offset>` (a free name: `.2`, `.3`... if taken), durably, then cuts
/// `file` back to `offset` and syncs it. Returns the copy's path.
pub(super) fn cut_tail(
    dir: &Path,
    path: &Path,
    file: &File,
    offset: usize,
    tail: &[u8],
) -> Result<PathBuf, RelayError> {
    let aside = dir.join(CUT_DIR);
    let fail = |what: &str, at: &Path| {
        let context = format!("{what} {}", at.display());
        move |source| RelayError::Io { context, source }
    };
    fs::create_dir_all(&aside).map_err(fail("creating", &aside))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut n = 1;
    let (copy, mut out) = loop {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!(".{n}")
        };
        let copy = aside.join(format!("{name}.at-{offset}{suffix}"));
        match OpenOptions::new().write(true).create_new(true).open(&copy) {
            Ok(out) => break (copy, out),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
            Err(e) => return Err(fail("creating", &copy)(e)),
        }
    };
    out.write_all(tail)
        .and_then(|()| out.sync_all())
        .map_err(fail("writing", &copy))?;
    crate::store::file::sync_dir(&aside).map_err(fail("syncing", &aside))?;
    crate::store::file::sync_dir(dir).map_err(fail("syncing", dir))?;
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
