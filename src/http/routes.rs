//! The `/v1` routes. Each handler checks the caller's role, parses its input into the
//! domain's value types (400 naming the field), calls the [`Ledger`](crate::app::Ledger),
//! and answers JSON. Commands answer `{"position": P, ...}`; queries accept
//! `?min_position=P` to wait (bounded) until the read model has applied P.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::{
    Cnpj, ContingencyKind, ContractId, HardwareId, HardwareKey, LicenseId, Note, Position, Product,
    Resources, Serial, TerminalNumber, TradeName,
};
use ledger_projections::asof::AsOf;
use ledger_projections::view::{ContingencyQuery, LedgerView, LicenseQuery, LicenseStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::auth::{Admins, As, Operators, Readers};
use super::error::ApiError;
use super::extract::{Json, Params};
use super::limits::{LimitKey, OFFLINE_ACTIVATIONS_PER_MINUTE};
use super::AppState;
use crate::app::commands::{GrantLicense, OfflineRequest, SignContract};
use crate::app::CommandOutcome;
use crate::config::{new_token, token_digest, Role, TokenEntry};
use crate::domain::contract::ContractCommand;
use crate::domain::customer::CustomerCommand;
use crate::domain::license::LicenseCommand;
use crate::domain::release::ContingencyCommand;
use crate::domain::today;

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
        .service(
            web::scope("/v1")
                .route("/keys", web::get().to(keys))
                .route("/checkin", web::post().to(super::checkin::check_in))
                .route("/customers", web::post().to(register_customer))
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

async fn not_found() -> Answer {
    Err(ApiError::NotFound("no such route".into()))
}

async fn healthz(state: State) -> Answer {
    let head = state.ledger.head().await?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "head_position": head.position,
        "applied_position": state.ledger.view().position(),
    })))
}

async fn keys(state: State) -> Answer {
    Ok(HttpResponse::Ok().json(json!({
        "key_id": state.signer.key_id(),
        "public_key": hex::encode(state.signer.verifying_key().as_bytes()),
    })))
}

fn path_value<T>(field: &str, raw: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    raw.parse().map_err(|e| ApiError::field(field, e))
}

fn command_answer(outcome: &CommandOutcome, extra: serde_json::Value) -> HttpResponse {
    let mut body = json!({ "position": outcome.position(), "was_retry": outcome.was_retry });
    if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    HttpResponse::Ok().json(body)
}

// ---- customers ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterCustomer {
    cnpj: Cnpj,
    trade_name: TradeName,
    #[serde(default)]
    since: Option<NaiveDate>,
    #[serde(default)]
    command_id: Option<Uuid>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    #[serde(default)]
    note: Option<Note>,
    #[serde(default)]
    command_id: Option<Uuid>,
}

fn command_id(id: Option<Uuid>) -> Uuid {
    id.unwrap_or_else(Uuid::now_v7)
}

async fn register_customer(
    state: State,
    caller: As<Operators>,
    Json(b): Json<RegisterCustomer>,
) -> Answer {
    let cmd = CustomerCommand::Register {
        cnpj: b.cnpj,
        trade_name: b.trade_name,
        since: b.since,
    };
    let outcome = state
        .ledger
        .customer(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, json!({ "cnpj": b.cnpj })))
}

async fn customer_action(
    state: State,
    caller: As<Operators>,
    path: web::Path<(String, String)>,
    Json(b): Json<NoteBody>,
) -> Answer {
    let (cnpj, action) = path.into_inner();
    let cnpj: Cnpj = path_value("cnpj", &cnpj)?;
    let note = b.note;
    let cmd = match action.as_str() {
        "activate" => CustomerCommand::Activate { cnpj, note },
        "deactivate" => CustomerCommand::Deactivate { cnpj, note },
        "block" => CustomerCommand::Block { cnpj, note },
        "unblock" => CustomerCommand::Unblock { cnpj, note },
        "blacklist" => CustomerCommand::Blacklist { cnpj, note },
        "unblacklist" => CustomerCommand::Unblacklist { cnpj, note },
        _ => return Err(ApiError::NotFound(format!("no customer action {action}"))),
    };
    let outcome = state
        .ledger
        .customer(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(&outcome, json!({ "cnpj": cnpj })))
}

