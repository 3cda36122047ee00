//! The JSON routes the support and audit console needs beyond the rest of `/v1`: who the
//! caller is, the customers with their contracts, the license table sorted and shaped for
//! display (also as of a past moment), the log feed filtered like the manual's
//! "Monitoramento de Logs", the dashboard's aggregates, and a verification of the hash chain
//! that reports its progress. All of them are queries for readers (support, auditor, admin),
//! through the same [`As`] extractor and [`ApiError`] as every other route.
//!
//! Everything is computed from the [`LedgerView`](ledger_projections::LedgerView) and from the
//! log as the [`Ledger`](crate::app::Ledger) serves it (`record_at`, `head`, and the log
//! index behind `search` and `count`); nothing here touches the store, and nothing reads
//! more of the log than the records it answers with.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Days, Duration, DurationRound, NaiveDate, Utc};
use ledger_events::{
    ChainVerifier, Cnpj, EventPayload, Position, Product, Record, TerminalCheckedIn, EVENT_TYPES,
};
use ledger_projections::asof::AsOf;
use ledger_projections::view::{LedgerView, LicenseQuery, LicenseStatus, Page, PAGE_LIMIT_MAX};
use ledger_projections::{ContractRow, CustomerRow, LicenseRow};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Admins, Admits, As, Operators, Readers};
use super::error::ApiError;
use super::extract::Query;
use super::routes::{read_your_writes, LicenseListQuery};
use super::AppState;
use crate::app::Ledger;
use crate::config::Role;
use crate::derived::index::Filter;
use crate::domain::checkin::WARNING_DAYS;

/// Most matching records one `GET /v1/events/search` returns.
pub const EVENTS_SEARCH_LIMIT_MAX: usize = 500;
/// Page size of `GET /v1/events/search` when none is asked.
const EVENTS_SEARCH_LIMIT_DEFAULT: usize = 50;
/// Records read per batch by the chain verification.
const VERIFY_BATCH: usize = 1000;
/// Most days ahead the dashboard's expiry chart covers.
pub const DASHBOARD_DAYS_MAX: u32 = 90;
/// Days ahead the expiry chart covers when none is asked.
const DASHBOARD_DAYS_DEFAULT: u32 = 30;
/// Chain verifications running at once in this process; more answer 503.
pub const VERIFICATIONS_RUNNING_MAX: usize = 2;
/// Progress lines buffered per verification between its task and the client.
const VERIFY_CHANNEL_MESSAGES: usize = 16;
/// Stream categories of the log (`license` in `license-002438`), for the feed's filter.
pub const CATEGORIES: &[&str] = &[
    "customer",
    "contract",
    "license",
    "terminal",
    "contingency",
    "offline",
    "emergency",
];

/// The stream category an event type is recorded in (each type has exactly one).
fn stream_category(event_type: &str) -> Option<&'static str> {
    const PREFIXES: &[(&str, &str)] = &[
        ("Customer", "customer"),
        ("Contract", "contract"),
        ("License", "license"),
        ("Terminal", "terminal"),
        ("Contingency", "contingency"),
        ("OfflineActivation", "offline"),
        ("EmergencyRelease", "emergency"),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| event_type.starts_with(prefix))
        .map(|(_, category)| *category)
}

type State = web::Data<AppState>;
type Answer = Result<HttpResponse, ApiError>;

/// Mounts the console's routes inside the `/v1` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/session", web::get().to(session))
        .route("/customers", web::get().to(customers))
        .route("/license-table", web::get().to(license_table))
        .route("/events/search", web::get().to(search_events))
        .route("/dashboard", web::get().to(dashboard))
        .route("/audit/verify", web::get().to(verify));
}

fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if limit > max {
        return Err(ApiError::field("limit", format!("at most {max}")));
    }
    Ok(limit)
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::Internal
}

// ---- session ----

/// A product and its name as people write it.
#[derive(Serialize, ToSchema)]
pub struct ProductName {
    product: Product,
    /// E.g. `NF-e Nota Fiscal`.
    name: &'static str,
}

/// Who is signed in, what the console may offer, and the vocabularies of its filters.
#[derive(Serialize, ToSchema)]
pub struct Session {
    /// The token's name.
    name: String,
    role: Role,
    /// May run commands (support, admin).
    may_act: bool,
    /// May do what only admins may (emergency release, tokens).
    may_admin: bool,
    products: Vec<ProductName>,
    /// Event types of the catalogue.
    event_types: Vec<&'static str>,
    /// Stream categories of the log.
    categories: &'static [&'static str],
    /// The IANA time zone the server counts days in (configuration `time_zone`); the console
    /// shows times on that clock.
    #[schema(example = "America/Sao_Paulo")]
    time_zone: String,
}

