//! Command handling: load → decide → append → retry on conflict, and the projected view
//! that follows the log.
//!
//! [`Ledger`] owns the store handle, the [`LedgerView`] and an applier task that feeds the
//! view from the store's subscription, in position order. Commands load their aggregate's
//! stream from the store (the source of truth), decide with the domain's pure functions at
//! the clock's `now`, and append with the version they loaded; a version conflict reloads and
//! decides again, a bounded number of times.
//!
//! Command ids make retries idempotent, and a command id stands for one command only
//! ([`CommandKey`]): its records carry the event ids `event_id_for(command id, i)`, which
//! the store indexes across all streams, and the correlation id
//! [`CommandKey::correlation_id`], derived from the command id and a digest of (command
//! type, body, caller). A command whose first event id is already stored is a retry when
//! that record's correlation id is this command's (or the command id itself: a record
//! written before digests were kept), and is answered with the stored records; anything else
//! is [`AppError::CommandIdReused`]. The check reads the command's stream (which it loads
//! anyway) and, for an id stored in another stream, the records at the position the store
//! names; never more.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use ledger_events::{Actor, Event, Position, StreamId, StreamVersion};
use ledger_projections::view::LedgerView;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::{Aggregate, DomainError, Loaded};
use crate::store::{
    Appended, EventStore, ExpectedVersion, NewEvent, StoreError, StoreStats, Subscription,
    READ_BATCH_MAX,
};

pub mod answers;
pub mod checkin;
pub mod commands;
mod follow;
pub mod ids;
pub mod last_seen;
pub mod queries;
pub mod relay;
pub mod renewals;

/// Settings of the command side.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// How old a terminal's last recorded check-in may get before an unchanged check-in is
    /// recorded again (the manual's terminals check in every 24 h).
    pub record_interval: Duration,
    /// Decisions retried after a version conflict before giving up.
    pub conflict_retries: u32,
    /// Longest a caller waits for the view to reach a position.
    pub catch_up_timeout: StdDuration,
    /// Longest a new license or contract keeps trying ids other nodes took first before it
    /// gives up as busy ([`AppError::IdsBusy`]).
    pub id_allocation_timeout: StdDuration,
    /// Where derived data (log index, snapshots) lives; in memory by default.
    pub derived: crate::derived::DerivedConfig,
    /// The time zone days are counted in (configuration `time_zone`).
    pub calendar: crate::domain::Calendar,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            record_interval: Duration::hours(24),
            conflict_retries: 8,
            catch_up_timeout: StdDuration::from_secs(5),
            id_allocation_timeout: StdDuration::from_secs(5),
            derived: crate::derived::DerivedConfig::default(),
            calendar: crate::domain::Calendar::default(),
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The domain refused it.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Version conflicts kept happening (heavy contention on one aggregate).
    #[error("gave up after {attempts} version conflicts on {stream}")]
    Contention {
        /// The contended stream.
        stream: StreamId,
        /// Attempts made.
        attempts: u32,
    },
    /// The view did not reach a position in time.
    #[error("the read model did not reach position {position} within {waited_ms} ms")]
    CatchUpTimeout {
        /// The position waited for.
        position: Position,
        /// How long.
        waited_ms: u128,
    },
    /// Every id tried for a new license or contract was taken by another node first, for
    /// longer than the time limit (heavy contention between nodes on one log).
    #[error("could not allocate a {what} id within {waited_ms} ms: other nodes kept taking them")]
    IdsBusy {
        /// "license" or "contract".
        what: &'static str,
        /// How long it tried.
        waited_ms: u128,
    },
    /// The view is still catching up with the log as it was when the ledger started, and
    /// did not get there within the time limit.
    #[error(
        "the server is catching up with the log (read model at position {position} of {head} \
         after waiting {waited_ms} ms)"
    )]
    CatchingUp {
        /// The position the view has applied.
        position: Position,
        /// The position it must reach: the log's head when the ledger started.
        head: Position,
        /// How long the caller waited.
        waited_ms: u128,
    },
    /// The view stopped following the log (it logged why).
    #[error("the read model stopped following the log: {0}")]
    ViewStopped(String),
    /// Derived data (log index, snapshots) could not be opened.
    #[error(transparent)]
    Derived(#[from] crate::derived::DerivedError),
    /// The log index stopped (a write failed): what reads it is unavailable until a
    /// restart rebuilds it.
    #[error("the log index is unavailable: {0}")]
    IndexUnavailable(String),
    /// The command id was used before for another command: another type, another body or
    /// another caller. Nothing was recorded.
    #[error(
        "command_id {command_id} was already used for another command (another route, body or \
         caller); nothing was recorded: send a new command_id for a new command, and the same \
         body with the same token to retry one"
    )]
    CommandIdReused {
        /// The reused command id.
        command_id: Uuid,
    },
}

