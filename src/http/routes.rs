//! The `/v1` routes. Each handler checks the caller's role, parses its input into the
//! domain's value types (400 naming the field), calls the [`Ledger`](crate::app::Ledger),
//! and answers JSON. Commands answer `{"position": P, ...}`; queries accept
//! `?min_position=P` to wait (bounded) until the read model has applied P.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::{
    Cnpj, ContingencyKind, ContractId, HardwareId, HardwareKey, LicenseId, Note, Partner, Position,
    Product, Resources, Serial, TerminalNumber, TimeZoneName, TradeName,
};
use ledger_projections::asof::AsOf;
use ledger_projections::rows::{ContingencyRow, LicenseRow};
use ledger_projections::view::{
    ContingencyQuery, LedgerView, LicenseQuery, LicenseSortKey, LicenseStatus, Page, PAGE_LIMIT_MAX,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Admins, As, Operators, Readers};
use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Query};
use super::limits::{LimitKey, OFFLINE_ACTIVATIONS_PER_MINUTE};
use super::AppState;
use crate::app::commands::{GrantLicense, OfflineRequest, SignContract};
use crate::app::CommandOutcome;
use crate::config::{new_token, token_digest, Role, TokenEntry};
use crate::domain::contract::ContractCommand;
use crate::domain::customer::CustomerCommand;
use crate::domain::license::LicenseCommand;
use crate::domain::release::ContingencyCommand;

/// Most records one `GET /v1/events` returns.
pub const EVENTS_PAGE_MAX: usize = 1000;
/// Most entries one history page returns.
pub const HISTORY_PAGE_MAX: usize = 500;
/// History page size when none is asked.
const HISTORY_PAGE_DEFAULT: usize = 50;

type State = web::Data<AppState>;
type Answer = Result<HttpResponse, ApiError>;

/// Mounts every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(super::metrics::metrics))
        .route("/openapi.json", web::get().to(super::openapi::serve))
        .service(
            web::scope("/v1")
                .wrap(actix_web::middleware::from_fn(wait_until_ready))
                .route("/keys", web::get().to(keys))
                .route("/checkin", web::post().to(super::checkin::check_in))
                .route("/customers", web::post().to(register_customer))
                .route("/customers/{cnpj}/profile", web::put().to(set_profile))
                .route(
                    "/customers/{cnpj}/licenses",
                    web::get().to(customer_licenses),
                )
                .route(
                    "/customers/{cnpj}/{action}",
                    web::post().to(customer_action),
                )
                .route("/contracts", web::post().to(sign_contract))
                .route("/contracts/{id}/{action}", web::post().to(contract_action))
                .route("/licenses", web::post().to(grant_license))
                .route("/licenses", web::get().to(list_licenses))
                .route("/licenses/{id}", web::get().to(get_license))
                .route("/licenses/{id}/history", web::get().to(history))
                .route("/licenses/{id}/resources", web::put().to(change_resources))
                .route("/licenses/{id}/{action}", web::post().to(license_action))
                .route("/contingencies", web::post().to(enter_contingency))
                .route("/contingencies", web::get().to(list_contingencies))
                .route("/contingencies/clear", web::post().to(clear_contingency))
                .route("/offline-activations", web::post().to(offline_activation))
                .route(
                    "/offline-key",
                    web::post().to(super::offline_key::offline_key),
                )
                .route("/emergency-releases", web::post().to(emergency_release))
                .route("/tokens", web::post().to(create_token))
                .route("/events", web::get().to(events))
                .route("/events/stream", web::get().to(super::sse::events_stream))
                .route("/audit/head", web::get().to(audit_head))
                .route("/relay/feed", web::get().to(super::relay_api::feed))
                .route("/relay/stream", web::get().to(super::relay_api::stream))
                .route(
                    "/relay/certificate",
                    web::post().to(super::relay_api::certificate),
                )
                .route("/relay/events", web::post().to(super::relay_api::forward))
                .configure(super::console_api::configure),
        )
        .configure(super::console::configure)
        .default_service(web::to(not_found));
}

/// The `/v1` routes that read nothing of the view (the key, the raw log, its head): served
/// while the view catches up after a start.
const SERVED_WHILE_CATCHING_UP: &[&str] = &["/v1/keys", "/v1/events", "/v1/audit/head"];

/// Every other `/v1` route reads the view, which must not answer half caught up after a
/// start: the request waits until it is ready, at most `catch_up_timeout`, and is then
/// answered 503 `busy` with `Retry-After`.
async fn wait_until_ready(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !SERVED_WHILE_CATCHING_UP.contains(&req.path()) {
        if let Some(state) = req.app_data::<State>() {
            state.ledger.ready().await.map_err(ApiError::from)?;
        }
    }
    next.call(req).await
}

async fn not_found() -> Answer {
    Err(ApiError::NotFound("no such route".into()))
}

/// The server is up and its store answers.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` (a read model still catching up, or a failing store, answers 503).
    #[schema(example = "ok")]
    status: &'static str,
    /// Position of the last durable record.
    head_position: Position,
    /// Position the read model has applied.
    applied_position: Position,
}

/// Liveness and readiness.
#[utoipa::path(get, path = "/healthz", tag = "service", security(()),
    responses((status = 200, description = "Ready: the read model has caught up with the \
            log as it was when the server started", body = Health),
        (status = 503, description = "Not ready. After a start, until the read model has \
            caught up with the log: error and status `catching_up`, with `position` (applied) \
            and `head` (to reach), and `Retry-After`; meanwhile requests that read the view \
            wait for it (then `busy`). Or `unavailable`: the store or the read model failed.",
            body = ErrorBody, headers(("Retry-After" = u32,
                description = "Sent with `catching_up`: seconds before asking again")))))]