/// The caller's name and role, what the console may offer it, and the vocabularies its
/// filters list. A terminal token is refused (403) like on every reader route: it cannot
/// sign in.
#[utoipa::path(get, path = "/v1/session", tag = "console",
    responses((status = 200, body = Session)))]
async fn session(state: State, caller: As<Readers>) -> Answer {
    let products = Product::ALL
        .iter()
        .map(|&product| ProductName {
            product,
            name: product.display_name(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(Session {
        may_act: Operators::ROLES.contains(&caller.role),
        may_admin: Admins::ROLES.contains(&caller.role),
        name: caller.name.clone(),
        role: caller.role,
        products,
        event_types: EVENT_TYPES.iter().map(|(name, _)| *name).collect(),
        categories: CATEGORIES,
        time_zone: state.ledger.calendar().to_string(),
    }))
}

// ---- customers ----

/// How many licenses are in each state.
#[derive(Serialize, ToSchema)]
pub struct LicenseCounts {
    total: usize,
    active: usize,
    blocked: usize,
    deactivated: usize,
    expired: usize,
    free: usize,
    bound: usize,
}

fn license_counts(view: &LedgerView, cnpj: Option<Cnpj>, day: NaiveDate) -> LicenseCounts {
    let count = |status| {
        view.list_licenses(&LicenseQuery {
            cnpj,
            status,
            today: Some(day),
            limit: 0,
            ..LicenseQuery::default()
        })
        .total
    };
    LicenseCounts {
        total: count(None),
        active: count(Some(LicenseStatus::Active)),
        blocked: count(Some(LicenseStatus::Blocked)),
        deactivated: count(Some(LicenseStatus::Deactivated)),
        expired: count(Some(LicenseStatus::Expired)),
        free: count(Some(LicenseStatus::Free)),
        bound: count(Some(LicenseStatus::Bound)),
    }
}

/// A customer with its contracts and license counts.
#[derive(Serialize, ToSchema)]
pub struct CustomerSummary {
    #[serde(flatten)]
    customer: CustomerRow,
    contracts: Vec<ContractRow>,
    licenses: LicenseCounts,
}

/// Every contract, in id order (ids are dense from 1).
/// Which customers.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CustomersQuery {
    /// Wait until the read model has applied this position (a command's answer).
    min_position: Option<Position>,
    /// Matches the CNPJ or the trade name, ignoring case.
    text: Option<String>,
    /// Rows to skip.
    offset: Option<usize>,
    /// Rows to return (default 50, at most 500).
    #[param(maximum = 500)]
    limit: Option<usize>,
}

/// Customers sorted by CNPJ with their contracts and license counts.
#[utoipa::path(get, path = "/v1/customers", tag = "console", params(CustomersQuery),
    responses((status = 200, body = Page<CustomerSummary>)))]