/// A command id and what it stands for: a digest of the command's type, its body as the
/// caller gave it (before the ledger fills in ids, dates or codes), and the caller.
///
/// The digest is not stored as such: it is folded into the correlation id of the command's
/// records ([`CommandKey::correlation_id`]), so the log format is unchanged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandKey {
    id: Uuid,
    digest: [u8; 32],
}

impl std::fmt::Debug for CommandKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommandKey({}, {})", self.id, self.correlation_id())
    }
}

/// How a stored record relates to a command key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recognised {
    /// Recorded by this very command (same type, body and caller).
    Same,
    /// Recorded before digests were kept (correlation id = command id): taken as a retry.
    Legacy,
    /// Recorded by another command under the same command id.
    Other,
}

impl CommandKey {
    /// The key of command `id`: a command of type `kind` (e.g. `license.grant`) with the
    /// caller's `body`, by `caller`. The body's `Debug` form is its canonical form: two
    /// requests that parse to the same typed value (whatever the JSON key order, spacing or
    /// omitted defaults) have the same digest.
    pub fn new(id: Uuid, kind: &str, body: &dyn std::fmt::Debug, caller: &Actor) -> Self {
        let mut h = Sha256::new();
        h.update(b"license-ledger/command-digest/v1");
        let body = format!("{body:?}");
        let caller_kind = format!("{:?}", caller.kind);
        for part in [
            kind.as_bytes(),
            body.as_bytes(),
            caller_kind.as_bytes(),
            caller.name.as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Self {
            id,
            digest: h.finalize().into(),
        }
    }

    /// The command id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The correlation id the command's records carry: a UUID v7 with the command id's
    /// timestamp, derived from the command id and the digest.
    pub fn correlation_id(&self) -> Uuid {
        let mut salt = Vec::with_capacity(64);
        salt.extend_from_slice(b"license-ledger/command/v1");
        salt.extend_from_slice(&self.digest);
        derived_v7(self.id, &salt)
    }

    /// The key of a follow-up command in another stream (e.g. the contingency an offline
    /// activation opens): its id is `derive(id, purpose)` as before digests were kept, its
    /// digest the parent's, so a retry of the parent retries the follow-up too, whatever
    /// the follow-up's body is computed to be.
    pub(crate) fn follow_up(&self, purpose: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"license-ledger/command-follow-up/v1");
        h.update(self.digest);
        h.update(purpose.as_bytes());
        Self {
            id: commands::derive(self.id, purpose),
            digest: h.finalize().into(),
        }
    }

    fn recognise(&self, correlation_id: Uuid) -> Recognised {
        if correlation_id == self.correlation_id() {
            Recognised::Same
        } else if correlation_id == self.id {
            Recognised::Legacy
        } else {
            Recognised::Other
        }
    }
}

/// What [`Ledger::execute_unobserved`] did: the outcome, the stream the command's events
/// are in, and those events (the ones just decided, or the stored ones on a retry).
pub(crate) struct Executed {
    pub(crate) outcome: CommandOutcome,
    pub(crate) stream: StreamId,
    pub(crate) events: Vec<Event>,
}

/// Records read after the position of a command's first event stored in another stream
/// (commands record one or two events; more would be answered with these).
const RETRY_READ_MAX: usize = 16;

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Positions of the events it appended (or had appended, on a retry); none when the
    /// command changed nothing.
    pub positions: Option<RangeInclusive<Position>>,
    /// The events' stream version afterwards.
    pub stream_version: StreamVersion,
    /// Whether this was a retry of a command already applied.
    pub was_retry: bool,
}

