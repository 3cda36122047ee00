//! `license-ledger verify` run as a user runs it: the real binary on a real log.

use std::fs;
use std::path::Path;
use std::process::Command;

use license_ledger::store::conformance::file_log;
#[path = "support/frames.rs"]
mod frames;

use frames::{acknowledged_only_up_to, remove_marker};
use license_ledger::store::file::segment::list_segments;

fn verify(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_license-ledger"))
        .arg("verify")
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run license-ledger");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_prints_count_and_head_of_an_intact_log() {
    let dir = tempfile::tempdir().unwrap();
    let records = file_log(dir.path(), 25, &["v"]).await;
    let head = records.last().unwrap().envelope.clone();
    let (code, stdout, stderr) = verify(dir.path(), &[]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("records: 25"), "{stdout}");
    assert!(stdout.contains("head position: 25"), "{stdout}");
    assert!(
        stdout.contains(&format!("head hash: {}", head.hash)),
        "{stdout}"
    );

    let (code, stdout, _) = verify(dir.path(), &["--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["count"], 25);
    assert_eq!(json["head_position"], 25);
    assert_eq!(json["head_hash"], head.hash.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_non_zero_naming_the_first_bad_position() {
    let dir = tempfile::tempdir().unwrap();
    file_log(dir.path(), 10, &["v"]).await;
    let seg = list_segments(dir.path()).unwrap().pop().unwrap().path;
    let mut bytes = fs::read(&seg).unwrap();
    let len = bytes.len();
    // Somewhere inside the records, past the first few.
    bytes[len / 2] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    let (code, _, stderr) = verify(dir.path(), &[]);
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stderr.contains("position "), "{stderr}");
    assert!(stderr.contains(".seg"), "{stderr}");
    let damaged = fs::read(&seg).unwrap();
    assert_eq!(damaged, bytes, "verify must not modify the log");
}

#[test]
fn verify_of_a_missing_directory_says_how_to_fix_it() {
    let (code, _, stderr) = verify(Path::new("/nonexistent/ledger-data"), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_torn_tail_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    file_log(dir.path(), 3, &["v"]).await;
    let seg = list_segments(dir.path()).unwrap().pop().unwrap().path;
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..bytes.len() - 10]).unwrap();
    // Cut short, the third record was acknowledged: damage, exit 1.
    let (code, _, stderr) = verify(dir.path(), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("position 3 was acknowledged"), "{stderr}");
    // Written but not yet acknowledged when the process stopped: a torn tail, exit 0.
    acknowledged_only_up_to(dir.path(), 2);
    let (code, stdout, stderr) = verify(dir.path(), &[]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("warning: torn tail of"), "{stdout}");
    assert!(stdout.contains("not acknowledged"), "{stdout}");
    assert!(stdout.contains("records: 2"), "{stdout}");
    // Without a marker nothing proves it: bytes nothing accounts for never exit 0.
    remove_marker(dir.path());
    let (code, _, stderr) = verify(dir.path(), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no durable.head marker"), "{stderr}");
}

/// `export` checks what `verify` checks: through its scanning thread, a flipped bit fails
/// the export (exit 1, the position named), and only records before the damage are written,
/// each a complete line, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_a_damaged_log_fails_after_the_records_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    file_log(dir.path(), 10, &["v"]).await;
    let seg = list_segments(dir.path()).unwrap().pop().unwrap().path;
    let mut bytes = fs::read(&seg).unwrap();
    let len = bytes.len();
    bytes[len / 2] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    for format in ["jsonl", "csv"] {
        let out = Command::new(env!("CARGO_BIN_EXE_license-ledger"))
            .args(["export", "--format", format, "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {stderr}");
        assert!(stderr.contains("position "), "{format}: {stderr}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().skip(usize::from(format == "csv")).collect();
        assert!(lines.len() < 10, "{format}: {} records of 10", lines.len());
        for (i, line) in lines.iter().enumerate() {
            let position = if format == "jsonl" {
                serde_json::from_str::<ledger_events::RecordJson>(line)
                    .unwrap()
                    .position
            } else {
                line.split(',').next().unwrap().parse().unwrap()
            };
            assert_eq!(position, i as u64 + 1, "{format}");
        }
    }
}
