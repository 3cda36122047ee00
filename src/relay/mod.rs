//! The on-premises relay (the manual's "IWB Server"): a server at the customer's shop that
//! terminals use exactly like the center, and that keeps selling when the link fails.
//!
//! It follows the center's log for its customer only (`/v1/relay/*` with a `relay` token
//! bound to that CNPJ) and keeps:
//! - the **mirror** ([`mirror::MirrorLog`]): the customer's records verbatim, with their
//!   central positions and hashes;
//! - the **outbox** ([`outbox::Outbox`]): what happened at the relay (binds, renewals by
//!   contract, check-in records, contingency entries), written before answering and
//!   forwarded when the link is up; the center decides each one and its decision is recorded;
//! - a **view** (`LedgerView`) of mirror + pending outbox events, which check-ins are
//!   decided on with the center's own `decide_check_in`. A rejected event is dropped and the
//!   view rebuilt from the mirror and what is still pending: the center's decision wins.
//!
//! Schedule (the manual's): a full refresh at start and every 24 h; when one fails, a retry
//! every hour (logging `Falha ao atualizar as licenças! O sistema irá retentar em 1 hora.`)
//! and an IntelliWeb contingency entry: licenses then sell until expiry + 7 days, with the
//! contingency texts. Between refreshes the relay streams the center's new records live. The
//! next successful refresh clears the contingency.
//!
//! Answers are signed with the relay's own key, certified by the center for this customer
//! (`RelayCertificate`): terminals that trust the center's key verify them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use ledger_events::answer::RelayCertificate;
use ledger_events::{
    texts, Actor, Cnpj, CodecError, ContingencyCleared, ContingencyEntered, ContingencyKind,
    Envelope, Event, Hash, Note, Position,
};
use ledger_projections::view::LedgerView;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::app::answers::{AnswerSigner, KeyError};
use crate::app::checkin::check_in_context;
use crate::app::relay::{ForwardedEvent, Resolution};
use crate::clock::{Clock, MonotonicClock};
use crate::config::ConfigError;
use crate::domain::checkin::{decide_check_in, CheckInPlan, CheckInRequest, Step};
use outbox::{Outbox, Resolved};
use upstream::{Certified, Upstream, UpstreamError};

pub mod batch;
pub mod cut;
pub mod head;
pub mod http;
pub mod mirror;
pub mod outbox;
pub mod timemark;
pub mod trust;
pub mod upstream;

/// Records per feed page during a refresh.
const REFRESH_PAGE: usize = 1000;
/// Most events per forward request (the center takes 500); a request is also kept under the
/// center's body limit by bytes ([`batch`]).
pub const FORWARD_BATCH: usize = 200;
/// Renew the certificate when it has less than this left.
const CERTIFICATE_RENEW_DAYS: i64 = 7;
/// The certificate file in the data directory.
pub const CERTIFICATE_FILE: &str = "relay-certificate.json";

/// Why the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A local file is damaged, or the center contradicted the mirror.
    #[error("{0}")]
    Corrupt(String),
    /// A record did not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The signing key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The secrets file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The center.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// The relay's settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The center's base URL.
    pub upstream: String,
    /// The customer served.
    pub cnpj: Cnpj,
    /// The `relay` token for that customer.
    pub token: String,
    /// Extra root certificates (DER) the center's TLS certificate is checked against
    /// (`--upstream-ca`), besides the public roots.
    pub upstream_roots: Vec<Vec<u8>>,
    /// The center's key given by the operator (`--center-key`); `None`: pinned at first
    /// contact ([`trust`]).
    pub center_key: Option<trust::CenterKey>,
    /// Where the mirror, outbox, key and secrets live.
    pub data_dir: PathBuf,
    /// How often a full refresh runs (the manual: 24 h).
    pub refresh_every: Duration,
    /// How soon a failed refresh is retried (the manual: 1 h).
    pub retry_every: Duration,
    /// How old a terminal's recorded check-in may get before an unchanged one is recorded.
    pub record_interval: Duration,
    /// The shop's calendar: the days its terminals are told about.
    pub calendar: crate::domain::Calendar,
}