async fn healthz(state: State) -> Answer {
    let ready = state.ledger.readiness()?;
    if !ready.is_ready() {
        return Err(ApiError::CatchingUp {
            position: ready.position,
            head: ready.head,
        });
    }
    let head = state.ledger.head().await?;
    Ok(HttpResponse::Ok().json(Health {
        status: "ok",
        head_position: head.position,
        applied_position: state.ledger.view().position(),
    }))
}

/// The key that signs check-in answers and the audit head.
#[derive(Serialize, ToSchema)]
pub struct SigningKey {
    /// The key's id, as signed answers name it.
    key_id: String,
    /// Ed25519 public key, 64 lower-case hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    public_key: String,
}

/// The public key terminals verify answers with.
#[utoipa::path(get, path = "/v1/keys", tag = "terminals", security(()),
    responses((status = 200, body = SigningKey)))]
async fn keys(state: State) -> Answer {
    Ok(HttpResponse::Ok().json(SigningKey {
        key_id: state.signer.key_id().to_owned(),
        public_key: hex::encode(state.signer.verifying_key().as_bytes()),
    }))
}

fn path_value<T>(field: &str, raw: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    raw.parse().map_err(|e| ApiError::field(field, e))
}

/// What a command answers: where it landed in the log, and what it names.
#[derive(Serialize, ToSchema)]
pub struct Done<T> {
    /// Position of the command's last event (0 when it changed nothing): pass it as
    /// `min_position` to a query to read this write.
    position: Position,
    /// Whether this repeated a command already done (same `command_id`, body and token):
    /// nothing new was recorded, and the answer is the first one's.
    was_retry: bool,
    #[serde(flatten)]
    item: T,
}

fn command_answer<T: Serialize>(outcome: &CommandOutcome, item: T) -> HttpResponse {
    HttpResponse::Ok().json(Done {
        position: outcome.position(),
        was_retry: outcome.was_retry,
        item,
    })
}

/// The customer a command was about.
#[derive(Serialize, ToSchema)]
pub struct CustomerRef {
    cnpj: Cnpj,
}

/// The contract a command was about.
#[derive(Serialize, ToSchema)]
pub struct ContractRef {
    contract_id: ContractId,
    /// With `renew` only: the licenses renewed, in id order (empty when none was due).
    #[serde(skip_serializing_if = "Option::is_none")]
    renewed: Option<Vec<crate::app::renewals::Renewal>>,
}

/// The license a command was about.
#[derive(Serialize, ToSchema)]
pub struct LicenseRef {
    license_id: LicenseId,
}

/// Nothing more than the position.
#[derive(Serialize, ToSchema)]
pub struct Nothing {}

// ---- customers ----

/// A new customer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomer {
    cnpj: Cnpj,
    trade_name: TradeName,
    /// Customer since (default: today).
    #[serde(default)]
    since: Option<NaiveDate>,
    /// "Parceiro".
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "IWS")]
    partner: Option<Partner>,
    /// The IANA zone of the customer's shops, when not the server's (`America/Manaus`).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "America/Manaus")]
    time_zone: Option<TimeZoneName>,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// A customer's whole profile. Both keys are required, `null` clearing one, so that a
/// missing body or a forgotten key never clears a profile by accident.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    /// "Parceiro" (`null`: none).
    #[serde(default, deserialize_with = "stated")]
    #[schema(value_type = Option<String>, required = true, example = "IWS")]
    partner: Option<Option<Partner>>,
    /// The IANA zone its days count in (`null`: the server's).
    #[serde(default, deserialize_with = "stated")]
    #[schema(value_type = Option<String>, required = true, example = "America/Manaus")]
    time_zone: Option<Option<TimeZoneName>>,
    /// Makes the command idempotent (as everywhere).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// A key that was present (its value may be `null`): `Some(value)`; an absent one stays
/// `None` through `#[serde(default)]`.
fn stated<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A zone the server's time-zone database must know.
fn known_zone(zone: Option<&TimeZoneName>) -> Result<(), ApiError> {
    if let Some(z) = zone {
        z.as_str()
            .parse::<crate::domain::Calendar>()
            .map_err(|e| ApiError::field("time_zone", e.to_string()))?;
    }
    Ok(())
}

/// An action's optional reason.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    /// Why, shown in the history.
    #[serde(default)]
    note: Option<Note>,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// What can be done to a customer.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CustomerAction {
    /// Active again after deactivation.
    Activate,
    /// Inactive: terminals get `Usuário inválido.`
    Deactivate,
    /// Blocked: terminals are refused.
    Block,
    /// No longer blocked.
    Unblock,
    /// Blacklisted ("Lista negra").
    Blacklist,
    /// Off the blacklist.
    Unblacklist,
}

/// What can be done to a contract.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContractAction {
    /// Ends automatic renewals.
    Deactivate,
    /// Resumes them.
    Reactivate,
    /// Renews now every license of the contract that its terms renew today (the automatic
    /// renewal's rule, run at once); answers them in `renewed`.
    Renew,
}

/// What can be done to a license.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LicenseAction {
    /// New expiry (`expires_on` required).
    Renew,
    /// Blocked: terminals are refused.
    Block,
    /// No longer blocked.
    Unblock,
    /// Deactivated.
    Deactivate,
    /// Active again.
    Reactivate,
    /// Frees the license from its terminal.
    Unlink,
}