async fn customers(state: State, _caller: As<Readers>, Query(q): Query<CustomersQuery>) -> Answer {
    read_your_writes(&state, q.min_position).await?;
    let offset: usize = q.offset.unwrap_or(0);
    let limit = page_limit(q.limit, 50, PAGE_LIMIT_MAX)?;
    let text = q.text.map(|t| t.trim().to_lowercase());
    let view = state.ledger.view();
    let day = state.ledger.today();
    let matching: Vec<CustomerRow> = view
        .customers()
        .into_iter()
        .filter(|c| {
            text.as_deref().is_none_or(|t| {
                c.cnpj.as_str().to_lowercase().contains(t)
                    || c.trade_name.as_str().to_lowercase().contains(t)
            })
        })
        .collect();
    let total = matching.len();
    let mut contracts = view.contracts();
    let items: Vec<CustomerSummary> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|customer| {
            let (theirs, rest) = contracts
                .drain(..)
                .partition(|c: &ContractRow| c.cnpj == customer.cnpj);
            contracts = rest;
            CustomerSummary {
                licenses: license_counts(view, Some(customer.cnpj), day),
                contracts: theirs,
                customer,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(Page {
        items,
        total,
        offset,
        limit,
    }))
}

// ---- the license table ----

/// A row of the console's license table: the license plus what its columns and marks need.
#[derive(Serialize, ToSchema)]
pub struct TableRow {
    #[serde(flatten)]
    license: LicenseRow,
    /// "Produto" as people write it (`NF-e Nota Fiscal`).
    product_name: &'static str,
    /// The customer's "Fantasia".
    trade_name: Option<String>,
    /// "Contrato": the license's contract is active; `None` without a contract.
    contract_active: Option<bool>,
    /// Days from the table's day to the expiry (negative once expired).
    days_left: i64,
    /// Expired on the table's day.
    expired: bool,
    /// Not expired, and within [`WARNING_DAYS`] of expiry (the terminals' warning).
    expiring: bool,
}

fn table_row(view: &LedgerView, license: LicenseRow, day: NaiveDate) -> TableRow {
    let days_left = (license.expires_on - day).num_days();
    TableRow {
        product_name: license.product.display_name(),
        trade_name: view
            .customer(&license.cnpj)
            .map(|c| c.trade_name.as_str().to_owned()),
        contract_active: license
            .contract_id
            .map(|id| view.contract(id).is_some_and(|c| c.active)),
        days_left,
        expired: days_left < 0,
        expiring: (0..=WARNING_DAYS).contains(&days_left),
        license,
    }
}

/// One page of the license table.
#[derive(Serialize, ToSchema)]
pub struct LicenseTable {
    items: Vec<TableRow>,
    /// Rows matching, over all pages.
    total: usize,
    offset: usize,
    limit: usize,
    /// The table's day.
    today: NaiveDate,
    /// The moment asked for, if any.
    as_of: Option<DateTime<Utc>>,
    /// The log position the table reflects.
    position: Position,
}

/// One page of the license table sorted over all matching rows, each row with its
/// product's name, the customer's trade name, whether its contract is active and its expiry
/// marks.
#[utoipa::path(get, path = "/v1/license-table", tag = "console", params(LicenseListQuery),
    responses((status = 200, body = LicenseTable)))]
async fn license_table(
    state: State,
    _caller: As<Readers>,
    Query(q): Query<LicenseListQuery>,
) -> Answer {
    read_your_writes(&state, q.min_position).await?;
    let (sort, descending) = q.sort();
    let as_of = q.as_of;
    let table = move |view: &LedgerView, day: NaiveDate| -> Result<_, ApiError> {
        let page = view.list_licenses_sorted(&q.to_query(None, day)?, sort, descending);
        let items: Vec<TableRow> = page
            .items
            .into_iter()
            .map(|l| table_row(view, l, day))
            .collect();
        Ok((
            items,
            page.total,
            page.offset,
            page.limit,
            view.position(),
            day,
        ))
    };
    let (items, total, offset, limit, position, day) = match as_of {
        None => {
            let view = state.ledger.view();
            let (mut items, total, offset, limit, position, day) =
                table(view, state.ledger.today())?;
            for row in &mut items {
                state.ledger.fill_last_communication(&mut row.license);
            }
            (items, total, offset, limit, position, day)
        }
        Some(t) => {
            let day = state.ledger.calendar().day(t);
            let read = move |view: &std::sync::Arc<LedgerView>| table(view, day);
            state.ledger.read_as_of(AsOf::Time(t), read).await??
        }
    };
    Ok(HttpResponse::Ok().json(LicenseTable {
        items,
        total,
        offset,
        limit,
        today: day,
        as_of,
        position,
    }))
}

// ---- the log feed ----

/// One line of the feed.
#[derive(Serialize, ToSchema)]
pub struct FeedItem {
    position: Position,
    recorded_at: DateTime<Utc>,
    event_type: String,
    category: String,
    stream_id: String,
    actor: ledger_events::Actor,
    cnpj: Option<Cnpj>,
    description: String,
    hash: ledger_events::Hash,
}

struct FeedFilter {
    event_type: Option<String>,
    category: Option<String>,
    cnpj: Option<Cnpj>,
}

