//! The actix-web edge: routes, request and answer bodies, tokens, and the one [`ApiError`].
//! It knows nothing of storage: every handler calls the [`Ledger`], and every failure leaves
//! through `ApiError`'s one mapping to HTTP.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, Service};
use actix_web::{web, App, HttpServer};
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
pub mod relay_api;
pub mod routes;
pub mod sse;

pub use auth::TokenTable;
pub use error::ApiError;

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
}

/// Builds the server on `listener` with `workers` worker threads. Signals are not handled
/// here: the caller stops the server through its handle (see `cli::serve`).
pub fn server(state: AppState, listener: TcpListener, workers: usize) -> std::io::Result<Server> {
    let gate = web::Data::from(state.gate.clone());
    let data = web::Data::new(state);
    let http_metrics = web::Data::new(metrics::HttpMetrics::default());
    let server = HttpServer::new(move || {
        let recorder = http_metrics.clone();
        App::new()
            .app_data(data.clone())
            .app_data(gate.clone())
            .app_data(http_metrics.clone())
            .wrap_fn(move |req, srv| {
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
    // A client that closes its connection ends its request at once: an event stream's
    // subscription is dropped on the EOF instead of at the next failed write.
    .h1_allow_half_closed(false)
    .disable_signals()
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    Ok(server)
}
