//! The PostgreSQL store: the conformance suite, then what only a shared database has to prove
//! (several nodes on one log, the slow-writer race, notifications between nodes, outages,
//! rows altered in SQL, export and import with the file store, migrations).
//!
//! Every test needs `DATABASE_URL` (for example `postgres://postgres@127.0.0.1:5432/test`);
//! without it each test says on stderr that it was skipped and why, and returns, except under
//! `CI=true`, where it fails naming `DATABASE_URL`. Each test works in a schema of its own
//! (`ledger_t_<random>`), dropped at the end, so tests run in parallel.

#[path = "support/import.rs"]
mod import;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_events::{verify_chain, Actor, ChainHead, Event, LicenseId, Record, StreamId};
use license_ledger::clock::{Clock, ManualClock, SystemClock};
use license_ledger::store::conformance::{
    new_event, operator, start_time, stream, test_cnpj, Harness,
};
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::postgres::{
    migrate, migrate_with, Migration, PgStore, PgStoreConfig, MIGRATIONS,
};
use license_ledger::store::{EventStore, ExpectedVersion, NewEvent, StoreError};
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use uuid::Uuid;

/// A schema of its own in the test database, dropped when this is dropped.
struct TestDb {
    url: String,
    schema: String,
}

impl TestDb {
    /// A fresh schema name, or `None` (saying why) when `DATABASE_URL` is not set.
    fn new(test: &str) -> Option<Self> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Some(Self {
                url,
                schema: format!("ledger_t_{:016x}", rand::random::<u64>()),
            }),
            _ => {
                let why = "DATABASE_URL is not set \
                           (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)";
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{test} cannot run under CI: {why}");
                }
                eprintln!("{test}: skipped: {why}");
                None
            }
        }
    }

    fn config(&self) -> PgStoreConfig {
        let mut c = PgStoreConfig::new(&self.url);
        c.schema = Some(self.schema.clone());
        c.pool_size = 2;
        c.connect_timeout = Duration::from_secs(5);
        c.op_timeout = Duration::from_secs(20);
        c
    }

    async fn open_with(&self, config: PgStoreConfig, clock: Arc<dyn Clock>) -> PgStore {
        PgStore::open(config, clock)
            .await
            .unwrap_or_else(|e| panic!("open PgStore: {e}"))
    }

    async fn open(&self) -> PgStore {
        self.open_with(self.config(), Arc::new(SystemClock)).await
    }

    /// A plain connection with the test schema on its search path, for SQL by hand.
    async fn sql(&self) -> tokio_postgres::Client {
        let mut config: tokio_postgres::Config = self.url.parse().expect("DATABASE_URL");
        config.options(format!("-c search_path={}", self.schema));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.schema.clone();
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                    ))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop schema {}: {dropped:?}", self.schema);
        }
    }
}

async fn pg_harness(clock: ManualClock) -> Option<Harness> {
    let db = TestDb::new("conformance")?;
    let store = db.open_with(db.config(), Arc::new(clock.clone())).await;
    Some(Harness {
        store: Arc::new(store),
        clock,
        guard: Box::new(db),
    })
}

license_ledger::store_conformance_tests!(optional pg_harness);

async fn all_records(store: &dyn EventStore) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let next = out.len() as u64 + 1;
        let batch = store.read_all(next, 10_000).await.expect("read_all");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn assert_dense_chain(records: &[Record]) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.envelope.position, i as u64 + 1, "positions are dense");
    }
    let bytes: Vec<Vec<u8>> = records
        .iter()
        .map(|r| r.encode().expect("encode"))
        .collect();
    verify_chain(bytes.iter().map(Vec::as_slice)).expect("the chain verifies");
    for pair in records.windows(2) {
        assert!(
            pair[1].envelope.recorded_at >= pair[0].envelope.recorded_at,
            "recorded_at went back at position {}",
            pair[1].envelope.position
        );
    }
}

/// Eight nodes (eight `PgStore`s, each with its own writer connection) append to random
/// streams at once while a follower on a ninth node subscribes: the follower sees every
/// acknowledged event exactly once, in position order, with no gap, and each where its append
/// said it landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_appending_at_once_give_one_dense_log_delivered_once_in_order() {
    let Some(db) = TestDb::new("eight_nodes_appending_at_once") else {
        return;
    };
    const NODES: usize = 8;
    const APPENDS_PER_NODE: usize = 120;
    let follower_node = db.open().await;
    let mut follower = follower_node.subscribe_all(1);
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(db.open().await);
    }
    let mut writers = JoinSet::new();
    for (w, node) in nodes.iter().enumerate() {
        let node = node.clone();
        writers.spawn(async move {
            let mut landed = Vec::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            for k in 0..APPENDS_PER_NODE {
                let s = stream(&format!("n{}", rng.gen_range(0..12)));
                let size = rng.gen_range(1..=3);
                let events: Vec<NewEvent> = (0..size)
                    .map(|j| new_event((w * 10_000 + k * 10 + j) as u32))
                    .collect();
                let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
                let appended = node
                    .append(&s, ExpectedVersion::Any, events)
                    .await
                    .unwrap_or_else(|e| panic!("node {w}: {e}"));
                assert_eq!(
                    (*appended.positions.end() - *appended.positions.start() + 1) as usize,
                    size
                );
                for (id, p) in ids.into_iter().zip(appended.positions) {
                    landed.push((id, p));
                }
            }
            landed
        });
    }
    let mut expected: HashMap<uuid::Uuid, u64> = HashMap::new();
    while let Some(done) = writers.join_next().await {
        for (id, p) in done.expect("writer task") {
            assert!(expected.insert(id, p).is_none(), "an id landed twice");
        }
    }
    let total = expected.len() as u64;
    let mut seen = HashSet::new();
    for due in 1..=total {
        let r = tokio::time::timeout(Duration::from_secs(20), follower.next())
            .await
            .unwrap_or_else(|_| panic!("follower stalled at position {due}"))
            .unwrap_or_else(|e| panic!("follower: {e}"));
        assert_eq!(r.envelope.position, due, "gap, repeat or reordering");
        assert!(seen.insert(r.envelope.event_id), "delivered twice");
        assert_eq!(
            expected.get(&r.envelope.event_id),
            Some(&due),
            "the follower and the append disagree on the position of {}",
            r.envelope.event_id
        );
    }
    let idle = tokio::time::timeout(Duration::from_millis(300), follower.next()).await;
    assert!(idle.is_err(), "delivered a record nobody appended");
    let all = all_records(&follower_node).await;
    assert_eq!(all.len() as u64, total);
    assert_dense_chain(&all);
    // Stream versions are dense per stream too.
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for r in &all {
        let v = versions
            .entry(r.envelope.stream_id.to_string())
            .or_default();
        *v += 1;
        assert_eq!(r.envelope.stream_version, *v);
    }
    let written: u64 = nodes
        .iter()
        .map(|n| n.stats().expect("stats").records_written)
        .sum();
    assert_eq!(written, total);
    for node in &nodes {
        node.close().await.expect("close");
    }
    follower_node.close().await.expect("close");
}

