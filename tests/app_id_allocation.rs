//! Id allocation when another node keeps taking ids first, made deterministic: the ledger runs
//! on a file store wrapped so that, just before each grant's append, a rival node grants that
//! very license id. The ledger must move on past every id taken (no small attempt cap), and
//! give up as busy (`AppError::IdsBusy`, a 503 with `Retry-After`) only after its time limit.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::NaiveDate;
use ledger_events::{
    Actor, ChainHead, Cnpj, LicenseGranted, LicenseId, Position, Product, Record, Resources,
    StreamId, StreamVersion, TradeName,
};
use license_ledger::app::commands::GrantLicense;
use license_ledger::app::{AppError, Ledger, LedgerConfig};
use license_ledger::clock::{Clock, SystemClock};
use license_ledger::domain::customer::CustomerCommand;
use license_ledger::store::file::{FileStore, FileStoreConfig};
use license_ledger::store::{
    Appended, EventStore, ExpectedVersion, NewEvent, StoreError, Subscription,
};
use uuid::Uuid;

/// A file store where a rival node grants each new license id first, `takes` times.
struct RivalNode {
    inner: FileStore,
    takes: AtomicU32,
    taken: AtomicU32,
}

fn cnpj() -> Cnpj {
    Cnpj::parse("11222333000181").unwrap()
}

fn expires() -> NaiveDate {
    NaiveDate::from_ymd_opt(2031, 1, 31).unwrap()
}

#[async_trait]
impl EventStore for RivalNode {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let new_license = stream
            .as_str()
            .strip_prefix("license-")
            .filter(|_| expected == ExpectedVersion::Exact(0))
            .and_then(|id| LicenseId::parse(id).ok());
        let rival_goes = || {
            self.takes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        if let Some(license_id) = new_license.filter(|_| rival_goes()) {
            let grant = LicenseGranted {
                license_id,
                cnpj: cnpj(),
                product: Product::EasyCash,
                contract_id: None,
                expires_on: expires(),
                resources: Resources::default(),
            };
            let actor = Actor::operator("rival-node").unwrap();
            self.inner
                .append(
                    stream,
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new(grant, actor, Uuid::now_v7())],
                )
                .await?;
            self.taken.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.read_all(from_position, limit).await
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.inner.head().await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        self.inner.stream_version(stream).await
    }

    fn subscribe_all(&self, from_position: Position) -> Subscription {
        self.inner.subscribe_all(from_position)
    }
}

/// A ledger over a [`RivalNode`] that takes `takes` ids, with the customer registered.
async fn ledger_beside_a_rival(
    dir: &std::path::Path,
    takes: u32,
    id_allocation_timeout: Duration,
) -> (Ledger, Arc<RivalNode>) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let inner = FileStore::open(FileStoreConfig::new(dir), clock.clone())
        .await
        .unwrap();
    let store = Arc::new(RivalNode {
        inner,
        takes: AtomicU32::new(takes),
        taken: AtomicU32::new(0),
    });
    let config = LedgerConfig {
        id_allocation_timeout,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::start(store.clone(), clock, config).await.unwrap();
    ledger
        .customer(
            CustomerCommand::Register {
                cnpj: cnpj(),
                trade_name: TradeName::parse("Atacado").unwrap(),
                since: None,
            },
            &Actor::operator("support").unwrap(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();
    (ledger, store)
}

fn grant() -> GrantLicense {
    GrantLicense {
        cnpj: cnpj(),
        product: Product::EasyCash,
        contract_id: None,
        expires_on: expires(),
        resources: Resources::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_moves_past_every_id_another_node_took_first_however_many() {
    let dir = tempfile::tempdir().unwrap();
    // More ids taken than any small attempt cap would try (the old one was 32).
    let (ledger, rival) = ledger_beside_a_rival(dir.path(), 100, Duration::from_secs(60)).await;

    let (id, outcome) = ledger
        .grant_license(
            grant(),
            &Actor::operator("support").unwrap(),
            Uuid::now_v7(),
        )
        .await
        .unwrap();

    assert_eq!(rival.taken.load(Ordering::SeqCst), 100);
    assert_eq!(id.get(), 101, "the first id no node took");
    assert!(!outcome.was_retry);
    assert_eq!(ledger.view().license(id).map(|l| l.cnpj), Some(cnpj()));
    assert_eq!(
        ledger.view().max_license_id().map(LicenseId::get),
        Some(101)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_taken_by_another_node_for_longer_than_the_time_limit_give_up_as_busy() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_millis(300);
    let (ledger, rival) = ledger_beside_a_rival(dir.path(), u32::MAX, limit).await;

    let started = Instant::now();
    let err = ledger
        .grant_license(
            grant(),
            &Actor::operator("support").unwrap(),
            Uuid::now_v7(),
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    match err {
        AppError::IdsBusy { what, waited_ms } => {
            assert_eq!(what, "license");
            assert!(waited_ms >= limit.as_millis(), "waited {waited_ms} ms");
        }
        other => panic!("expected IdsBusy, got {other:?}"),
    }
    assert!(
        elapsed >= limit,
        "gave up after {elapsed:?}, before the limit"
    );
    assert!(elapsed < limit * 20, "gave up only after {elapsed:?}");
    // Every id tried was taken by the rival, none granted by the ledger.
    let taken = rival.taken.load(Ordering::SeqCst);
    assert!(taken >= 1, "the rival took {taken} ids");
    assert_eq!(ledger.view().license_count(), taken as usize);
}
