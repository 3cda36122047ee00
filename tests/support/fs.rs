#![allow(dead_code)] // shared by several test files, each using part of it
//! Small file systems for fault tests: a tmpfs of a given size, and a way to fill one.
//! Mounting needs root (or CAP_SYS_ADMIN); callers skip, saying why, when it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test, unmounted when dropped.
pub struct Tmpfs {
    pub at: PathBuf,
}

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs { at: at.to_owned() })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Writes `path` until the file system refuses (ENOSPC); returns the bytes written.
pub fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                break;
            }
        }
    }
    // A partial last page may still take a few bytes: take them too.
    while let Ok(n) = f.write(&chunk[..1]) {
        if n == 0 {
            break;
        }
        written += 1;
    }
    written
}

/// Runs `program` with `args`; its stdout, or why it failed (its stderr).
fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A thin-provisioned disk: an ext4 file system on a loop device whose backing file lives on
/// a small tmpfs. The file system believes it has `fs_size`; the tmpfs holds `backing_size`.
/// Writes land in the page cache and succeed; once the tmpfs is full, writeback fails and
/// `fdatasync` reports EIO (and ext4 aborts its journal) — a real fsync failure, nothing
/// injected. Unmounted and detached when dropped.
pub struct ThinDisk {
    /// Where the ext4 file system is mounted.
    pub at: PathBuf,
    /// The loop device.
    device: String,
    /// The tmpfs holding the image; fill it to make writeback fail.
    pub backing: Tmpfs,
}

impl ThinDisk {
    /// Makes and mounts one under `root`.
    pub fn create(root: &Path, backing_size: &str, fs_size: &str) -> Result<ThinDisk, String> {
        let backing = Tmpfs::mount(&root.join("backing"), backing_size)?;
        let image = backing.at.join("disk.img");
        let image = image.to_str().ok_or("a non-UTF-8 path")?.to_owned();
        sh("truncate", &["-s", fs_size, &image])?;
        sh("mkfs.ext4", &["-q", "-F", &image])?;
        let device = sh("losetup", &["-f", "--show", &image])?;
        let at = root.join("disk");
        std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
        let disk = ThinDisk {
            at,
            device,
            backing,
        };
        sh("mount", &[&disk.device, disk.path()])?;
        Ok(disk)
    }

    fn path(&self) -> &str {
        self.at.to_str().unwrap_or_default()
    }

    /// What an operator does once the disk has space again: unmount, check (`e2fsck -fy`,
    /// which replays or repairs an aborted journal) and mount again. Returns fsck's summary.
    pub fn remount(&self) -> Result<String, String> {
        sh("umount", &[self.path()])?;
        // e2fsck exits 1 when it fixed something: that is the point here.
        let out = Command::new("e2fsck")
            .args(["-fy", &self.device])
            .output()
            .map_err(|e| format!("cannot run e2fsck: {e}"))?;
        let summary = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !matches!(out.status.code(), Some(0 | 1)) {
            return Err(format!("e2fsck: {:?}: {summary}", out.status));
        }
        sh("mount", &[&self.device, self.path()])?;
        Ok(summary)
    }
}

impl Drop for ThinDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
