//! Where the log is: the embedded file store in `--data-dir` (the default) or PostgreSQL
//! (`--store postgres --database-url URL [--database-schema NAME]`). Every command that
//! reads or writes the log goes through [`Log`], so each works on both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger_events::{ChainError, ChainHead, Record};
use serde::Deserialize;

use super::CliError;
use crate::clock::Clock;
use crate::store::file::{FileStore, FileStoreConfig};
use crate::store::postgres::{PgStore, PgStoreConfig};
use crate::store::{Appended, EventStore, Maintenance, StoreError, READ_BATCH_MAX};

/// `--store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded file log in `--data-dir`.
    File,
    /// PostgreSQL at `--database-url`.
    Postgres,
}

/// The log a command works on.
#[derive(Clone, Debug)]
pub enum Log {
    /// Segment files in a data directory.
    File(PathBuf),
    /// A PostgreSQL schema.
    Postgres(PgStoreConfig),
}

impl Log {
    /// The log chosen by flags, environment and config file; `data_dir` is the file store's.
    pub fn resolve(
        kind: Option<StoreKind>,
        url: Option<String>,
        schema: Option<String>,
        data_dir: &Path,
    ) -> Result<Log, CliError> {
        match kind.unwrap_or(StoreKind::File) {
            StoreKind::File => {
                if url.is_some() {
                    return Err(CliError::Input {
                        flag: "--database-url",
                        message: "applies to --store postgres; add --store postgres (or \
                                  LEDGER_STORE=postgres)"
                            .into(),
                    });
                }
                Ok(Log::File(data_dir.to_owned()))
            }
            StoreKind::Postgres => {
                let url = url
                    .filter(|u| !u.trim().is_empty())
                    .ok_or(CliError::Input {
                        flag: "--database-url",
                        message: "required with --store postgres, e.g. \
                              postgres://user@127.0.0.1:5432/ledger (or LEDGER_DATABASE_URL)"
                            .into(),
                    })?;
                let mut config = PgStoreConfig::new(url);
                config.schema = schema;
                Ok(Log::Postgres(config))
            }
        }
    }

    /// For messages: the data directory, or the database and schema (never the password).
    pub fn describe(&self) -> String {
        match self {
            Log::File(dir) => dir.display().to_string(),
            Log::Postgres(c) => format!("PostgreSQL schema {}", c.schema_name()),
        }
    }

