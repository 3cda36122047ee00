//! The command line as a user runs it: the real binary on temporary data directories.

use std::path::Path;
use std::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(dir: &Path, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_license-ledger"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("LEDGER_LOG", "warn")
        .output()
        .expect("run license-ledger");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    assert_eq!(
        o.code, 0,
        "{args:?}: stdout {} stderr {}",
        o.stdout, o.stderr
    );
    o.stdout
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or_default()
}

#[test]
fn demo_fills_an_empty_store_and_the_table_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let summary = ok(dir.path(), &["demo"]);
    assert!(summary.contains("12 licenses"), "{summary}");
    let table = ok(dir.path(), &["table"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  "), "{table}");
    assert!(lines[0].contains("Hardware Key") && lines[0].contains("Contrato"));
    assert!(
        lines[1].starts_with("000001  88A7B56C2B3F326F91362A182483F63E"),
        "{table}"
    );
    assert_eq!(last_line(&table), "1º Item (Total 12)");
    assert!(
        table.contains("TEF IWS") && table.contains("Sim"),
        "{table}"
    );
    assert!(table.contains("Expirada"), "{table}");
    // As of a moment before anything was recorded, the table is empty.
    let before = ok(dir.path(), &["table", "--as-of", "2000-01-01T00:00:00Z"]);
    assert!(before.contains("Total 0"), "{before}");

    let again = run(dir.path(), &["demo"]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);
}

#[test]
fn tokens_are_created_listed_without_their_secret_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(
        dir.path(),
        &[
            "token",
            "create",
            "--role",
            "terminal",
            "--cnpj",
            "11222333000181",
            "--name",
            "caixa-1",
        ],
    );
    let token = last_line(&out).to_owned();
    assert!(token.starts_with("llt_") && !token.contains(' '), "{out}");
    let list = ok(dir.path(), &["token", "list"]);
    assert!(
        list.contains("caixa-1") && list.contains("terminal"),
        "{list}"
    );
    assert!(list.contains("11222333000181"), "{list}");
    assert!(
        !list.contains(&token) && !list.contains(&token[4..20]),
        "{list}"
    );
    let secrets = std::fs::read_to_string(dir.path().join("secrets.toml")).unwrap();
    assert!(!secrets.contains(&token));
    // Names are the actors of the log: a second token of the same name is refused, and so
    // is one posing as the admin.
    for name in ["caixa-1", "admin"] {
        let again = run(
            dir.path(),
            &["token", "create", "--role", "support", "--name", name],
        );
        assert_eq!(again.code, 2, "{name}: {}", again.stderr);
        assert!(
            again.stderr.contains("--name") && again.stderr.contains("exists already"),
            "{}",
            again.stderr
        );
    }
    ok(dir.path(), &["token", "revoke", "caixa-1"]);
    let list = ok(dir.path(), &["token", "list"]);
    assert!(!list.contains("caixa-1"), "{list}");
}

#[test]
fn bad_input_exits_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (&["token", "create", "--role", "terminal"][..], "--cnpj"),
        (&["token", "create", "--role", "wizard"][..], "--role"),
        (
            &[
                "token",
                "create",
                "--role",
                "terminal",
                "--cnpj",
                "11222333000182",
            ][..],
            "--cnpj",
        ),
        (&["table", "--as-of", "yesterday"][..], "--as-of"),
        (
            &[
                "offline",
                "verify",
                "--product",
                "nope",
                "--serial",
                "50026B77605FA3F8",
                "--counter-key",
                "0",
            ][..],
            "--product",
        ),
    ] {
        let o = run(dir.path(), args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains(flag), "{args:?}: {}", o.stderr);
    }
}

#[test]
fn history_is_newest_first_with_descriptions() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["demo"]);
    let out = ok(dir.path(), &["history", "000001"]);
    let positions: Vec<u64> = out
        .lines()
        .map(|l| l.rsplit_once('#').unwrap().1.parse().unwrap())
        .collect();
    assert!(positions.len() >= 3, "{out}");
    assert!(positions.windows(2).all(|w| w[0] > w[1]), "{out}");
    assert!(last_line(&out).contains("concedida"), "{out}");
    assert!(last_line(&out).contains("suporte"), "{out}");
    let first = out.lines().next().unwrap();
    assert_eq!(&first[2..3], "/", "{first}");
    assert_eq!(&first[5..6], "/", "{first}");
    let missing = run(dir.path(), &["history", "000999"]);
    assert_eq!(missing.code, 2);
}

