//! Setting bytes aside: whatever recovery, a format upgrade or an operator cuts from a file is
//! kept in a `cut/` folder beside it, durably, under a name no earlier cut took; nothing is
//! ever deleted. The file log (`store::file`) and the relay's files both go through here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The folder, inside the directory of the files it holds bytes of.
pub const CUT_DIR: &str = "cut";

fn named(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// `<dir>/cut/<name>`, or `<name>.1`, `<name>.2`... if taken; creates `cut/`.
fn free_name(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let aside = dir.join(CUT_DIR);
    fs::create_dir_all(&aside).map_err(|e| named("creating", &aside, e))?;
    let mut to = aside.join(name);
    let mut n = 0;
    while to.exists() {
        n += 1;
        to = aside.join(format!("{name}.{n}"));
    }
    Ok(to)
}

fn sync_aside(dir: &Path) -> io::Result<()> {
    let aside = dir.join(CUT_DIR);
    File::open(&aside)
        .and_then(|d| d.sync_all())
        .map_err(|e| named("syncing", &aside, e))
}

/// Writes `bytes` into `<dir>/cut/<name>` (a free name), then syncs the copy and `cut/`.
/// Returns the copy's path.
pub fn keep_copy(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let copy = free_name(dir, name)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&copy)
        .map_err(|e| named("creating", &copy, e))?;
    out.write_all(bytes)
        .and_then(|()| out.sync_all())
        .map_err(|e| named("writing", &copy, e))?;
    sync_aside(dir)?;
    Ok(copy)
}

/// Moves the file `from` (in `dir`) into `<dir>/cut/<name>` (a free name), then syncs `cut/`.
/// Returns its new path.
pub fn move_file(dir: &Path, from: &Path, name: &str) -> io::Result<PathBuf> {
    let to = free_name(dir, name)?;
    fs::rename(from, &to).map_err(|e| named("moving", from, e))?;
    sync_aside(dir)?;
    Ok(to)
}
