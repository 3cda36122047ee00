//! The relay's HTTP client of the center's `/v1/relay/*` routes.
//!
//! Every failure becomes an [`UpstreamError`]: unreachable (the link is down: contingency
//! rules apply), refused with the center's own answer (401 with the manual's texts
//! `Usuário inválido.` or `Assinatura do token inválida`, 403 for a token of another
//! customer), or a malformed answer.

use std::time::Duration;

use futures_util::StreamExt;
use ledger_events::answer::RelayCertificate;
use ledger_events::{Cnpj, Position, Record, RecordJson};
use serde::Deserialize;
use serde_json::json;

use crate::app::relay::{ForwardedEvent, Resolution};

/// How long one request (not the stream) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the relay waits after a 429 to a forward that named no usable `Retry-After`.
pub const FORWARD_THROTTLED_DEFAULT_S: u64 = 60;
/// The longest wait after a 429 to a forward, whatever `Retry-After` says.
pub const FORWARD_THROTTLED_MAX_S: u64 = 300;
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to the center failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The center could not be reached (or did not answer in time).
    #[error("the center is unreachable: {0}")]
    Unreachable(String),
    /// The center answered with an error: `message` is its text (the manual's texts for
    /// 401).
    #[error("the center refused ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The center's `message`.
        message: String,
    },
    /// The center's write quota for this relay token is used up (429): nothing of the
    /// request was decided; forward the same events again after `retry_after_s` seconds.
    #[error("the center asks to wait {retry_after_s} s (429): {message}")]
    Throttled {
        /// The center's `Retry-After`, in seconds.
        retry_after_s: u64,
        /// The center's `message`.
        message: String,
    },
    /// The center's answer was not what the API documents.
    #[error("the center's answer is malformed: {0}")]
    Malformed(String),
    /// Records that the center's pinned key does not vouch for ([`super::trust`]): not
    /// mirrored, and mirroring stops until the center sends records it signed.
    #[error("records not mirrored, they do not verify against the center's key: {0}")]
    Unverified(String),
    /// An outbox event does not fit a forward request even alone: it is not sent, and
    /// forwarding stops before it (see [`super::batch`]).
    #[error("outbox event {event_id} needs a {bytes}-byte request alone, more than the center takes ({limit} bytes): forwarding stops before it")]
    TooLarge {
        /// The event.
        event_id: uuid::Uuid,
        /// The body it needs alone.
        bytes: usize,
        /// The most the relay sends (or the center refused it alone).
        limit: usize,
    },
}

impl UpstreamError {
    /// Whether this means the link is down (as opposed to the center saying no).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, UpstreamError::Unreachable(_))
            || matches!(self, UpstreamError::Refused { status, .. } if *status >= 500)
    }
}

/// A page of the customer's feed.
#[derive(Debug)]
pub struct FeedPage {
    /// The records, in position order.
    pub records: Vec<Record>,
    /// One per record: the center's signed head at the record's position.
    pub signatures: Vec<String>,
    /// The id of the key that signed them.
    pub key_id: String,
    /// Where the next page starts.
    pub next: Position,
    /// The center's head when answering.
    pub head_position: Position,
}

#[derive(Deserialize)]
struct FeedBody {
    items: Vec<RecordJson>,
    #[serde(default)]
    signatures: Vec<String>,
    #[serde(default)]
    key_id: String,
    next: Position,
    head_position: Position,
}

#[derive(Deserialize)]
struct ForwardAnswer {
    results: Vec<ForwardResult>,
}

#[derive(Deserialize)]
struct ForwardResult {
    event_id: uuid::Uuid,
    resolution: Resolution,
}

/// The certificate answer.
#[derive(Clone, Debug, Deserialize)]
pub struct Certified {
    /// The certificate.
    pub certificate: RelayCertificate,
    /// The center's key id.
    pub central_key_id: String,
    /// The center's public key, hex.
    pub central_public_key: String,
}

/// The center's answer and head key (`GET /v1/keys`).
#[derive(Clone, Debug, Deserialize)]
pub struct CenterKeys {
    /// Its id.
    pub key_id: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
}

/// The client: the center's base URL, the relay's token and customer.
#[derive(Clone)]
pub struct Upstream {
    base: String,
    token: String,
    cnpj: Cnpj,
    client: reqwest::Client,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("cnpj", &self.cnpj)
            .finish_non_exhaustive()
    }
}

/// The body of `POST /v1/relay/events` carrying `events` for `cnpj`.
pub fn forward_body(cnpj: Cnpj, events: &[ForwardedEvent]) -> serde_json::Value {
    json!({ "cnpj": cnpj, "events": events })
}

fn unreachable(e: reqwest::Error) -> UpstreamError {
    UpstreamError::Unreachable(e.to_string())
}

async fn refusal(res: reqwest::Response) -> UpstreamError {
    let status = res.status().as_u16();
    let message = match res.json::<serde_json::Value>().await {
        Ok(v) => v["message"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_owned),
        Err(e) => e.to_string(),
    };
    UpstreamError::Refused { status, message }
}

/// Sends `req` and decodes a successful answer; an error answer becomes a refusal with the
/// center's message.
async fn answer<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
) -> Result<T, UpstreamError> {
    let res = req.send().await.map_err(unreachable)?;
    if !res.status().is_success() {
        return Err(refusal(res).await);
    }
    res.json()
        .await
        .map_err(|e| UpstreamError::Malformed(e.to_string()))
}