impl FeedFilter {
    /// The item for `record` if it passes (`None` if not).
    fn item(&self, view: &LedgerView, record: &Record) -> Result<Option<FeedItem>, ApiError> {
        let e = &record.envelope;
        if self.event_type.as_ref().is_some_and(|t| *t != e.event_type)
            || self
                .category
                .as_ref()
                .is_some_and(|c| c != e.stream_id.category())
        {
            return Ok(None);
        }
        let event = record
            .event()
            .map_err(|err| internal("a stored record does not decode", err))?;
        let cnpj = view.customer_of(&event);
        if self.cnpj.is_some_and(|want| cnpj != Some(want)) {
            return Ok(None);
        }
        Ok(Some(FeedItem {
            position: e.position,
            recorded_at: e.recorded_at,
            event_type: e.event_type.clone(),
            category: e.stream_id.category().to_owned(),
            stream_id: e.stream_id.as_str().to_owned(),
            actor: e.actor.clone(),
            cnpj,
            description: ledger_projections::describe(e, &event),
            hash: e.hash,
        }))
    }
}

/// Filters of the log search.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// An event type of the catalogue (see `GET /v1/session`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// A stream category (see `GET /v1/session`).
    category: Option<String>,
    /// Events about this customer.
    #[param(value_type = Option<Cnpj>)]
    cnpj: Option<Cnpj>,
    /// Lowest position.
    from_position: Option<Position>,
    /// Highest position.
    to_position: Option<Position>,
    /// Only positions below this one: the previous answer's `next_before`.
    before: Option<Position>,
    /// Recorded at or after (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Recorded at or before (RFC 3339).
    until: Option<DateTime<Utc>>,
    /// Entries to return (default 50, at most 500).
    #[param(maximum = 500)]
    limit: Option<usize>,
}

/// A page of the log search, newest first.
#[derive(Serialize, ToSchema)]
pub struct SearchPage {
    items: Vec<FeedItem>,
    /// The `before` of the next page; null when the range is exhausted.
    next_before: Option<Position>,
    /// Index entries examined.
    scanned: usize,
    /// The log's head.
    head_position: Position,
}

/// The log newest first, filtered by position range, event type, stream category, customer
/// and time range (both ends included), from the log index: complete whatever the log's
/// length; `next_before` (when not null) is the `before` of the next page.
#[utoipa::path(get, path = "/v1/events/search", tag = "console", params(SearchQuery),
    responses((status = 200, body = SearchPage)))]
async fn search_events(state: State, _caller: As<Readers>, Query(q): Query<SearchQuery>) -> Answer {
    let limit = page_limit(
        q.limit,
        EVENTS_SEARCH_LIMIT_DEFAULT,
        EVENTS_SEARCH_LIMIT_MAX,
    )?;
    let event_type = q.event_type;
    if let Some(t) = &event_type {
        if !EVENT_TYPES.iter().any(|(name, _)| name == t) {
            return Err(ApiError::field(
                "type",
                "not an event type of the catalogue",
            ));
        }
    }
    let category = q.category;
    if let Some(c) = &category {
        if !CATEGORIES.contains(&c.as_str()) {
            return Err(ApiError::field(
                "category",
                format!("expected one of {}", CATEGORIES.join(", ")),
            ));
        }
    }
    // The index answers by event type; a category is the set of its types.
    let event_types: Option<Vec<String>> = match (&event_type, &category) {
        (Some(t), Some(c)) if stream_category(t) != Some(c.as_str()) => Some(Vec::new()),
        (Some(t), _) => Some(vec![t.clone()]),
        (None, Some(c)) => Some(
            EVENT_TYPES
                .iter()
                .filter(|(name, _)| stream_category(name) == Some(c.as_str()))
                .map(|(name, _)| (*name).to_owned())
                .collect(),
        ),
        (None, None) => None,
    };
    let filter = FeedFilter {
        event_type,
        category,
        cnpj: q.cnpj,
    };
    let ledger = &state.ledger;
    let head = ledger.head().await?.position;
    let mut lo: Position = q.from_position.unwrap_or(1).max(1);
    let mut hi: Position = q.to_position.unwrap_or(head);
    hi = hi.min(head);
    if let Some(before) = q.before {
        hi = hi.min(before.saturating_sub(1));
    }
    if let Some(since) = q.since {
        lo = lo.max(ledger.first_recorded_after(since, true, head).await?);
    }
    if let Some(until) = q.until {
        hi = hi.min(ledger.first_recorded_after(until, false, head).await? - 1);
    }
    let found = ledger.search(
        &Filter {
            event_types,
            customer: filter.cnpj,
        },
        lo,
        hi,
        limit,
    )?;
    let view = ledger.view();
    let mut items = Vec::with_capacity(found.positions.len());
    // Newest first, as the index listed them.
    for record in ledger.indexed_records(&found.positions).await?.iter().rev() {
        match filter.item(view, record)? {
            Some(item) => items.push(item),
            None => {
                // The index and the record disagree: the index is derived, the log wins.
                tracing::warn!(
                    position = record.envelope.position,
                    "the log index listed a record its filter does not match"
                );
            }
        }
    }
    Ok(HttpResponse::Ok().json(SearchPage {
        items,
        next_before: found.next_before,
        scanned: found.examined,
        head_position: head,
    }))
}