/// Times are shown on the shop's clock with their offset: the same record three hours
/// earlier in Brasília (the default) than in UTC, an hour earlier again in Manaus; a zone
/// that does not exist is refused naming the flag or the config key, with examples.
/// Manual, "Contrato": `renew --contract ID` renews now the contract's licenses that are due,
/// once, and the Histórico shows it.
#[test]
fn renew_contract_renews_the_due_licenses_once() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["demo"]);
    // The demo's contract licenses expire in 28 days; 26 days on, they are in the 3-day window.
    let clock = dir.path().join("clock");
    let later = chrono::Utc::now() + chrono::Duration::days(26);
    std::fs::write(&clock, later.to_rfc3339()).unwrap();
    let clock = clock.to_str().unwrap();
    let out = ok(
        dir.path(),
        &["--clock-file", clock, "renew", "--contract", "000001"],
    );
    let renewed: Vec<&str> = out.lines().collect();
    assert!(!renewed.is_empty(), "{out}");
    for line in &renewed {
        assert!(
            line.starts_with("Licença ")
                && line.contains(" renovada até ")
                && line.ends_with("contrato 000001)"),
            "{out}"
        );
    }
    let first = renewed[0]["Licença ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let again = ok(
        dir.path(),
        &["--clock-file", clock, "renew", "--contract", "1"],
    );
    assert_eq!(
        again.trim(),
        "Contrato 000001: nenhuma licença a renovar hoje"
    );
    let history = ok(dir.path(), &["history", &first]);
    assert_eq!(
        history.matches("Licença renovada até").count(),
        1,
        "{history}"
    );

    let bad = run(dir.path(), &["renew", "--contract", "abc"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--contract"), "{}", bad.stderr);
    let missing = run(dir.path(), &["renew", "--contract", "000099"]);
    assert_eq!(missing.code, 2, "{}", missing.stdout);
    assert!(missing.stderr.contains("000099"), "{}", missing.stderr);
}

#[test]
fn history_shows_local_times_in_the_configured_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["demo"]);
    let first = |args: &[&str]| -> String {
        let out = ok(dir.path(), &[&["history", "000001"], args].concat());
        // "dd/mm/yyyy HH:MM:SS ±hh:mm  actor  description  #position": the time, 26 bytes.
        out.lines().last().unwrap_or_default()[..26].to_owned()
    };
    let parse = |s: &str| {
        chrono::DateTime::parse_from_str(s, "%d/%m/%Y %H:%M:%S %:z")
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
    };
    let brasilia = first(&[]);
    let utc = first(&["--time-zone", "UTC"]);
    let manaus = first(&["--time-zone", "America/Manaus"]);
    assert!(brasilia.ends_with("-03:00"), "{brasilia}");
    assert!(utc.ends_with("+00:00"), "{utc}");
    assert!(manaus.ends_with("-04:00"), "{manaus}");
    assert_eq!(parse(&brasilia), parse(&utc), "the same instant");
    assert_eq!(parse(&manaus), parse(&utc), "the same instant");
    assert_ne!(brasilia[..19], utc[..19], "shown on another clock");

    let bad = run(dir.path(), &["--time-zone", "America/Brasilia", "table"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--time-zone"), "{}", bad.stderr);
    assert!(bad.stderr.contains("America/Sao_Paulo"), "{}", bad.stderr);
    let config = dir.path().join("ledger.toml");
    std::fs::write(&config, "time_zone = \"Mars/Olympus\"\n").unwrap();
    let bad = run(
        dir.path(),
        &["--config", config.to_str().unwrap(), "history", "000001"],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("time_zone"), "{}", bad.stderr);
    assert!(bad.stderr.contains("Mars/Olympus"), "{}", bad.stderr);
}

#[test]
fn export_then_import_reproduces_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    ok(&a, &["demo"]);
    let jsonl = ok(&a, &["export", "--format", "jsonl"]);
    let file = dir.path().join("log.jsonl");
    std::fs::write(&file, &jsonl).unwrap();
    let imported = ok(&b, &["import", file.to_str().unwrap()]);
    let va = ok(&a, &["verify"]);
    let vb = ok(&b, &["verify"]);
    assert_eq!(last_line(&va), last_line(&vb));
    assert_eq!(last_line(&imported), last_line(&va));
    assert_eq!(ok(&b, &["export", "--format", "jsonl"]), jsonl);
    // Run again, the import finds every record already there and stores nothing more.
    let again = ok(&b, &["import", file.to_str().unwrap()]);
    assert_eq!(last_line(&again), last_line(&va), "{again}");
    assert_eq!(ok(&b, &["export", "--format", "jsonl"]), jsonl);
    // An import refuses a store that holds another log.
    let c = dir.path().join("c");
    ok(&c, &["demo"]);
    let other = ok(&c, &["export", "--format", "jsonl"]);
    let refused = run(&c, &["import", file.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("position 1"), "{}", refused.stderr);
    assert_eq!(ok(&c, &["export", "--format", "jsonl"]), other);
    let csv = ok(&a, &["export", "--format", "csv", "--from", "2"]);
    assert!(
        csv.starts_with("position,stream_id,stream_version,event_type,recorded_at,actor,hash\n2,")
    );
}

/// An import that stopped part way (here: after the first records of the file, as an
/// interrupted one leaves the store) is run again and completes: the records already there
/// are checked to be the file's and skipped. A bad line stores nothing from its batch on.
#[test]
fn an_interrupted_import_run_again_completes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    ok(&a, &["demo"]);
    let jsonl = ok(&a, &["export", "--format", "jsonl"]);
    let lines: Vec<&str> = jsonl.lines().collect();
    assert!(lines.len() > 20, "{}", lines.len());
    let file = dir.path().join("log.jsonl");
    std::fs::write(&file, &jsonl).unwrap();
    // A copy whose 15th line is damaged: refused naming the line, nothing from it stored.
    let damaged = dir.path().join("damaged.jsonl");
    let mut bad = lines.clone();
    let broken = lines[14].replace("\"hash\":\"", "\"hash\":\"0");
    bad[14] = &broken;
    std::fs::write(&damaged, bad.join("\n") + "\n").unwrap();
    let refused = run(&b, &["import", "--batch", "4", damaged.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("line 15"), "{}", refused.stderr);
    let partial = ok(&b, &["export", "--format", "jsonl"]);
    assert_eq!(
        partial,
        lines[..12].join("\n") + "\n",
        "the batches before the bad line's, and nothing after"
    );
    // The first ten records, as an interrupted import leaves them.
    let b2 = dir.path().join("b2");
    let head = dir.path().join("head.jsonl");
    std::fs::write(&head, lines[..10].join("\n") + "\n").unwrap();
    ok(&b2, &["import", head.to_str().unwrap()]);
    let done = ok(&b2, &["import", "--batch", "3", file.to_str().unwrap()]);
    assert!(done.contains("(10 were already there)"), "{done}");
    assert_eq!(last_line(&done), last_line(&ok(&a, &["verify"])));
    assert_eq!(ok(&b2, &["export", "--format", "jsonl"]), jsonl);
    // The same again, from the partial import of the damaged file, in batches.
    ok(&b, &["import", "--batch", "5", file.to_str().unwrap()]);
    assert_eq!(ok(&b, &["export", "--format", "jsonl"]), jsonl);
    // A file shorter than the log is not its log.
    let short = run(&b2, &["import", head.to_str().unwrap()]);
    assert_eq!(short.code, 2, "{}", short.stderr);
}

#[test]
fn an_issued_counter_key_verifies_for_its_product_only() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["demo"]);
    let out = ok(
        dir.path(),
        &[
            "offline",
            "issue",
            "--product",
            "notify",
            "--serial",
            "50026B7711112222",
            "--cnpj",
            "11222333000181",
        ],
    );
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("Contra-chave: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let good = ok(
        dir.path(),
        &[
            "offline",
            "verify",
            "--product",
            "notify",
            "--serial",
            "50026B7711112222",
            "--counter-key",
            &key,
        ],
    );
    assert!(good.starts_with("OK"), "{good}");
    let bad = run(
        dir.path(),
        &[
            "offline",
            "verify",
            "--product",
            "easycash",
            "--serial",
            "50026B7711112222",
            "--counter-key",
            &key,
        ],
    );
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    // A serial is used once.
    let twice = run(
        dir.path(),
        &[
            "offline",
            "issue",
            "--product",
            "notify",
            "--serial",
            "50026B7711112222",
        ],
    );
    assert_ne!(twice.code, 0);
}