/// The action named by the path's last segment; an unknown one is a 404 like any unknown
/// route.
fn action<A: serde::de::DeserializeOwned>(of: &str, raw: &str) -> Result<A, ApiError> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|_| ApiError::NotFound(format!("no {of} action {raw}")))
}

fn command_id(id: Option<Uuid>) -> Uuid {
    id.unwrap_or_else(Uuid::now_v7)
}

/// Registers a customer.
#[utoipa::path(post, path = "/v1/customers", tag = "customers", request_body = RegisterCustomer,
    responses((status = 200, body = Done<CustomerRef>),
        (status = 409, description = "`conflict`: the customer exists already; `command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn register_customer(
    state: State,
    caller: As<Operators>,
    Json(b): Json<RegisterCustomer>,
) -> Answer {
    known_zone(b.time_zone.as_ref())?;
    let cmd = CustomerCommand::Register {
        cnpj: b.cnpj,
        trade_name: b.trade_name,
        since: b.since,
    };
    let actor = caller.actor()?;
    let id = command_id(b.command_id);
    let mut outcome = state.ledger.customer(cmd, &actor, id).await?;
    if b.partner.is_some() || b.time_zone.is_some() {
        let profile = CustomerCommand::SetProfile {
            cnpj: b.cnpj,
            partner: b.partner,
            time_zone: b.time_zone,
        };
        // Its own id, derived from the registration's: a retry replays both.
        let set = state
            .ledger
            .customer(profile, &actor, crate::app::derived_v7(id, b"profile"))
            .await?;
        if set.positions.is_some() {
            outcome.positions = set.positions;
        }
    }
    Ok(command_answer(&outcome, CustomerRef { cnpj: b.cnpj }))
}

/// Sets a customer's profile: "Parceiro" and the time zone its days count in.
#[utoipa::path(put, path = "/v1/customers/{cnpj}/profile", tag = "customers",
    params(("cnpj" = Cnpj, Path)), request_body = ProfileBody,
    responses((status = 200, body = Done<CustomerRef>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 400, body = ErrorBody)))]
async fn set_profile(
    state: State,
    caller: As<Operators>,
    cnpj: web::Path<String>,
    Json(b): Json<ProfileBody>,
) -> Answer {
    let cnpj: Cnpj = path_value("cnpj", &cnpj)?;
    let partner = b
        .partner
        .ok_or_else(|| ApiError::field("partner", "required (null for none)"))?;
    let time_zone = b
        .time_zone
        .ok_or_else(|| ApiError::field("time_zone", "required (null for the server's)"))?;
    known_zone(time_zone.as_ref())?;
    let cmd = CustomerCommand::SetProfile {
        cnpj,
        partner,
        time_zone,
    };
    let outcome = state
        .ledger
        .customer(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, CustomerRef { cnpj }))
}

