//! `license-ledger repair` end to end on the real binary: a demo log with a damaged frame
//! after its last append (what a failed fdatasync can leave) and no durable-head marker to
//! prove it unacknowledged fails `verify`; `repair` says
//! what it would cut, refuses positions that would keep damage, cuts with `--yes`, and the log
//! verifies with the same head as before the damage.

#[path = "support/frames.rs"]
mod frames;
#[path = "support/process.rs"]
mod process;

use frames::append_damaged_frame;
use process::run;

#[test]
fn the_cli_says_what_it_would_cut_then_cuts_and_explains_wrong_positions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let (code, out, err) = run(&["--data-dir", d, "demo"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&["--data-dir", d, "verify", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let head = report["head_position"].as_u64().unwrap();
    append_damaged_frame(&data);
    // The durable-head marker proves the frame after the last acknowledged append was never
    // acknowledged: verify says so and passes, and `serve` would set it aside by itself.
    let (code, out, err) = run(&["--data-dir", d, "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("torn tail of") && out.contains("not acknowledged"),
        "{out}"
    );
    // Without the marker (a log from before markers) nothing proves it: the operator decides.
    std::fs::rename(data.join("durable.head"), dir.path().join("durable.head")).unwrap();
    let (code, _, err) = run(&["--data-dir", d, "verify"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("(position {})", head + 1)), "{err}");

    let h = head.to_string();
    let (code, out, err) = run(&["--data-dir", d, "repair", "--truncate-after", &h]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("would move") && out.contains("--yes"), "{out}");
    assert_eq!(
        run(&["--data-dir", d, "verify"]).0,
        1,
        "a dry run cuts nothing"
    );

    let past = (head + 1).to_string();
    let (code, out, err) = run(&["--data-dir", d, "repair", "--truncate-after", &past]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("damaged at or before"), "{err}");

    let (code, out, err) = run(&["--data-dir", d, "repair", "--truncate-after", &h, "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("keeps {head} records")), "{out}");
    let (code, out, _) = run(&["--data-dir", d, "verify", "--json"]);
    assert_eq!(code, 0, "{out}");
    let after: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        after["head_hash"], report["head_hash"],
        "the same head as before"
    );

    let (code, out, err) = run(&["--data-dir", d, "repair", "--truncate-after", &past]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--truncate-after") && err.contains(&format!("pass {head}")),
        "{err}"
    );
}

/// The failure found from outside: one flipped bit in the first frame's length of a demo log
/// (every record acknowledged) made `verify` exit 0 and `serve` truncate the log to its
/// header. Now both refuse, naming the place, and nothing on disk changes.
#[test]
fn a_flipped_length_bit_is_damage_that_verify_and_serve_refuse_without_cutting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let (code, out, err) = run(&["--data-dir", d, "demo"]);
    assert_eq!(code, 0, "{out}{err}");
    let (seg, frames) = frames::frames(&data);
    let mut bytes = std::fs::read(&seg).unwrap();
    let (first, _) = frames[0];
    bytes[first + 1] ^= 0x01; // 8000 00c4 → 8001 00c4
    std::fs::write(&seg, &bytes).unwrap();

    let (code, out, err) = run(&["--data-dir", d, "verify"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("offset {first} (position 1)")) && err.contains("acknowledged"),
        "{err}"
    );

    let mut server = std::process::Command::new(process::binary())
        .args(["--data-dir", d, "serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            server.kill().unwrap();
            panic!("serve started on a damaged log");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("damage, not an interrupted write"), "{err}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "serve changed the segment"
    );
    assert!(!data.join("cut").exists(), "serve cut something");
}
