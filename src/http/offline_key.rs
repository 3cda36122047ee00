//! `POST /v1/offline-key`: a terminal fetches its own offline key (issue 15, finding 3).
//!
//! Counter-keys for a terminal the center has seen online are made under that terminal's own
//! key ([`ledger_events::offline::terminal_key`]); the terminal fetches it here while it is
//! bound (after a check-in), keeps it, and verifies counter-keys with it instead of holding
//! the product's key. An extracted terminal key forges counter-keys for that terminal only.
//! Nothing is recorded; the key is derived on each call, never stored. Serve it over HTTPS
//! (`--tls-cert`): whoever reads it can forge that terminal's counter-keys.

use actix_web::web;
use ledger_events::{Cnpj, HardwareId, HardwareKey, Product};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{As, Terminals};
use super::error::{ApiError, ErrorBody};
use super::extract::Json;
use super::AppState;
use crate::config::Role;

/// The terminal asking for its offline key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OfflineKeyRequest)]
pub struct OfflineKeyBody {
    /// The terminal's customer.
    cnpj: Cnpj,
    /// The program whose counter-keys the key verifies.
    product: Product,
    /// The terminal's hardware id.
    hardware_id: HardwareId,
    /// The hardware key it checked in (and is bound) with.
    hardware_key: HardwareKey,
}

/// A terminal's own offline key.
#[derive(Serialize, ToSchema)]
#[schema(as = OfflineKey)]
pub struct OfflineKeyAnswer {
    /// 64 lower-case hex digits: the 32-byte key. Keep it secret, like the key it replaces.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    terminal_key: String,
    /// How counter-keys are made and checked with it (module `ledger_events::offline`,
    /// "Per-terminal keys").
    #[schema(example = "license-ledger/offline/terminal/v1")]
    algorithm: &'static str,
    /// The customer it was derived for.
    cnpj: Cnpj,
    /// The product.
    product: Product,
    /// The terminal.
    hardware_id: HardwareId,
}

/// A terminal's own offline key, to verify its counter-keys with (terminal tokens of that
/// CNPJ, and admins).
#[utoipa::path(post, path = "/v1/offline-key", tag = "terminals",
    request_body = OfflineKeyBody,
    responses((status = 200, body = OfflineKeyAnswer),
        (status = 404, description = "no license of this product and customer is bound to this terminal with this hardware key (check in first), or another customer's CNPJ", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn offline_key(
    state: web::Data<AppState>,
    caller: As<Terminals>,
    Json(b): Json<OfflineKeyBody>,
) -> Result<web::Json<OfflineKeyAnswer>, ApiError> {
    // A terminal sees its own customer only; another's answers as if absent.
    if caller.role == Role::Terminal && caller.cnpj != Some(b.cnpj) {
        return Err(ApiError::NotFound("no such customer".into()));
    }
    let key = state
        .ledger
        .terminal_offline_key(
            &state.secrets,
            &b.cnpj,
            b.product,
            &b.hardware_id,
            &b.hardware_key,
        )
        .await?;
    tracing::info!(token = %caller.name, cnpj = %b.cnpj, product = %b.product,
        hardware_id = %b.hardware_id, "delivered a terminal's offline key");
    Ok(web::Json(OfflineKeyAnswer {
        terminal_key: key.to_hex(),
        algorithm: "license-ledger/offline/terminal/v1",
        cnpj: b.cnpj,
        product: b.product,
        hardware_id: b.hardware_id,
    }))
}