    /// Opens the store for writing: the file store takes the directory's lock (`busy` says
    /// what to do when a server holds it); PostgreSQL applies pending migrations.
    pub async fn open(&self, clock: Arc<dyn Clock>, busy: &str) -> Result<Opened, CliError> {
        if let Log::File(dir) = self {
            std::fs::create_dir_all(dir)?;
        }
        match self.open_store(clock).await {
            Ok(opened) => Ok(opened),
            Err(StoreError::Locked(dir)) => Err(CliError::Refused(format!(
                "{dir} is locked: the server is running on it; {busy}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the store (the directory must exist for the file store).
    pub async fn open_store(&self, clock: Arc<dyn Clock>) -> Result<Opened, StoreError> {
        self.open_store_with(clock, Maintenance::Background).await
    }

    /// Opens the store; `maintenance` says who compacts the file store's index.
    pub async fn open_store_with(
        &self,
        clock: Arc<dyn Clock>,
        maintenance: Maintenance,
    ) -> Result<Opened, StoreError> {
        match self {
            Log::File(dir) => Ok(Opened::File(Arc::new(
                FileStore::open(
                    FileStoreConfig {
                        maintenance,
                        ..FileStoreConfig::new(dir)
                    },
                    clock,
                )
                .await?,
            ))),
            Log::Postgres(config) => Ok(Opened::Postgres(Arc::new(
                PgStore::open(config.clone(), clock).await?,
            ))),
        }
    }
}

/// An open store of either kind.
#[derive(Clone)]
pub enum Opened {
    /// The file store.
    File(Arc<FileStore>),
    /// PostgreSQL.
    Postgres(Arc<PgStore>),
}

impl Opened {
    /// The store, for the ledger.
    pub fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Opened::File(s) => s.clone(),
            Opened::Postgres(s) => s.clone(),
        }
    }

    /// The head.
    pub async fn head(&self) -> Result<ChainHead, StoreError> {
        self.store().head().await
    }

    /// Appends one exported record verbatim (position head + 1, chained to the head).
    pub async fn import_record(&self, record: &Record) -> Result<Appended, StoreError> {
        match self {
            Opened::File(s) => s.import_record(record).await,
            Opened::Postgres(s) => s.import_record(record).await,
        }
    }

    /// Appends exported records verbatim as one batch, all or none (see
    /// `FileStore::import_records`); returns the head after it.
    pub async fn import_records(&self, records: &[Record]) -> Result<ChainHead, StoreError> {
        match self {
            Opened::File(s) => s.import_records(records).await,
            Opened::Postgres(s) => s.import_records(records).await,
        }
    }

    /// Checks exported records and hands them to the store's writer as one batch (see
    /// `FileStore::submit_import`); batches are written in the order handed over.
    pub async fn submit_import(
        &self,
        records: &[Record],
    ) -> Result<crate::store::PendingImport, StoreError> {
        match self {
            Opened::File(s) => s.submit_import(records).await,
            Opened::Postgres(s) => s.submit_import(records).await,
        }
    }

    /// Reads the log from `from` like [`EventStore::read_all`], checking every column
    /// (PostgreSQL's JSON copy `data` included): for `verify`.
    pub async fn read_all_checked(
        &self,
        from: ledger_events::Position,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        match self {
            Opened::File(s) => s.read_all(from, limit).await,
            Opened::Postgres(s) => s.read_all_columns(from, limit).await,
        }
    }

    /// Flushes and closes.
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Opened::File(s) => s.close().await,
            Opened::Postgres(s) => s.close().await,
        }
    }
}

/// Reads every committed record in position order, calling `visit` for each, and checks the
/// chain; returns the head. The file log is read without its lock (safe beside a server);
/// PostgreSQL through the store's reads, every column of every row checked, and the head row
/// checked against the record it names.
pub fn scan_log(
    log: &Log,
    mut visit: impl FnMut(Record) -> Result<(), StoreError>,
) -> Result<ChainHead, CliError> {
    match log {
        Log::File(dir) => super::scan_file_log(dir, visit),
        Log::Postgres(_) => {
            let runtime = super::runtime()?;
            runtime.block_on(async {
                // Opening checks the head row against the record it names.
                let opened = log.open(Arc::new(crate::clock::SystemClock), "").await?;
                let read = |from| {
                    let opened = opened.clone();
                    tokio::spawn(async move { opened.read_all_checked(from, READ_BATCH_MAX).await })
                };
                let mut pending = read(1);
                let result = async {
                    // Every row's hash is checked against the record it encodes as it is read
                    // (`rows::decode_row`); the chain is checked here: dense positions from 1,
                    // each record linked to the one before.
                    let mut head = ChainHead::default();
                    loop {
                        let batch = (&mut pending).await.map_err(|e| {
                            StoreError::io("reading the log", std::io::Error::other(e))
                        })??;
                        let Some(last) = batch.last() else {
                            return Ok::<_, CliError>(head);
                        };
                        // The next batch is read (and its rows decoded and checked, on the
                        // runtime's threads) while this one is visited.
                        pending = read(last.envelope.position + 1);
                        for record in batch {
                            let e = &record.envelope;
                            if let Err(fault) = head.check_next(e.position, e.prev_hash) {
                                return Err(StoreError::Corrupt {
                                    segment: "PostgreSQL".into(),
                                    offset: 0,
                                    position: head.position + 1,
                                    problem: ChainError {
                                        position: head.position + 1,
                                        fault,
                                    }
                                    .to_string(),
                                }
                                .into());
                            }
                            head = ChainHead {
                                position: e.position,
                                hash: e.hash,
                            };
                            visit(record)?;
                        }
                    }
                }
                .await;
                pending.abort();
                let closed = opened.close().await;
                let head = result?;
                closed?;
                Ok(head)
            })
        }
    }
}

/// Runs `work` on the opened store (the file store takes the directory's lock). `Ok(None)`
/// when a server holds the log: the caller then reads the log itself. For short read
/// commands: the indexes' compaction is left to the server ([`Maintenance::Deferred`]).
pub fn with_store<T>(
    log: &Log,
    work: impl AsyncFnOnce(Arc<dyn EventStore>, Arc<dyn Clock>) -> Result<T, CliError>,
) -> Result<Option<T>, CliError> {
    if let Log::File(dir) = log {
        if !dir.exists() {
            return Ok(None);
        }
    }
    let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
    super::runtime()?.block_on(async {
        let store = match log
            .open_store_with(clock.clone(), Maintenance::Deferred)
            .await
        {
            Ok(store) => store,
            Err(StoreError::Locked(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let answer = work(store.store(), clock).await;
        let closed = store.close().await;
        let answer = answer?;
        closed?;
        Ok(Some(answer))
    })
}

/// Runs `work` on a ledger over the store, for a command that writes (`demo`, `offline
/// issue`, `renew`): a server holding the file store refuses it with `busy` (what to do
/// instead). The store is closed afterwards, whatever `work` answered.
pub fn with_ledger<T>(
    log: &Log,
    clock: Arc<dyn Clock>,
    calendar: crate::domain::Calendar,
    busy: &str,
    work: impl AsyncFnOnce(&crate::app::Ledger) -> Result<T, CliError>,
) -> Result<T, CliError> {
    use crate::app::{Ledger, LedgerConfig};
    super::runtime()?.block_on(async {
        let store = log.open(clock.clone(), busy).await?;
        let answer = async {
            let config = LedgerConfig {
                calendar,
                ..LedgerConfig::default()
            };
            let ledger = Ledger::start(store.store(), clock, config).await?;
            work(&ledger).await
        }
        .await;
        let closed = store.close().await;
        let answer = answer?;
        closed?;
        Ok(answer)
    })
}

/// Runs `work` on a ledger that resumes from the derived data in `<data_dir>/derived` (a
/// snapshot and the log index; built from the log when missing), and leaves a snapshot at
/// the head for the next run. `Ok(None)` when a server holds the log or the derived data:
/// the caller then reads the log itself.
pub fn with_resumed_ledger<T>(
    log: &Log,
    data_dir: &Path,
    calendar: crate::domain::Calendar,
    work: impl AsyncFnOnce(&crate::app::Ledger) -> Result<T, CliError>,
) -> Result<Option<T>, CliError> {
    let answer = with_store(log, async |store, clock| {
        on_resumed_ledger(store, clock, data_dir, calendar, work).await
    })?;
    Ok(answer.flatten())
}

/// [`with_resumed_ledger`] on a store already open: `Ok(None)` when a server holds the
/// derived data.
pub async fn on_resumed_ledger<T>(
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    data_dir: &Path,
    calendar: crate::domain::Calendar,
    work: impl AsyncFnOnce(&crate::app::Ledger) -> Result<T, CliError>,
) -> Result<Option<T>, CliError> {
    use crate::app::{AppError, Ledger, LedgerConfig};
    use crate::derived::{DerivedConfig, DerivedError};

    let config = LedgerConfig {
        derived: DerivedConfig {
            maintenance: Maintenance::Deferred,
            ..DerivedConfig::in_data_dir(data_dir)
        },
        calendar,
        ..LedgerConfig::default()
    };
    let ledger = match Ledger::start(store, clock, config).await {
        Ok(ledger) => ledger,
        Err(AppError::Derived(DerivedError::Locked(_))) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let answer = work(&ledger).await;
    ledger.shutdown().await;
    answer.map(Some)
}
