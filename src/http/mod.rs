//! The actix-web edge: routes, request and answer bodies, tokens, and the one [`ApiError`].
//! It knows nothing of storage: every handler calls the [`Ledger`], and every failure leaves
//! through `ApiError`'s one mapping to HTTP.

use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Payload, Server, Service};
use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::web::Bytes;
use actix_web::{web, App, HttpMessage, HttpServer};
use futures_core::Stream;
use parking_lot::Mutex;

use crate::app::answers::AnswerSigner;
use crate::app::commands::Secrets;
use crate::app::Ledger;
use crate::config::SecretsFile;

pub mod auth;
pub mod checkin;
pub mod console;
pub mod console_api;
pub mod error;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod offline_key;
pub mod openapi;
pub mod quotas;
pub mod relay_api;
pub mod routes;
pub mod sse;

pub use auth::TokenTable;
pub use error::ApiError;

/// Time a client has to send a request's head (line and headers) once it started: a slower
/// head is answered 408 and its connection closed (slowloris).
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the server waits for a client to acknowledge a closed connection.
pub const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest silence allowed inside a request body: a body that stops arriving fails its read
/// (400) and its connection is closed. actix-web has no body timeout of its own.
pub const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time a whole request body may take, however steadily it trickles (one byte every
/// 8 s never trips [`CLIENT_BODY_TIMEOUT`]); 64 KiB in 20 s is 3.2 KiB/s.
pub const CLIENT_BODY_DEADLINE: Duration = Duration::from_secs(20);

/// A request body that fails once no byte arrived for [`CLIENT_BODY_TIMEOUT`], or once it
/// has taken [`CLIENT_BODY_DEADLINE`] in all.
struct IdleTimeout {
    inner: Payload,
    timer: Pin<Box<tokio::time::Sleep>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimeout {
    fn new(inner: Payload) -> Self {
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep(CLIENT_BODY_TIMEOUT)),
            deadline: Box::pin(tokio::time::sleep(CLIENT_BODY_DEADLINE)),
        }
    }
}

impl Stream for IdleTimeout {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the body took more than {} s",
                    CLIENT_BODY_DEADLINE.as_secs()
                ),
            )))));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                let deadline = tokio::time::Instant::now() + CLIENT_BODY_TIMEOUT;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(item)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no body bytes for {} s", CLIENT_BODY_TIMEOUT.as_secs()),
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Puts a request's body, if it has one, under [`CLIENT_BODY_TIMEOUT`] and
/// [`CLIENT_BODY_DEADLINE`] (the center's server and the relay's both do).
pub fn guard_body(req: &mut actix_web::dev::ServiceRequest) {
    if req.headers().contains_key(CONTENT_LENGTH) || req.headers().contains_key(TRANSFER_ENCODING) {
        let body: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
            Box::pin(IdleTimeout::new(req.take_payload()));
        req.set_payload(Payload::from(body));
    }
}

/// What every handler shares.
pub struct AppState {
    /// The ledger.
    pub ledger: Arc<Ledger>,
    /// The answer and head signing key.
    pub signer: Arc<AnswerSigner>,
    /// Offline and emergency keys.
    pub secrets: Secrets,
    /// Accepted tokens and rate limits (also registered on its own for the extractors).
    pub gate: Arc<auth::Gate>,
    /// The secrets file, for tokens created through the API.
    pub secrets_file: Mutex<SecretsFile>,
    /// The last check-in answer per terminal, served again while it holds.
    pub answers: checkin::AnswerCache,
    /// What terminal and relay tokens may write (finding 5 of issue 15).
    pub quotas: quotas::WriteQuotas,
}

/// Builds the server on `listener` with `workers` worker threads, speaking HTTPS with `tls`
/// when given (plain HTTP otherwise). Signals are not handled here: the caller stops the
/// server through its handle (see `cli::serve`).
pub fn server(
    state: AppState,
    listener: TcpListener,
    workers: usize,
    tls: Option<&rustls::ServerConfig>,
) -> std::io::Result<Server> {
    let gate = web::Data::from(state.gate.clone());
    let data = web::Data::new(state);
    let http_metrics = web::Data::new(metrics::HttpMetrics::default());
    let server = HttpServer::new(move || {
        let recorder = http_metrics.clone();
        App::new()
            .app_data(data.clone())
            .app_data(gate.clone())
            .app_data(http_metrics.clone())
            .wrap_fn(move |mut req, srv| {
                guard_body(&mut req);
                let method = req.method().clone();
                let path = req.path().to_owned();
                // The matched pattern, never the raw path: bounded label cardinality.
                let route = req.match_pattern();
                let started = std::time::Instant::now();
                let fut = srv.call(req);
                let recorder = recorder.clone();
                async move {
                    let res = fut.await?;
                    recorder.record(
                        route.as_deref(),
                        &method,
                        res.status().as_u16(),
                        started.elapsed(),
                    );
                    tracing::info!(
                        %method,
                        %path,
                        status = res.status().as_u16(),
                        micros = started.elapsed().as_micros() as u64,
                        "request"
                    );
                    Ok(res)
                }
            })
            .configure(routes::configure)
    })
    .workers(workers)
    .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
    // A client that closes its connection ends its request at once: an event stream's
    // subscription is dropped on the EOF instead of at the next failed write.
    .h1_allow_half_closed(false)
    .disable_signals()
    .shutdown_timeout(10);
    // The TLS handshake has actix-tls's own time limit (3 s).
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config.clone())?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}
