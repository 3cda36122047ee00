#![allow(dead_code)] // shared by several test files, each using part of it
//! Servers as child processes of the real binary: started on loopback port 0, their URL and
//! first-start admin token read from stdout, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `license-ledger` process.
pub struct Process {
    child: Child,
    /// `http://127.0.0.1:PORT` (`https://` when started with `--tls-cert`).
    pub url: String,
    /// The admin token printed on first start, if any.
    pub admin: Option<String>,
    /// Everything it printed on stdout so far (its stderr goes to a file, see `log`).
    pub stdout: Vec<String>,
    /// Its stderr (logs), in a file.
    pub log: PathBuf,
}

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_license-ledger")
}

/// Runs the binary to completion with `args`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("LEDGER_LOG", "warn")
        .output()
        .expect("run license-ledger");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Process {
    /// Starts the binary with `args` (which must make it listen on port 0 and print
    /// `listening on http://ADDR` or `https://ADDR`), with its logs in `log_dir`.
    pub fn start(args: &[&str], log_dir: &Path, name: &str) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(binary())
            .args(args)
            .env("LEDGER_LOG", "info,actix_server=warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn license-ledger");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        let mut url = None;
        while url.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("listening on ") {
                        url = Some(u.trim().to_owned());
                    }
                    lines.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "{name} did not start: stdout {lines:?}, log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        // The admin token, when printed, follows the URL line right away.
        let mut admin = None;
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            if line.starts_with("llt_") {
                admin = Some(line.trim().to_owned());
            }
            lines.push(line);
            if admin.is_some() {
                break;
            }
        }
        Process {
            child,
            url: url.unwrap_or_default(),
            admin,
            stdout: lines,
            log,
        }
    }

    /// `serve` on the file store in `data`, on a free loopback port with two workers.
    pub fn serve(data: &Path, log_dir: &Path, name: &str) -> Process {
        let data = data.to_str().expect("a UTF-8 path");
        let args = [
            "--data-dir",
            data,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
        ];
        Process::start(&args, log_dir, name)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP request to a server under test, with `token` as bearer; its status and body as
/// JSON (a JSON string when the body is not JSON), or `None` when the connection failed
/// (e.g. the process was killed).
pub async fn call(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Option<(reqwest::StatusCode, serde_json::Value)> {
    let full = format!("{url}{path}");
    let mut req = match method {
        "GET" => http.get(full),
        "PUT" => http.put(full),
        "POST" => http.post(full),
        other => panic!("no method {other} in this API"),
    };
    req = req.bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.ok()?;
    let status = res.status();
    let text = res.text().await.ok()?;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Some((status, json))
}
