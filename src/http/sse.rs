//! `GET /v1/events/stream`: the log as server-sent events, catch-up then live.
//!
//! A task per connection follows a [`LogFeed`](crate::app::LogFeed) and sends each record as
//! `id: <position>`, `event: record`, `data: <the record's JSON on one line>` through a
//! bounded channel ([`SSE_CHANNEL_MESSAGES`]) the response body reads from; a slow client
//! therefore holds at most that many messages plus the feed's one read batch. When idle for
//! [`KEEP_ALIVE`] the task sends a `: keep-alive` comment. The task ends, dropping the
//! subscription, as soon as the client goes away (the channel closes), the store closes, or
//! reading the log fails (logged; the stream then ends).

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

async fn follow(mut feed: LogFeed, tx: mpsc::Sender<Bytes>, filter: Option<CustomerFilter>) {
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            next = feed.next() => next,
            _ = tokio::time::sleep(KEEP_ALIVE) => {
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
    _caller: As<Readers>,
    req: HttpRequest,
    Query(q): Query<StreamFrom>,
) -> Result<HttpResponse, ApiError> {
    let from = start_position(&req, q.from)?;
    Ok(stream_response(&state, from, None))
}

/// The streamed response following the log from `from`, through `filter` if any.
pub fn stream_response(
    state: &AppState,
    from: Position,
    filter: Option<CustomerFilter>,
) -> HttpResponse {
    let feed = state.ledger.subscribe(from);
    let (tx, rx) = mpsc::channel(SSE_CHANNEL_MESSAGES);
    // Sent first so the client sees the stream open before any record exists.
    let _ = tx.try_send(Bytes::from_static(b": connected\n\n"));
    tokio::spawn(follow(feed, tx, filter));
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(ChannelBody(rx))
}