/// Finding 3 of issue 15: the demo's offline activation names a license bound to a terminal
/// the server has seen (license 000002, terminal 50026B77825EECA6), so its code is made under that terminal's own key: `offline verify`
/// accepts it with that terminal (--cnpj/--hardware-id, or the key itself with
/// --terminal-key) and refuses it with the product's key or another terminal.
#[test]
fn finding_3_offline_verify_checks_a_code_with_the_terminals_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let demo = ok(dir.path(), &["demo"]);
    let line = demo
        .lines()
        .find_map(|l| l.trim().strip_prefix("offline activation: serial "))
        .unwrap_or_else(|| panic!("{demo}"));
    // "<serial> counter-key XXXX XXXX XXXX XXXX valid until DD/MM/YYYY"
    let (serial, rest) = line.split_once(" counter-key ").unwrap();
    let (key, until) = rest.split_once(" valid until ").unwrap();
    let (d, m, y) = (&until[..2], &until[3..5], &until[6..10]);
    let date = format!("{y}-{m}-{d}");
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "offline",
            "verify",
            "--product",
            "easycash",
            "--serial",
            serial,
            "--counter-key",
            key,
            "--date",
            &date,
        ];
        args.extend_from_slice(extra);
        run(dir.path(), &args)
    };
    let own = verify(&[
        "--cnpj",
        "11222333000181",
        "--hardware-id",
        "50026B77825EECA6",
    ]);
    assert_eq!(own.code, 0, "{}{}", own.stdout, own.stderr);
    assert!(own.stdout.starts_with("OK"), "{}", own.stdout);
    for (what, extra) in [
        ("the product's key", &[][..]),
        (
            "another terminal of the customer",
            &[
                "--cnpj",
                "11222333000181",
                "--hardware-id",
                "50026B77825EECA5",
            ][..],
        ),
    ] {
        let refused = verify(extra);
        assert_eq!(
            refused.code, 1,
            "{what}: {}{}",
            refused.stdout, refused.stderr
        );
    }
    // The key a terminal holds, without the product's key.
    let text = std::fs::read_to_string(dir.path().join("secrets.toml")).unwrap();
    let secrets: toml::Value = toml::from_str(&text).unwrap();
    let secret = secrets["offline"]
        .as_table()
        .unwrap()
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("easycash"))
        .and_then(|(_, v)| v.as_str())
        .map(|v| hex::decode(v).unwrap())
        .unwrap_or_else(|| panic!("no EasyCash key in {text}"));
    let terminal_key = ledger_events::offline::terminal_key(
        &secret,
        &ledger_events::Cnpj::parse("11222333000181").unwrap(),
        &ledger_events::HardwareId::parse("50026B77825EECA6").unwrap(),
    );
    let held = verify(&["--terminal-key", &terminal_key.to_hex()]);
    assert_eq!(held.code, 0, "{}{}", held.stdout, held.stderr);
    let bad = verify(&["--terminal-key", "00"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--terminal-key"), "{}", bad.stderr);
}

/// Tokens created and revoked with the CLI while the server runs take effect without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tokens_work_on_a_running_server_without_restart() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_license-ledger"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("server output").unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            break rest.trim().to_owned();
        }
    };
    let client = reqwest::Client::new();
    let status = |token: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(format!("{url}/v1/licenses"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let created = ok(
        dir.path(),
        &[
            "token",
            "create",
            "--role",
            "auditor",
            "--name",
            "late-auditor",
        ],
    );
    let token = last_line(&created).to_owned();
    let mut got = 0;
    for _ in 0..50 {
        got = status(token.clone()).await;
        if got == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        got, 200,
        "a token created by the CLI must work on the running server"
    );
    ok(dir.path(), &["token", "revoke", "late-auditor"]);
    for _ in 0..50 {
        got = status(token.clone()).await;
        if got == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        got, 401,
        "a revoked token must stop working on the running server"
    );
}

#[cfg(unix)]
#[test]
fn every_file_the_commands_create_is_private_to_its_owner() {
    // Finding 9 of issue 15: log segments (and the relay's files) were created 0644.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&data, &["demo"]);
    ok(&data, &["history", "000001"]);
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else {
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
            seen += 1;
        }
    }
    assert!(seen > 5, "the walk saw the log's files: {seen}");
}

