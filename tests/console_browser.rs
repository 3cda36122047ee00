//! The console in a real browser: starts the real server in-process (127.0.0.1, port 0, fresh
//! data directory, the demo data set), creates support, auditor and terminal tokens, and runs
//! `node tests/e2e/console.spec.mjs`, which drives Debian's headless Chromium through
//! playwright-core: sign-in (a terminal token is refused), the license table's filters,
//! sorting, keyboard selection and footer, a Histórico, Desassociar with its reason and the
//! new timeline entry, Ativar Offline's counter-key, the live refresh from the event stream,
//! the table as of a past moment, a diff, "verify now", the other pages, the English switch,
//! a tablet width, and an auditor who sees no action buttons. Screenshots of each page go to
//! `target/console-screenshots/`.
//!
//! Needs `/usr/bin/chromium`, `node` and `tests/e2e/node_modules` (`.ci/console-deps.sh`
//! installs them). Without them the test prints SKIPPED and why; under CI (`CI=true`) a
//! missing dependency fails instead, so a missing install step cannot pass as green.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use license_ledger::cli::serve::{start_with, ServeSettings};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Why the browser test cannot run here, if it cannot.
fn missing_dependency(e2e: &Path) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "{CHROMIUM} is missing (apt-get install -y chromium, or run .ci/console-deps.sh)"
        ));
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not on PATH".into());
    }
    if !e2e
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Some(format!(
            "{}/node_modules is missing (npm ci --prefix tests/e2e, or run .ci/console-deps.sh)",
            e2e.display()
        ));
    }
    None
}

async fn token(client: &reqwest::Client, base: &str, admin: &str, body: Value) -> String {
    let res = client
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "creating a token {body}");
    let b: Value = res.json().await.unwrap();
    b["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_end_to_end_in_headless_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let e2e = root.join("tests/e2e");
    if let Some(why) = missing_dependency(&e2e) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the browser test cannot run under CI: {why}");
        }
        println!("SKIPPED the_console_works_end_to_end_in_headless_chromium: {why}");
        return;
    }
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }

    // Arrange: the real server with the demo data set, and one token per kind of caller.
    let dir = tempfile::tempdir().unwrap();
    let settings = ServeSettings {
        workers: 2,
        ..ServeSettings::loopback(dir.path())
    };
    let running = start_with(&settings, true).await.unwrap();
    let demo = running
        .demo
        .clone()
        .expect("an empty store gets the demo data");
    assert_eq!(demo.licenses.len(), 12);
    let admin = running.new_admin_token.clone().unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let support = token(
        &client,
        &base,
        &admin,
        json!({"name": "console-suporte", "role": "support"}),
    )
    .await;
    let auditor = token(
        &client,
        &base,
        &admin,
        json!({"name": "console-auditoria", "role": "auditor"}),
    )
    .await;
    let terminal = token(
        &client,
        &base,
        &admin,
        json!({"name": "caixa-01", "role": "terminal", "cnpj": "11222333000181"}),
    )
    .await;
    let shots = root.join("target/console-screenshots");

    // Act: the browser run (it bounds its own time).
    let spec = e2e.join("console.spec.mjs");
    let out = tokio::task::spawn_blocking({
        let (base, shots, e2e) = (base.clone(), shots.clone(), e2e.clone());
        move || {
            Command::new("node")
                .arg(spec)
                .current_dir(e2e)
                .env("CONSOLE_URL", base)
                .env("SUPPORT_TOKEN", support)
                .env("AUDITOR_TOKEN", auditor)
                .env("TERMINAL_TOKEN", terminal)
                .env("SCREENSHOT_DIR", shots)
                .env("CHROMIUM", CHROMIUM)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("node runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));

    // Assert: every step passed, and each page left a screenshot.
    running.stop().await.unwrap();
    assert!(
        out.status.success(),
        "the browser run failed ({}); screenshots in {}",
        out.status,
        shots.display()
    );
    for page in [
        "licencas",
        "historico",
        "evento",
        "ativar-offline",
        "auditoria",
        "contingencias",
        "clientes",
        "eventos",
        "painel",
        "licencas-tablet",
    ] {
        let file = shots.join(format!("{page}.png"));
        assert!(file.exists(), "no screenshot {}", file.display());
    }
}
