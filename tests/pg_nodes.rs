//! Server processes on PostgreSQL: two nodes sharing one database, and a node whose database
//! goes away mid-run (through a loopback proxy the test cuts) and comes back.
//!
//! Needs `DATABASE_URL` (e.g. postgres://postgres@127.0.0.1:5432/test); without it each test
//! prints that it skipped, except under CI (`CI=true`), where it fails naming it. Each test
//! works in its own schema and drops it.

mod common;
#[path = "support/process.rs"]
mod process;
#[path = "support/proxy.rs"]
mod proxy;

use std::str::FromStr;
use std::time::{Duration, Instant};

use process::Process;
use proxy::Proxy;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const CNPJ: &str = "11222333000181";

fn database_url(test: &str) -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test} cannot run under CI: DATABASE_URL is not set (.ci/run sets it)");
            }
            eprintln!("SKIPPED {test}: DATABASE_URL is not set (.ci/run sets it)");
            None
        }
    }
}

fn fresh_schema() -> String {
    format!("ledger_nodes_{}", uuid::Uuid::now_v7().simple())
}

/// Drops the schema when the test ends, pass or fail.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

struct Node {
    process: Process,
    dir: std::path::PathBuf,
}

fn start_node(dir: &std::path::Path, name: &str, url: &str, schema: &str) -> Node {
    let data = dir.join(name);
    let process = Process::start(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--store",
            "postgres",
            "--database-url",
            url,
            "--database-schema",
            schema,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
        ],
        dir,
        name,
    );
    Node { process, dir: data }
}

async fn call(
    http: &Client,
    node: &Node,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    process::call(http, &node.process.url, token, method, path, body.as_ref())
        .await
        .unwrap_or_else(|| panic!("{method} {path}: no answer"))
}