/// A node holding the head (its position taken) stalls while another node appends: the fast
/// append waits for the slow one, lands after it, and a follower polling the log sees the
/// slow event first, with no gap. The test checks the stall really overlapped the fast append
/// (the slow transaction held the head's lock when the fast append started, and the fast one
/// finished only after the slow one), so it would catch a store that let the fast one commit
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_holding_a_position_is_never_skipped_by_a_follower() {
    let Some(db) = TestDb::new("a_slow_writer_holding_a_position") else {
        return;
    };
    const STALL: Duration = Duration::from_millis(1500);
    let mut slow_config = db.config();
    slow_config.stall_after_lock = Some(STALL);
    let slow = db.open_with(slow_config, Arc::new(SystemClock)).await;
    let fast = db.open().await;
    let observer = db.open().await;
    let sql = db.sql().await;
    fast.append(&stream("warm"), ExpectedVersion::Any, vec![new_event(1)])
        .await
        .expect("first append");

    // The follower polls read_all as fast as it can and keeps what it saw, in order.
    let poller = {
        let observer = observer.clone();
        tokio::spawn(async move {
            let mut seen: Vec<Record> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while seen.len() < 3 && Instant::now() < deadline {
                let next = seen.len() as u64 + 1;
                match observer.read_all(next, 100).await {
                    Ok(batch) => {
                        for r in batch {
                            assert_eq!(r.envelope.position, seen.len() as u64 + 1, "gap");
                            seen.push(r);
                        }
                    }
                    Err(e) => panic!("follower read: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    let mut subscription = observer.subscribe_all(1);

    let slow_event = new_event(2);
    let slow_id = slow_event.event_id;
    let slow_task = {
        let slow = slow.clone();
        tokio::spawn(async move {
            let a = slow
                .append(&stream("slow"), ExpectedVersion::Any, vec![slow_event])
                .await
                .expect("slow append");
            (a, Instant::now())
        })
    };
    // Wait until the slow transaction holds the head row (FOR UPDATE takes a row-share lock
    // on ledger_head that stays granted while it stalls).
    let waited = Instant::now();
    let lock_seen = loop {
        let held: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = 'ledger_head' \
                   AND l.mode = 'RowShareLock' AND l.granted",
                &[&db.schema],
            )
            .await
            .expect("pg_locks")
            .get(0);
        if held > 0 {
            break Instant::now();
        }
        assert!(
            waited.elapsed() < STALL / 2,
            "the slow writer never took the head lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let fast_event = new_event(3);
    let fast_id = fast_event.event_id;
    let fast_started = Instant::now();
    let fast_appended = fast
        .append(&stream("fast"), ExpectedVersion::Any, vec![fast_event])
        .await
        .expect("fast append");
    let fast_done = Instant::now();
    let (slow_appended, slow_done) = slow_task.await.expect("slow task");

    // The stall overlapped the fast append (which started while the slow transaction held
    // the head, well before its stall could end), and the fast one had to wait for it.
    assert!(
        fast_started - lock_seen < STALL / 2,
        "the fast append started too late to overlap the stall"
    );
    assert!(fast_started < slow_done, "the fast append started too late");
    assert!(
        fast_done - fast_started >= STALL / 3,
        "the fast append did not wait for the slow one ({:?})",
        fast_done - fast_started
    );
    assert_eq!(*slow_appended.positions.start(), 2);
    assert_eq!(*fast_appended.positions.start(), 3);

    let seen = poller.await.expect("poller");
    let ids: Vec<_> = seen.iter().map(|r| r.envelope.event_id).collect();
    assert_eq!(ids.len(), 3, "the follower saw {} records", ids.len());
    assert_eq!(ids[1], slow_id, "the slow event comes first");
    assert_eq!(ids[2], fast_id);
    for due in 1..=3u64 {
        let r = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("subscription stalled")
            .expect("subscription");
        assert_eq!(r.envelope.position, due);
    }
    assert_dense_chain(&all_records(&observer).await);
    for s in [&slow, &fast, &observer] {
        s.close().await.expect("close");
    }
}

/// An append on one node reaches a subscription on another through NOTIFY (its polling is
/// slowed down to an hour, so only the notification can explain the delivery), and keeps
/// reaching it after the other node's LISTEN connection is killed (it reconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_on_one_node_reaches_a_subscription_on_another() {
    let Some(db) = TestDb::new("an_append_on_one_node_reaches_another") else {
        return;
    };
    let a = db.open().await;
    let mut b_config = db.config();
    b_config.poll_interval = Duration::from_secs(3600);
    b_config.url = with_application_name(&db.url, "ledger_node_b");
    let b = db.open_with(b_config, Arc::new(SystemClock)).await;
    let mut sub = b.subscribe_all(1);
    // Let b's listener subscribe before the first append.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let first = new_event(1);
    let started = Instant::now();
    a.append(&stream("x"), ExpectedVersion::NoStream, vec![first.clone()])
        .await
        .expect("append on a");
    let r = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("b's subscription was not told")
        .expect("subscription");
    assert_eq!(r.envelope.event_id, first.event_id);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "delivery took {:?}",
        started.elapsed()
    );
    assert_eq!(b.head().await.expect("head"), a.head().await.expect("head"));
    assert_eq!(b.stream_version(&stream("x")).await.expect("version"), 1);

    // Kill b's LISTEN connection; b reconnects, and a later append still reaches it.
    let sql = db.sql().await;
    let channel = format!("LISTEN \"ledger_events.{}\"", db.schema);
    let killed: i64 = sql
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE query = $1 AND application_name = 'ledger_node_b'",
            &[&channel],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1, "b's LISTEN connection");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = new_event(2);
    a.append(
        &stream("x"),
        ExpectedVersion::Exact(1),
        vec![second.clone()],
    )
    .await
    .expect("append on a");
    let r = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("b's subscription was not told after its listener was killed")
        .expect("subscription");
    assert_eq!(r.envelope.event_id, second.event_id);
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// `url` with an application name, to tell one node's connections from another's.
fn with_application_name(url: &str, name: &str) -> String {
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// A retry whose expected version is stale, sent while many other appends are being batched
/// with it, still gets its original positions (the writer may plan a batch without reading
/// the stored ids, and must then not answer a retry as a version conflict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_in_a_busy_batch_gets_its_original_positions() {
    let Some(db) = TestDb::new("a_retry_in_a_busy_batch") else {
        return;
    };
    let store = db.open().await;
    for round in 0..5u32 {
        let s = stream(&format!("r{round}"));
        let batch: Vec<NewEvent> = (0..2).map(|k| new_event(round * 100 + k)).collect();
        let first = store
            .append(&s, ExpectedVersion::NoStream, batch.clone())
            .await
            .expect("first append");
        store
            .append(
                &s,
                ExpectedVersion::Exact(2),
                vec![new_event(round * 100 + 50)],
            )
            .await
            .expect("move the stream on");
        let mut others = JoinSet::new();
        for w in 0..24u32 {
            let store = store.clone();
            others.spawn(async move {
                store
                    .append(
                        &stream(&format!("busy{w}")),
                        ExpectedVersion::Any,
                        vec![new_event(10_000 + round * 100 + w)],
                    )
                    .await
                    .expect("busy append");
            });
        }
        let retry = store
            .append(&s, ExpectedVersion::NoStream, batch)
            .await
            .expect("a retry must succeed");
        assert!(retry.was_retry);
        assert_eq!(retry.positions, first.positions);
        assert_eq!(retry.stream_version, 2);
        while let Some(done) = others.join_next().await {
            done.expect("busy task");
        }
    }
    assert_dense_chain(&all_records(&store).await);
    store.close().await.expect("close");
}

/// A TCP proxy in front of the database that the test can cut and restore, to play an outage.
struct Proxy {
    port: u16,
    target: String,
    tasks: JoinSet<()>,
}

impl Proxy {
    async fn start(target: String, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mut tasks = JoinSet::new();
        let to = target.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            port,
            target,
            tasks,
        }
    }

    /// Closes the listening port and every connection through it.
    async fn cut(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// `DATABASE_URL` as key=value settings pointing at `127.0.0.1:port`.
fn url_via(url: &str, port: u16) -> (String, String) {
    let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let db_port = config.get_ports().first().copied().unwrap_or(5432);
    let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut via = format!("host=127.0.0.1 port={port}");
    if let Some(user) = config.get_user() {
        via += &format!(" user={}", quote(user));
    }
    if let Some(db) = config.get_dbname() {
        via += &format!(" dbname={}", quote(db));
    }
    if let Some(password) = config.get_password() {
        via += &format!(" password={}", quote(&String::from_utf8_lossy(password)));
    }
    (via, format!("{host}:{db_port}"))
}

/// A store whose database goes away answers with an error that `is_unavailable()` (a 503),
/// quickly, and carries on by itself when the database is back: appends, reads and a
/// subscription that was open through the outage. A store opened against a closed port is
/// refused as unavailable within the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable_quickly_and_the_store_recovers() {
    let Some(db) = TestDb::new("an_unreachable_database_is_unavailable") else {
        return;
    };
    // A closed port: bind one, then let it go.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut config = db.config();
    config.url = url_via(&db.url, closed_port).0;
    config.connect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    match PgStore::open(config, Arc::new(SystemClock)).await {
        Err(e) => assert!(e.is_unavailable(), "{e} is not 'unavailable'"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));

    // Through a proxy that can be cut.
    let (_, target) = url_via(&db.url, 0);
    let mut proxy = Proxy::start(target, 0).await;
    let mut config = db.config();
    config.url = url_via(&db.url, proxy.port).0;
    config.connect_timeout = Duration::from_secs(2);
    config.op_timeout = Duration::from_secs(5);
    config.poll_interval = Duration::from_millis(100);
    let store = db.open_with(config, Arc::new(SystemClock)).await;
    let mut sub = store.subscribe_all(1);
    store
        .append(&stream("o"), ExpectedVersion::Any, vec![new_event(1)])
        .await
        .expect("append before the outage");
    sub.next().await.expect("first record");

    proxy.cut().await;
    let started = Instant::now();
    match store
        .append(&stream("o"), ExpectedVersion::Any, vec![new_event(2)])
        .await
    {
        Err(e) => assert!(e.is_unavailable(), "{e} is not 'unavailable'"),
        Ok(a) => panic!("appended through a cut connection: {a:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    match store.read_all(1, 10).await {
        Err(e) => assert!(e.is_unavailable(), "{e}"),
        Ok(_) => panic!("read through a cut connection"),
    }
    // The subscription waits through the outage instead of failing.
    let waiting = tokio::spawn(async move { (sub.next().await, sub) });

    let port = proxy.port;
    let target = proxy.target.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut proxy = Proxy::start(target, port).await;
    let mut appended = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while appended.is_none() {
        match store
            .append(&stream("o"), ExpectedVersion::Any, vec![new_event(3)])
            .await
        {
            Ok(a) => appended = Some(a),
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    }
    let appended = appended.expect("appended");
    assert_eq!(
        *appended.positions.start(),
        2,
        "the failed append stored nothing"
    );
    let (next, _sub) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the subscription did not recover")
        .expect("task");
    assert_eq!(next.expect("record").envelope.position, 2);
    assert_eq!(all_records(&store).await.len(), 2);
    store.close().await.expect("close");
    proxy.cut().await;
}

/// One append of the damage test's log, kept so that it can be retried.
struct Append {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
}

/// A few dozen records: several event types, two actor kinds, single and two-event appends,
/// interleaved streams, each append expecting the version it follows.
fn mixed_appends() -> Vec<Append> {
    let cnpj = test_cnpj().to_string();
    let event = |event_type: &str, data: serde_json::Value| {
        Event::from_data_json(event_type, data).unwrap_or_else(|e| panic!("{event_type}: {e}"))
    };
    let system = Actor::system("renovador").expect("actor");
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut appends = Vec::new();
    let mut push = |name: String, events: Vec<NewEvent>| {
        let version = versions.entry(name.clone()).or_default();
        appends.push(Append {
            stream: stream(&name),
            expected: ExpectedVersion::Exact(*version),
            events,
        });
        *version += appends.last().map_or(0, |a| a.events.len() as u64);
    };
    for k in 0..10u32 {
        let customer = if k < 3 {
            event(
                "CustomerRegistered",
                serde_json::json!({"cnpj": cnpj, "trade_name": format!("Padaria {k}"),
                                   "since": "2023-03-27"}),
            )
        } else {
            event(
                "CustomerBlocked",
                serde_json::json!({"cnpj": cnpj, "note": format!("atraso {k}")}),
            )
        };
        push(
            format!("c{}", k % 3),
            vec![NewEvent::new(customer, operator(), Uuid::now_v7())],
        );
        if k < 4 {
            push(format!("l{k}"), vec![new_event(k)]);
        } else {
            let blocked = |note: serde_json::Value| {
                let license_id = LicenseId::new(k % 4 + 1).expect("license id");
                let data = serde_json::json!({"license_id": license_id, "note": note});
                NewEvent::new(
                    event("LicenseBlocked", data),
                    system.clone(),
                    Uuid::now_v7(),
                )
            };
            push(
                format!("l{}", k % 4),
                vec![blocked(serde_json::Value::Null), blocked("de novo".into())],
            );
        }
        push("c-all".into(), vec![new_event(100 + k)]);
    }
    appends
}

/// `license-ledger verify` on the test's schema, as an auditor runs it: exit code and stderr.
fn verify_schema(db: &TestDb) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_license-ledger"))
        .args(["verify", "--store", "postgres", "--database-url", &db.url])
        .args(["--database-schema", &db.schema])
        .env_remove("LEDGER_CONFIG")
        .output()
        .expect("run license-ledger verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The columns of `table` in the test schema, with their types, in table order.
async fn columns_of(
    sql: &tokio_postgres::Client,
    db: &TestDb,
    table: &str,
) -> Vec<(String, String)> {
    sql.query(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        &[&db.schema, &table],
    )
    .await
    .expect("list columns")
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// A bit flipped on disk goes through no CHECK constraint: drop those of `table`, so that any
/// damage can be written (keys and NOT NULL stay).
async fn drop_check_constraints(sql: &tokio_postgres::Client, table: &str) {
    let names = sql
        .query(
            "SELECT conname::text FROM pg_constraint \
             WHERE conrelid = $1::text::regclass AND contype = 'c'",
            &[&table],
        )
        .await
        .expect("list constraints");
    for row in names {
        let name: String = row.get(0);
        sql.batch_execute(&format!("ALTER TABLE {table} DROP CONSTRAINT {name}"))
            .await
            .expect("drop constraint");
    }
}

/// The smallest change of a value of `column` of SQL type `data_type`, as a `SET` clause: a
/// flipped bit, a changed character, one more unit. A column of a type not listed here fails
/// the test until its damage is written down.
fn damage(column: &str, data_type: &str) -> String {
    let c = column;
    let change = match data_type {
        "smallint" | "integer" | "bigint" => format!("{c} + 1"),
        "timestamp with time zone" => format!("{c} + interval '1 microsecond'"),
        "bytea" => format!("set_byte({c}, 0, get_byte({c}, 0) # 1)"),
        "text" => format!(
            "overlay({c} placing CASE WHEN right({c}, 1) = 'a' THEN 'b' ELSE 'a' END \
             from length({c}) for 1)"
        ),
        // The last hex digit of the UUID.
        "uuid" => format!(
            "overlay({c}::text placing CASE WHEN right({c}::text, 1) = '0' THEN '1' ELSE '0' \
             END from 36 for 1)::uuid"
        ),
        // The first character of the first key: still JSON, one byte changed.
        "jsonb" => format!(
            "overlay({c}::text placing CASE WHEN substr({c}::text, 3, 1) = 'a' THEN 'b' \
             ELSE 'a' END from 3 for 1)::jsonb"
        ),
        other => panic!("no damage is defined for column {c} of type {other}: add one here"),
    };
    format!("{c} = {change}")
}

/// Where a read was refused: the position it named, or what it did instead.
fn corrupt_at<T: std::fmt::Debug>(result: Result<T, StoreError>) -> Result<u64, String> {
    match result {
        Err(StoreError::Corrupt { position, .. }) => Ok(position),
        Err(e) => Err(format!("expected Corrupt, got {e}")),
        Ok(r) => Err(format!("expected Corrupt, got {r:?}")),
    }
}

/// Columns that are copies for auditors' SQL which no read of the store selects or returns
/// (see `src/store/postgres/rows.rs`): a change there is found by `verify` and by the lookup
/// of a retry's ids, and the other reads return the records as written. A change in any other
/// column must be refused by every read.
const NOT_READ_BACK: &[&str] = &["data"];

/// Every read that covers the damaged row (written as `record`, now at `stored_position` in
/// `stored_stream`) is refused: the whole log, that row alone, its stream as written and as
/// altered, a subscription.
async fn refused_by_every_read(
    store: &PgStore,
    record: &Record,
    stored_stream: &str,
    stored_position: u64,
    what: &str,
) {
    let at = record.envelope.position;
    assert_eq!(
        corrupt_at(store.read_all(1, 1000).await),
        Ok(stored_position),
        "{what}: read_all"
    );
    assert_eq!(
        corrupt_at(store.read_all(at, 1).await),
        Ok(stored_position),
        "{what}: read_all of that row alone"
    );
    // Its stream as written: the row itself, or the version it leaves missing.
    let by_stream = corrupt_at(store.read_stream(&record.envelope.stream_id, 1, 1000).await);
    assert!(by_stream.is_ok(), "{what}: read_stream: {by_stream:?}");
    if let Ok(altered) = StreamId::parse(stored_stream) {
        assert_eq!(
            corrupt_at(store.read_stream(&altered, 1, 1000).await),
            Ok(stored_position),
            "{what}: read_stream of {stored_stream}"
        );
    }
    let mut subscription = store.subscribe_all(1);
    assert_eq!(
        corrupt_at(subscription.next().await),
        Ok(stored_position),
        "{what}: subscription"
    );
}

/// A value changed in any column of a `ledger_events` row (the columns are listed from
/// `information_schema`, so a new one is covered as soon as it exists) is found by `verify`
/// (exit 1, naming the row's position) and refused by every read of the store: the whole
/// log, the row's stream (as written and as altered), a subscription, and the lookup by event
/// id of a retry of the append that wrote it (the JSON copy `data`, which no read returns, by
/// `verify` and that lookup). The same for the head row. A deleted row is a missing position.
/// Nothing damaged is ever returned; once restored, everything reads and verifies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_value_in_any_column_is_found_by_verify_and_refused_by_every_read() {
    let Some(db) = TestDb::new("a_changed_value_in_any_column") else {
        return;
    };
    let store = db.open().await;
    let appends = mixed_appends();
    for a in &appends {
        store
            .append(&a.stream, a.expected, a.events.clone())
            .await
            .expect("append");
    }
    let original = all_records(&store).await;
    assert!(original.len() >= 30, "a few dozen records");
    let last = original.len() as u64;
    // A row in the middle of its stream (a version before and after it), near the middle
    // of the log; changes its keys refuse are made to the last row instead.
    let middle = original
        .iter()
        .filter(|r| r.envelope.stream_version > 1)
        .filter(|r| {
            original.iter().any(|o| {
                o.envelope.stream_id == r.envelope.stream_id
                    && o.envelope.stream_version > r.envelope.stream_version
            })
        })
        .map(|r| r.envelope.position)
        .min_by_key(|p| p.abs_diff(last / 2))
        .expect("a row in the middle of a stream");

    let sql = db.sql().await;
    let (code, stdout, stderr) = verify_schema(&db);
    assert_eq!(code, 0, "the intact log verifies: {stdout} {stderr}");
    assert!(stdout.contains(&format!("records: {last}")), "{stdout}");
    drop_check_constraints(&sql, "ledger_events").await;
    sql.batch_execute(
        "CREATE TEMP TABLE saved_events AS SELECT * FROM ledger_events; \
         CREATE TEMP TABLE saved_head AS SELECT * FROM ledger_head",
    )
    .await
    .expect("save");

    let columns = columns_of(&sql, &db, "ledger_events").await;
    assert!(columns.len() >= 15, "columns of ledger_events: {columns:?}");
    for (column, data_type) in &columns {
        // Damage the middle row, or the last one where a key refuses the change there.
        let set = damage(column, data_type);
        let mut damaged = None;
        for at in [middle, last] {
            let update = format!(
                "UPDATE ledger_events SET {set} WHERE position = {at} \
                 RETURNING ctid::text, position, stream_id, event_id"
            );
            match sql.query_one(&update, &[]).await {
                Ok(row) => {
                    damaged = Some((at, row));
                    break;
                }
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => panic!("{column}: {e}"),
            }
        }
        let (at, row) = damaged.unwrap_or_else(|| panic!("{column}: no row takes {set}"));
        let ctid: String = row.get(0);
        let stored_position = u64::try_from(row.get::<_, i64>(1)).expect("position");
        let stored_stream: String = row.get(2);
        let stored_id: Uuid = row.get(3);
        let record = &original[(at - 1) as usize];
        let what = format!("{column} ({data_type}) changed at position {at}");

        // (a) verify finds it, naming the row.
        let (code, stdout, stderr) = verify_schema(&db);
        assert_eq!(code, 1, "{what}: verify must fail: {stdout} {stderr}");
        assert!(
            stderr.contains(&format!("position {stored_position})")),
            "{what}: verify must name position {stored_position}: {stderr}"
        );

        // (b) every read refuses it; a copy no read returns is not read there (see below).
        if NOT_READ_BACK.contains(&column.as_str()) {
            assert_eq!(all_records(&store).await, original, "{what}: reads");
        } else {
            refused_by_every_read(&store, record, &stored_stream, stored_position, &what).await;
        }
        // The lookup by event id: a retry of the append that wrote the row, with the id the
        // row now holds, must not be answered from it.
        let append = appends
            .iter()
            .find(|a| {
                a.events
                    .iter()
                    .any(|e| e.event_id == record.envelope.event_id)
            })
            .expect("the append of the row");
        let mut events = append.events.clone();
        for e in &mut events {
            if e.event_id == record.envelope.event_id {
                e.event_id = stored_id;
            }
        }
        assert_eq!(
            corrupt_at(store.append(&append.stream, append.expected, events).await),
            Ok(stored_position),
            "{what}: retry of its append"
        );

        sql.execute(
            &format!(
                "UPDATE ledger_events e SET {column} = s.{column} FROM saved_events s \
                 WHERE e.ctid = '{ctid}'::tid AND s.position = {at}"
            ),
            &[],
        )
        .await
        .expect("restore");
        assert_eq!(all_records(&store).await, original, "{what}: restored");
    }

    sql.execute(
        &format!("DELETE FROM ledger_events WHERE position = {middle}"),
        &[],
    )
    .await
    .expect("delete");
    assert_eq!(
        corrupt_at(store.read_all(1, 1000).await),
        Ok(middle),
        "a deleted row"
    );
    let (code, _, stderr) = verify_schema(&db);
    assert_eq!(code, 1, "a deleted row: {stderr}");
    assert!(stderr.contains(&format!("position {middle})")), "{stderr}");
    sql.execute(
        &format!("INSERT INTO ledger_events SELECT * FROM saved_events WHERE position = {middle}"),
        &[],
    )
    .await
    .expect("restore");

    // The head row: each of its columns changed is found by verify.
    drop_check_constraints(&sql, "ledger_head").await;
    let head_columns = columns_of(&sql, &db, "ledger_head").await;
    assert!(
        head_columns.len() >= 4,
        "columns of ledger_head: {head_columns:?}"
    );
    for (column, data_type) in &head_columns {
        let what = format!("ledger_head.{column} ({data_type}) changed");
        let set = damage(column, data_type);
        sql.execute(&format!("UPDATE ledger_head SET {set}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (code, stdout, stderr) = verify_schema(&db);
        assert_eq!(code, 1, "{what}: verify must fail: {stdout} {stderr}");
        assert!(stderr.contains("ledger_head"), "{what}: {stderr}");
        sql.execute(
            &format!("UPDATE ledger_head SET {column} = (SELECT {column} FROM saved_head)"),
            &[],
        )
        .await
        .expect("restore");
    }

    let (code, stdout, stderr) = verify_schema(&db);
    assert_eq!(code, 0, "restored, the log verifies: {stdout} {stderr}");
    assert!(stdout.contains(&format!("records: {last}")), "{stdout}");
    store.close().await.expect("close");
}

/// The JSON copy is there for auditors' SQL: it is the catalogue's JSON form of the event,
/// and `recorded_at` (timestamptz) is the exact instant the hash covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_can_query_the_json_copy_and_the_time_with_sql() {
    let Some(db) = TestDb::new("auditors_can_query_the_json_copy") else {
        return;
    };
    let clock = ManualClock::new(start_time() + chrono::Duration::microseconds(123_457));
    let store = db.open_with(db.config(), Arc::new(clock)).await;
    let event = new_event(41);
    store
        .append(&stream("j"), ExpectedVersion::Any, vec![event.clone()])
        .await
        .expect("append");
    let sql = db.sql().await;
    let row = sql
        .query_one(
            "SELECT data::text, recorded_at_micros, \
                    (extract(epoch FROM recorded_at) * 1000000)::bigint, actor_kind \
             FROM ledger_events WHERE position = 1",
            &[],
        )
        .await
        .expect("select");
    let data: serde_json::Value = serde_json::from_str(row.get::<_, &str>(0)).expect("json");
    assert_eq!(data, event.event.data_json());
    let micros: i64 = row.get(1);
    let from_timestamptz: i64 = row.get(2);
    assert_eq!(micros, from_timestamptz);
    assert_eq!(
        micros,
        (start_time() + chrono::Duration::microseconds(123_457)).timestamp_micros()
    );
    assert_eq!(row.get::<_, &str>(3), "operator");
    store.close().await.expect("close");
}

/// Records exported from a file store import into PostgreSQL with the same head (position and
/// hash) and the same records byte for byte, and back again into a new file store. A record
/// that does not follow the head is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_the_file_store_imports_into_postgres_with_the_same_head_and_back() {
    let Some(db) = TestDb::new("export_from_the_file_store_imports_into_postgres") else {
        return;
    };
    let clock = ManualClock::new(start_time());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = FileStore::open(FileStoreConfig::new(dir.path()), Arc::new(clock.clone()))
        .await
        .expect("open file store");
    for n in 0..40u32 {
        let batch: Vec<NewEvent> = (0..(n % 3 + 1)).map(|k| new_event(n * 10 + k)).collect();
        file.append(&stream(&format!("e{}", n % 5)), ExpectedVersion::Any, batch)
            .await
            .expect("append to the file store");
        clock.advance(chrono::Duration::milliseconds(1500));
    }
    let exported = all_records(&file).await;
    let file_head = file.head().await.expect("head");

    let pg = db.open().await;
    // Out of order: position 2 before 1.
    match pg.import_record(&exported[1]).await {
        Err(StoreError::InvalidAppend(_)) => {}
        other => panic!("importing position 2 first must be refused, got {other:?}"),
    }
    for r in &exported {
        let a = pg.import_record(r).await.expect("import");
        assert_eq!(a.positions, r.envelope.position..=r.envelope.position);
        assert_eq!(a.stream_version, r.envelope.stream_version);
    }
    // Importing a record again is a retry: the original position, nothing stored.
    let again = pg.import_record(&exported[0]).await.expect("re-import");
    assert!(again.was_retry);
    assert_eq!(again.positions, 1..=1);
    // A record that does not follow the head (here: its time was changed, so its hash no
    // longer matches) is refused.
    let mut forged = exported[0].clone();
    forged.envelope.position = file_head.position + 1;
    forged.envelope.prev_hash = file_head.hash;
    forged.envelope.event_id = uuid::Uuid::now_v7();
    match pg.import_record(&forged).await {
        Err(StoreError::Codec(_)) | Err(StoreError::InvalidAppend(_)) => {}
        other => panic!("a forged record must be refused, got {other:?}"),
    }
    let pg_head: ChainHead = pg.head().await.expect("head");
    assert_eq!(pg_head, file_head);
    let from_pg = all_records(&pg).await;
    assert_eq!(from_pg, exported, "records identical byte for byte");
    assert_dense_chain(&from_pg);
    // Appends continue the chain after an import.
    pg.append(&stream("e0"), ExpectedVersion::Any, vec![new_event(999)])
        .await
        .expect("append after import");

    // And back: from PostgreSQL into a new file store.
    let back_dir = tempfile::tempdir().expect("tempdir");
    let back = FileStore::open(
        FileStoreConfig::new(back_dir.path()),
        Arc::new(clock.clone()),
    )
    .await
    .expect("open file store");
    let all = all_records(&pg).await;
    for r in &all {
        back.import_record(r)
            .await
            .expect("import into the file store");
    }
    assert_eq!(
        back.head().await.expect("head"),
        pg.head().await.expect("head")
    );
    assert_eq!(all_records(&back).await, all);
    file.close().await.expect("close");
    back.close().await.expect("close");
    pg.close().await.expect("close");
}

/// Two runners migrating one schema at once apply each file once; an edited applied
/// migration, and a version this build does not know, are refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_an_edited_one_is_refused() {
    let Some(db) = TestDb::new("migrations_apply_once") else {
        return;
    };
    let config = db.config();
    let (first, second) = tokio::join!(migrate(&config), migrate(&config));
    let (first, second) = (first.expect("migrate"), second.expect("migrate"));
    let mut applied = first.applied.clone();
    applied.extend(second.applied.clone());
    let names: Vec<String> = MIGRATIONS.iter().map(Migration::file_name).collect();
    assert_eq!(applied, names, "each file applied exactly once");
    assert_eq!(
        first.already_applied + second.already_applied,
        MIGRATIONS.len()
    );
    let again = migrate(&config).await.expect("migrate again");
    assert!(again.applied.is_empty());

    let sql = db.sql().await;
    let mut edited: Vec<Migration> = MIGRATIONS.to_vec();
    edited[0].sql = "CREATE TABLE ledger_events (position bigint PRIMARY KEY);";
    match migrate_with(&sql, &db.schema, &edited).await {
        Err(StoreError::Migration(message)) => {
            assert!(message.contains("0001_create_events"), "{message}");
            assert!(message.contains("edited"), "{message}");
        }
        other => panic!("an edited migration must be refused, got {other:?}"),
    }
    sql.execute(
        "INSERT INTO ledger_migrations (version, name, checksum) VALUES (99, 'from_the_future', '')",
        &[],
    )
    .await
    .expect("insert");
    match PgStore::open(config, Arc::new(SystemClock)).await {
        Err(StoreError::Migration(message)) => {
            assert!(message.contains("0099_from_the_future"), "{message}")
        }
        Err(e) => panic!("expected a Migration error, got {e}"),
        Ok(_) => panic!("opened a schema migrated by a newer build"),
    }
}

impl import::Importer for PgStore {
    fn import_one(
        &self,
        record: &Record,
    ) -> impl std::future::Future<Output = Result<license_ledger::store::Appended, StoreError>>
    {
        self.import_record(record)
    }
    fn import_batch(
        &self,
        records: &[Record],
    ) -> impl std::future::Future<Output = Result<ChainHead, StoreError>> {
        self.import_records(records)
    }
    fn submit_batch(
        &self,
        records: &[Record],
    ) -> impl std::future::Future<Output = Result<license_ledger::store::PendingImport, StoreError>>
    {
        self.submit_import(records)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_import_stores_what_a_record_by_record_import_stores() {
    let (Some(a), Some(b)) = (
        TestDb::new("a_batch_import_stores_what_one_by_one_stores"),
        TestDb::new("a_batch_import_stores_what_one_by_one_stores"),
    ) else {
        return;
    };
    let src = tempfile::tempdir().expect("tempdir");
    let source = import::source_log(src.path()).await;
    let (one, batched) = (a.open().await, b.open().await);
    import::batches_store_what_one_by_one_stores(&source, &one, &batched).await;
    // The JSON copy `data` of every row, checked by `verify`'s read.
    let mut read = Vec::new();
    let mut next = 1;
    loop {
        let batch = batched.read_all_columns(next, 100).await.expect("read");
        let Some(last) = batch.last() else { break };
        next = last.envelope.position + 1;
        read.extend(batch);
    }
    assert_eq!(read, source);
    one.close().await.expect("close");
    batched.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_record_refuses_its_import_batch_and_only_it() {
    let Some(first) = TestDb::new("a_tampered_record_refuses_its_import_batch") else {
        return;
    };
    let src = tempfile::tempdir().expect("tempdir");
    let source = import::source_log(src.path()).await;
    let mut dbs = vec![first];
    import::a_tampered_record_refuses_its_batch_only(&source, || {
        let db = TestDb::new("a_tampered_record_refuses_its_import_batch")
            .unwrap_or_else(|| panic!("DATABASE_URL went away"));
        let config = db.config();
        dbs.push(db);
        async move {
            PgStore::open(config, Arc::new(SystemClock))
                .await
                .unwrap_or_else(|e| panic!("open PgStore: {e}"))
        }
    })
    .await;
}

/// An import batch starts right after the head, and moves it under the head row's lock: a
/// second node appending meanwhile lands after the batch or before it, never inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_batch_starts_right_after_the_head_and_no_node_interleaves() {
    let Some(db) = TestDb::new("an_import_batch_starts_right_after_the_head") else {
        return;
    };
    let src = tempfile::tempdir().expect("tempdir");
    let source = import::source_log(src.path()).await;
    let store = db.open().await;
    import::a_batch_must_start_after_the_head(&source[..100], &store).await;
    let in_order_db = TestDb::new("batches_handed_over_at_once").expect("DATABASE_URL");
    let in_order = in_order_db.open().await;
    import::batches_handed_over_at_once_land_in_order(&source, &in_order).await;
    in_order.close().await.expect("close");
    let other = db.open().await;
    let appends = async {
        for n in 0..20 {
            let append = other
                .append(&stream("other"), ExpectedVersion::Any, vec![new_event(n)])
                .await;
            append.expect("append on the other node");
        }
    };
    let imported = store.import_records(&source[100..]);
    let (imported, ()) = tokio::join!(imported, appends);
    // Either the whole rest went in after the head it found, or the other node got there
    // first and the batch, no longer following the head, was refused whole.
    let all = import::every_record(&store).await;
    assert_dense_chain(&all);
    match imported {
        Ok(head) => {
            assert_eq!(head.hash, source[source.len() - 1].envelope.hash);
            assert_eq!(
                &all[..source.len()],
                source,
                "the batch right after the head"
            );
            assert_eq!(all.len(), source.len() + 20);
        }
        Err(e) => {
            assert!(e.to_string().contains("position 101"), "{e}");
            assert_eq!(&all[..100], &source[..100]);
            assert_eq!(all.len(), 120, "nothing of the batch stored");
        }
    }
    store.close().await.expect("close");
    other.close().await.expect("close");
}

/// The key constraints (primary and unique) of the test schema's `ledger_events`, as
/// PostgreSQL prints them, with whether each one's index is valid.
async fn event_constraints(db: &TestDb) -> Vec<(String, String, bool)> {
    db.sql()
        .await
        .query(
            "SELECT c.conname::text, pg_get_constraintdef(c.oid), \
                    COALESCE(i.indisvalid, false) \
               FROM pg_constraint c LEFT JOIN pg_index i ON i.indexrelid = c.conindid \
              WHERE c.conrelid = 'ledger_events'::regclass AND c.contype IN ('p', 'u') \
              ORDER BY 1",
            &[],
        )
        .await
        .expect("constraints")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The head a log ending with `record` has.
fn head_of(record: &Record) -> ChainHead {
    ChainHead {
        position: record.envelope.position,
        hash: record.envelope.hash,
    }
}

/// `source` with record `i` changed by `change` and every record after it chained to it
/// again (previous hash and hash recomputed): a log that verifies, which only a check
/// across records can refuse.
fn rechained(source: &[Record], i: usize, change: impl FnOnce(&mut Record)) -> Vec<Record> {
    let mut out = source.to_vec();
    out[i] = import::forged(&source[i], change);
    for j in i + 1..out.len() {
        let prev = out[j - 1].envelope.hash;
        out[j] = import::forged(&out[j], |r| r.envelope.prev_hash = prev);
    }
    out
}

/// Into an empty store, a bulk import stores the log byte for byte in one transaction (none
/// of it visible before the commit), and leaves the table as the migration made it: the
/// unique indexes it dropped are back, valid, and enforce again. A store that holds records
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_import_stores_the_log_in_one_transaction_and_restores_the_unique_indexes() {
    let Some(db) = TestDb::new("a_bulk_import_stores_the_log_in_one_transaction") else {
        return;
    };
    let src = tempfile::tempdir().expect("tempdir");
    let source = import::source_log(src.path()).await;
    let store = db.open().await;
    let migrated = event_constraints(&db).await;
    assert_eq!(migrated.len(), 3, "{migrated:?}");
    let mut bulk = store.begin_bulk_import().await.expect("begin");
    for (n, chunk) in source.chunks(37).enumerate() {
        let head = bulk.write(chunk).await.expect("write");
        assert_eq!(head, head_of(&chunk[chunk.len() - 1]), "{n}");
        assert_eq!(store.head().await.expect("head").position, 0, "not yet");
    }
    let head = bulk.finish().await.expect("finish");
    assert_eq!(head, head_of(&source[source.len() - 1]));
    assert_eq!(store.head().await.expect("head"), head);
    assert_eq!(import::every_record(&store).await, source);
    assert_eq!(
        event_constraints(&db).await,
        migrated,
        "the table as migrated"
    );
    // The indexes enforce: a copy of a row with only its event id, or only its stream
    // version, still stored is refused by the database itself, naming the constraint (and
    // the copy with both changed goes in, so the statement is otherwise right).
    let sql = db.sql().await;
    for (what, change, refused_by) in [
        (
            "a stored event id",
            "stream_id = 'bulk-other'",
            Some("ledger_events_event_id_key"),
        ),
        (
            "a stored stream version",
            "event_id = gen_random_uuid()",
            Some("ledger_events_stream_version_key"),
        ),
        (
            "neither",
            "stream_id = 'bulk-other', event_id = gen_random_uuid()",
            None,
        ),
    ] {
        let copy = format!(
            "BEGIN; \
             CREATE TEMP TABLE bulk_copy ON COMMIT DROP AS \
               SELECT * FROM ledger_events WHERE position = 5; \
             UPDATE bulk_copy SET position = 100000, {change}; \
             INSERT INTO ledger_events SELECT * FROM bulk_copy; \
             ROLLBACK"
        );
        let result = sql.batch_execute(&copy).await;
        sql.batch_execute("ROLLBACK").await.expect("rollback");
        match (result, refused_by) {
            (Err(e), Some(constraint)) => {
                let db_error = e.as_db_error().expect("a database error");
                assert_eq!(db_error.constraint(), Some(constraint), "{what}: {e}");
            }
            (Ok(()), None) => {}
            (result, _) => panic!("{what}: {result:?}"),
        }
    }
    // Appends go on after the import, and a second bulk import is refused.
    store
        .append(
            &stream("after"),
            ExpectedVersion::Any,
            vec![new_event(9_999)],
        )
        .await
        .expect("append after a bulk import");
    match store.begin_bulk_import().await {
        Err(StoreError::InvalidAppend(m)) => assert!(m.contains("empty store"), "{m}"),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a bulk import began on a store holding records"),
    }
    assert_eq!(
        import::every_record(&store).await.len(),
        source.len() + 1,
        "nothing changed by the refused import"
    );
    store.close().await.expect("close");
}

/// A bulk import refused anywhere (a tampered record in a later batch; an event id stored
/// twice, which only the final index build sees) stores nothing and leaves the table as
/// migrated; the genuine log then imports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bulk_import_stores_nothing_and_leaves_the_table_as_migrated() {
    let Some(db) = TestDb::new("a_refused_bulk_import_stores_nothing") else {
        return;
    };
    let src = tempfile::tempdir().expect("tempdir");
    let source = import::source_log(src.path()).await;
    let store = db.open().await;
    let migrated = event_constraints(&db).await;
    let untouched = |what: &'static str| {
        let (store, db, migrated) = (&store, &db, &migrated);
        async move {
            assert_eq!(store.head().await.expect("head").position, 0, "{what}");
            assert!(import::every_record(store).await.is_empty(), "{what}");
            assert_eq!(&event_constraints(db).await, migrated, "{what}");
        }
    };
    for (what, bad) in import::tamperings(&source, 30) {
        if what == "the event id of a record of an earlier batch" {
            continue; // below: the batch alone cannot tell
        }
        let mut bulk = store.begin_bulk_import().await.expect("begin");
        bulk.write(&source[..20]).await.expect("first batch");
        let mut batch = source[20..40].to_vec();
        batch[10] = bad.clone();
        match bulk.write(&batch).await {
            Err(e) => assert!(
                e.to_string()
                    .contains(&format!("position {}", bad.envelope.position)),
                "{what}: the refusal names the position: {e}"
            ),
            Ok(head) => panic!("{what}: accepted, head {head:?}"),
        }
        drop(bulk);
        untouched(what).await;
    }
    let twice = rechained(&source, 150, |r| {
        r.envelope.event_id = source[3].envelope.event_id;
    });
    let mut bulk = store.begin_bulk_import().await.expect("begin");
    for chunk in twice.chunks(50) {
        bulk.write(chunk)
            .await
            .expect("each batch on its own is right");
    }
    match bulk.finish().await {
        Err(StoreError::InvalidAppend(m)) => assert!(
            m.contains(&source[3].envelope.event_id.to_string()) && m.contains("nothing"),
            "the refusal names the event id: {m}"
        ),
        other => panic!("an event id stored twice was committed: {other:?}"),
    }
    untouched("an event id twice").await;
    let mut bulk = store.begin_bulk_import().await.expect("begin");
    bulk.write(&source).await.expect("write");
    bulk.finish().await.expect("the genuine log");
    assert_eq!(import::every_record(&store).await, source);
    assert_eq!(event_constraints(&db).await, migrated);
    store.close().await.expect("close");
}