// ---- contracts ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignContractBody {
    cnpj: Cnpj,
    starts_on: NaiveDate,
    #[serde(default)]
    ends_on: Option<NaiveDate>,
    interval_days: u16,
    renew_before_days: u16,
    #[serde(default)]
    command_id: Option<Uuid>,
}

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
    Ok(command_answer(&outcome, json!({ "contract_id": id })))
}

async fn contract_action(
    state: State,
    caller: As<Operators>,
    path: web::Path<(String, String)>,
    Json(b): Json<NoteBody>,
) -> Answer {
    let (id, action) = path.into_inner();
    let contract_id: ContractId = path_value("id", &id)?;
    let note = b.note;
    let cmd = match action.as_str() {
        "deactivate" => ContractCommand::Deactivate { contract_id, note },
        "reactivate" => ContractCommand::Reactivate { contract_id, note },
        _ => return Err(ApiError::NotFound(format!("no contract action {action}"))),
    };
    let outcome = state
        .ledger
        .contract(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(
        &outcome,
        json!({ "contract_id": contract_id }),
    ))
}

// ---- licenses ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    cnpj: Cnpj,
    product: Product,
    #[serde(default)]
    contract_id: Option<ContractId>,
    expires_on: NaiveDate,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    command_id: Option<Uuid>,
}

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
    Ok(command_answer(&outcome, json!({ "license_id": id })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LicenseActionBody {
    #[serde(default)]
    note: Option<Note>,
    /// For `renew`: the new expiry.
    #[serde(default)]
    expires_on: Option<NaiveDate>,
    #[serde(default)]
    command_id: Option<Uuid>,
}

async fn license_action(
    state: State,
    caller: As<Operators>,
    path: web::Path<(String, String)>,
    Json(b): Json<LicenseActionBody>,
) -> Answer {
    let (id, action) = path.into_inner();
    let license_id: LicenseId = path_value("id", &id)?;
    let note = b.note;
    let cmd = match action.as_str() {
        "renew" => LicenseCommand::Renew {
            license_id,
            expires_on: b
                .expires_on
                .ok_or_else(|| ApiError::field("expires_on", "required to renew"))?,
        },
        "block" => LicenseCommand::Block { license_id, note },
        "unblock" => LicenseCommand::Unblock { license_id, note },
        "deactivate" => LicenseCommand::Deactivate { license_id, note },
        "reactivate" => LicenseCommand::Reactivate { license_id, note },
        "unlink" => LicenseCommand::Unlink { license_id, note },
        _ => return Err(ApiError::NotFound(format!("no license action {action}"))),
    };
    let outcome = state
        .ledger
        .license(cmd, &caller.actor()?, command_id(b.command_id))
        .await?;
    Ok(command_answer(
        &outcome,
        json!({ "license_id": license_id }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesBody {
    resources: Resources,
    #[serde(default)]
    command_id: Option<Uuid>,
}

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
    Ok(command_answer(
        &outcome,
        json!({ "license_id": license_id }),
    ))
}

// ---- contingencies, offline activation, emergency release ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContingencyBody {
    cnpj: Cnpj,
    kind: ContingencyKind,
    #[serde(default)]
    hardware_id: Option<HardwareId>,
    #[serde(default)]
    license_id: Option<LicenseId>,
    #[serde(default)]
    grace_until: Option<NaiveDate>,
    #[serde(default)]
    note: Option<Note>,
    #[serde(default)]
    command_id: Option<Uuid>,
}

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
    Ok(command_answer(&outcome, json!({})))
}

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
    Ok(command_answer(&outcome, json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfflineBody {
    serial: Serial,
    product: Product,
    #[serde(default)]
    cnpj: Option<Cnpj>,
    #[serde(default)]
    license_id: Option<LicenseId>,
    #[serde(default)]
    caixa: Option<TerminalNumber>,
    #[serde(default)]
    equipamento: Option<TerminalNumber>,
    #[serde(default)]
    command_id: Option<Uuid>,
}

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
        json!({
            "counter_key": issued.counter_key.grouped(),
            "valid_until": issued.valid_until,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmergencyBody {
    product: Product,
    hardware_id: HardwareId,
    hardware_key: HardwareKey,
    licensed_to: TradeName,
    #[serde(default)]
    command_id: Option<Uuid>,
}

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
        json!({
            "activation_code": issued.activation_code.to_string(),
            "counter_key": issued.counter_key.grouped(),
        }),
    ))
}

// ---- tokens ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    role: Role,
    #[serde(default)]
    cnpj: Option<Cnpj>,
}

async fn create_token(state: State, _caller: As<Admins>, Json(b): Json<TokenBody>) -> Answer {
    ledger_events::Actor::operator(&b.name).map_err(|e| ApiError::field("name", e))?;
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
        .map_err(|e| {
            tracing::error!(error = %e, "saving a token");
            ApiError::Unavailable("could not save the token".into())
        })?;
    tracing::info!(name = %entry.name, role = ?entry.role, "token created");
    state.gate.tokens.add(entry.clone());
    Ok(HttpResponse::Ok().json(json!({
        "token": token,
        "name": entry.name,
        "role": entry.role,
        "cnpj": entry.cnpj,
    })))
}

// ---- queries ----

/// Waits for `?min_position=` if given.
async fn read_your_writes(state: &AppState, params: &Params) -> Result<(), ApiError> {
    if let Some(p) = params.get::<Position>("min_position")? {
        state.ledger.wait_for(p).await?;
    }
    Ok(())
}

/// The view to read: the live one, or one rebuilt as of `?as_of=` (RFC 3339).
enum ViewAt {
    Live,
    Past(Box<LedgerView>, DateTime<Utc>),
}

async fn view_at(state: &AppState, params: &Params) -> Result<ViewAt, ApiError> {
    match params.get::<DateTime<Utc>>("as_of")? {
        None => Ok(ViewAt::Live),
        Some(t) => {
            let view = state.ledger.view_as_of(AsOf::Time(t)).await?;
            Ok(ViewAt::Past(Box::new(view), t))
        }
    }
}

fn status_param(params: &Params) -> Result<Option<LicenseStatus>, ApiError> {
    params
        .text("status")
        .map(|s| {
            serde_json::from_value(serde_json::Value::String(s)).map_err(|_| {
                ApiError::field(
                    "status",
                    "expected active, blocked, deactivated, expired, free or bound",
                )
            })
        })
        .transpose()
}

fn license_query(
    params: &Params,
    cnpj: Option<Cnpj>,
    day: NaiveDate,
) -> Result<LicenseQuery, ApiError> {
    let defaults = LicenseQuery::default();
    Ok(LicenseQuery {
        cnpj: match cnpj {
            Some(c) => Some(c),
            None => params.get("cnpj")?,
        },
        product: params.get("product")?,
        status: status_param(params)?,
        expiring_within_days: params.get("expiring_within_days")?,
        today: Some(day),
        hardware_key: params.text("hardware_key"),
        text: params.text("text"),
        offset: params.get("offset")?.unwrap_or(0),
        limit: params.get("limit")?.unwrap_or(defaults.limit),
    })
}

async fn list_licenses(state: State, _caller: As<Readers>, params: Params) -> Answer {
    read_your_writes(&state, &params).await?;
    let page = match view_at(&state, &params).await? {
        ViewAt::Live => {
            let q = license_query(&params, None, today(state.ledger.clock().now()))?;
            state.ledger.view().list_licenses(&q)
        }
        ViewAt::Past(view, t) => view.list_licenses(&license_query(&params, None, today(t))?),
    };
    Ok(HttpResponse::Ok().json(page))
}

async fn get_license(
    state: State,
    _caller: As<Readers>,
    id: web::Path<String>,
    params: Params,
) -> Answer {
    let license_id: LicenseId = path_value("id", &id)?;
    read_your_writes(&state, &params).await?;
    let row = match view_at(&state, &params).await? {
        ViewAt::Live => state.ledger.view().license(license_id),
        ViewAt::Past(view, _) => view.license(license_id),
    };
    let row =
        row.ok_or_else(|| ApiError::NotFound(format!("license {license_id} does not exist")))?;
    Ok(HttpResponse::Ok().json(row))
}

#[derive(Serialize)]
struct HistoryEntry {
    position: Position,
    hash: String,
    recorded_at: DateTime<Utc>,
    actor: ledger_events::Actor,
    event_type: String,
    description: String,
}

async fn history(
    state: State,
    _caller: As<Readers>,
    id: web::Path<String>,
    params: Params,
) -> Answer {
    let license_id: LicenseId = path_value("id", &id)?;
    read_your_writes(&state, &params).await?;
    let view = state.ledger.view();
    if view.license(license_id).is_none() {
        return Err(ApiError::NotFound(format!(
            "license {license_id} does not exist"
        )));
    }
    let offset: usize = params.get("offset")?.unwrap_or(0);
    let limit = params
        .get::<usize>("limit")?
        .unwrap_or(HISTORY_PAGE_DEFAULT)
        .min(HISTORY_PAGE_MAX);
    let mut positions = view.history(license_id);
    positions.sort_unstable_by(|a, b| b.cmp(a));
    let total = positions.len();
    let mut items = Vec::new();
    for p in positions.into_iter().skip(offset).take(limit) {
        let record = state.ledger.record_at(p).await?.ok_or_else(|| {
            tracing::error!(position = p, "a history position is not in the log");
            ApiError::Internal
        })?;
        let event = record
            .event()
            .map_err(|e| ApiError::from(crate::store::StoreError::from(e)))?;
        let e = &record.envelope;
        items.push(HistoryEntry {
            position: e.position,
            hash: e.hash.to_string(),
            recorded_at: e.recorded_at,
            actor: e.actor.clone(),
            event_type: e.event_type.clone(),
            description: ledger_projections::describe(e, &event),
        });
    }
    Ok(HttpResponse::Ok().json(json!({
        "items": items, "total": total, "offset": offset, "limit": limit,
    })))
}

async fn list_contingencies(state: State, _caller: As<Readers>, params: Params) -> Answer {
    read_your_writes(&state, &params).await?;
    let defaults = ContingencyQuery::default();
    let kind = params
        .text("kind")
        .map(|s| {
            serde_json::from_value::<ContingencyKind>(serde_json::Value::String(s))
                .map_err(|_| ApiError::field("kind", "expected intelliweb or manual"))
        })
        .transpose()?;
    let q = ContingencyQuery {
        cnpj: params.get("cnpj")?,
        open_only: params.get("open_only")?.unwrap_or(false),
        kind,
        offset: params.get("offset")?.unwrap_or(0),
        limit: params.get("limit")?.unwrap_or(defaults.limit),
    };
    Ok(HttpResponse::Ok().json(state.ledger.view().contingencies(&q)))
}

async fn customer_licenses(
    state: State,
    _caller: As<Readers>,
    path: web::Path<String>,
    params: Params,
) -> Answer {
    let cnpj: Cnpj = path_value("cnpj", &path)?;
    read_your_writes(&state, &params).await?;
    if state.ledger.view().customer(&cnpj).is_none() {
        return Err(ApiError::NotFound(format!(
            "customer {cnpj} does not exist"
        )));
    }
    let q = license_query(&params, Some(cnpj), today(state.ledger.clock().now()))?;
    Ok(HttpResponse::Ok().json(state.ledger.view().list_licenses(&q)))
}

// ---- auditors ----

async fn events(state: State, _caller: As<Readers>, params: Params) -> Answer {
    let from: Position = params.get("from")?.unwrap_or(1);
    let limit: usize = params.get("limit")?.unwrap_or(100);
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
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next": next })))
}

async fn audit_head(state: State, _caller: As<Readers>) -> Answer {
    let head = state.ledger.head().await?;
    Ok(HttpResponse::Ok().json(json!({
        "count": head.position,
        "head_position": head.position,
        "head_hash": head.hash.to_string(),
        "key_id": state.signer.key_id(),
        "signature": state.signer.sign_head(head.position, &head.hash),
    })))
}