#[test]
fn a_trusted_proxy_that_is_no_address_stops_serve_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ledger.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\", \"proxy.local\"]\n",
    )
    .unwrap();
    let o = run(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap(), "serve"],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("trusted_proxies") && o.stderr.contains("proxy.local"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("10.0.0.0/8"),
        "says what to write: {}",
        o.stderr
    );
}

/// A self-signed certificate and its key, as PEM files in `dir` named after `name`.
fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn a_bad_tls_certificate_or_key_stops_serve_and_relay_with_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "a");
    let (_, other_key) = self_signed(dir.path(), "b");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not PEM at all\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec![
                "--tls-cert".into(),
                p(&missing),
                "--tls-key".into(),
                p(&key),
            ],
            "--tls-cert",
            "cannot read",
        ),
        (
            vec!["--tls-cert".into(), p(&junk), "--tls-key".into(), p(&key)],
            "--tls-cert",
            "no certificate",
        ),
        (
            vec![
                "--tls-cert".into(),
                p(&cert),
                "--tls-key".into(),
                p(&missing),
            ],
            "--tls-key",
            "cannot read",
        ),
        (
            vec!["--tls-cert".into(), p(&cert), "--tls-key".into(), p(&junk)],
            "--tls-key",
            "no usable private key",
        ),
        (
            vec![
                "--tls-cert".into(),
                p(&cert),
                "--tls-key".into(),
                p(&other_key),
            ],
            "--tls-key",
            "does not go with the certificate",
        ),
        (
            vec!["--tls-cert".into(), p(&cert)],
            "--tls-key",
            "required with --tls-cert",
        ),
        (
            vec!["--tls-key".into(), p(&key)],
            "--tls-cert",
            "required with --tls-key",
        ),
    ];
    let relay = [
        "relay",
        "--upstream",
        "https://127.0.0.1:9",
        "--cnpj",
        "11222333000181",
        "--token",
        "llt_x",
        "--listen",
        "127.0.0.1:0",
    ];
    for (tls, flag, says) in &cases {
        for command in [&["serve", "--listen", "127.0.0.1:0"][..], &relay[..]] {
            let mut args: Vec<&str> = command.to_vec();
            args.extend(tls.iter().map(String::as_str));
            let o = run(&dir.path().join("data"), &args);
            assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
            assert!(
                o.stderr.contains(&format!("{flag}: ")) && o.stderr.contains(says),
                "{args:?} names {flag} and says {says:?}: {}",
                o.stderr
            );
        }
    }
    // The same from the configuration file: serve's `tls_cert`/`tls_key`.
    let config = dir.path().join("ledger.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            p(&missing),
            p(&key)
        ),
    )
    .unwrap();
    let o = run(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap(), "serve"],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--tls-cert"), "{}", o.stderr);
}

