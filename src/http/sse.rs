//! `GET /v1/events/stream`: the log as server-sent events, catch-up then live.
//!
//! A task per connection follows a [`LogFeed`](crate::app::LogFeed) and sends each record as
//! `id: <position>`, `event: record`, `data: <the record's JSON on one line>` through a
//! bounded channel ([`SSE_CHANNEL_MESSAGES`]) the response body reads from; a slow client
//! therefore holds at most that many messages plus the feed's one read batch. When idle for
//! [`KEEP_ALIVE`] the task sends a `: keep-alive` comment. The task ends, dropping the
//! subscription, as soon as the client goes away (the channel closes), the store closes, or
//! reading the log fails (logged; the stream then ends).
//!
//! A stream does not outlive what let it open: every [`TOKEN_RECHECK`] it checks that its
//! token still stands (and, for a relay, that its customer is still active) and ends with a
//! `: revoked` comment when not. Streams are capped per token ([`STREAMS_PER_TOKEN_MAX`])
//! and in all ([`STREAMS_MAX`]); one more is a 429.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use ledger_events::{Position, Record};
use tokio::sync::mpsc;

use super::auth::{As, Readers};
use super::error::ApiError;
use super::extract::Query;
use super::AppState;
use crate::app::{AppError, LogFeed};
use crate::store::StoreError;
use serde::Deserialize;
use utoipa::IntoParams;

/// Messages buffered per connection between the feed task and the client.
pub const SSE_CHANNEL_MESSAGES: usize = 64;
/// Idle time after which a `: keep-alive` comment is sent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often an open stream checks that its token (and a relay's customer) still stands.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(1);
/// Streams one token may hold open at once.
pub const STREAMS_PER_TOKEN_MAX: usize = 8;
/// Streams open at once in all.
pub const STREAMS_MAX: usize = 256;

/// The streams open now, by the name of the token holding each (names are unique).
#[derive(Debug, Default)]
pub struct OpenStreams {
    by_token: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
}

impl OpenStreams {
    /// A place for one more stream of `holder`, or a 429 when its share or the total is
    /// taken. The place is given back when the permit drops (the stream ended).
    pub fn open(self: &std::sync::Arc<Self>, holder: &str) -> Result<StreamPermit, ApiError> {
        let mut by_token = self.by_token.lock();
        let total: usize = by_token.values().sum();
        let mine = by_token.get(holder).copied().unwrap_or(0);
        if mine >= STREAMS_PER_TOKEN_MAX {
            return Err(ApiError::RateLimited(format!(
                "this token holds {mine} event streams already (at most \
                 {STREAMS_PER_TOKEN_MAX}); close one and retry"
            )));
        }
        if total >= STREAMS_MAX {
            return Err(ApiError::RateLimited(format!(
                "the server holds {total} event streams (at most {STREAMS_MAX}); retry later"
            )));
        }
        *by_token.entry(holder.to_owned()).or_insert(0) += 1;
        Ok(StreamPermit {
            streams: self.clone(),
            holder: holder.to_owned(),
        })
    }
}

/// One open stream's place in [`OpenStreams`].
#[derive(Debug)]
pub struct StreamPermit {
    streams: std::sync::Arc<OpenStreams>,
    holder: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut by_token = self.streams.by_token.lock();
        if let Some(n) = by_token.get_mut(&self.holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_token.remove(&self.holder);
            }
        }
    }
}

/// What keeps a stream open: its place, and the check that its caller still stands.
pub struct Standing {
    /// The stream's place among the open ones.
    pub permit: StreamPermit,
    /// Whether the token (and a relay's customer) still stands.
    pub stands: Box<dyn Fn() -> bool + Send + Sync>,
}

/// The body: the receiving end of the feed task's channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|m| m.map(Ok))
    }
}

/// One record as an SSE message.
fn message(record: &Record) -> Result<Bytes, String> {
    let json = record.to_json().map_err(|e| e.to_string())?;
    let data = serde_json::to_string(&json).map_err(|e| e.to_string())?;
    Ok(Bytes::from(format!(
        "id: {}\nevent: record\ndata: {data}\n\n",
        record.envelope.position
    )))
}

/// Where a stream starts.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamFrom {
    /// First position to send (default 1); a `Last-Event-ID` header, when a client resumes,
    /// wins.
    pub from: Option<Position>,
}

/// The first position to send: after `Last-Event-ID` when the client resumes, else `from`
/// (default 1).
pub fn start_position(req: &HttpRequest, from: Option<Position>) -> Result<Position, ApiError> {
    if let Some(v) = req.headers().get("Last-Event-ID") {
        let last: Position = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::field("Last-Event-ID", "expected a position"))?;
        return Ok(last.saturating_add(1));
    }
    Ok(from.unwrap_or(1).max(1))
}

