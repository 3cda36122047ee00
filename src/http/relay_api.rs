//! `/v1/relay/*`: what an on-premises relay asks of the center, with a `relay` token bound
//! to its customer. Every route takes the customer's `cnpj` and refuses (403) a token bound
//! to another one, so a relay can never see or write another customer's events.
//!
//! - `GET /v1/relay/feed?cnpj=&from=&limit=`: the customer's records from position `from`
//!   on, verbatim (positions and hashes of the central log), a page at a time, each with the
//!   center's signed head at its position (`signatures`): the relay mirrors a record only
//!   when the center's key vouches that the chain at that position ends in its hash.
//! - `GET /v1/relay/stream?cnpj=&from=`: the same as server-sent events, catch-up then live.
//! - `POST /v1/relay/certificate`: certifies the relay's answer-signing key for the customer:
//!   one active key per relay token, pinned by the token's first request (a later request
//!   with another key is refused 409 until an admin runs `token revoke-key`).
//! - `POST /v1/relay/events`: events that happened at the relay, decided one by one (see
//!   [`crate::app::relay`]).

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Duration;
use ledger_events::answer::VerifyingKey;
use ledger_events::{Cnpj, Position};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{As, Relays};
use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Query};
use super::sse::{standing, start_position, stream_response, CustomerFilter};
use super::AppState;
use crate::app::relay::{ForwardedEvent, Resolution, FORWARD_EVENTS_MAX};

/// Most records one feed page returns.
pub const FEED_PAGE_MAX: usize = 1000;
/// Most records one feed request scans for matches before answering (with `next` past them).
pub const FEED_SCAN_MAX: usize = 50_000;
/// How long a relay certificate is valid.
pub const CERTIFICATE_DAYS: i64 = 30;

type State = web::Data<AppState>;
type Answer = Result<HttpResponse, ApiError>;

/// The customer the relay asks for: its token's, which must be active.
fn customer(state: &AppState, caller: &As<Relays>, asked: Option<Cnpj>) -> Result<Cnpj, ApiError> {
    let asked = asked.ok_or_else(|| ApiError::field("cnpj", "required: the relay's customer"))?;
    if caller.cnpj != Some(asked) {
        return Err(ApiError::Forbidden(
            "this relay token is bound to another customer".into(),
        ));
    }
    if customer_active(state, &asked) {
        Ok(asked)
    } else {
        Err(ApiError::CustomerInactive)
    }
}

/// Whether the relay's customer exists and is active (checked at every request, and by an
/// open stream every second).
fn customer_active(state: &AppState, cnpj: &Cnpj) -> bool {
    state.ledger.view().customer(cnpj).is_some_and(|c| c.active)
}

/// A page of a customer's records.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The relay's customer (required).
    #[param(value_type = Cnpj)]
    cnpj: Option<Cnpj>,
    /// First position to scan (default 1).
    from: Option<Position>,
    /// Records to return, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page of the customer's records.
#[derive(Serialize, ToSchema)]
pub struct FeedPage {
    /// The records, verbatim (central positions and hashes).
    items: Vec<ledger_events::RecordJson>,
    /// One per item, in the same order: the central log's head at the item's position,
    /// signed by the center's key exactly as `/v1/audit/head` is (Ed25519 over
    /// `"license-ledger/head/v1" ‖ position (u64 BE) ‖ hash`), 128 lower-case hex digits.
    #[schema(value_type = Vec<String>)]
    signatures: Vec<String>,
    /// The id of the key that made `signatures` (`/v1/keys`).
    key_id: String,
    /// The position to ask for next.
    next: Position,
    /// The central log's head when answered.
    head_position: Position,
}

/// The customer's records from a position on, a page at a time.
#[utoipa::path(get, path = "/v1/relay/feed", tag = "relay", params(FeedQuery),
    responses((status = 200, body = FeedPage),
        (status = 401, description = "No token, an unknown one, or the customer is inactive",
            body = ErrorBody)))]