// ---- the dashboard ----

/// How far the dashboard looks ahead.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DashboardQuery {
    /// Wait until the read model has applied this position (a command's answer).
    min_position: Option<Position>,
    /// Days of expiries to count (default 30, at most 90).
    #[param(maximum = 90)]
    days: Option<u32>,
}

/// Licenses expiring on one day.
#[derive(Serialize, ToSchema)]
pub struct DayCount {
    day: NaiveDate,
    count: usize,
}

/// Check-ins recorded in one hour.
#[derive(Serialize, ToSchema)]
pub struct HourCount {
    /// The hour's start.
    hour: DateTime<Utc>,
    count: u64,
}

/// Check-ins per hour over the last 24 hours.
#[derive(Serialize, ToSchema)]
pub struct CheckInHours {
    /// The first hour's start.
    from: DateTime<Utc>,
    /// 24 hours, oldest first.
    hours: Vec<HourCount>,
    /// Check-ins counted.
    scanned: usize,
    /// Always false: the counts come from the log index, complete whatever the log's
    /// length (kept for clients of earlier versions).
    truncated: bool,
}

/// The dashboard's figures.
#[derive(Serialize, ToSchema)]
pub struct Dashboard {
    today: NaiveDate,
    licenses: LicenseCounts,
    /// Expiries per day, from today.
    expiring: Vec<DayCount>,
    check_ins: CheckInHours,
}

/// Licenses by state, how many expire on each of the next `days` days, and the check-ins
/// recorded in each of the last 24 hours (a check-in is recorded when something changed or
/// a day passed).
#[utoipa::path(get, path = "/v1/dashboard", tag = "console", params(DashboardQuery),
    responses((status = 200, body = Dashboard)))]
async fn dashboard(state: State, _caller: As<Readers>, Query(q): Query<DashboardQuery>) -> Answer {
    read_your_writes(&state, q.min_position).await?;
    let days: u32 = q.days.unwrap_or(DASHBOARD_DAYS_DEFAULT);
    if days > DASHBOARD_DAYS_MAX {
        return Err(ApiError::field(
            "days",
            format!("at most {DASHBOARD_DAYS_MAX}"),
        ));
    }
    let ledger = &state.ledger;
    let now = ledger.clock().now();
    let day = ledger.calendar().day(now);
    let view = ledger.view();
    let licenses = license_counts(view, None, day);
    let expiring: Vec<DayCount> = (0..=days)
        .filter_map(|d| day.checked_add_days(Days::new(u64::from(d))))
        .map(|on| {
            let count = view
                .list_licenses(&LicenseQuery {
                    today: Some(on),
                    expiring_within_days: Some(0),
                    limit: 0,
                    ..LicenseQuery::default()
                })
                .total;
            DayCount { day: on, count }
        })
        .collect();

    // Check-ins per hour: 24 buckets ending with the current hour.
    let this_hour = now
        .duration_trunc(Duration::hours(1))
        .map_err(|e| internal("truncating the time to the hour", e))?;
    let from = this_hour - Duration::hours(23);
    let mut hours = [0u64; 24];
    let head = ledger.head().await?.position;
    let mut start = ledger.first_recorded_after(from, true, head).await?;
    for (i, slot) in hours.iter_mut().enumerate() {
        let end = ledger
            .first_recorded_after(from + Duration::hours(i as i64 + 1), true, head)
            .await?;
        *slot = ledger.count(TerminalCheckedIn::TYPE, start, end.saturating_sub(1))?;
        start = end;
    }
    let scanned = hours.iter().sum::<u64>() as usize;
    let per_hour: Vec<HourCount> = hours
        .iter()
        .enumerate()
        .map(|(i, &count)| HourCount {
            hour: from + Duration::hours(i as i64),
            count,
        })
        .collect();
    Ok(HttpResponse::Ok().json(Dashboard {
        today: day,
        licenses,
        expiring,
        check_ins: CheckInHours {
            from,
            hours: per_hour,
            scanned,
            truncated: false,
        },
    }))
}

