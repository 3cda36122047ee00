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