pub async fn feed(state: State, caller: As<Relays>, Query(q): Query<FeedQuery>) -> Answer {
    let cnpj = customer(&state, &caller, q.cnpj)?;
    let from: Position = q.from.unwrap_or(1).max(1);
    let limit: usize = q.limit.unwrap_or(FEED_PAGE_MAX);
    if limit == 0 || limit > FEED_PAGE_MAX {
        return Err(ApiError::field(
            "limit",
            format!("between 1 and {FEED_PAGE_MAX}"),
        ));
    }
    let filter = CustomerFilter {
        ledger: state.ledger.clone(),
        cnpj,
    };
    let head = state.ledger.head().await?;
    let mut items = Vec::new();
    let mut signatures = Vec::new();
    let mut next = from;
    let mut scanned = 0;
    'pages: while items.len() < limit && scanned < FEED_SCAN_MAX && next <= head.position {
        let batch = state.ledger.read_log(next, FEED_PAGE_MAX).await?;
        if batch.is_empty() {
            break;
        }
        for record in batch {
            if items.len() == limit {
                break 'pages;
            }
            scanned += 1;
            next = record.envelope.position + 1;
            if filter.admits(&record).await? {
                signatures.push(
                    state
                        .signer
                        .sign_head(record.envelope.position, &record.envelope.hash),
                );
                items.push(record.to_json().map_err(|e| {
                    tracing::error!(error = %e, position = record.envelope.position, "record does not encode");
                    ApiError::Internal
                })?);
            }
        }
    }
    Ok(HttpResponse::Ok().json(FeedPage {
        items,
        signatures,
        key_id: state.signer.key_id().to_owned(),
        next,
        head_position: head.position,
    }))
}

/// Where a relay's stream starts.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The relay's customer (required).
    #[param(value_type = Cnpj)]
    cnpj: Option<Cnpj>,
    /// First position to send (default 1); a `Last-Event-ID` header wins.
    from: Option<Position>,
}

/// The customer's records as server-sent events: catch-up, then live.
#[utoipa::path(get, path = "/v1/relay/stream", tag = "relay",
    params(StreamQuery, ("Last-Event-ID" = Option<Position>, Header,
        description = "The last position received, to resume after it")),
    responses((status = 200, description = "Server-sent events, one record each",
        content_type = "text/event-stream", body = String),
        (status = 401, description = "No token, an unknown one, or the customer is inactive",
            body = ErrorBody)))]
pub async fn stream(
    state: State,
    caller: As<Relays>,
    req: HttpRequest,
    Query(q): Query<StreamQuery>,
) -> Answer {
    let cnpj = customer(&state, &caller, q.cnpj)?;
    let from = start_position(&req, q.from)?;
    let filter = CustomerFilter {
        ledger: state.ledger.clone(),
        cnpj,
    };
    let active = move |state: &AppState| customer_active(state, &cnpj);
    let standing = standing(&state, &caller.0, &req, active)?;
    Ok(stream_response(&state, from, Some(filter), standing))
}

/// The body of `POST /v1/relay/certificate`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CertificateRequest)]
pub struct CertificateBody {
    /// The relay's customer.
    pub cnpj: Cnpj,
    /// The relay's Ed25519 public key, 64 hex digits.
    #[schema(pattern = "^[0-9A-Fa-f]{64}$")]
    pub public_key: String,
}

/// The relay's certificate, and the central key that signed it.
#[derive(Serialize, ToSchema)]
pub struct Certified {
    certificate: ledger_events::answer::RelayCertificate,
    /// The central key's id.
    central_key_id: String,
    /// The central Ed25519 public key, 64 lower-case hex digits.
    central_public_key: String,
}

/// Certifies the relay's answer-signing key for its customer (the certificate names the
/// CNPJ, and terminals check it against their own). One active key per relay token: the
/// token's first request pins its key; the same key is certified again on every later
/// request; another key is refused (409 `conflict`, naming the pinned key) until an admin
/// revokes the pinned one with `license-ledger token revoke-key NAME`.
#[utoipa::path(post, path = "/v1/relay/certificate", tag = "relay",
    request_body = CertificateBody,
    responses((status = 200, body = Certified),
        (status = 409, description = "`conflict`: this relay token has another key certified; \
            an admin revokes it (`token revoke-key`) before another key can be", body = ErrorBody),
        (status = 401, description = "No token, an unknown one, or the customer is inactive",
            body = ErrorBody)))]