/// Sends only one customer's records: a relay's feed.
pub struct CustomerFilter {
    /// The ledger, whose view knows which customer a license or contract event is of.
    pub ledger: std::sync::Arc<crate::app::Ledger>,
    /// The customer.
    pub cnpj: ledger_events::Cnpj,
}

impl CustomerFilter {
    /// Whether `record` concerns the customer (waiting, bounded, for the view to have applied
    /// it, so the license or contract it names is known).
    pub async fn admits(&self, record: &Record) -> Result<bool, AppError> {
        self.ledger.wait_for(record.envelope.position).await?;
        let event = record.event().map_err(StoreError::from)?;
        Ok(self.ledger.view().customer_of(&event) == Some(self.cnpj))
    }
}

async fn follow(
    mut feed: LogFeed,
    tx: mpsc::Sender<Bytes>,
    filter: Option<CustomerFilter>,
    standing: Standing,
) {
    let mut recheck = tokio::time::interval(TOKEN_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle = tokio::time::sleep(KEEP_ALIVE);
    tokio::pin!(idle);
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            _ = recheck.tick() => {
                if !(standing.stands)() {
                    tracing::info!(holder = %standing.permit.holder, "event stream closed: its token was revoked or its customer is inactive");
                    let _ = tx.send(Bytes::from_static(b": revoked\n\n")).await;
                    return;
                }
                continue;
            }
            next = feed.next() => next,
            () = &mut idle => {
                idle.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE);
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let record = match next {
            Ok(record) => record,
            Err(AppError::Store(StoreError::Closed)) => return,
            Err(e) => {
                tracing::error!(error = %e, cursor = feed.cursor(), "event stream stopped: reading the log failed");
                return;
            }
        };
        let wanted = match &filter {
            Some(f) => f.admits(&record).await,
            None => Ok(true),
        };
        let bytes = match wanted.map_err(|e| e.to_string()) {
            Ok(false) => continue,
            Ok(true) => message(&record),
            Err(e) => Err(e),
        };
        match bytes {
            Ok(b) => {
                if tx.send(b).await.is_err() {
                    return;
                }
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + KEEP_ALIVE);
            }
            Err(e) => {
                tracing::error!(error = %e, position = record.envelope.position, "event stream stopped: a record could not be sent");
                return;
            }
        }
    }
}

/// The log as server-sent events from a position: catch-up, then live (support, auditor,
/// admin). Each message is `id: position`, `event: record`, `data: ` the record's JSON.
#[utoipa::path(get, path = "/v1/events/stream", tag = "audit",
    params(StreamFrom, ("Last-Event-ID" = Option<Position>, Header,
        description = "The last position received, to resume after it")),
    responses((status = 200, description = "Server-sent events, one record each",
        content_type = "text/event-stream", body = String)))]
pub async fn events_stream(
    state: web::Data<AppState>,
    caller: As<Readers>,
    req: HttpRequest,
    Query(q): Query<StreamFrom>,
) -> Result<HttpResponse, ApiError> {
    let from = start_position(&req, q.from)?;
    let standing = standing(&state, &caller.0, &req, |_| true)?;
    Ok(stream_response(&state, from, None, standing))
}

/// A place for `caller`'s stream, and the check that its token — the same bytes, still in
/// the token table with the same role — and `also` (e.g. a relay's customer still active)
/// still stand.
pub fn standing(
    state: &web::Data<AppState>,
    caller: &super::auth::Caller,
    req: &HttpRequest,
    also: impl Fn(&AppState) -> bool + Send + Sync + 'static,
) -> Result<Standing, ApiError> {
    let token = super::auth::bearer_token(req)
        .ok_or(ApiError::Unauthenticated)?
        .to_owned();
    let permit = state.gate.streams.open(&caller.name)?;
    let (state, role, name) = (state.clone(), caller.role, caller.name.clone());
    Ok(Standing {
        permit,
        stands: Box::new(move || {
            state
                .gate
                .tokens
                .authenticate(&token)
                .is_some_and(|c| c.role == role && c.name == name)
                && also(&state)
        }),
    })
}

/// The streamed response following the log from `from`, through `filter` if any.
pub fn stream_response(
    state: &AppState,
    from: Position,
    filter: Option<CustomerFilter>,
    standing: Standing,
) -> HttpResponse {
    let feed = state.ledger.subscribe(from);
    let (tx, rx) = mpsc::channel(SSE_CHANNEL_MESSAGES);
    // Sent first so the client sees the stream open before any record exists.
    let _ = tx.try_send(Bytes::from_static(b": connected\n\n"));
    tokio::spawn(follow(feed, tx, filter, standing));
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(ChannelBody(rx))
}
