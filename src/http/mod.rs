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
pub mod error;
pub mod extract;
pub mod routes;

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
    /// Accepted tokens.
    pub tokens: TokenTable,
    /// The secrets file, for tokens created through the API.
    pub secrets_file: Mutex<SecretsFile>,
}

/// Builds the server on `listener` with `workers` worker threads. Signals are not handled
/// here: the caller stops the server through its handle (see `cli::serve`).
pub fn server(state: AppState, listener: TcpListener, workers: usize) -> std::io::Result<Server> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap_fn(|req, srv| {
                let method = req.method().clone();
                let path = req.path().to_owned();
                let started = std::time::Instant::now();
                let fut = srv.call(req);
                async move {
                    let res = fut.await?;
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
    .disable_signals()
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    Ok(server)
}