pub async fn certificate(
    state: State,
    caller: As<Relays>,
    Json(b): Json<CertificateBody>,
) -> Answer {
    let cnpj = customer(&state, &caller, Some(b.cnpj))?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&b.public_key, &mut bytes)
        .map_err(|_| ApiError::field("public_key", "expected 64 hex digits"))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| ApiError::field("public_key", "not an Ed25519 public key"))?;
    let now = state.ledger.clock().now();
    let pinned = state
        .secrets_file
        .lock()
        .pin_relay_key(
            &caller.token_sha256,
            &caller.name,
            &hex::encode(key.as_bytes()),
            now,
        )
        .map_err(|e| match e {
            crate::config::ConfigError::RelayKeyTaken { .. } => {
                tracing::warn!(relay = %caller.name, %cnpj, error = %e, "relay key refused");
                ApiError::Conflict(format!("public_key: {e}"))
            }
            e => {
                tracing::error!(error = %e, "saving a relay's key");
                ApiError::Unavailable("could not save the relay's key".into())
            }
        })?;
    let until = now + Duration::days(CERTIFICATE_DAYS);
    let cert = state.signer.certify_relay(cnpj, &key, until);
    tracing::info!(relay = %caller.name, %cnpj, key_id = %cert.relay_key_id, first = pinned == crate::config::RelayKeyPin::New, "relay key certified");
    Ok(HttpResponse::Ok().json(Certified {
        certificate: cert,
        central_key_id: state.signer.key_id().to_owned(),
        central_public_key: hex::encode(state.signer.verifying_key().as_bytes()),
    }))
}

/// The body of `POST /v1/relay/events`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ForwardRequest)]
pub struct ForwardBody {
    /// The relay's customer.
    pub cnpj: Cnpj,
    /// The events, in the order they happened at the relay (at most 500).
    pub events: Vec<ForwardedEvent>,
}

/// The center's decision on one forwarded event.
#[derive(Serialize, ToSchema)]
pub struct ForwardResult {
    event_id: uuid::Uuid,
    resolution: Resolution,
}

/// The decisions, in the order the events came.
#[derive(Serialize, ToSchema)]
pub struct Forwarded {
    results: Vec<ForwardResult>,
    /// The central log's head after them.
    position: Position,
}

/// Events that happened at the relay, decided one by one. A relay token may forward
/// `relay_events_per_minute` events a minute (a request is taken whole while the token is
/// under it); past it the request answers 429 with `Retry-After` and nothing of it is
/// decided: forward the same events again after the wait.
#[utoipa::path(post, path = "/v1/relay/events", tag = "relay", request_body = ForwardBody,
    responses((status = 200, body = Forwarded),
        (status = 429, description = "`rate_limited`, with `Retry-After` (seconds): the relay \
            token's `relay_events_per_minute` is used up; nothing of the request was decided",
            headers(("Retry-After" = u32, description = "Seconds until the quota's window ends")),
            body = ErrorBody),
        (status = 401, description = "No token, an unknown one, or the customer is inactive",
            body = ErrorBody)))]
pub async fn forward(state: State, caller: As<Relays>, Json(b): Json<ForwardBody>) -> Answer {
    let cnpj = customer(&state, &caller, Some(b.cnpj))?;
    if b.events.len() > FORWARD_EVENTS_MAX {
        return Err(ApiError::field(
            "events",
            format!("at most {FORWARD_EVENTS_MAX} per request"),
        ));
    }
    // The relay token's write quota: past it, nothing of this request is decided (the relay
    // keeps the events and forwards them again after `Retry-After`).
    let now = state.ledger.clock().now();
    if let Err(over) = state.quotas.take_forward(&caller.name, b.events.len(), now) {
        super::quotas::count(&state.quotas.counters.relay_forwards_refused);
        if over.first {
            tracing::warn!(relay = %caller.name, %cnpj, events = b.events.len(), "write quota: {}", over.message);
        } else {
            tracing::debug!(relay = %caller.name, %cnpj, events = b.events.len(), "write quota: {}", over.message);
        }
        return Err(ApiError::OverQuota {
            message: over.message,
            retry_after_s: over.retry_after_s,
        });
    }
    let relay = caller.actor()?;
    let mut results = Vec::with_capacity(b.events.len());
    for fwd in &b.events {
        let resolution = state.ledger.accept_forwarded(cnpj, &relay, fwd).await?;
        if let crate::app::relay::Resolution::Rejected { reason } = &resolution {
            tracing::warn!(relay = %caller.name, event_id = %fwd.event_id, %reason, "forwarded event rejected");
        }
        results.push(ForwardResult {
            event_id: fwd.event_id,
            resolution,
        });
    }
    let head = state.ledger.head().await?;
    Ok(HttpResponse::Ok().json(Forwarded {
        results,
        position: head.position,
    }))
}