/// Registers the customer [`CNPJ`] and grants it one EasyCash license on `node`: the
/// grant's answer and the license id.
async fn open_shop(http: &Client, node: &Node, admin: &str) -> (Value, String) {
    let (code, reg) = call(
        http,
        node,
        admin,
        "POST",
        "/v1/customers",
        Some(json!({"cnpj": CNPJ, "trade_name": "Mercado Bom"})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{reg}");
    let (code, grant) = call(
        http,
        node,
        admin,
        "POST",
        "/v1/licenses",
        Some(json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2031-01-31"})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{grant}");
    let license = grant["license_id"].as_str().unwrap().to_owned();
    (grant, license)
}

/// Two nodes serving one fresh schema, sharing keys and tokens, and a client.
struct TwoNodes {
    a: Node,
    b: Node,
    admin: String,
    http: Client,
    _dir: tempfile::TempDir,
    _schema: Schema,
}

fn two_nodes(url: &str) -> TwoNodes {
    let schema = fresh_schema();
    let drop_schema = Schema {
        url: url.to_owned(),
        name: schema.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let a = start_node(dir.path(), "node-a", url, &schema);
    let admin = a.process.admin.clone().expect("admin token");
    // Nodes of one deployment share the keys and tokens files (config management's job).
    let b_dir = dir.path().join("node-b");
    std::fs::create_dir_all(&b_dir).unwrap();
    for f in ["secrets.toml", "answer-signing.key"] {
        std::fs::copy(a.dir.join(f), b_dir.join(f)).unwrap();
    }
    let b = start_node(dir.path(), "node-b", url, &schema);
    let http = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    TwoNodes {
        a,
        b,
        admin,
        http,
        _dir: dir,
        _schema: drop_schema,
    }
}

fn checkin_body(n: u8) -> Value {
    json!({"cnpj": CNPJ, "product": "easycash",
           "hardware_id": format!("50026B77825EEC{n:02X}"),
           "hardware_key": format!("88A7B56C2B3F326F91362A182483F6{n:02X}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_see_each_others_writes_and_one_terminal_wins_the_last_license() {
    let Some(url) = database_url("two_nodes_on_one_database") else {
        return;
    };
    // `_dir` and `_schema` are bound so that they last until the test ends.
    let TwoNodes {
        a,
        b,
        admin,
        http,
        _dir,
        _schema,
    } = two_nodes(&url);

    // A command on node A is visible on node B with min_position.
    let (grant, license) = open_shop(&http, &a, &admin).await;
    let (code, row) = call(
        &http,
        &b,
        &admin,
        "GET",
        &format!("/v1/licenses/{license}?min_position={}", grant["position"]),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{row}");
    assert_eq!(row["license_id"], json!(license));

    // The last free license: two terminals through different nodes at once.
    let (x, y) = tokio::join!(
        call(
            &http,
            &a,
            &admin,
            "POST",
            "/v1/checkin",
            Some(checkin_body(1))
        ),
        call(
            &http,
            &b,
            &admin,
            "POST",
            "/v1/checkin",
            Some(checkin_body(2))
        ),
    );
    assert_eq!(
        (x.0, y.0),
        (StatusCode::OK, StatusCode::OK),
        "{} {}",
        x.1,
        y.1
    );
    let outcomes = [x.1["outcome"].clone(), y.1["outcome"].clone()];
    let winners = outcomes.iter().filter(|o| **o == json!("VALID")).count();
    let losers = outcomes
        .iter()
        .filter(|o| **o == json!("NO_LICENSE"))
        .count();
    assert_eq!(
        (winners, losers),
        (1, 1),
        "exactly one wins: {} {}",
        x.1,
        y.1
    );
    let winner = if x.1["outcome"] == json!("VALID") {
        1
    } else {
        2
    };
    // Both nodes agree on who holds it.
    let (_, head) = call(&http, &a, &admin, "GET", "/v1/audit/head", None).await;
    for node in [&a, &b] {
        let (_, row) = call(
            &http,
            node,
            &admin,
            "GET",
            &format!(
                "/v1/licenses/{license}?min_position={}",
                head["head_position"]
            ),
            None,
        )
        .await;
        assert_eq!(
            row["binding"]["hardware_id"],
            json!(format!("50026B77825EEC{winner:02X}")),
            "{row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_grants_at_once_for_one_customer_through_two_nodes_get_ids_1_to_64() {
    let Some(url) = database_url("sixty_four_grants_at_once_through_two_nodes") else {
        return;
    };
    let TwoNodes {
        a,
        b,
        admin,
        http,
        _dir,
        _schema,
    } = two_nodes(&url);
    let (code, reg) = call(
        &http,
        &a,
        &admin,
        "POST",
        "/v1/customers",
        Some(json!({"cnpj": CNPJ, "trade_name": "Mercado Bom"})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{reg}");

    // 32 grants through each node, all at once: the nodes race for the same ids.
    let grant = json!({"cnpj": CNPJ, "product": "easycash", "expires_on": "2031-01-31"});
    let grants = (0..64).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        call(
            &http,
            node,
            &admin,
            "POST",
            "/v1/licenses",
            Some(grant.clone()),
        )
    });
    let answers = futures::future::join_all(grants).await;

    common::assert_dense_ids(&answers, "license_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_away_commands_answer_503_check_ins_go_on_and_it_recovers() {
    let Some(url) = database_url("with_the_database_away") else {
        return;
    };
    let schema = fresh_schema();
    let _drop = Schema {
        url: url.clone(),
        name: schema.clone(),
    };
    // The node reaches PostgreSQL through a proxy the test can cut.
    let config = tokio_postgres::Config::from_str(&url).unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target = format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|_| "127.0.0.1:5432".parse().unwrap());
    let proxy = Proxy::start(target).await;
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let proxied = format!("postgres://{user}{password}@{}/{db}", proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "node", &proxied, &schema);
    let admin = node.process.admin.clone().expect("admin token");
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (_, license) = open_shop(&http, &node, &admin).await;
    let (code, first) = call(
        &http,
        &node,
        &admin,
        "POST",
        "/v1/checkin",
        Some(checkin_body(1)),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{first}");
    assert_eq!(first["outcome"], json!("VALID"));

    // The database goes away.
    proxy.cut();
    let (code, v) = call(
        &http,
        &node,
        &admin,
        "POST",
        &format!("/v1/licenses/{license}/block"),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"], json!("unavailable"), "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("PostgreSQL")),
        "a clear message: {v}"
    );
    // The bound terminal keeps being answered from the read model.
    for n in 0..3 {
        let (code, v) = call(
            &http,
            &node,
            &admin,
            "POST",
            "/v1/checkin",
            Some(checkin_body(1)),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "check-in {n} during the outage: {v}");
        assert_eq!(v["outcome"], json!("VALID"), "{v}");
    }
    let (code, v) = call(
        &http,
        &node,
        &admin,
        "GET",
        &format!("/v1/licenses/{license}"),
        None,
    )
    .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "queries are answered from the view: {v}"
    );

    // The database returns: commands work again without a restart.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    let blocked = loop {
        let (code, v) = call(
            &http,
            &node,
            &admin,
            "POST",
            &format!("/v1/licenses/{license}/block"),
            Some(json!({})),
        )
        .await;
        if code == StatusCode::OK {
            break v;
        }
        assert!(Instant::now() < deadline, "never recovered: {code} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, v) = call(
        &http,
        &node,
        &admin,
        "POST",
        "/v1/checkin",
        Some(checkin_body(1)),
    )
    .await;
    assert_eq!(
        v["outcome"],
        json!("BLOCKED"),
        "the block is served: {v} (after {blocked})"
    );
}

#[test]
fn an_export_from_the_file_store_imported_into_postgres_and_back_gives_identical_heads() {
    let Some(url) = database_url("export_import_across_backends") else {
        return;
    };
    let schema = fresh_schema();
    let _drop = Schema {
        url: url.clone(),
        name: schema.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let file_dir = dir.path().join("file");
    let keys = dir.path().join("keys");
    let file = file_dir.to_str().unwrap();
    let pg = [
        "--data-dir",
        keys.to_str().unwrap(),
        "--store",
        "postgres",
        "--database-url",
        &url,
        "--database-schema",
        &schema,
    ];
    let last = |s: &str| s.lines().last().unwrap_or_default().to_owned();
    let ok = |args: &[&str]| {
        let (code, out, err) = process::run(args);
        assert_eq!(code, 0, "{args:?}: {out} {err}");
        out
    };
    ok(&["--data-dir", file, "demo"]);
    let file_head = last(&ok(&["--data-dir", file, "verify"]));
    assert!(file_head.starts_with("count=27 "), "{file_head}");
    let export = dir.path().join("file.jsonl");
    std::fs::write(
        &export,
        ok(&["--data-dir", file, "export", "--format", "jsonl"]),
    )
    .unwrap();

    // Into the empty schema the import is one transaction: a file damaged near its end
    // (here its last record's hash) stores nothing, not even the batches before it.
    let exported = std::fs::read_to_string(&export).unwrap();
    let damaged = dir.path().join("damaged.jsonl");
    let mut lines: Vec<String> = exported.lines().map(str::to_owned).collect();
    let n = lines.len();
    let hash = |l: &str| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["hash"].as_str().unwrap().to_owned()
    };
    let good = hash(&lines[n - 1]);
    let bad = format!(
        "{}{}",
        if good.starts_with('0') { "1" } else { "0" },
        &good[1..]
    );
    lines[n - 1] = lines[n - 1].replace(&good, &bad);
    std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();
    let (code, out, err) = process::run(
        &[
            &pg[..],
            &["import", "--batch", "5", damaged.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_ne!(code, 0, "a damaged file was imported: {out}");
    assert!(err.contains(&format!("line {n}: hash mismatch")), "{err}");
    assert!(err.contains("nothing of the file was stored"), "{err}");
    let verify = [&pg[..], &["verify"]].concat();
    assert!(
        ok(&verify)
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("count=0 "),
        "the schema is still empty"
    );

    // An import interrupted after the first records (as it leaves the schema) completes
    // when run again.
    let start = dir.path().join("start.jsonl");
    let first: Vec<&str> = exported.lines().take(12).collect();
    std::fs::write(&start, first.join("\n") + "\n").unwrap();
    ok(&[&pg[..], &["import", start.to_str().unwrap()]].concat());
    let import = [&pg[..], &["import", export.to_str().unwrap()]].concat();
    let imported = ok(&import);
    assert!(imported.contains("(12 were already there)"), "{imported}");
    assert_eq!(last(&imported), file_head, "import's last line");
    assert_eq!(last(&ok(&verify)), file_head, "PostgreSQL's verify");
    let table = [&pg[..], &["table"]].concat();
    assert_eq!(
        ok(&table),
        ok(&["--data-dir", file, "table"]),
        "the same license table"
    );

    // And back: PostgreSQL's export into an empty file store.
    let export_pg = [&pg[..], &["export", "--format", "jsonl"]].concat();
    let back = dir.path().join("pg.jsonl");
    std::fs::write(&back, ok(&export_pg)).unwrap();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&export).unwrap(),
        "byte-identical exports"
    );
    let again = dir.path().join("again");
    let again = again.to_str().unwrap();
    ok(&["--data-dir", again, "import", back.to_str().unwrap()]);
    assert_eq!(last(&ok(&["--data-dir", again, "verify"])), file_head);
}
