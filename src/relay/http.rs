//! The relay's HTTP server: what the shop's terminals and operator see.
//!
//! - `POST /v1/checkin`: the center's route, same body, same answer (plus `certificate`:
//!   the center's certificate of the relay's key), signed with the relay's key.
//! - `GET /v1/keys`: the relay's key and certificate, and the center's key id and key.
//! - `GET /v1/relay/status`: last refresh, next retry, link, contingency, outbox depth.
//! - `GET /healthz`.
//!
//! Tokens are the relay's own (its data directory's `secrets.toml`, managed with
//! `license-ledger --data-dir RELAY_DIR token create --role terminal --cnpj CNPJ`): a
//! terminal token for the relay's customer checks in; any support, auditor or admin token
//! reads the status.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use super::Relay;
use crate::config::Role;
use crate::http::auth::{As, Gate, Readers, Terminals};
use crate::http::checkin::{answer_status, encode_answer, json_answer, CheckInBody};
use crate::http::error::ApiError;
use crate::http::extract::Json;

type Answer = Result<HttpResponse, ApiError>;

/// Builds the relay's server on `listener`, speaking HTTPS with `tls` when given.
pub fn server(
    relay: Arc<Relay>,
    gate: Arc<Gate>,
    listener: TcpListener,
    workers: usize,
    tls: Option<&rustls::ServerConfig>,
) -> std::io::Result<Server> {
    let relay = web::Data::from(relay);
    let gate = web::Data::from(gate);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(relay.clone())
            .app_data(gate.clone())
            .wrap_fn(|mut req, srv| {
                crate::http::guard_body(&mut req);
                actix_web::dev::Service::call(srv, req)
            })
            .route("/healthz", web::get().to(healthz))
            .route("/v1/checkin", web::post().to(check_in))
            .route("/v1/keys", web::get().to(keys))
            .route("/v1/relay/status", web::get().to(status))
            .default_service(web::to(not_found))
    })
    .workers(workers)
    .client_request_timeout(crate::http::CLIENT_REQUEST_TIMEOUT)
    .client_disconnect_timeout(crate::http::CLIENT_DISCONNECT_TIMEOUT)
    .disable_signals()
    .shutdown_timeout(10);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config.clone())?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

async fn not_found() -> Answer {
    Err(ApiError::NotFound("no such route on a relay".into()))
}

async fn healthz(relay: web::Data<Relay>) -> Answer {
    let s = relay.status();
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "link": s.link,
        "contingency": s.contingency_since.is_some(),
    })))
}

async fn status(relay: web::Data<Relay>, _caller: As<Readers>) -> Answer {
    Ok(HttpResponse::Ok().json(relay.status()))
}

async fn keys(relay: web::Data<Relay>) -> Answer {
    let cert = relay.certificate();
    Ok(HttpResponse::Ok().json(json!({
        "key_id": relay.signer().key_id(),
        "public_key": hex::encode(relay.signer().verifying_key().as_bytes()),
        "certificate": cert.as_ref().map(|c| &c.certificate),
        "central_key_id": cert.as_ref().map(|c| &c.central_key_id),
        "central_public_key": cert.as_ref().map(|c| &c.central_public_key),
    })))
}

async fn check_in(
    relay: web::Data<Relay>,
    caller: As<Terminals>,
    Json(body): Json<CheckInBody>,
) -> Answer {
    let (req, nonce) = body.into_request()?;
    if req.cnpj != relay.config().cnpj
        || (caller.role == Role::Terminal && caller.cnpj != Some(req.cnpj))
    {
        return Err(ApiError::NotFound("no such customer".into()));
    }
    let (plan, now) = relay.check_in(&req).await.map_err(|e| {
        tracing::error!(error = %e, "a relay check-in could not be recorded");
        ApiError::Unavailable("the relay cannot record check-ins now; retry".into())
    })?;
    let signed = relay.signer().sign(&req, &plan, nonce, now);
    let cert = relay.certificate();
    let body = encode_answer(&signed, &plan, cert.as_ref().map(|c| &c.certificate))?;
    Ok(json_answer(answer_status(&plan), body))
}