impl CommandOutcome {
    /// The global position a reader must wait for to see this command's effects.
    pub fn position(&self) -> Position {
        self.positions.as_ref().map_or(0, |p| *p.end())
    }
}

/// How far the view is from ready: it is ready once `position` reached `head`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// The position the view has applied.
    pub position: Position,
    /// The log's head when the ledger started.
    pub head: Position,
}

impl Readiness {
    /// Whether the view has caught up with the log as it was at start.
    pub fn is_ready(&self) -> bool {
        self.position >= self.head
    }
}

/// Interval between two progress lines while the view catches up at start.
const CATCH_UP_LOG_EVERY: StdDuration = StdDuration::from_secs(3);

/// The applier's progress lines while the view catches up with the head read at start.
pub(super) struct CatchUpLog {
    from: Position,
    head: Position,
    started: std::time::Instant,
    last: (std::time::Instant, Position),
    done: bool,
}

impl CatchUpLog {
    fn new(from: Position, head: Position) -> Self {
        let now = std::time::Instant::now();
        if head > from {
            tracing::info!(from, head, "read model catching up with the log");
        }
        Self {
            from,
            head,
            started: now,
            last: (now, from),
            done: head <= from,
        }
    }

    /// After `position` was applied: a line every [`CATCH_UP_LOG_EVERY`], and one when ready.
    fn applied(&mut self, position: Position) {
        if self.done {
            return;
        }
        if position >= self.head {
            self.done = true;
            let seconds = self.started.elapsed().as_secs_f64();
            tracing::info!(
                position,
                seconds = format!("{seconds:.1}"),
                records_per_s = ((position - self.from) as f64 / seconds.max(1e-6)) as u64,
                "read model ready: caught up with the log"
            );
            return;
        }
        // Reading the time costs little, but not nothing: once every 1024 records.
        if !position.is_multiple_of(1024) || self.last.0.elapsed() < CATCH_UP_LOG_EVERY {
            return;
        }
        let now = std::time::Instant::now();
        let seconds = now.duration_since(self.last.0).as_secs_f64();
        tracing::info!(
            position,
            head = self.head,
            records_per_s = ((position - self.last.1) as f64 / seconds.max(1e-6)) as u64,
            "read model catching up"
        );
        self.last = (now, position);
    }
}

/// The ledger: store, view, clock.
pub struct Ledger {
    store: Arc<dyn EventStore>,
    view: Arc<LedgerView>,
    clock: Arc<dyn Clock>,
    config: LedgerConfig,
    applied: watch::Receiver<Position>,
    /// The log's head when the ledger started: the view is ready once it applied it.
    ready_at: Position,
    /// The snapshot position the view resumed from at start (0: none, the whole log).
    resumed_from: Position,
    failure: Arc<parking_lot::Mutex<Option<String>>>,
    derived: Arc<crate::derived::Derived>,
    index_failure: Arc<parking_lot::Mutex<Option<String>>>,
    stop: watch::Sender<bool>,
    applier: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// One as-of view is built at a time (on `background`); the last one is kept.
    as_of: tokio::sync::Mutex<Option<(Position, Arc<LedgerView>)>>,
    /// The low-priority thread as-of views are built on.
    background: crate::background::Background,
    terminal_locks: Vec<tokio::sync::Mutex<()>>,
    appends: std::sync::atomic::AtomicU64,
    license_ids: ids::IdAllocator,
    contract_ids: ids::IdAllocator,
    /// Every terminal's last check-in ("Última Comunicação"; `last_seen.rs`).
    last_seen: last_seen::LastSeen,
}

/// A live feed of the log for auditors: the records already stored from a position on, then
/// new ones as they become durable, with no gap and no duplicate. It reads in batches and
/// holds at most one batch; dropping it unsubscribes.
pub struct LogFeed {
    subscription: Subscription,
}

impl LogFeed {
    /// Waits for and returns the next record. Fails with `AppError::Store(StoreError::Closed)`
    /// once the store is closed and every stored record has been delivered.
    ///
    /// Cancel-safe: dropping the future before it completes loses no record.
    pub async fn next(&mut self) -> Result<ledger_events::Record, AppError> {
        Ok(self.subscription.next().await?)
    }

