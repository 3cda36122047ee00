//! `/v1/relay/*`: what an on-premises relay asks of the center, with a `relay` token bound
//! to its customer. Every route takes the customer's `cnpj` and refuses (403) a token bound
//! to another one, so a relay can never see or write another customer's events.
//!
//! - `GET /v1/relay/feed?cnpj=&from=&limit=`: the customer's records from position `from`
//!   on, verbatim (positions and hashes of the central log), a page at a time.
//! - `GET /v1/relay/stream?cnpj=&from=`: the same as server-sent events, catch-up then live.
//! - `POST /v1/relay/certificate`: certifies the relay's answer-signing key for the customer.
//! - `POST /v1/relay/events`: events that happened at the relay, decided one by one (see
//!   [`crate::app::relay`]).

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Duration;
use ledger_events::answer::VerifyingKey;
use ledger_events::{Cnpj, Position};
use serde::Deserialize;
use serde_json::json;

use super::auth::{As, Relays};
use super::error::ApiError;
use super::extract::{Json, Params};
use super::sse::{start_position, stream_response, CustomerFilter};
use super::AppState;
use crate::app::relay::{ForwardedEvent, FORWARD_EVENTS_MAX};

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
    match state.ledger.view().customer(&asked) {
        Some(c) if c.active => Ok(asked),
        _ => Err(ApiError::CustomerInactive),
    }
}

/// `feed` (see the module documentation).
pub async fn feed(state: State, caller: As<Relays>, params: Params) -> Answer {
    let cnpj = customer(&state, &caller, params.get("cnpj")?)?;
    let from: Position = params.get("from")?.unwrap_or(1).max(1);
    let limit: usize = params.get("limit")?.unwrap_or(FEED_PAGE_MAX);
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
                items.push(record.to_json().map_err(|e| {
                    tracing::error!(error = %e, position = record.envelope.position, "record does not encode");
                    ApiError::Internal
                })?);
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "items": items,
        "next": next,
        "head_position": head.position,
    })))
}

/// `stream` (see the module documentation).
pub async fn stream(state: State, caller: As<Relays>, req: HttpRequest, params: Params) -> Answer {
    let cnpj = customer(&state, &caller, params.get("cnpj")?)?;
    let from = start_position(&req, &params)?;
    let filter = CustomerFilter {
        ledger: state.ledger.clone(),
        cnpj,
    };
    Ok(stream_response(&state, from, Some(filter)))
}

/// The body of `POST /v1/relay/certificate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateBody {
    /// The relay's customer.
    pub cnpj: Cnpj,
    /// The relay's Ed25519 public key, 64 hex digits.
    pub public_key: String,
}

/// `certificate` (see the module documentation).
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
    let until = state.ledger.clock().now() + Duration::days(CERTIFICATE_DAYS);
    let cert = state.signer.certify_relay(cnpj, &key, until);
    tracing::info!(relay = %caller.name, %cnpj, key_id = %cert.relay_key_id, "relay key certified");
    Ok(HttpResponse::Ok().json(json!({
        "certificate": cert,
        "central_key_id": state.signer.key_id(),
        "central_public_key": hex::encode(state.signer.verifying_key().as_bytes()),
    })))
}

/// The body of `POST /v1/relay/events`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardBody {
    /// The relay's customer.
    pub cnpj: Cnpj,
    /// The events, in the order they happened at the relay.
    pub events: Vec<ForwardedEvent>,
}

/// `forward` (see the module documentation).
pub async fn forward(state: State, caller: As<Relays>, Json(b): Json<ForwardBody>) -> Answer {
    let cnpj = customer(&state, &caller, Some(b.cnpj))?;
    if b.events.len() > FORWARD_EVENTS_MAX {
        return Err(ApiError::field(
            "events",
            format!("at most {FORWARD_EVENTS_MAX} per request"),
        ));
    }
    let relay = caller.actor()?;
    let mut results = Vec::with_capacity(b.events.len());
    for fwd in &b.events {
        let resolution = state.ledger.accept_forwarded(cnpj, &relay, fwd).await?;
        if let crate::app::relay::Resolution::Rejected { reason } = &resolution {
            tracing::warn!(relay = %caller.name, event_id = %fwd.event_id, %reason, "forwarded event rejected");
        }
        results.push(json!({ "event_id": fwd.event_id, "resolution": resolution }));
    }
    let head = state.ledger.head().await?;
    Ok(HttpResponse::Ok().json(json!({
        "results": results,
        "position": head.position,
    })))
}