impl RelayConfig {
    /// The manual's schedule for `cnpj` at `upstream`.
    pub fn new(upstream: &str, cnpj: Cnpj, token: &str, data_dir: PathBuf) -> Self {
        Self {
            upstream: upstream.to_owned(),
            cnpj,
            token: token.to_owned(),
            upstream_roots: Vec::new(),
            center_key: None,
            data_dir,
            refresh_every: Duration::hours(24),
            retry_every: Duration::hours(1),
            record_interval: Duration::hours(24),
            calendar: crate::domain::Calendar::default(),
        }
    }
}

/// Whether the center is reachable, as the relay last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not tried yet.
    Unknown,
    /// The last call (refresh, stream or forward) got through.
    Up,
    /// The center could not be reached.
    Down,
    /// The center answered but refused the relay (see `last_error`).
    Refused,
}

impl LinkState {
    /// The link after a failed call: down when the center was unreachable, refused when it
    /// answered no.
    fn after(e: &UpstreamError) -> LinkState {
        if e.is_unreachable() {
            LinkState::Down
        } else {
            LinkState::Refused
        }
    }
}

/// What `GET /v1/relay/status` and `license-ledger relay-status` show.
#[derive(Clone, Debug, Serialize)]
pub struct RelayStatus {
    /// The customer served.
    pub cnpj: Cnpj,
    /// The center's URL.
    pub upstream: String,
    /// The link.
    pub link: LinkState,
    /// When the last full refresh succeeded.
    pub last_refresh: Option<DateTime<Utc>>,
    /// When the next refresh (or retry) runs.
    pub next_refresh: DateTime<Utc>,
    /// The last failure, with the center's own text when it answered (`Usuário inválido.`,
    /// `Assinatura do token inválida`) or the manual's retry text.
    pub last_error: Option<String>,
    /// Since when the relay is in IntelliWeb contingency, if it is.
    pub contingency_since: Option<DateTime<Utc>>,
    /// Events waiting to be forwarded.
    pub outbox_depth: usize,
    /// Events the center rejected (dropped; the center's state won).
    pub rejected: usize,
    /// The mirror's last central position.
    pub mirror_position: Position,
    /// Records in the mirror.
    pub mirror_records: usize,
    /// Why mirroring stopped, while it is stopped: the center's records did not verify
    /// against its pinned key ([`trust`]); nothing of them is mirrored or answered from.
    pub mirror_error: Option<String>,
    /// Until when the relay's key is certified, if it is.
    pub certified_until: Option<DateTime<Utc>>,
}