// ---- verify now ----

static VERIFICATIONS_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// A slot among [`VERIFICATIONS_RUNNING_MAX`]; freed when dropped.
struct VerificationSlot;

impl VerificationSlot {
    fn take() -> Option<Self> {
        VERIFICATIONS_RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < VERIFICATIONS_RUNNING_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| VerificationSlot)
    }
}

impl Drop for VerificationSlot {
    fn drop(&mut self) {
        VERIFICATIONS_RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body: the receiving end of the verification task's channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|m| m.map(Ok))
    }
}

fn line(value: &serde_json::Value) -> Bytes {
    let mut s = value.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Walks the log from position 1 to the head taken at the start: each record is encoded
/// again (its stored hash must be the SHA-256 of its bytes), pushed through the chain
/// verifier (dense positions, each `prev_hash` the previous hash) and its payload decoded.
/// Sends a progress line per batch and a last line with the verdict; stops when the client
/// goes away.
async fn run_verification(
    ledger: std::sync::Arc<Ledger>,
    tx: mpsc::Sender<Bytes>,
    _slot: VerificationSlot,
) {
    let fail = |checked: u64, position: Position, problem: String| {
        json!({"done": true, "ok": false, "checked": checked, "position": position,
               "problem": problem})
    };
    let head = match ledger.head().await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "verify: reading the head failed");
            let _ = tx
                .send(line(&fail(0, 0, "the log is unavailable".into())))
                .await;
            return;
        }
    };
    let mut verifier = ChainVerifier::new();
    let mut next: Position = 1;
    while next <= head.position {
        if tx.is_closed() {
            return;
        }
        let want = (head.position - next + 1).min(VERIFY_BATCH as u64) as usize;
        let batch = match ledger.read_log(next, want).await {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => {
                let msg = fail(
                    verifier.count(),
                    next,
                    "the log ends before its head".into(),
                );
                let _ = tx.send(line(&msg)).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, position = next, "verify: reading the log failed");
                let msg = fail(verifier.count(), next, format!("reading failed: {e}"));
                let _ = tx.send(line(&msg)).await;
                return;
            }
        };
        for record in batch
            .iter()
            .filter(|r| r.envelope.position <= head.position)
        {
            let position = record.envelope.position;
            let checked = record
                .encode()
                .map_err(|e| e.to_string())
                .and_then(|bytes| verifier.push_bytes(&bytes).map_err(|e| e.to_string()))
                .and_then(|()| record.event().map(|_| ()).map_err(|e| e.to_string()));
            if let Err(problem) = checked {
                tracing::warn!(position, %problem, "verify: the chain does not hold");
                let _ = tx
                    .send(line(&fail(verifier.count(), position, problem)))
                    .await;
                return;
            }
            next = position + 1;
        }
        let progress = json!({"done": false, "checked": verifier.count(),
                              "head_position": head.position});
        if tx.send(line(&progress)).await.is_err() {
            return;
        }
    }
    let reached = verifier.head();
    let verdict = if reached == head {
        json!({"done": true, "ok": true, "checked": verifier.count(),
               "head_position": head.position, "head_hash": head.hash.to_string()})
    } else {
        fail(
            verifier.count(),
            reached.position,
            format!(
                "the chain ends at {} {} but the head is {} {}",
                reached.position, reached.hash, head.position, head.hash
            ),
        )
    };
    let _ = tx.send(line(&verdict)).await;
}

/// Verifies the hash chain from position 1 to the current head and streams its progress as
/// JSON lines: `{"done": false, "checked", "head_position"}` per batch, then `{"done": true,
/// "ok": true, "checked", "head_position", "head_hash"}` or `{"done": true, "ok": false,
/// "checked", "position", "problem"}`. At most two run at once (503 beyond).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "Progress, then the verdict, one JSON object a line",
        content_type = "application/x-ndjson", body = String)))]
async fn verify(state: State, _caller: As<Readers>) -> Answer {
    let slot = VerificationSlot::take().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "{VERIFICATIONS_RUNNING_MAX} verifications are running; retry when one ends"
        ))
    })?;
    let (tx, rx) = mpsc::channel(VERIFY_CHANNEL_MESSAGES);
    tokio::spawn(run_verification(state.ledger.clone(), tx, slot));
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/x-ndjson"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(ChannelBody(rx)))
}