    /// The position of the record the next call returns.
    pub fn cursor(&self) -> Position {
        self.subscription.cursor()
    }
}

/// Stripes of the per-terminal check-in lock.
const TERMINAL_LOCK_STRIPES: usize = 1024;

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Some(applier) = self.applier.lock().take() {
            applier.abort();
        }
    }
}

impl Ledger {
    /// Starts the view's applier on `store` and waits, as long as it takes, until the view has
    /// caught up with the log as it was at start (for commands run once, e.g. by the CLI).
    pub async fn start(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        config: LedgerConfig,
    ) -> Result<Self, AppError> {
        let ledger = Self::open(store, clock, config).await?;
        ledger.wait_applied(ledger.ready_at, None).await?;
        Ok(ledger)
    }

    /// Starts the view's applier on `store` and returns at once, while the view catches up
    /// with the log as it was at start (the server, which answers meanwhile). Nothing that
    /// reads the view may answer before [`Ledger::ready`] did; [`Ledger::readiness`] tells
    /// how far it is.
    pub async fn open(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        config: LedgerConfig,
    ) -> Result<Self, AppError> {
        // Decisions never see time go back, across restarts too: the floor is the log's last
        // recorded time (the store never records an earlier one).
        let head = store.head().await?;
        let floor = if head.position == 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            store
                .read_all(head.position, 1)
                .await?
                .first()
                .map_or(DateTime::<Utc>::MIN_UTC, |r| r.envelope.recorded_at)
        };
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::MonotonicClock::new(clock, floor));
        let follow::Resume { view, derived } =
            follow::resume(store.as_ref(), &config.derived, head).await?;
        let resumed_from = view.position();
        let view = Arc::new(view);
        let derived = Arc::new(derived);
        let (applied_tx, applied) = watch::channel(view.position());
        let (stop, stop_rx) = watch::channel(false);
        let failure = Arc::new(parking_lot::Mutex::new(None));
        let index_failure = Arc::new(parking_lot::Mutex::new(None));
        let background = crate::background::Background::start("ledger-as-of")
            .map_err(|e| AppError::ViewStopped(format!("could not start the as-of thread: {e}")))?;
        let applier = tokio::spawn(
            follow::Applier {
                store: store.clone(),
                view: view.clone(),
                derived: derived.clone(),
                applied: applied_tx,
                failure: failure.clone(),
                index_failure: index_failure.clone(),
                stop: stop_rx,
                progress: CatchUpLog::new(view.position(), head.position),
            }
            .run(),
        );
        let config_dir = config.derived.dir.clone();
        let ledger = Self {
            store,
            view,
            clock,
            config,
            applied,
            ready_at: head.position,
            resumed_from,
            failure,
            derived,
            index_failure,
            stop,
            applier: parking_lot::Mutex::new(Some(applier)),
            as_of: tokio::sync::Mutex::new(None),
            background,
            terminal_locks: (0..TERMINAL_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            appends: std::sync::atomic::AtomicU64::new(0),
            license_ids: ids::IdAllocator::new(),
            contract_ids: ids::IdAllocator::new(),
            last_seen: last_seen::LastSeen::load(config_dir.map(|d| d.join(last_seen::FILE_NAME))),
        };
        Ok(ledger)
    }

    /// Stops following the log, leaving a snapshot of the read models where they got to (so
    /// the next start resumes there). Call before closing the store.
    pub async fn shutdown(&self) {
        self.flush_last_seen();
        self.stop.send_replace(true);
        let applier = self.applier.lock().take();
        if let Some(applier) = applier {
            let _ = applier.await;
        }
    }

    /// The lock stripe serializing check-ins of one terminal.
    pub(crate) fn terminal_lock(
        &self,
        cnpj: &ledger_events::Cnpj,
        hardware_id: &ledger_events::HardwareId,
    ) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
        cnpj.hash(&mut h);
        hardware_id.hash(&mut h);
        &self.terminal_locks[(h.finish() as usize) % TERMINAL_LOCK_STRIPES]
    }

    /// The snapshot position the view resumed from at start (0: it applied the whole log).
    pub fn resumed_from(&self) -> Position {
        self.resumed_from
    }

    /// The projected view.
    pub fn view(&self) -> &LedgerView {
        &self.view
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// A live feed of the log from `from` on (inclusive; 0 and 1 both mean the beginning).
    pub fn subscribe(&self, from: Position) -> LogFeed {
        LogFeed {
            subscription: self.store.subscribe_all(from),
        }
    }

    /// The store's write counters, when its backend keeps them.
    pub fn store_stats(&self) -> Option<StoreStats> {
        self.store.stats()
    }

    /// Appends this ledger stored since it started (retries answered from the log excluded).
    pub fn appends(&self) -> u64 {
        self.appends.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The calendar days are counted in.
    pub fn calendar(&self) -> crate::domain::Calendar {
        self.config.calendar
    }

    /// The calendar of that customer's days: its own zone, else the deployment's.
    pub fn calendar_of(&self, cnpj: &ledger_events::Cnpj) -> crate::domain::Calendar {
        let zone = self.view().customer(cnpj).and_then(|c| c.time_zone);
        self.config.calendar.for_customer(zone.as_ref())
    }

    /// The local day now, on the ledger's clock and calendar.
    pub fn today(&self) -> chrono::NaiveDate {
        self.config.calendar.day(self.clock.now())
    }

    /// The settings.
    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// Waits (bounded) until the view has applied `position`.
    pub async fn wait_for(&self, position: Position) -> Result<(), AppError> {
        let started = std::time::Instant::now();
        if self
            .wait_applied(position, Some(self.config.catch_up_timeout))
            .await?
        {
            return Ok(());
        }
        Err(AppError::CatchUpTimeout {
            position,
            waited_ms: started.elapsed().as_millis(),
        })
    }

    /// How far the view is from having caught up with the log as it was at start; fails
    /// once the view stopped following the log.
    pub fn readiness(&self) -> Result<Readiness, AppError> {
        if let Some(why) = self.failure.lock().clone() {
            return Err(AppError::ViewStopped(why));
        }
        Ok(Readiness {
            position: *self.applied.borrow(),
            head: self.ready_at,
        })
    }

    /// Waits (bounded by [`LedgerConfig::catch_up_timeout`]) until the view has caught up
    /// with the log as it was at start; immediate once it has. Fails with
    /// [`AppError::CatchingUp`] when the time limit passes first.
    pub async fn ready(&self) -> Result<(), AppError> {
        if *self.applied.borrow() >= self.ready_at {
            return Ok(());
        }
        let started = std::time::Instant::now();
        if self
            .wait_applied(self.ready_at, Some(self.config.catch_up_timeout))
            .await?
        {
            return Ok(());
        }
        Err(AppError::CatchingUp {
            position: *self.applied.borrow(),
            head: self.ready_at,
            waited_ms: started.elapsed().as_millis(),
        })
    }

    /// Waits until the view has applied `position`, at most `limit` (`None`: as long as it
    /// takes). `Ok(false)` when the limit passed first; fails if the view stopped.
    async fn wait_applied(
        &self,
        position: Position,
        limit: Option<StdDuration>,
    ) -> Result<bool, AppError> {
        let mut rx = self.applied.clone();
        let wait = async {
            loop {
                if *rx.borrow_and_update() >= position {
                    return Ok(true);
                }
                if rx.changed().await.is_err() {
                    let why = self
                        .failure
                        .lock()
                        .clone()
                        .unwrap_or_else(|| "applier ended".into());
                    return Err(AppError::ViewStopped(why));
                }
            }
        };
        let Some(limit) = limit else {
            return wait.await;
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r,
            Err(_) => match self.failure.lock().clone() {
                Some(why) => Err(AppError::ViewStopped(why)),
                None => Ok(false),
            },
        }
    }

    /// After a version conflict: the winning append may be written but not yet durable, so
    /// neither the store's reads nor the view show it yet. Waits (bounded) until the store
    /// reports the stream at `actual`, then until the view has caught up.
    pub async fn settle_conflict(
        &self,
        stream: &StreamId,
        actual: StreamVersion,
    ) -> Result<(), AppError> {
        let started = std::time::Instant::now();
        while self.store.stream_version(stream).await? < actual {
            if started.elapsed() > self.config.catch_up_timeout {
                return Err(AppError::CatchUpTimeout {
                    position: 0,
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            tokio::time::sleep(StdDuration::from_micros(500)).await;
        }
        self.catch_up().await
    }

    /// Up to `limit` (at most [`READ_BATCH_MAX`]) records of the log from `from` on, for
    /// auditors' feeds and timelines.
    pub async fn read_log(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Vec<ledger_events::Record>, AppError> {
        Ok(self
            .store
            .read_all(from.max(1), limit.min(READ_BATCH_MAX))
            .await?)
    }

    /// The record at `position`, if stored.
    pub async fn record_at(
        &self,
        position: Position,
    ) -> Result<Option<ledger_events::Record>, AppError> {
        Ok(follow::record_at(self.store.as_ref(), position).await?)
    }

    /// The log's durable head.
    pub async fn head(&self) -> Result<ledger_events::ChainHead, AppError> {
        Ok(self.store.head().await?)
    }

    /// Waits until the view has applied everything stored so far.
    pub async fn catch_up(&self) -> Result<(), AppError> {
        let head = self.store.head().await?.position;
        self.wait_for(head).await
    }

    /// Loads `stream`, decides `command`, appends with the loaded version; retries on
    /// conflict. A retry of the command (same `command_id`, stream, command and actor)
    /// answers with its original positions; a command id used before for another command
    /// fails with [`AppError::CommandIdReused`] (see the module documentation). Returns once
    /// the view has applied the command's events (read-your-writes). The typed entry points
    /// ([`commands`]) digest the caller's request instead, before the ledger fills anything
    /// in.
    pub async fn execute<A: Aggregate>(
        &self,
        stream: &StreamId,
        command: &A::Command,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<CommandOutcome, AppError> {
        let key = CommandKey::new(command_id, "aggregate", &(stream, command), actor);
        self.execute_keyed::<A>(stream, command, actor, &key).await
    }

    /// [`Ledger::execute`] under a key the caller made.
    pub async fn execute_keyed<A: Aggregate>(
        &self,
        stream: &StreamId,
        command: &A::Command,
        actor: &Actor,
        key: &CommandKey,
    ) -> Result<CommandOutcome, AppError> {
        Ok(self
            .execute_recorded::<A>(stream, command, actor, key)
            .await?
            .outcome)
    }

    /// [`Ledger::execute`], also telling the stream and the command's events (the stored
    /// ones on a retry, so that a retry answers what the first attempt answered).
    pub(crate) async fn execute_recorded<A: Aggregate>(
        &self,
        stream: &StreamId,
        command: &A::Command,
        actor: &Actor,
        key: &CommandKey,
    ) -> Result<Executed, AppError> {
        let executed = self
            .execute_unobserved::<A>(stream, command, actor, key)
            .await?;
        self.wait_for(executed.outcome.position()).await?;
        Ok(executed)
    }

    async fn execute_unobserved<A: Aggregate>(
        &self,
        stream: &StreamId,
        command: &A::Command,
        actor: &Actor,
        key: &CommandKey,
    ) -> Result<Executed, AppError> {
        let attempts = self.config.conflict_retries + 1;
        let first_id = event_id_for(key.id, 0);
        for _ in 0..attempts {
            let records = self.read_stream(stream).await?;
            if let Some(at) = records.iter().position(|r| r.envelope.event_id == first_id) {
                return replayed(key, stream, &records[at..]);
            }
            let mut events = Vec::with_capacity(records.len());
            for r in &records {
                events.push(r.event().map_err(StoreError::from)?);
            }
            let loaded = Loaded::<A>::from_events(events.iter());
            let decided = loaded.state.decide(command, self.clock.now())?;
            if decided.is_empty() {
                return Ok(Executed {
                    outcome: CommandOutcome {
                        positions: None,
                        stream_version: loaded.version,
                        was_retry: false,
                    },
                    stream: stream.clone(),
                    events: Vec::new(),
                });
            }
            let count = decided.len();
            match self
                .append_as(
                    stream,
                    ExpectedVersion::Exact(loaded.version),
                    decided.clone(),
                    actor,
                    key.id,
                    key.correlation_id(),
                )
                .await
            {
                // The store recognised the event ids: a request with this command id stored
                // them meanwhile. Answer with them only if they are this command's.
                Ok(a) if a.was_retry => {
                    let stored = self
                        .store
                        .read_all(*a.positions.start(), count.max(RETRY_READ_MAX))
                        .await?;
                    return replayed(key, stream, &stored);
                }
                Ok(a) => {
                    return Ok(Executed {
                        outcome: outcome(a),
                        stream: stream.clone(),
                        events: decided,
                    })
                }
                Err(StoreError::WrongExpectedVersion { stream, actual, .. }) => {
                    self.settle_conflict(&stream, actual).await?;
                }
                // The command id's first event is stored in another stream: a retry of a
                // creating command (stored under the id it allocated the first time), or
                // the command id reused for another command.
                Err(StoreError::DuplicateEventId { event_id, position })
                    if event_id == first_id =>
                {
                    let stored = self.store.read_all(position, RETRY_READ_MAX).await?;
                    return replayed(key, stream, &stored);
                }
                // A later event id of this command id is stored: another command used it.
                Err(StoreError::DuplicateEventId { event_id, .. })
                    if (1..count as u32).any(|i| event_id_for(key.id, i) == event_id) =>
                {
                    return Err(AppError::CommandIdReused { command_id: key.id });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contention {
            stream: stream.clone(),
            attempts,
        })
    }

    /// Appends events derived from `command_id` (ids are deterministic, so a retried append
    /// is recognised by the store), with the command id as their correlation id: for
    /// appends that are not commands with a caller's id (a check-in's steps).
    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        actor: &Actor,
        command_id: Uuid,
    ) -> Result<Appended, StoreError> {
        self.append_as(stream, expected, events, actor, command_id, command_id)
            .await
    }

    /// Appends events with the ids `event_id_for(command_id, i)` and `correlation_id`.
    async fn append_as(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        actor: &Actor,
        command_id: Uuid,
        correlation_id: Uuid,
    ) -> Result<Appended, StoreError> {
        let new: Vec<NewEvent> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| NewEvent {
                event_id: event_id_for(command_id, i as u32),
                event,
                actor: actor.clone(),
                correlation_id,
            })
            .collect();
        let appended = self.store.append(stream, expected, new).await?;
        if !appended.was_retry {
            self.appends
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(appended)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
    ) -> Result<Vec<ledger_events::Record>, StoreError> {
        let mut out = Vec::new();
        loop {
            let batch = self
                .store
                .read_stream(stream, out.len() as StreamVersion + 1, READ_BATCH_MAX)
                .await?;
            let n = batch.len();
            out.extend(batch);
            if n < READ_BATCH_MAX {
                return Ok(out);
            }
        }
    }
}

/// The answer to a command whose first event id is stored: `stored` starts with that record
/// (the rest may be anything that follows it). It is a retry when that record carries the
/// command's correlation id, or the command id itself (a record written before digests were
/// kept, taken as a retry if it is in `stream` or in a stream of the same kind: a creating
/// command's retry lands in the stream it allocated the first time); it answers with the
/// command's records (the consecutive ones with its event ids). Anything else is
/// [`AppError::CommandIdReused`].
fn replayed(
    key: &CommandKey,
    stream: &StreamId,
    stored: &[ledger_events::Record],
) -> Result<Executed, AppError> {
    let reused = || AppError::CommandIdReused { command_id: key.id };
    let Some(first) = stored.first() else {
        return Err(StoreError::Closed.into());
    };
    if first.envelope.event_id != event_id_for(key.id, 0) {
        return Err(reused());
    }
    let kind = |s: &StreamId| s.as_str().split_once('-').map(|(k, _)| k.to_owned());
    match key.recognise(first.envelope.correlation_id) {
        Recognised::Same => {}
        Recognised::Legacy
            if &first.envelope.stream_id == stream
                || kind(&first.envelope.stream_id) == kind(stream) => {}
        Recognised::Legacy | Recognised::Other => return Err(reused()),
    }
    let mut events = Vec::new();
    let mut last = first;
    for (i, r) in stored.iter().enumerate() {
        if r.envelope.event_id != event_id_for(key.id, i as u32)
            || r.envelope.stream_id != first.envelope.stream_id
        {
            break;
        }
        events.push(r.event().map_err(StoreError::from)?);
        last = r;
    }
    Ok(Executed {
        outcome: CommandOutcome {
            positions: Some(first.envelope.position..=last.envelope.position),
            stream_version: last.envelope.stream_version,
            was_retry: true,
        },
        stream: first.envelope.stream_id.clone(),
        events,
    })
}

fn outcome(a: Appended) -> CommandOutcome {
    CommandOutcome {
        positions: Some(a.positions),
        stream_version: a.stream_version,
        was_retry: a.was_retry,
    }
}

/// The id of the `index`-th event of a command: a UUID v7 whose timestamp is the command
/// id's (when the command id is a v7) and whose random bits are a hash of (command id,
/// index), so a retried command produces the same event ids.
pub fn event_id_for(command_id: Uuid, index: u32) -> Uuid {
    derived_v7(command_id, &index.to_be_bytes())
}

/// Runs `work` on the ledger now and then every `every`, until the ledger is dropped (the
/// server's periodic tasks: the automatic renewal, the last-communication file). A period
/// missed while `work` ran is not made up.
pub async fn every<F>(ledger: std::sync::Weak<Ledger>, every: StdDuration, mut work: F)
where
    F: AsyncFnMut(Arc<Ledger>),
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(ledger) = ledger.upgrade() else {
            return;
        };
        work(ledger).await;
    }
}

/// A UUID v7 derived from `base` and `salt`: `base`'s timestamp (when it is a v7), the rest
/// from SHA-256(base ‖ salt).
pub fn derived_v7(base: Uuid, salt: &[u8]) -> Uuid {
    let mut h = Sha256::new();
    h.update(base.as_bytes());
    h.update(salt);
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    if base.get_version_num() == 7 {
        bytes[..6].copy_from_slice(&base.as_bytes()[..6]);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_key_tells_type_body_and_caller_apart_and_keeps_the_command_ids_time() {
        let id = Uuid::now_v7();
        let support = Actor::operator("suporte").unwrap();
        let key = CommandKey::new(id, "license", &"Block { note: None }", &support);
        assert_eq!(
            key,
            CommandKey::new(id, "license", &"Block { note: None }", &support)
        );
        let others = [
            CommandKey::new(id, "customer", &"Block { note: None }", &support),
            CommandKey::new(id, "license", &"Unblock { note: None }", &support),
            CommandKey::new(
                id,
                "license",
                &"Block { note: None }",
                &Actor::operator("outro").unwrap(),
            ),
            CommandKey::new(
                id,
                "license",
                &"Block { note: None }",
                &Actor::system("suporte").unwrap(),
            ),
            // The parts are length-prefixed: moving a byte from one to the next changes it.
            CommandKey::new(id, "licens", &"eBlock { note: None }", &support),
        ];
        for other in others {
            assert_ne!(key.correlation_id(), other.correlation_id(), "{other:?}");
            assert_eq!(key.recognise(other.correlation_id()), Recognised::Other);
        }
        assert_eq!(key.recognise(key.correlation_id()), Recognised::Same);
        assert_eq!(key.recognise(id), Recognised::Legacy);
        let c = key.correlation_id();
        assert_ne!(c, id);
        assert_eq!(c.get_version_num(), 7);
        assert_eq!(&c.as_bytes()[..6], &id.as_bytes()[..6]);
        // A follow-up keeps the id it had before digests were kept.
        let follow = key.follow_up("contingency");
        assert_eq!(follow.id(), commands::derive(id, "contingency"));
        assert_ne!(follow.correlation_id(), key.correlation_id());
    }

    #[test]
    fn event_ids_are_v7_deterministic_and_distinct_per_index() {
        let c = Uuid::now_v7();
        let a = event_id_for(c, 0);
        assert_eq!(a, event_id_for(c, 0));
        assert_ne!(a, event_id_for(c, 1));
        assert_ne!(a, event_id_for(Uuid::now_v7(), 0));
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(&a.as_bytes()[..6], &c.as_bytes()[..6]);
    }
}