/// The relay.
pub struct Relay {
    config: RelayConfig,
    /// Never goes back, across restarts too (see [`timemark`]).
    clock: Arc<dyn Clock>,
    /// The persisted high-water mark of the times the relay answered at.
    mark: timemark::TimeMark,
    upstream: Upstream,
    mirror: Mutex<mirror::MirrorLog>,
    outbox: Mutex<Outbox>,
    view: RwLock<Arc<LedgerView>>,
    /// Outbox events applied to the current view and not yet seen in the mirror.
    /// Lock order, where nested: `mirror`, then `outbox`, then `view`, then `applied_local`.
    applied_local: Mutex<HashSet<Uuid>>,
    /// Check-ins decide one at a time (a shop's few terminals; no double binds).
    decide: tokio::sync::Mutex<()>,
    status: Mutex<RelayStatus>,
    signer: AnswerSigner,
    certificate: RwLock<Option<Certified>>,
    /// The center's key, pinned at first contact ([`trust`]).
    center_key: RwLock<Option<trust::CenterKey>>,
    forward_now: Notify,
    refresh_now: Notify,
    /// The stream saw new records: fetch them, signed, from the feed.
    pull_now: Notify,
    /// The manual's lines (`iwb.log`): each refresh, its licenses, its refusals.
    oplog: crate::oplog::OperatorLog,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("cnpj", &self.config.cnpj)
            .field("upstream", &self.config.upstream)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Opens the relay's files in `config.data_dir` (creating them) and builds its view.
    /// Nothing is asked of the center yet: see [`Relay::spawn`].
    ///
    /// `clock` is wrapped so that it never goes back: it starts no earlier than the mirror's
    /// and the outbox's last recorded times and the persisted mark of the relay's answers
    /// ([`timemark`]), and never returns a time before one it returned.
    pub fn open(config: RelayConfig, clock: Arc<dyn Clock>) -> Result<Relay, RelayError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| RelayError::Io {
            context: format!("creating {}", config.data_dir.display()),
            source,
        })?;
        let mirror = mirror::MirrorLog::open(&config.data_dir)?;
        let outbox = Outbox::open(&config.data_dir)?;
        let (mark, mark_floor) = timemark::TimeMark::open(&config.data_dir)?;
        let mirrored = mirror.records().last().map(|r| r.envelope.recorded_at);
        let recorded = outbox.last_recorded_at();
        if let Some(t) = recorded {
            mark.durable_at(t);
        }
        let floor = [mirrored, recorded, mark_floor]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new(clock, floor));
        let signer = AnswerSigner::load_or_create(
            &config.data_dir.join(AnswerSigner::FILE_NAME),
            crate::app::answers::random_seed,
        )?;
        let certificate = load_certificate(&config.data_dir);
        let pinned = trust::CenterKey::load(&config.data_dir)?;
        let center_key = match (pinned, &config.center_key) {
            (Some(pinned), Some(given)) if &pinned != given => {
                return Err(RelayError::Corrupt(format!(
                    "--center-key is key {}, but {} pins key {}: if the center's key was \
                     replaced on purpose, remove that file and start again",
                    given.key_id(),
                    config.data_dir.join(trust::CENTER_KEY_FILE).display(),
                    pinned.key_id()
                )))
            }
            (Some(pinned), _) => Some(pinned),
            (None, Some(given)) => {
                given.pin(&config.data_dir)?;
                Some(given.clone())
            }
            // A relay certified before keys were pinned: the key that certified it.
            (None, None) => match &certificate {
                Some(c) => {
                    let key = trust::CenterKey::from_hex(&c.central_public_key)
                        .map_err(RelayError::Corrupt)?;
                    key.pin(&config.data_dir)?;
                    Some(key)
                }
                None => None,
            },
        };
        let upstream = Upstream::new(
            &config.upstream,
            &config.token,
            config.cnpj,
            &config.upstream_roots,
        )?;
        let now = clock.now();
        let status = RelayStatus {
            cnpj: config.cnpj,
            upstream: config.upstream.clone(),
            link: LinkState::Unknown,
            last_refresh: None,
            next_refresh: now,
            last_error: None,
            contingency_since: None,
            outbox_depth: outbox.depth(),
            rejected: outbox.rejected(),
            mirror_position: mirror.head_position(),
            mirror_records: mirror.records().len(),
            mirror_error: None,
            certified_until: certificate.as_ref().map(|c| c.certificate.valid_until),
        };
        let oplog = crate::oplog::OperatorLog::new(
            &config.data_dir.join(crate::oplog::FILE_NAME),
            config.calendar,
        );
        let relay = Relay {
            oplog,
            config,
            clock,
            mark,
            upstream,
            mirror: Mutex::new(mirror),
            outbox: Mutex::new(outbox),
            view: RwLock::new(Arc::new(LedgerView::new())),
            applied_local: Mutex::new(HashSet::new()),
            decide: tokio::sync::Mutex::new(()),
            status: Mutex::new(status),
            signer,
            certificate: RwLock::new(certificate),
            center_key: RwLock::new(center_key),
            forward_now: Notify::new(),
            refresh_now: Notify::new(),
            pull_now: Notify::new(),
        };
        relay.rebuild();
        let since = relay.open_contingency_since();
        relay.status.lock().contingency_since = since;
        Ok(relay)
    }

    /// The settings.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The answer-signing key.
    pub fn signer(&self) -> &AnswerSigner {
        &self.signer
    }

    /// The center's certificate of the relay's key, if it has one.
    pub fn certificate(&self) -> Option<Certified> {
        self.certificate.read().clone()
    }

    /// The current view (mirror + pending outbox events).
    pub fn view(&self) -> Arc<LedgerView> {
        self.view.read().clone()
    }

    /// The status, now.
    pub fn status(&self) -> RelayStatus {
        // One lock at a time: the mirror is always taken before the outbox elsewhere.
        let mut s = self.status.lock().clone();
        (s.outbox_depth, s.rejected) = {
            let outbox = self.outbox.lock();
            (outbox.depth(), outbox.rejected())
        };
        (s.mirror_position, s.mirror_records) = {
            let mirror = self.mirror.lock();
            (mirror.head_position(), mirror.records().len())
        };
        s.certified_until = self
            .certificate
            .read()
            .as_ref()
            .map(|c| c.certificate.valid_until);
        s
    }

    /// Runs the relay's background work until the process ends: the refresh schedule, the
    /// live stream, and the forwarding of the outbox.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let r = self.clone();
        let refresher = tokio::spawn(async move { r.refresh_loop().await });
        let r = self.clone();
        let follower = tokio::spawn(async move { r.follow_loop().await });
        let r = self.clone();
        let forwarder = tokio::spawn(async move { r.forward_loop().await });
        let r = self.clone();
        let puller = tokio::spawn(async move { r.pull_loop().await });
        vec![refresher, follower, forwarder, puller]
    }

    // ---- check-ins ----

    /// Decides a terminal's check-in on the relay's view, writes the plan's events to the
    /// outbox (durably) and to the view, and returns the decision with the time it was made
    /// at (the answer's `issued_at`). That time is durable before this returns (an outbox line
    /// or the [`timemark`]), so a restarted relay never answers as of an earlier time.
    pub async fn check_in(
        &self,
        req: &CheckInRequest,
    ) -> Result<(CheckInPlan, DateTime<Utc>), RelayError> {
        let _turn = self.decide.lock().await;
        let view = self.view();
        let now = self.clock.now();
        let ctx = check_in_context(
            &view,
            req,
            self.config.record_interval,
            self.config.calendar,
        );
        let plan = decide_check_in(req, &ctx, now);
        let correlation = Uuid::now_v7();
        let actor = Actor::terminal(&req.hardware_id);
        for step in &plan.steps {
            let (event, expected) = match step {
                Step::Bind {
                    expected_version,
                    event,
                }
                | Step::Renew {
                    expected_version,
                    event,
                } => (event, Some(*expected_version)),
                Step::ClearManualContingency { event } | Step::Record { event } => (event, None),
            };
            self.record_local(event, expected, &actor, correlation, now)?;
        }
        if !plan.steps.is_empty() {
            self.forward_now.notify_one();
        }
        self.mark.cover(now)?;
        Ok((plan, now))
    }

    /// Writes one event that happened here to the outbox and applies it to the view.
    fn record_local(
        &self,
        event: &Event,
        expected: Option<u64>,
        actor: &Actor,
        correlation: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), RelayError> {
        let fwd = ForwardedEvent {
            event_id: Uuid::now_v7(),
            stream_id: event.stream_id().to_string(),
            expected_version: expected,
            event_type: event.event_type().to_owned(),
            data: event.data_json(),
            actor: actor.clone(),
            correlation_id: correlation,
            recorded_at: now,
        };
        self.outbox.lock().append(fwd.clone())?;
        self.mark.durable_at(now);
        let view = self.view();
        apply_local(&view, &fwd, event);
        self.applied_local.lock().insert(fwd.event_id);
        Ok(())
    }

    // ---- the mirror and the view ----

    /// Adds records from the center to the mirror and the view.
    fn ingest(&self, records: &[ledger_events::Record]) -> Result<usize, RelayError> {
        let mut mirror = self.mirror.lock();
        let added = mirror.append(records)?;
        let view = self.view();
        let mut local = self.applied_local.lock();
        for r in &added {
            if local.remove(&r.envelope.event_id) {
                continue; // our own event, already in the view
            }
            match r.event() {
                Ok(event) => {
                    if let Err(e) = view.apply_unordered(&r.envelope, &event) {
                        tracing::warn!(error = %e, "a mirrored record could not be applied in full");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, position = r.envelope.position, "a mirrored record does not decode")
                }
            }
        }
        Ok(added.len())
    }

    /// Builds the view anew from the mirror and the pending outbox events.
    fn rebuild(&self) {
        let mirror = self.mirror.lock();
        let outbox = self.outbox.lock();
        let view = LedgerView::new();
        for r in mirror.records() {
            if let Ok(event) = r.event() {
                let _ = view.apply_unordered(&r.envelope, &event);
            }
        }
        let mut local = HashSet::new();
        for fwd in outbox.pending() {
            if mirror.contains_event(&fwd.event_id) {
                continue;
            }
            match Event::from_data_json(&fwd.event_type, fwd.data.clone()) {
                Ok(event) => {
                    apply_local(&view, &fwd, &event);
                    local.insert(fwd.event_id);
                }
                Err(e) => {
                    tracing::error!(error = %e, event_id = %fwd.event_id, "an outbox event does not decode")
                }
            }
        }
        *self.view.write() = Arc::new(view);
        *self.applied_local.lock() = local;
    }

    fn open_contingency_since(&self) -> Option<DateTime<Utc>> {
        self.view()
            .open_contingencies(&self.config.cnpj)
            .into_iter()
            .find(|c| c.kind == ContingencyKind::Intelliweb && c.hardware_id.is_none())
            .map(|c| c.entered_at)
    }

    // ---- refresh, stream, forward ----

    /// One full refresh: the customer's whole feed from the start, checked against the
    /// mirror, new records added.
    pub async fn refresh(&self) -> Result<usize, UpstreamError> {
        self.fetch_from(1).await
    }

    /// The center's key: the pinned one, else the one `GET /v1/keys` gives now, pinned.
    async fn center_key(&self) -> Result<trust::CenterKey, UpstreamError> {
        if let Some(key) = self.center_key.read().clone() {
            return Ok(key);
        }
        let keys = self.upstream.keys().await?;
        let key = trust::CenterKey::from_hex(&keys.public_key).map_err(UpstreamError::Malformed)?;
        if key.key_id() != keys.key_id {
            return Err(UpstreamError::Malformed(format!(
                "the center's key id {} is not its public key's ({})",
                keys.key_id,
                key.key_id()
            )));
        }
        key.pin(&self.config.data_dir)
            .map_err(|e| UpstreamError::Malformed(format!("pinning the center's key: {e}")))?;
        tracing::info!(
            key_id = key.key_id(),
            "pinned the center's key at first contact"
        );
        *self.center_key.write() = Some(key.clone());
        Ok(key)
    }

    /// Reads the customer's feed from `from` to the center's head, page by page; each page is
    /// mirrored only when every record in it comes with the center's signed head at its
    /// position under the pinned key ([`trust`]). A page that does not verify stops the
    /// pass before it is mirrored ([`UpstreamError::Unverified`]). Returns the records added.
    async fn fetch_from(&self, mut from: Position) -> Result<usize, UpstreamError> {
        let mut added = 0;
        loop {
            let page = self.upstream.feed(from, REFRESH_PAGE).await?;
            let key = self.center_key().await?;
            if let Err(problem) = key.verify_page(&page.records, &page.signatures, &page.key_id) {
                let e = UpstreamError::Unverified(problem);
                self.mirroring_stopped(&e);
                return Err(e);
            }
            if self.status.lock().mirror_error.take().is_some() {
                tracing::info!("the center's records verify again: mirroring resumed");
            }
            added += self
                .ingest(&page.records)
                .map_err(|e| UpstreamError::Malformed(e.to_string()))?;
            if page.next > page.head_position || page.next <= from {
                return Ok(added);
            }
            from = page.next;
        }
    }

    /// Records an error that stops mirroring: logged once per distinct text, shown in the
    /// status's `mirror_error` until a page verifies again.
    fn mirroring_stopped(&self, e: &UpstreamError) {
        let text = e.to_string();
        let mut s = self.status.lock();
        if s.mirror_error.as_deref() != Some(text.as_str()) {
            tracing::error!("{text}");
            s.mirror_error = Some(text);
        }
    }

    /// Fetches (signed, from the feed) what the stream announced.
    async fn pull_loop(self: Arc<Self>) {
        loop {
            self.pull_now.notified().await;
            let from = self.mirror.lock().head_position() + 1;
            match self.fetch_from(from).await {
                // Logged and shown by `fetch_from`.
                Ok(_) | Err(UpstreamError::Unverified(_)) => {}
                Err(e) => tracing::warn!(error = %e, "could not fetch the center's new records"),
            }
        }
    }

    async fn refresh_loop(self: Arc<Self>) {
        loop {
            let due = self.status.lock().next_refresh;
            if self.clock.now() >= due {
                self.scheduled_refresh().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(StdDuration::from_millis(250)) => {}
                _ = self.refresh_now.notified() => {
                    self.status.lock().next_refresh = self.clock.now();
                }
            }
        }
    }

    async fn scheduled_refresh(&self) {
        let started = self.clock.now();
        self.oplog.line(started, texts::LOG_REQUEST_SENT);
        let result = self.refresh().await;
        self.log_refresh(&result);
        match result {
            Ok(added) => {
                let now = self.clock.now();
                {
                    let mut s = self.status.lock();
                    s.link = LinkState::Up;
                    s.last_refresh = Some(now);
                    s.next_refresh = now + self.config.refresh_every;
                    s.last_error = None;
                }
                tracing::info!(added, "licenses refreshed from the center");
                if let Err(e) = self.ensure_certificate(now).await {
                    tracing::warn!(error = %e, "could not renew the relay's key certificate");
                }
                if self.open_contingency_since().is_some() {
                    self.set_contingency(false).await;
                }
                self.forward_now.notify_one();
            }
            Err(e) => {
                let unreachable = e.is_unreachable();
                let text = match &e {
                    UpstreamError::Refused { message, .. } => message.clone(),
                    UpstreamError::Unverified(_) => e.to_string(),
                    _ => texts::REFRESH_FAILED.to_owned(),
                };
                tracing::warn!(error = %e, "{}", texts::REFRESH_FAILED);
                {
                    let mut s = self.status.lock();
                    s.link = LinkState::after(&e);
                    s.next_refresh = started + self.config.retry_every;
                    s.last_error = Some(text);
                }
                if unreachable && self.open_contingency_since().is_none() {
                    self.set_contingency(true).await;
                }
            }
        }
    }

    /// The manual's lines for a refresh: each license received, `Processo finalizado...`; or
    /// the refusal (`ERRO(#01): [401] - Usuário inválido.`, `[UPDATEALLLICENCES]ERRO(#01):
    /// [401]Assinatura do token inválida`) or the failure; then `Aguardando novas
    /// requisições...`.
    fn log_refresh(&self, result: &Result<usize, UpstreamError>) {
        let now = self.clock.now();
        match result {
            Ok(_) => {
                let view = self.view();
                let name = view
                    .customer(&self.config.cnpj)
                    .map(|c| c.trade_name.as_str().to_owned())
                    .unwrap_or_default();
                let mut licenses: Vec<_> = ledger_events::Product::ALL
                    .into_iter()
                    .flat_map(|p| view.licenses_of(&self.config.cnpj, p))
                    .collect();
                licenses.sort_by_key(|l| l.license_id);
                let mirror = self.mirror.lock();
                let records = mirror.records();
                for l in &licenses {
                    // The hash of the license's latest record: what the center signed for it.
                    let signature = records
                        .binary_search_by_key(&l.updated_position, |r| r.envelope.position)
                        .ok()
                        .map(|i| records[i].envelope.hash.to_string().to_uppercase())
                        .unwrap_or_else(|| texts::NOT_INFORMED.to_owned());
                    let serial = l.binding.map(|b| b.hardware_key.to_string());
                    self.oplog.line(
                        now,
                        &texts::log_license(
                            &l.license_id.to_string(),
                            &name,
                            serial.as_deref(),
                            l.ip(),
                            &signature,
                        ),
                    );
                }
                drop(mirror);
                self.oplog.line(now, texts::LOG_PROCESS_FINISHED);
            }
            Err(UpstreamError::Refused {
                status: 401,
                message,
            }) => {
                let line = if message == texts::CUSTOMER_INACTIVE {
                    texts::log_refused_user(message)
                } else {
                    texts::log_refused_update(message)
                };
                self.oplog.line(now, &line);
            }
            Err(_) => self.oplog.line(now, texts::REFRESH_FAILED),
        }
        self.oplog.line(now, texts::LOG_WAITING);
    }

    /// Enters or clears the relay's IntelliWeb contingency (an outbox event, forwarded).
    async fn set_contingency(&self, open: bool) {
        let _turn = self.decide.lock().await;
        let now = self.clock.now();
        let cnpj = self.config.cnpj;
        let event: Event = if open {
            ContingencyEntered {
                cnpj,
                kind: ContingencyKind::Intelliweb,
                hardware_id: None,
                license_id: None,
                grace_until: None,
                note: Note::parse(texts::REFRESH_FAILED).ok(),
            }
            .into()
        } else {
            ContingencyCleared {
                cnpj,
                kind: ContingencyKind::Intelliweb,
                hardware_id: None,
                note: None,
            }
            .into()
        };
        let actor = match Actor::system("relay") {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "no actor for the relay");
                return;
            }
        };
        match self.record_local(&event, None, &actor, Uuid::now_v7(), now) {
            Ok(()) => {
                self.status.lock().contingency_since = open.then_some(now);
                if open {
                    tracing::warn!("{}", texts::CONTINGENCY_UPSTREAM);
                } else {
                    tracing::info!("IntelliWeb contingency cleared: the center is reachable again");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not record the contingency change"),
        }
    }

    async fn follow_loop(self: Arc<Self>) {
        let mut backoff = StdDuration::from_millis(200);
        loop {
            let from = self.mirror.lock().head_position() + 1;
            let this = self.clone();
            // The stream's records are not signed: they only say that there is something new,
            // which is then read, signed, from the feed (`pull_loop`).
            let result = self
                .upstream
                .follow(from, move |_records| {
                    {
                        let mut s = this.status.lock();
                        if s.link != LinkState::Up {
                            s.link = LinkState::Up;
                        }
                    }
                    this.pull_now.notify_one();
                    true
                })
                .await;
            match result {
                Ok(()) => backoff = StdDuration::from_millis(200),
                Err(e) => {
                    let unreachable = e.is_unreachable();
                    {
                        let mut s = self.status.lock();
                        s.link = LinkState::after(&e);
                        if let UpstreamError::Refused { message, .. } = &e {
                            s.last_error = Some(message.clone());
                        }
                    }
                    if !unreachable {
                        tracing::warn!(error = %e, "the center refused the relay's stream");
                    }
                    backoff = (backoff * 2).min(StdDuration::from_secs(5));
                }
            }
            tokio::time::sleep(backoff).await;
            // Back after an outage in contingency: refresh now rather than in an hour.
            if self.status.lock().contingency_since.is_some() {
                self.refresh_now.notify_one();
            }
        }
    }

    async fn forward_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.forward_now.notified() => {}
                _ = tokio::time::sleep(StdDuration::from_secs(2)) => {}
            }
            match self.forward_pending().await {
                // The center's write quota: the events stay in the outbox, in order, and are
                // forwarded again once the center's `Retry-After` has passed (not before,
                // however many new events ask for a forward meanwhile).
                Err(UpstreamError::Throttled { retry_after_s, .. }) => {
                    let wait = retry_after_s.clamp(1, upstream::FORWARD_THROTTLED_MAX_S);
                    tracing::warn!(
                        wait_s = wait,
                        "the center's write quota for this relay is used up; forwarding again after the wait"
                    );
                    tokio::time::sleep(StdDuration::from_secs(wait)).await;
                }
                // An event too large to forward was reported once, in the status too.
                Err(e) if !e.is_unreachable() && !matches!(e, UpstreamError::TooLarge { .. }) => {
                    tracing::warn!(error = %e, "forwarding the outbox failed");
                }
                Err(_) | Ok(_) => {}
            }
        }
    }

    /// Forwards every pending outbox event, in order, in requests under the center's body
    /// limit ([`batch`]), and records the center's decisions after each request. Returns how
    /// many were decided. An event too large to forward alone stops the pass before it and is
    /// shown in the status's `last_error`.
    pub async fn forward_pending(&self) -> Result<usize, UpstreamError> {
        let pending = self.outbox.lock().pending();
        if pending.is_empty() {
            return Ok(0);
        }
        let mut rejected = false;
        let upstream = &self.upstream;
        let result = batch::forward_in_batches(
            self.config.cnpj,
            &pending,
            batch::FORWARD_BODY_BYTES,
            FORWARD_BATCH,
            |events| upstream.forward(events),
            |results| {
                let now = self.clock.now();
                let mut resolved = Vec::with_capacity(results.len());
                for (event_id, resolution) in results {
                    if let Resolution::Rejected { reason } = &resolution {
                        tracing::warn!(%event_id, %reason, "the center rejected an event of the relay; its state wins");
                        rejected = true;
                    }
                    resolved.push(Resolved {
                        event_id,
                        resolution,
                        at: now,
                    });
                }
                // One write and one sync of the file and of the durable head per request.
                self.outbox.lock().resolve_all(resolved).map_err(|e| {
                    tracing::error!(error = %e, "could not record the resolutions");
                    UpstreamError::Malformed(e.to_string())
                })
            },
        )
        .await;
        if rejected {
            let _turn = self.decide.lock().await;
            self.rebuild();
        }
        let stats = match result {
            Ok(stats) => stats,
            Err((e, stats)) => {
                if let UpstreamError::TooLarge { .. } = &e {
                    let text = e.to_string();
                    let mut s = self.status.lock();
                    if s.last_error.as_deref() != Some(text.as_str()) {
                        tracing::error!(decided = stats.decided, "{text}");
                        s.last_error = Some(text);
                    }
                }
                return Err(e);
            }
        };
        if stats.requests > 1 || stats.too_large > 0 {
            tracing::info!(
                decided = stats.decided,
                requests = stats.requests,
                refused_as_too_large = stats.too_large,
                largest_body = stats.largest_body,
                "outbox forwarded"
            );
        }
        Ok(stats.decided)
    }

    async fn ensure_certificate(&self, now: DateTime<Utc>) -> Result<(), RelayError> {
        let fresh = self.certificate.read().as_ref().is_some_and(|c| {
            c.certificate.valid_until - now > Duration::days(CERTIFICATE_RENEW_DAYS)
        });
        if fresh {
            return Ok(());
        }
        let public = hex::encode(self.signer.verifying_key().as_bytes());
        let certified = self.upstream.certify(&public).await?;
        let central = hex::decode(&certified.central_public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ledger_events::answer::VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| RelayError::Corrupt("the center's public key is malformed".into()))?;
        let certified_key = certified
            .certificate
            .verify(&central)
            .map_err(|e| RelayError::Corrupt(format!("the center's certificate: {e}")))?;
        // Terminals check the certificate's CNPJ against their own and its key against the
        // answer's: a certificate for another customer or key would only get them refused.
        if certified.certificate.cnpj != self.config.cnpj
            || certified_key != self.signer.verifying_key()
        {
            return Err(RelayError::Corrupt(format!(
                "the center certified key {} for {}, not this relay's key {} for {}",
                certified.certificate.relay_key_id,
                certified.certificate.cnpj,
                self.signer.key_id(),
                self.config.cnpj
            )));
        }
        let pinned = self.center_key.read().clone();
        if let Some(pinned) = pinned {
            if pinned.key() != &central {
                return Err(RelayError::Corrupt(format!(
                    "the center certified the relay with key {}, not the key pinned at first \
                     contact ({}, {}); if the center's key was replaced on purpose, remove that \
                     file and restart the relay",
                    ledger_events::answer::key_id_for(&central),
                    pinned.key_id(),
                    trust::CENTER_KEY_FILE
                )));
            }
        }
        save_certificate(&self.config.data_dir, &certified)?;
        tracing::info!(until = %certified.certificate.valid_until, "the center certified the relay's key");
        *self.certificate.write() = Some(certified);
        Ok(())
    }
}