#[test]
fn a_relay_refuses_a_plain_http_upstream_unless_allowed_for_loopback_testing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = |extra: &[&str]| {
        let mut args = vec![
            "relay",
            "--upstream",
            "http://127.0.0.1:9",
            "--cnpj",
            "11222333000181",
            "--token",
            "llt_x",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let refused = run(
        &dir.path().join("relay"),
        &relay(&[]).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    for says in ["--upstream: ", "https://", "--allow-insecure-upstream"] {
        assert!(refused.stderr.contains(says), "{says}: {}", refused.stderr);
    }
    assert!(
        !dir.path().join("relay").exists(),
        "refused before touching the data directory"
    );
    // A URL that is no http(s) URL at all is refused even with the flag.
    let o = run(
        &dir.path().join("relay"),
        &[
            "relay",
            "--upstream",
            "ftp://127.0.0.1:9",
            "--allow-insecure-upstream",
            "--cnpj",
            "11222333000181",
            "--token",
            "llt_x",
        ],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--upstream: "), "{}", o.stderr);

    // With the flag it starts (and keeps retrying the unreachable center).
    let mut child = Command::new(env!("CARGO_BIN_EXE_license-ledger"))
        .args(relay(&["--allow-insecure-upstream"]))
        .arg("--data-dir")
        .arg(dir.path().join("relay"))
        .env("LEDGER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    let listening = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("listening on http://") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the relay started with the flag: {seen:?}");
}
