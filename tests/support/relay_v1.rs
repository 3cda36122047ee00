#![allow(dead_code)] // shared by several test files, each using part of it
//! The relay's files as the code before checksummed headers wrote them (commit 5f637ba,
//! `src/relay/outbox.rs` `append_line` and `src/relay/mirror.rs` `append`), byte for byte:
//! to test that a relay upgraded with such files converts them and loses nothing.

use std::path::Path;

/// An outbox or resolutions line: `serde_json::to_vec` of the value, then a newline.
pub fn outbox_line(value: &impl serde::Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap();
    line.push(b'\n');
    line
}

/// A mirror frame: `length: u32 BE ‖ CRC-32C of the record: u32 BE ‖ record bytes`.
pub fn mirror_frame(record: &[u8]) -> Vec<u8> {
    let mut frame = (record.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32c::crc32c(record).to_be_bytes());
    frame.extend_from_slice(record);
    frame
}

/// Rewrites a relay's `mirror.log`, `outbox.jsonl` and `resolutions.jsonl` in `dir` (current
/// format: 12-byte frame headers, `LLLLLLLL CCCCCCCC HHHHHHHH <JSON>` lines) in the old
/// format and removes the outbox's durable head (the old code had none), as a relay stopped
/// before the upgrade left them. Returns the bytes written per file.
pub fn downgrade(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut written = Vec::new();
    let mirror = std::fs::read(dir.join("mirror.log")).unwrap();
    let mut old = Vec::new();
    let mut at = 0;
    while at < mirror.len() {
        let len = u32::from_be_bytes(mirror[at..at + 4].try_into().unwrap()) as usize;
        old.extend(mirror_frame(&mirror[at + 12..at + 12 + len]));
        at += 12 + len;
    }
    written.push(("mirror.log".to_owned(), old));
    for name in ["outbox.jsonl", "resolutions.jsonl"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let old: Vec<u8> = text
            .lines()
            .flat_map(|l| {
                // The current line's JSON is `serde_json::to_vec` of the value, as the old
                // line was: kept verbatim, with the old line's newline.
                let json = l.splitn(4, ' ').nth(3).unwrap();
                [json.as_bytes(), b"\n"].concat()
            })
            .collect();
        written.push((name.to_owned(), old));
    }
    for (name, bytes) in &written {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::remove_file(dir.join("outbox.head")).unwrap();
    written
}