/// Applies an outbox event to a view with a made-up envelope (the center gives it its real
/// position when it is stored).
fn apply_local(view: &LedgerView, fwd: &ForwardedEvent, event: &Event) {
    let stream_version = match event {
        Event::License(l) => view
            .license(l.license_id())
            .map_or(1, |row| row.version + 1),
        _ => 0,
    };
    let envelope = Envelope {
        position: view.position() + 1,
        stream_id: event.stream_id(),
        stream_version,
        event_id: fwd.event_id,
        event_type: fwd.event_type.clone(),
        schema_version: event.schema_version(),
        recorded_at: fwd.recorded_at,
        actor: fwd.actor.clone(),
        correlation_id: fwd.correlation_id,
        prev_hash: Hash::ZERO,
        hash: Hash::ZERO,
    };
    if let Err(e) = view.apply_unordered(&envelope, event) {
        tracing::warn!(error = %e, "an outbox event could not be applied in full");
    }
}

fn load_certificate(dir: &std::path::Path) -> Option<Certified> {
    let text = std::fs::read_to_string(dir.join(CERTIFICATE_FILE)).ok()?;
    match serde_json::from_str::<CertifiedFile>(&text) {
        Ok(f) => Some(Certified {
            certificate: f.certificate,
            central_key_id: f.central_key_id,
            central_public_key: f.central_public_key,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable relay certificate file");
            None
        }
    }
}

#[derive(Serialize, serde::Deserialize)]
struct CertifiedFile {
    certificate: RelayCertificate,
    central_key_id: String,
    central_public_key: String,
}

fn save_certificate(dir: &std::path::Path, c: &Certified) -> Result<(), RelayError> {
    let text = serde_json::to_string_pretty(&CertifiedFile {
        certificate: c.certificate.clone(),
        central_key_id: c.central_key_id.clone(),
        central_public_key: c.central_public_key.clone(),
    })
    .map_err(|e| RelayError::Corrupt(e.to_string()))?;
    let tmp = dir.join(format!("{CERTIFICATE_FILE}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, dir.join(CERTIFICATE_FILE)))
        .map_err(|source| RelayError::Io {
            context: format!("saving {}", dir.join(CERTIFICATE_FILE).display()),
            source,
        })
}