/// Activates, deactivates, blocks, unblocks, blacklists or unblacklists a customer.
#[utoipa::path(post, path = "/v1/customers/{cnpj}/{action}", tag = "customers",
    params(("cnpj" = Cnpj, Path), ("action" = CustomerAction, Path)),
    request_body = Option<NoteBody>,
    responses((status = 200, body = Done<CustomerRef>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn customer_action(
    state: State,
    caller: As<Operators>,
    path: web::Path<(String, String)>,
    Json(b): Json<NoteBody>,
) -> Answer {
    let (cnpj, raw) = path.into_inner();
    let cnpj: Cnpj = path_value("cnpj", &cnpj)?;
    let note = b.note;
    let cmd = match action("customer", &raw)? {
        CustomerAction::Activate => CustomerCommand::Activate { cnpj, note },
        CustomerAction::Deactivate => CustomerCommand::Deactivate { cnpj, note },
        CustomerAction::Block => CustomerCommand::Block { cnpj, note },
        CustomerAction::Unblock => CustomerCommand::Unblock { cnpj, note },
        CustomerAction::Blacklist => CustomerCommand::Blacklist { cnpj, note },
        CustomerAction::Unblacklist => CustomerCommand::Unblacklist { cnpj, note },
    };
    let outcome = state
        .ledger
        .customer(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, CustomerRef { cnpj }))
}

// ---- contracts ----

/// A new contract: renews the customer's licenses every `interval_days`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SignContract)]
pub struct SignContractBody {
    cnpj: Cnpj,
    starts_on: NaiveDate,
    /// Last day of the contract (default: open-ended).
    #[serde(default)]
    ends_on: Option<NaiveDate>,
    /// Days each renewal adds.
    interval_days: u16,
    /// Renew this many days before expiry.
    renew_before_days: u16,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// Signs a contract.
#[utoipa::path(post, path = "/v1/contracts", tag = "contracts", request_body = SignContractBody,
    responses((status = 200, body = Done<ContractRef>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn sign_contract(
    state: State,
    caller: As<Operators>,
    Json(b): Json<SignContractBody>,
) -> Answer {
    let c = SignContract {
        cnpj: b.cnpj,
        starts_on: b.starts_on,
        ends_on: b.ends_on,
        interval_days: b.interval_days,
        renew_before_days: b.renew_before_days,
    };
    let (id, outcome) = state
        .ledger
        .sign_contract(c, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(
        &outcome,
        ContractRef {
            contract_id: id,
            renewed: None,
        },
    ))
}

/// Deactivates, reactivates or renews (its due licenses, now) a contract.
#[utoipa::path(post, path = "/v1/contracts/{id}/{action}", tag = "contracts",
    params(("id" = ContractId, Path), ("action" = ContractAction, Path)),
    request_body = Option<NoteBody>,
    responses((status = 200, body = Done<ContractRef>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn contract_action(
    state: State,
    caller: As<Operators>,
    path: web::Path<(String, String)>,
    Json(b): Json<NoteBody>,
) -> Answer {
    let (id, raw) = path.into_inner();
    let contract_id: ContractId = path_value("id", &id)?;
    let note = b.note;
    let cmd = match action("contract", &raw)? {
        ContractAction::Deactivate => ContractCommand::Deactivate { contract_id, note },
        ContractAction::Reactivate => ContractCommand::Reactivate { contract_id, note },
        ContractAction::Renew => {
            if note.is_some() {
                return Err(ApiError::field(
                    "note",
                    "a renewal by contract takes no note",
                ));
            }
            let renewed = state
                .ledger
                .renew_contract(contract_id, &caller.actor()?, command_id(b.command_id))
                .await?;
            // One command per license: the answer's position is the last renewal's.
            return Ok(HttpResponse::Ok().json(Done {
                position: renewed.iter().map(|r| r.position).max().unwrap_or(0),
                was_retry: !renewed.is_empty() && renewed.iter().all(|r| r.was_retry),
                item: ContractRef {
                    contract_id,
                    renewed: Some(renewed),
                },
            }));
        }
    };
    let outcome = state
        .ledger
        .contract(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(
        &outcome,
        ContractRef {
            contract_id,
            renewed: None,
        },
    ))
}

// ---- licenses ----

/// A new license for one terminal of the customer's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = GrantLicense)]
pub struct GrantBody {
    cnpj: Cnpj,
    product: Product,
    /// The contract that renews it, if any.
    #[serde(default)]
    contract_id: Option<ContractId>,
    expires_on: NaiveDate,
    /// Resource flags ("Recursos").
    #[serde(default)]
    resources: Resources,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// Grants a license.
#[utoipa::path(post, path = "/v1/licenses", tag = "licenses", request_body = GrantBody,
    responses((status = 200, body = Done<LicenseRef>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn grant_license(state: State, caller: As<Operators>, Json(b): Json<GrantBody>) -> Answer {
    let g = GrantLicense {
        cnpj: b.cnpj,
        product: b.product,
        contract_id: b.contract_id,
        expires_on: b.expires_on,
        resources: b.resources,
    };
    let (id, outcome) = state
        .ledger
        .grant_license(g, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, LicenseRef { license_id: id }))
}

/// An action on a license.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LicenseActionBody {
    /// Why, shown in the history.
    #[serde(default)]
    note: Option<Note>,
    /// For `renew` (required there): the new expiry.
    #[serde(default)]
    expires_on: Option<NaiveDate>,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// Renews, blocks, unblocks, deactivates, reactivates or unlinks a license.
#[utoipa::path(post, path = "/v1/licenses/{id}/{action}", tag = "licenses",
    params(("id" = LicenseId, Path), ("action" = LicenseAction, Path)),
    request_body = Option<LicenseActionBody>,
    responses((status = 200, body = Done<LicenseRef>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn license_action(
    state: State,
    caller: As<Operators>,
    path: web::Path<(String, String)>,
    Json(b): Json<LicenseActionBody>,
) -> Answer {
    let (id, raw) = path.into_inner();
    let license_id: LicenseId = path_value("id", &id)?;
    let note = b.note;
    let cmd = match action("license", &raw)? {
        LicenseAction::Renew => LicenseCommand::Renew {
            license_id,
            expires_on: b
                .expires_on
                .ok_or_else(|| ApiError::field("expires_on", "required to renew"))?,
        },
        LicenseAction::Block => LicenseCommand::Block { license_id, note },
        LicenseAction::Unblock => LicenseCommand::Unblock { license_id, note },
        LicenseAction::Deactivate => LicenseCommand::Deactivate { license_id, note },
        LicenseAction::Reactivate => LicenseCommand::Reactivate { license_id, note },
        LicenseAction::Unlink => LicenseCommand::Unlink { license_id, note },
    };
    let outcome = state
        .ledger
        .license(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, LicenseRef { license_id }))
}

/// A license's new resources, replacing the old ones.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    resources: Resources,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// Replaces a license's resources.
#[utoipa::path(put, path = "/v1/licenses/{id}/resources", tag = "licenses",
    params(("id" = LicenseId, Path)), request_body = ResourcesBody,
    responses((status = 200, body = Done<LicenseRef>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn change_resources(
    state: State,
    caller: As<Operators>,
    id: web::Path<String>,
    Json(b): Json<ResourcesBody>,
) -> Answer {
    let license_id: LicenseId = path_value("id", &id)?;
    let cmd = LicenseCommand::ChangeResources {
        license_id,
        resources: b.resources,
    };
    let outcome = state
        .ledger
        .license(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, LicenseRef { license_id }))
}

// ---- contingencies, offline activation, emergency release ----

/// A contingency to enter or clear.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Contingency)]
pub struct ContingencyBody {
    cnpj: Cnpj,
    kind: ContingencyKind,
    /// One terminal only (default: the whole customer).
    #[serde(default)]
    hardware_id: Option<HardwareId>,
    /// Entering only: the license it is about.
    #[serde(default)]
    license_id: Option<LicenseId>,
    /// Entering only: the last day terminals may sell under it.
    #[serde(default)]
    grace_until: Option<NaiveDate>,
    /// Why, shown in the history.
    #[serde(default)]
    note: Option<Note>,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// Enters a contingency.
#[utoipa::path(post, path = "/v1/contingencies", tag = "contingencies",
    request_body = ContingencyBody,
    responses((status = 200, body = Done<Nothing>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn enter_contingency(
    state: State,
    caller: As<Operators>,
    Json(b): Json<ContingencyBody>,
) -> Answer {
    let cmd = ContingencyCommand::Enter {
        cnpj: b.cnpj,
        kind: b.kind,
        hardware_id: b.hardware_id,
        license_id: b.license_id,
        grace_until: b.grace_until,
        note: b.note,
    };
    let outcome = state
        .ledger
        .contingency(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, Nothing {}))
}

/// Clears a contingency.
#[utoipa::path(post, path = "/v1/contingencies/clear", tag = "contingencies",
    request_body = ContingencyBody,
    responses((status = 200, body = Done<Nothing>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn clear_contingency(
    state: State,
    caller: As<Operators>,
    Json(b): Json<ContingencyBody>,
) -> Answer {
    if b.license_id.is_some() || b.grace_until.is_some() {
        return Err(ApiError::field(
            if b.license_id.is_some() {
                "license_id"
            } else {
                "grace_until"
            },
            "not accepted when clearing",
        ));
    }
    let cmd = ContingencyCommand::Clear {
        cnpj: b.cnpj,
        kind: b.kind,
        hardware_id: b.hardware_id,
        note: b.note,
    };
    let outcome = state
        .ledger
        .contingency(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, Nothing {}))
}

/// An offline terminal's serial, to answer with a counter-key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OfflineActivation)]
pub struct OfflineBody {
    /// The serial the terminal shows.
    serial: Serial,
    product: Product,
    /// The customer (or give `license_id`).
    #[serde(default)]
    cnpj: Option<Cnpj>,
    /// The license (or give `cnpj`).
    #[serde(default)]
    license_id: Option<LicenseId>,
    #[serde(default)]
    caixa: Option<TerminalNumber>,
    #[serde(default)]
    equipamento: Option<TerminalNumber>,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// A counter-key the terminal accepts offline.
#[derive(Serialize, ToSchema)]
pub struct OfflineIssued {
    /// 16 upper-case hex digits in four groups, as the terminal's screen asks for them.
    #[schema(
        pattern = "^[0-9A-F]{4} [0-9A-F]{4} [0-9A-F]{4} [0-9A-F]{4}$",
        example = "0A1B 2C3D 4E5F 6071"
    )]
    counter_key: String,
    /// The last day the terminal may sell on it.
    valid_until: NaiveDate,
    /// The terminal whose own offline key made the counter-key (the center has seen it online
    /// under this customer). Absent: made under the product's key, for a terminal the center
    /// has never seen online (or when the request names no license of this customer).
    #[serde(skip_serializing_if = "Option::is_none")]
    terminal: Option<HardwareId>,
}

/// Issues an offline activation (rate limited per token and per address). The log keeps a
/// MAC of the counter-key, never the key: a retry with the same `command_id` answers the same
/// counter-key, recomputed and checked against it.
#[utoipa::path(post, path = "/v1/offline-activations", tag = "terminals",
    request_body = OfflineBody,
    responses((status = 200, body = Done<OfflineIssued>), (status = 404, body = ErrorBody),
        (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn offline_activation(
    state: State,
    caller: As<Operators>,
    Json(b): Json<OfflineBody>,
) -> Answer {
    // Counter-keys are guessable only by asking many times: limit and log.
    let by_token = state.gate.limits.hit(
        LimitKey::OfflineByToken(caller.name.clone()),
        OFFLINE_ACTIVATIONS_PER_MINUTE,
    );
    let by_address = caller.address.is_none_or(|a| {
        state.gate.limits.hit(
            LimitKey::OfflineByAddress(a),
            OFFLINE_ACTIVATIONS_PER_MINUTE,
        )
    });
    if !(by_token && by_address) {
        tracing::warn!(token = %caller.name, address = ?caller.address, serial = %b.serial, "offline activations rate limited");
        return Err(ApiError::RateLimited(format!(
            "more than {OFFLINE_ACTIVATIONS_PER_MINUTE} offline activations a minute; retry in a minute"
        )));
    }
    let r = OfflineRequest {
        serial: b.serial,
        product: b.product,
        cnpj: b.cnpj,
        license_id: b.license_id,
        caixa: b.caixa,
        equipamento: b.equipamento,
    };
    let issued = state
        .ledger
        .issue_offline_activation(
            &state.secrets,
            r,
            &caller.actor()?,
            command_id(b.command_id),
        )
        .await?;
    Ok(command_answer(
        &issued.outcome,
        OfflineIssued {
            counter_key: issued.counter_key.grouped(),
            valid_until: issued.valid_until,
            terminal: issued.terminal,
        },
    ))
}

/// A terminal to release in an emergency, without a license.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EmergencyRelease)]
pub struct EmergencyBody {
    product: Product,
    hardware_id: HardwareId,
    hardware_key: HardwareKey,
    /// The name the release shows.
    licensed_to: TradeName,
    /// Makes the command idempotent: a retry with the same id, body and token answers what
    /// the first answered and records nothing new; the same id with another body, route or
    /// token is refused (409 `command_id_reused`).
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// What an emergency release gives the terminal.
#[derive(Serialize, ToSchema)]
pub struct EmergencyIssued {
    activation_code: ledger_events::ActivationCode,
    /// 16 upper-case hex digits in four groups, as the terminal's screen asks for them.
    #[schema(
        pattern = "^[0-9A-F]{4} [0-9A-F]{4} [0-9A-F]{4} [0-9A-F]{4}$",
        example = "0A1B 2C3D 4E5F 6071"
    )]
    counter_key: String,
}

/// Issues an emergency release (admins only).
#[utoipa::path(post, path = "/v1/emergency-releases", tag = "terminals",
    request_body = EmergencyBody,
    responses((status = 200, body = Done<EmergencyIssued>), (status = 409, description = "`command_id_reused`: the `command_id` was used before for another command (another route, body or token); nothing was recorded", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn emergency_release(
    state: State,
    caller: As<Admins>,
    Json(b): Json<EmergencyBody>,
) -> Answer {
    let issued = state
        .ledger
        .issue_emergency_release(
            &state.secrets,
            b.product,
            b.hardware_id,
            b.hardware_key,
            b.licensed_to,
            true,
            &caller.actor()?,
            command_id(b.command_id),
        )
        .await?;
    Ok(command_answer(
        &issued.outcome,
        EmergencyIssued {
            activation_code: issued.activation_code,
            counter_key: issued.counter_key.grouped(),
        },
    ))
}

// ---- tokens ----

/// A new API token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewToken)]
pub struct TokenBody {
    /// Who holds it: becomes the actor of the events it causes.
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    role: Role,
    /// The customer of a terminal or relay token; other roles take none.
    #[serde(default)]
    cnpj: Option<Cnpj>,
}

/// A token, shown once: only its digest is kept.
#[derive(Serialize, ToSchema)]
pub struct TokenIssued {
    /// The bearer token.
    token: String,
    name: String,
    role: Role,
    cnpj: Option<Cnpj>,
}

/// Creates a token (admins only); it works at once and is saved to the secrets file.
#[utoipa::path(post, path = "/v1/tokens", tag = "service", request_body = TokenBody,
    responses((status = 200, body = TokenIssued)))]
async fn create_token(state: State, _caller: As<Admins>, Json(b): Json<TokenBody>) -> Answer {
    crate::config::check_token_name(&b.name).map_err(|e| ApiError::field("name", e))?;
    if b.role.is_bound_to_customer() != b.cnpj.is_some() {
        return Err(ApiError::field(
            "cnpj",
            "a terminal or relay token needs a cnpj; other roles take none",
        ));
    }
    let token = new_token().map_err(|e| {
        tracing::error!(error = %e, "no randomness for a token");
        ApiError::Internal
    })?;
    let entry = TokenEntry {
        name: b.name,
        sha256: hex::encode(token_digest(&token)),
        role: b.role,
        cnpj: b.cnpj,
    };
    state
        .secrets_file
        .lock()
        .add_token(entry.clone())
        .map_err(|e| match e {
            crate::config::ConfigError::NameTaken { .. } => ApiError::field("name", e.to_string()),
            e => {
                tracing::error!(error = %e, "saving a token");
                ApiError::Unavailable("could not save the token".into())
            }
        })?;
    tracing::info!(name = %entry.name, role = ?entry.role, "token created");
    state.gate.tokens.add(entry.clone());
    Ok(HttpResponse::Ok().json(TokenIssued {
        token,
        name: entry.name,
        role: entry.role,
        cnpj: entry.cnpj,
    }))
}

// ---- queries ----

/// Waits, bounded, until the read model has applied `min_position` (read your writes).
pub async fn read_your_writes(
    state: &AppState,
    min_position: Option<Position>,
) -> Result<(), ApiError> {
    let Some(p) = min_position else {
        return Ok(());
    };
    if state.ledger.view().position() >= p {
        return Ok(());
    }
    // A position past the durable head was never answered to anyone: waiting cannot help.
    let head = state.ledger.head().await?.position;
    if p > head {
        return Err(ApiError::field(
            "min_position",
            format!("{p} is past the log's head {head}; pass the position a command answered"),
        ));
    }
    state.ledger.wait_for(p).await?;
    Ok(())
}

/// Sort direction.
#[derive(Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    /// Ascending (the default).
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// Filters, sort and moment of a license listing (`/v1/licenses`, a customer's licenses,
/// the console's license table).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LicenseListQuery {
    /// Wait until the read model has applied this position (a command's answer).
    pub min_position: Option<Position>,
    /// Answer as the table stood at this moment (RFC 3339), rebuilt from the log; "today"
    /// is that moment's day.
    pub as_of: Option<DateTime<Utc>>,
    /// One customer's licenses (on `/v1/customers/{cnpj}/licenses` the path's wins).
    #[param(value_type = Option<Cnpj>)]
    cnpj: Option<Cnpj>,
    #[param(value_type = Option<Product>)]
    product: Option<Product>,
    #[param(value_type = Option<LicenseStatus>)]
    status: Option<LicenseStatus>,
    /// Only licenses expiring within this many days.
    expiring_within_days: Option<u32>,
    /// Only the license bound to this hardware key.
    hardware_key: Option<String>,
    /// Free text: license id, CNPJ, trade name, hardware id.
    text: Option<String>,
    /// Rows to skip.
    offset: Option<usize>,
    /// Rows to return (default 50, at most 500).
    #[param(maximum = 500)]
    limit: Option<usize>,
    /// The column to sort by (default: license id).
    #[param(value_type = Option<LicenseSortKey>)]
    sort: Option<LicenseSortKey>,
    #[param(value_type = Option<SortOrder>)]
    order: Option<SortOrder>,
}

impl LicenseListQuery {
    /// The view's query on `day`, for `cnpj` if given (else the parameter's).
    pub fn to_query(&self, cnpj: Option<Cnpj>, day: NaiveDate) -> Result<LicenseQuery, ApiError> {
        let defaults = LicenseQuery::default();
        let limit = self.limit.unwrap_or(defaults.limit);
        if limit > PAGE_LIMIT_MAX {
            return Err(ApiError::field(
                "limit",
                format!("at most {PAGE_LIMIT_MAX}"),
            ));
        }
        Ok(LicenseQuery {
            cnpj: cnpj.or(self.cnpj),
            product: self.product,
            status: self.status,
            expiring_within_days: self.expiring_within_days,
            today: Some(day),
            hardware_key: self.hardware_key.clone(),
            text: self.text.clone(),
            offset: self.offset.unwrap_or(0),
            limit,
        })
    }

    /// The sort asked for, and whether it is descending.
    pub fn sort(&self) -> (LicenseSortKey, bool) {
        (
            self.sort.unwrap_or_default(),
            matches!(self.order.unwrap_or_default(), SortOrder::Desc),
        )
    }

    /// A page of `view` on `day`, sorted as asked (in id order, the cheap way, when no
    /// sort is asked).
    fn page(
        &self,
        view: &LedgerView,
        cnpj: Option<Cnpj>,
        day: NaiveDate,
    ) -> Result<Page<LicenseRow>, ApiError> {
        let query = self.to_query(cnpj, day)?;
        Ok(match (self.sort, self.order) {
            (None, None) => view.list_licenses(&query),
            _ => {
                let (key, descending) = self.sort();
                view.list_licenses_sorted(&query, key, descending)
            }
        })
    }
}

/// Lists licenses, filtered and paged, now or as of a moment.
#[utoipa::path(get, path = "/v1/licenses", tag = "licenses", params(LicenseListQuery),
    responses((status = 200, body = Page<LicenseRow>)))]
async fn list_licenses(
    state: State,
    _caller: As<Readers>,
    Query(q): Query<LicenseListQuery>,
) -> Answer {
    read_your_writes(&state, q.min_position).await?;
    let page = match q.as_of {
        None => {
            let day = state.ledger.today();
            live(&state, q.page(state.ledger.view(), None, day)?)
        }
        Some(t) => {
            let day = state.ledger.calendar().day(t);
            let read = move |view: &Arc<LedgerView>| q.page(view, None, day);
            state.ledger.read_as_of(AsOf::Time(t), read).await??
        }
    };
    Ok(HttpResponse::Ok().json(page))
}

/// A page of the live table with "Última Comunicação" filled in from the check-ins this
/// server answered (as of a past moment, the rows keep the recorded ones).
fn live(state: &State, mut page: Page<LicenseRow>) -> Page<LicenseRow> {
    for row in &mut page.items {
        state.ledger.fill_last_communication(row);
    }
    page
}

/// A read, now or as of a moment.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadAt {
    /// Wait until the read model has applied this position (a command's answer).
    min_position: Option<Position>,
    /// Answer as things stood at this moment (RFC 3339), rebuilt from the log.
    as_of: Option<DateTime<Utc>>,
}

/// One license.
#[utoipa::path(get, path = "/v1/licenses/{id}", tag = "licenses",
    params(("id" = LicenseId, Path), ReadAt),
    responses((status = 200, body = LicenseRow), (status = 404, body = ErrorBody)))]
async fn get_license(
    state: State,
    _caller: As<Readers>,
    id: web::Path<String>,
    Query(q): Query<ReadAt>,
) -> Answer {
    let license_id: LicenseId = path_value("id", &id)?;
    read_your_writes(&state, q.min_position).await?;
    let row = match q.as_of {
        None => state.ledger.view().license(license_id).map(|mut row| {
            state.ledger.fill_last_communication(&mut row);
            row
        }),
        Some(t) => {
            state
                .ledger
                .license_as_of(license_id, AsOf::Time(t))
                .await?
        }
    };
    let row =
        row.ok_or_else(|| ApiError::NotFound(format!("license {license_id} does not exist")))?;
    Ok(HttpResponse::Ok().json(row))
}

/// One entry of a license's history ("Histórico"), newest first.
#[derive(Serialize, ToSchema)]
pub struct HistoryEntry {
    position: Position,
    hash: ledger_events::Hash,
    recorded_at: DateTime<Utc>,
    actor: ledger_events::Actor,
    /// The event's type, e.g. `LicenseRenewed`.
    event_type: String,
    /// What happened, in pt-BR.
    description: String,
}

/// A page of something.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageAt {
    /// Wait until the read model has applied this position (a command's answer).
    min_position: Option<Position>,
    /// Entries to skip.
    offset: Option<usize>,
    /// Entries to return (at most 500 for a history).
    limit: Option<usize>,
}

/// A license's history, newest first.
#[utoipa::path(get, path = "/v1/licenses/{id}/history", tag = "licenses",
    params(("id" = LicenseId, Path), PageAt),
    responses((status = 200, body = Page<HistoryEntry>), (status = 404, body = ErrorBody)))]
async fn history(
    state: State,
    _caller: As<Readers>,
    id: web::Path<String>,
    Query(q): Query<PageAt>,
) -> Answer {
    let license_id: LicenseId = path_value("id", &id)?;
    read_your_writes(&state, q.min_position).await?;
    let view = state.ledger.view();
    if view.license(license_id).is_none() {
        return Err(ApiError::NotFound(format!(
            "license {license_id} does not exist"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    let limit = q
        .limit
        .unwrap_or(HISTORY_PAGE_DEFAULT)
        .min(HISTORY_PAGE_MAX);
    let (total, records) = state.ledger.history(license_id, offset, limit).await?;
    let mut items = Vec::with_capacity(records.len());
    for record in records {
        let event = record
            .event()
            .map_err(|e| ApiError::from(crate::store::StoreError::from(e)))?;
        let e = &record.envelope;
        items.push(HistoryEntry {
            position: e.position,
            hash: e.hash,
            recorded_at: e.recorded_at,
            actor: e.actor.clone(),
            event_type: e.event_type.clone(),
            description: ledger_projections::describe(e, &event),
        });
    }
    Ok(HttpResponse::Ok().json(Page {
        items,
        total,
        offset,
        limit,
    }))
}

/// Filters of the contingency list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContingencyListQuery {
    /// Wait until the read model has applied this position (a command's answer).
    min_position: Option<Position>,
    #[param(value_type = Option<Cnpj>)]
    cnpj: Option<Cnpj>,
    /// Only contingencies not cleared.
    open_only: Option<bool>,
    #[param(value_type = Option<ContingencyKind>)]
    kind: Option<ContingencyKind>,
    /// Rows to skip.
    offset: Option<usize>,
    /// Rows to return.
    limit: Option<usize>,
}

/// The contingency list.
#[utoipa::path(get, path = "/v1/contingencies", tag = "contingencies",
    params(ContingencyListQuery), responses((status = 200, body = Page<ContingencyRow>)))]
async fn list_contingencies(
    state: State,
    _caller: As<Readers>,
    Query(q): Query<ContingencyListQuery>,
) -> Answer {
    read_your_writes(&state, q.min_position).await?;
    let defaults = ContingencyQuery::default();
    let query = ContingencyQuery {
        cnpj: q.cnpj,
        open_only: q.open_only.unwrap_or(false),
        kind: q.kind,
        offset: q.offset.unwrap_or(0),
        limit: q.limit.unwrap_or(defaults.limit),
    };
    Ok(HttpResponse::Ok().json(state.ledger.view().contingencies(&query)))
}

/// One customer's licenses, filtered and paged, now or as of a moment.
#[utoipa::path(get, path = "/v1/customers/{cnpj}/licenses", tag = "customers",
    params(("cnpj" = Cnpj, Path), LicenseListQuery),
    responses((status = 200, body = Page<LicenseRow>), (status = 404, body = ErrorBody)))]
async fn customer_licenses(
    state: State,
    _caller: As<Readers>,
    path: web::Path<String>,
    Query(q): Query<LicenseListQuery>,
) -> Answer {
    let cnpj: Cnpj = path_value("cnpj", &path)?;
    read_your_writes(&state, q.min_position).await?;
    let page = match q.as_of {
        None => {
            let view = state.ledger.view();
            if view.customer(&cnpj).is_none() {
                return Err(ApiError::NotFound(format!(
                    "customer {cnpj} does not exist"
                )));
            }
            let day = state.ledger.today();
            live(&state, q.page(view, Some(cnpj), day)?)
        }
        Some(t) => {
            let day = state.ledger.calendar().day(t);
            let read = move |view: &Arc<LedgerView>| {
                if view.customer(&cnpj).is_none() {
                    return Err(ApiError::NotFound(format!(
                        "customer {cnpj} did not exist at {t}"
                    )));
                }
                q.page(view, Some(cnpj), day)
            };
            state.ledger.read_as_of(AsOf::Time(t), read).await??
        }
    };
    Ok(HttpResponse::Ok().json(page))
}

// ---- auditors ----

/// A page of the raw log.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogPage {
    /// First position (default 1).
    from: Option<Position>,
    /// Records to return, at most 1000 (default 100).
    #[param(maximum = 1000)]
    limit: Option<usize>,
}

/// Records of the log, each with its envelope, its hash and its event's JSON.
#[derive(Serialize, ToSchema)]
pub struct LogRecords {
    /// The records, in position order.
    items: Vec<ledger_events::RecordJson>,
    /// The position to ask for next.
    next: Position,
}

/// Reads the raw log.
#[utoipa::path(get, path = "/v1/events", tag = "audit", params(LogPage),
    responses((status = 200, body = LogRecords)))]