impl Upstream {
    /// A client of the center at `base` (e.g. `https://licencas.example.com`), trusting
    /// `roots` (DER certificates, `--upstream-ca`) besides the public roots.
    pub fn new(
        base: &str,
        token: &str,
        cnpj: Cnpj,
        roots: &[Vec<u8>],
    ) -> Result<Upstream, UpstreamError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // An https:// center is never left for plain HTTP, not even by a redirect.
            .https_only(base.trim().to_ascii_lowercase().starts_with("https://"));
        for der in roots {
            let cert = reqwest::Certificate::from_der(der)
                .map_err(|e| UpstreamError::Malformed(format!("an --upstream-ca root: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(unreachable)?;
        Ok(Upstream {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            cnpj,
            client,
        })
    }

    /// One page of the customer's records from `from` on.
    pub async fn feed(&self, from: Position, limit: usize) -> Result<FeedPage, UpstreamError> {
        let body: FeedBody = answer(
            self.client
                .get(format!("{}/v1/relay/feed", self.base))
                .bearer_auth(&self.token)
                .query(&[
                    ("cnpj", self.cnpj.to_string()),
                    ("from", from.to_string()),
                    ("limit", limit.to_string()),
                ])
                .timeout(REQUEST_TIMEOUT),
        )
        .await?;
        let records = body
            .items
            .iter()
            .map(Record::from_json)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UpstreamError::Malformed(e.to_string()))?;
        Ok(FeedPage {
            records,
            signatures: body.signatures,
            key_id: body.key_id,
            next: body.next,
            head_position: body.head_position,
        })
    }

    /// Follows the customer's records from `from` on as they are stored at the center,
    /// calling `on_records` with each one; returns when the stream ends or fails.
    pub async fn follow(
        &self,
        from: Position,
        mut on_records: impl FnMut(Vec<Record>) -> bool,
    ) -> Result<(), UpstreamError> {
        let res = self
            .client
            .get(format!("{}/v1/relay/stream", self.base))
            .bearer_auth(&self.token)
            .query(&[("cnpj", self.cnpj.to_string()), ("from", from.to_string())])
            .send()
            .await
            .map_err(unreachable)?;
        if !res.status().is_success() {
            return Err(refusal(res).await);
        }
        let mut body = res.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        // Keep-alives come every 15 s; twice that without a byte means the link is gone.
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(35), body.next())
            .await
            .map_err(|_| UpstreamError::Unreachable("the stream went silent".into()))?
        {
            buf.extend_from_slice(&chunk.map_err(unreachable)?);
            let mut records = Vec::new();
            while let Some(end) = find_blank_line(&buf) {
                let message: Vec<u8> = buf.drain(..end + 2).collect();
                if let Some(record) = parse_message(&message)? {
                    records.push(record);
                }
            }
            if !records.is_empty() && !on_records(records) {
                return Ok(());
            }
        }
        Err(UpstreamError::Unreachable("the stream ended".into()))
    }

    /// Forwards events in one request (the caller keeps it under the center's body limit:
    /// [`super::batch`]); returns the center's decision per event id.
    pub async fn forward(
        &self,
        events: &[ForwardedEvent],
    ) -> Result<Vec<(uuid::Uuid, Resolution)>, UpstreamError> {
        let res = self
            .client
            .post(format!("{}/v1/relay/events", self.base))
            .bearer_auth(&self.token)
            .json(&forward_body(self.cnpj, events))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        if res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let retry_after_s = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(FORWARD_THROTTLED_DEFAULT_S);
            let UpstreamError::Refused { message, .. } = refusal(res).await else {
                return Err(UpstreamError::Malformed("a 429 without its body".into()));
            };
            return Err(UpstreamError::Throttled {
                retry_after_s,
                message,
            });
        }
        if !res.status().is_success() {
            return Err(refusal(res).await);
        }
        let body: ForwardAnswer = res
            .json()
            .await
            .map_err(|e| UpstreamError::Malformed(e.to_string()))?;
        Ok(body
            .results
            .into_iter()
            .map(|r| (r.event_id, r.resolution))
            .collect())
    }

    /// The center's key (no token needed).
    pub async fn keys(&self) -> Result<CenterKeys, UpstreamError> {
        answer(
            self.client
                .get(format!("{}/v1/keys", self.base))
                .timeout(REQUEST_TIMEOUT),
        )
        .await
    }

    /// Asks the center to certify the relay's public key.
    pub async fn certify(&self, public_key_hex: &str) -> Result<Certified, UpstreamError> {
        answer(
            self.client
                .post(format!("{}/v1/relay/certificate", self.base))
                .bearer_auth(&self.token)
                .json(&json!({ "cnpj": self.cnpj, "public_key": public_key_hex }))
                .timeout(REQUEST_TIMEOUT),
        )
        .await
    }
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

/// One SSE message: a `record` event's data is a record's JSON; comments are skipped.
fn parse_message(message: &[u8]) -> Result<Option<Record>, UpstreamError> {
    let text = std::str::from_utf8(message).map_err(|e| UpstreamError::Malformed(e.to_string()))?;
    let mut data = None;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            data = Some(d);
        }
    }
    let Some(data) = data else {
        return Ok(None);
    };
    let json: RecordJson =
        serde_json::from_str(data).map_err(|e| UpstreamError::Malformed(e.to_string()))?;
    Record::from_json(&json)
        .map(Some)
        .map_err(|e| UpstreamError::Malformed(e.to_string()))
}