async fn events(state: State, _caller: As<Readers>, Query(q): Query<LogPage>) -> Answer {
    let from: Position = q.from.unwrap_or(1);
    let limit: usize = q.limit.unwrap_or(100);
    if limit > EVENTS_PAGE_MAX {
        return Err(ApiError::field(
            "limit",
            format!("at most {EVENTS_PAGE_MAX}"),
        ));
    }
    let records = state.ledger.read_log(from, limit).await?;
    let mut items = Vec::with_capacity(records.len());
    for r in &records {
        let json = r.to_json().map_err(|e| {
            tracing::error!(error = %e, position = r.envelope.position, "record does not decode");
            ApiError::Internal
        })?;
        items.push(json);
    }
    let next = records.last().map_or(from, |r| r.envelope.position + 1);
    Ok(HttpResponse::Ok().json(LogRecords { items, next }))
}

/// The log's head, signed by the server's key: an auditor compares it with a replay.
#[derive(Serialize, ToSchema)]
pub struct SignedHead {
    /// Records in the log.
    count: Position,
    /// Position of the last record.
    head_position: Position,
    /// Hash of the last record (all zeros for an empty log).
    head_hash: ledger_events::Hash,
    /// The signing key's id.
    key_id: String,
    /// Ed25519 signature over the position and hash, 128 lower-case hex digits.
    #[schema(pattern = "^[0-9a-f]{128}$")]
    signature: String,
}

/// The signed head of the log.
#[utoipa::path(get, path = "/v1/audit/head", tag = "audit",
    responses((status = 200, body = SignedHead)))]
async fn audit_head(state: State, _caller: As<Readers>) -> Answer {
    let head = state.ledger.head().await?;
    Ok(HttpResponse::Ok().json(SignedHead {
        count: head.position,
        head_position: head.position,
        head_hash: head.hash,
        key_id: state.signer.key_id().to_owned(),
        signature: state.signer.sign_head(head.position, &head.hash),
    }))
}
