//! `POST /v1/checkin`, the hot path: terminals asking, many times a day, whether they may
//! sell.
//!
//! Most check-ins change nothing: the terminal asks again and gets the answer it got before.
//! [`AnswerCache`] keeps, per (customer, terminal, product), the last answer's bytes, and
//! serves them again while three things hold:
//! - the request is the same (hardware key, IP, program version, caixa, equipamento) and
//!   carries no nonce (a nonce asks for a fresh signature);
//! - nothing of the customer changed in the view since the answer was decided: the view's
//!   per-customer stamp ([`LedgerView::customer_stamp`]) is the one read *before* deciding
//!   (a change applied while deciding moves the stamp past it, so the answer is dropped, never
//!   kept stale);
//! - the clock is inside the decision's own validity ([`CheckInPlan::holds_until`]: the
//!   day, and the moment the check-in is due to be recorded again) and has not gone back
//!   before it was decided.
//!
//! Only decisions that appended nothing are kept. A hit skips the decision, the texts, the
//! signature and the JSON encoding.
//!
//! [`LedgerView::customer_stamp`]: ledger_projections::view::LedgerView::customer_stamp
//! [`CheckInPlan::holds_until`]: crate::domain::checkin::CheckInPlan::holds_until

use std::net::IpAddr;

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use chrono::{DateTime, NaiveDate, Utc};
use dashmap::DashMap;
use ledger_events::answer::{parse_nonce, OutcomeCode, SignedAnswer};
use ledger_events::{
    Cnpj, HardwareId, HardwareKey, Position, Product, ProgramVersion, Resources, TerminalNumber,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{As, Terminals};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::Json;
use super::quotas::{count, OverQuota};
use super::AppState;
use crate::app::checkin::{Admission, Admitted};
use crate::config::Role;
use crate::domain::checkin::{CheckInContext, CheckInPlan, CheckInRequest, Step};

/// Most answers kept; past it the cache starts over (one entry per terminal and product,
/// about 1 KiB each).
pub const ANSWER_CACHE_MAX: usize = 200_000;

/// What a terminal sends (see the README's API section).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CheckIn)]
pub struct CheckInBody {
    /// The terminal's customer.
    cnpj: Cnpj,
    /// The program asking.
    product: Product,
    /// The terminal's hardware id.
    hardware_id: HardwareId,
    /// The terminal's hardware key: binds a free license, then must stay the same.
    hardware_key: HardwareKey,
    /// The terminal's own address as it sees it, for the support's view.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    ip: Option<IpAddr>,
    /// The program's version.
    #[serde(default)]
    program_version: Option<ProgramVersion>,
    /// "Nº do Caixa".
    #[serde(default)]
    caixa: Option<TerminalNumber>,
    /// "Equipamento".
    #[serde(default)]
    equipamento: Option<TerminalNumber>,
    /// Echoed inside the signed answer, so a recorded answer cannot be replayed: 1 to 64 of
    /// `A-Z a-z 0-9 _ -`. Without one, an unchanged answer may be served again.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    nonce: Option<String>,
}

impl CheckInBody {
    /// The domain's request, and the nonce if one was sent (checked).
    pub fn into_request(self) -> Result<(CheckInRequest, Option<String>), ApiError> {
        let nonce = self
            .nonce
            .as_deref()
            .map(parse_nonce)
            .transpose()
            .map_err(|e| ApiError::field("nonce", e))?;
        let req = CheckInRequest {
            cnpj: self.cnpj,
            product: self.product,
            hardware_id: self.hardware_id,
            hardware_key: self.hardware_key,
            ip: self.ip,
            program_version: self.program_version,
            caixa: self.caixa,
            equipamento: self.equipamento,
        };
        Ok((req, nonce))
    }
}

/// The answer to a check-in: the signed answer, and its fields repeated at the top for a
/// reader that does not verify. A refusal to sell is an answer (200), not an error; only an
/// inactive customer answers 401, with the error fields and the signed answer both.
#[derive(Serialize, ToSchema)]
#[schema(as = CheckInResponse)]
pub struct CheckInAnswerBody<'a> {
    #[serde(flatten)]
    signed: &'a SignedAnswer,
    /// What the terminal is told to do.
    outcome: OutcomeCode,
    /// The exact pt-BR texts to show, in order.
    messages: &'a [String],
    /// The date shown: the license's expiry, or the contingency's own.
    expires_on: Option<NaiveDate>,
    /// Days left until `expires_on`, when the terminal should show them.
    days_left: Option<i64>,
    /// The license's resources.
    resources: &'a Resources,
    /// A relay's answers: the center's certificate of the relay's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<&'a ledger_events::answer::RelayCertificate>,
    /// With 401 only: `customer_inactive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorCode>,
    /// With 401 only: the manual's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
    /// The version of the server that answered (this program's), not signed.
    #[schema(example = "0.1.0")]
    server_version: &'static str,
    /// The line the terminal logs with it: `EasyCash utilizando a versão 0.1.0 do servidor...`.
    #[schema(example = "EasyCash utilizando a versão 0.1.0 do servidor...")]
    version_line: String,
}

/// This program's version, as the check-in answer names it.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The HTTP status of a check-in answer: 401 for an inactive customer (the manual's
/// `Usuário inválido.`), else 200 (refusals to sell are answers, not errors).
pub fn answer_status(plan: &CheckInPlan) -> StatusCode {
    if plan.code == OutcomeCode::CustomerInactive {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

/// The JSON bytes of a check-in answer.
pub fn encode_answer(
    signed: &SignedAnswer,
    plan: &CheckInPlan,
    certificate: Option<&ledger_events::answer::RelayCertificate>,
) -> Result<Bytes, ApiError> {
    serde_json::to_vec(&CheckInAnswerBody {
        signed,
        outcome: plan.code,
        messages: &plan.messages,
        expires_on: plan.shown_expiry,
        days_left: plan.days_left,
        resources: &plan.resources,
        certificate,
        error: (plan.code == OutcomeCode::CustomerInactive).then_some(ErrorCode::CustomerInactive),
        message: (plan.code == OutcomeCode::CustomerInactive)
            .then_some(ledger_events::texts::CUSTOMER_INACTIVE),
        server_version: SERVER_VERSION,
        version_line: ledger_events::texts::server_version_line(
            signed.answer.product.display_name(),
            SERVER_VERSION,
        ),
    })
    .map(Bytes::from)
    .map_err(|e| {
        tracing::error!(error = %e, "encoding a check-in answer");
        ApiError::Internal
    })
}

/// One kept answer.
struct Cached {
    request: CheckInRequest,
    stamp: Position,
    decided_at: DateTime<Utc>,
    holds_until: DateTime<Utc>,
    /// What the signed answer says, to reuse its signature when a new decision says the
    /// same (see [`AnswerCache::same_answer`]).
    content: Content,
    status: StatusCode,
    body: Bytes,
}

/// The signed content of an answer, besides the terminal's own ids and the time.
#[derive(PartialEq)]
struct Content {
    license_id: Option<ledger_events::LicenseId>,
    code: OutcomeCode,
    shown_expiry: Option<NaiveDate>,
    days_left: Option<i64>,
    resources: Resources,
    messages: Vec<String>,
}

impl Content {
    fn of(plan: &CheckInPlan) -> Self {
        Self {
            license_id: plan.license_id,
            code: plan.code,
            shown_expiry: plan.shown_expiry,
            days_left: plan.days_left,
            resources: plan.resources.clone(),
            messages: plan.messages.clone(),
        }
    }
}

/// The last answer per (customer, terminal, product); see the module documentation.
#[derive(Default)]
pub struct AnswerCache {
    entries: DashMap<(Cnpj, HardwareId, Product), Cached, ahash::RandomState>,
}

impl AnswerCache {
    /// The kept answer to `request`, if it still holds at `now` with the customer's view
    /// stamp at `stamp`.
    pub fn get(
        &self,
        request: &CheckInRequest,
        stamp: Position,
        now: DateTime<Utc>,
    ) -> Option<(StatusCode, Bytes)> {
        let key = (request.cnpj, request.hardware_id, request.product);
        let hit = self.entries.get(&key)?;
        let holds = hit.stamp == stamp
            && hit.decided_at <= now
            && now < hit.holds_until
            && hit.request == *request;
        holds.then(|| (hit.status, hit.body.clone()))
    }

    /// The kept answer's bytes if `plan`, a new decision for `request` at `now` that
    /// appended nothing, says exactly what it said, the same day, to the same hardware key.
    /// Its signature is then reused and the entry now holds for `plan` at `stamp` (signing
    /// costs tens of microseconds; a change elsewhere in the customer, such as another
    /// license's resources, would otherwise re-sign every one of its terminals).
    pub fn same_answer(
        &self,
        request: &CheckInRequest,
        plan: &CheckInPlan,
        stamp: Position,
        now: DateTime<Utc>,
    ) -> Option<(StatusCode, Bytes)> {
        if !plan.steps.is_empty() {
            return None;
        }
        let key = (request.cnpj, request.hardware_id, request.product);
        let mut hit = self.entries.get_mut(&key)?;
        // `holds_until` of the kept decision is at the latest the start of the next local day.
        let same = now < hit.holds_until
            && hit.decided_at <= now
            && hit.request.hardware_key == request.hardware_key
            && hit.content == Content::of(plan);
        if !same {
            return None;
        }
        hit.request = request.clone();
        hit.stamp = stamp;
        hit.decided_at = now;
        hit.holds_until = plan.holds_until;
        Some((hit.status, hit.body.clone()))
    }

    /// Keeps the answer to `request`, decided at `decided_at` by `plan` from a view whose
    /// customer stamp was `stamp` before deciding. A plan that appended anything is not
    /// kept (the view has moved on).
    pub fn put(
        &self,
        request: &CheckInRequest,
        plan: &CheckInPlan,
        stamp: Position,
        decided_at: DateTime<Utc>,
        status: StatusCode,
        body: Bytes,
    ) {
        if !plan.steps.is_empty() {
            return;
        }
        if self.entries.len() >= ANSWER_CACHE_MAX {
            self.entries.clear();
        }
        self.entries.insert(
            (request.cnpj, request.hardware_id, request.product),
            Cached {
                request: request.clone(),
                stamp,
                decided_at,
                holds_until: plan.holds_until,
                content: Content::of(plan),
                status,
                body,
            },
        );
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A JSON response of `body`.
pub fn json_answer(status: StatusCode, body: Bytes) -> HttpResponse {
    let mut res = HttpResponse::build(status).body(body);
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// What one check-in has taken of its quotas already (a decision made again after a version
/// conflict takes nothing twice).
#[derive(Default)]
struct Taken {
    /// A place of the token's records this minute.
    record: bool,
    /// A place of the terminal's changes this hour.
    change: bool,
}

/// The write quotas of a terminal token's check-in that would append (see
/// [`crate::http::quotas`]): an unknown terminal past its customer's daily cap is refused; a
/// record due only to a changed IP or program version past the terminal's hourly budget is
/// skipped; past the token's record quota, a bind is refused and a record skipped.
fn admit_check_in(
    state: &AppState,
    token: &str,
    req: &CheckInRequest,
    plan: &CheckInPlan,
    ctx: &CheckInContext,
    taken: &mut Taken,
) -> Admission<OverQuota> {
    let quotas = &state.quotas;
    let now = state.ledger.clock().now();
    let terminal = &req.hardware_id;
    let binds = plan.steps.iter().any(|s| matches!(s, Step::Bind { .. }));
    let records = plan.steps.iter().any(|s| matches!(s, Step::Record { .. }));
    // Never recorded for this product; and for no product of the customer either.
    if ctx.last_recorded.is_none() && state.ledger.view().terminal(&req.cnpj, terminal).is_none() {
        if let Err(over) = quotas.admit_unknown(req.cnpj, *terminal, now, ctx.calendar) {
            count(&quotas.counters.unknown_terminals_refused);
            if over.first {
                tracing::warn!(%token, cnpj = %req.cnpj, %terminal, "write quota: {}", over.message);
            } else {
                tracing::debug!(%token, cnpj = %req.cnpj, %terminal, "write quota: {}", over.message);
            }
            return Admission::Refuse(over);
        }
    }
    // A record due only to a changed IP or program version.
    let change_only = records
        && !binds
        && ctx.last_recorded.as_ref().is_some_and(|last| {
            last.outcome == plan.outcome && now.signed_duration_since(last.at) < ctx.record_interval
        });
    let mut skip = false;
    if change_only && !taken.change {
        if let Err(first) = quotas.take_change(req.cnpj, *terminal, now) {
            count(&quotas.counters.records_skipped_changes);
            if first {
                tracing::warn!(%token, cnpj = %req.cnpj, %terminal, "write quota: the terminal's IP or program version changed {} times this hour (terminal_changes_per_hour); it is recorded again at the record interval or when its answer changes", quotas.settings.terminal_changes_per_hour);
            }
            skip = true;
            if plan.steps.iter().all(|s| matches!(s, Step::Record { .. })) {
                return Admission::SkipRecord;
            }
        } else {
            taken.change = true;
        }
    }
    let took = if taken.record {
        Ok(())
    } else {
        quotas.take_record(token, now)
    };
    if took.is_ok() {
        taken.record = true;
    }
    match took {
        Ok(()) if skip => Admission::SkipRecord,
        Ok(()) => Admission::Write,
        Err(over) => {
            let log = |what: &str| {
                if over.first {
                    tracing::warn!(%token, cnpj = %req.cnpj, %terminal, "write quota: {}; {what}", over.message);
                } else {
                    tracing::debug!(%token, cnpj = %req.cnpj, %terminal, "write quota: {}; {what}", over.message);
                }
            };
            if binds {
                count(&quotas.counters.binds_refused);
                log("a bind is refused");
                Admission::Refuse(over)
            } else {
                if records && !skip {
                    count(&quotas.counters.records_skipped_token);
                }
                log("answered without recording");
                Admission::SkipRecord
            }
        }
    }
}

/// A terminal asks whether it may sell (terminals for their own customer, and admins). The
/// answer is signed: verify it with `GET /v1/keys`.
#[utoipa::path(post, path = "/v1/checkin", tag = "terminals", request_body = CheckInBody,
    responses(
        (status = 200, description = "The answer, also when it refuses to sell",
            body = CheckInAnswerBody),
        (status = 401, description = "No token or an unknown one (the error alone); or the \
            customer is inactive: the error fields and the signed answer, outcome \
            CUSTOMER_INACTIVE, both", body = ErrorBody),
        (status = 404, description = "A terminal token asking for another customer",
            body = ErrorBody),
        (status = 429, description = "`rate_limited`, with `Retry-After` (seconds): a write \
            quota of a terminal token is used up and this check-in would have to write: a new \
            terminal past its customer's `unknown_terminals_per_day`, or a bind past the \
            token's `terminal_records_per_minute`. Nothing was written; retry after the wait. \
            A check-in that would only record is answered as usual, unrecorded",
            headers(("Retry-After" = u32, description = "Seconds until the quota's window ends")),
            body = ErrorBody)))]
pub async fn check_in(
    state: web::Data<AppState>,
    caller: As<Terminals>,
    Json(body): Json<CheckInBody>,
) -> Result<HttpResponse, ApiError> {
    // A terminal sees its own customer only; another's answers as if absent.
    if caller.role == Role::Terminal && caller.cnpj != Some(body.cnpj) {
        return Err(ApiError::NotFound("no such customer".into()));
    }
    let (req, nonce) = body.into_request()?;
    // "Última Comunicação": every check-in that reaches a decision or a kept answer.
    let arrived = state.ledger.clock().now();
    state.ledger.saw_check_in(&req, arrived);
    // Read before deciding: see the module documentation.
    let stamp = state.ledger.view().customer_stamp(&req.cnpj);
    if nonce.is_none() {
        if let Some((status, body)) = state.answers.get(&req, stamp, arrived) {
            return Ok(json_answer(status, body));
        }
    }
    let plan = if caller.role == Role::Terminal {
        // Counted once per check-in, however many times a version conflict makes it decide
        // again.
        let mut taken = Taken::default();
        let admitted = state
            .ledger
            .check_in_admitted(&req, |plan, ctx| {
                admit_check_in(&state, &caller.name, &req, plan, ctx, &mut taken)
            })
            .await?;
        match admitted {
            Admitted::Plan(plan) => plan,
            Admitted::Refused(over) => {
                return Err(ApiError::OverQuota {
                    message: over.message,
                    retry_after_s: over.retry_after_s,
                })
            }
        }
    } else {
        state.ledger.check_in(&req).await?
    };
    let now = state.ledger.clock().now();
    let keep = nonce.is_none();
    if keep {
        if let Some((status, body)) = state.answers.same_answer(&req, &plan, stamp, now) {
            return Ok(json_answer(status, body));
        }
    }
    let signed = state.signer.sign(&req, &plan, nonce, now);
    let status = answer_status(&plan);
    let encoded = encode_answer(&signed, &plan, None)?;
    if keep {
        state
            .answers
            .put(&req, &plan, stamp, now, status, encoded.clone());
    }
    Ok(json_answer(status, encoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ledger_events::{CheckInOutcome, LicenseId};

    fn request() -> CheckInRequest {
        CheckInRequest {
            cnpj: Cnpj::parse("11222333000181").unwrap(),
            product: Product::EasyCash,
            hardware_id: HardwareId::parse("50026B77825EECA5").unwrap(),
            hardware_key: HardwareKey::parse("88A7B56C2B3F326F91362A182483F63E").unwrap(),
            ip: None,
            program_version: None,
            caixa: None,
            equipamento: None,
        }
    }

    fn plan(holds_until: DateTime<Utc>) -> CheckInPlan {
        let expires: NaiveDate = "2023-05-01".parse().unwrap();
        CheckInPlan {
            steps: vec![],
            outcome: CheckInOutcome::Valid {
                expires_on: expires,
            },
            code: OutcomeCode::Valid,
            license_id: LicenseId::new(2438).ok(),
            license_expires_on: Some(expires),
            shown_expiry: Some(expires),
            days_left: Some(35),
            resources: Resources::default(),
            messages: vec![ledger_events::texts::expires_on(expires)],
            holds_until,
        }
    }

    #[test]
    fn a_kept_answer_is_served_only_for_the_same_request_stamp_and_validity() {
        let cache = AnswerCache::default();
        let at = |h| Utc.with_ymd_and_hms(2023, 3, 27, h, 0, 0).unwrap();
        let req = request();
        let body = Bytes::from_static(b"{\"answer\":1}");
        cache.put(&req, &plan(at(20)), 7, at(9), StatusCode::OK, body.clone());

        assert_eq!(cache.get(&req, 7, at(12)), Some((StatusCode::OK, body)));
        assert_eq!(cache.get(&req, 8, at(12)), None, "the customer changed");
        assert_eq!(cache.get(&req, 7, at(20)), None, "past its validity");
        assert_eq!(cache.get(&req, 7, at(8)), None, "the clock went back");
        let mut other_ip = req.clone();
        other_ip.ip = "10.0.0.9".parse().ok();
        assert_eq!(cache.get(&other_ip, 7, at(12)), None, "another request");
        let mut other_terminal = req.clone();
        other_terminal.hardware_id = HardwareId::parse("50026B77825EECA6").unwrap();
        assert_eq!(cache.get(&other_terminal, 7, at(12)), None);
    }

    #[test]
    fn a_new_decision_that_says_the_same_reuses_the_signed_answer_the_same_day_only() {
        let cache = AnswerCache::default();
        let at = |d, h| Utc.with_ymd_and_hms(2023, 3, d, h, 0, 0).unwrap();
        let req = request();
        let body = Bytes::from_static(b"{\"answer\":1}");
        cache.put(
            &req,
            &plan(at(27, 20)),
            7,
            at(27, 9),
            StatusCode::OK,
            body.clone(),
        );

        // Another license of the customer changed (stamp 8): the same answer is decided.
        let same = cache.same_answer(&req, &plan(at(27, 20)), 8, at(27, 10));
        assert_eq!(same, Some((StatusCode::OK, body.clone())));
        assert!(
            cache.get(&req, 8, at(27, 11)).is_some(),
            "now held at stamp 8"
        );

        let mut changed = plan(at(27, 20));
        changed.resources = serde_json::from_str(r#"{"habilita_dav": true}"#).unwrap();
        assert_eq!(cache.same_answer(&req, &changed, 9, at(27, 12)), None);
        assert_eq!(
            cache.same_answer(&req, &plan(at(28, 20)), 9, at(28, 9)),
            None,
            "a new day is signed anew"
        );
        let mut other_key = req.clone();
        other_key.hardware_key = HardwareKey::parse("88A7B56C2B3F326F91362A182483F63F").unwrap();
        assert_eq!(
            cache.same_answer(&other_key, &plan(at(27, 20)), 9, at(27, 12)),
            None
        );
    }

    #[test]
    fn a_decision_that_appended_is_not_kept() {
        let cache = AnswerCache::default();
        let at = Utc.with_ymd_and_hms(2023, 3, 27, 9, 0, 0).unwrap();
        let mut p = plan(at + chrono::Duration::hours(1));
        p.steps.push(crate::domain::checkin::Step::Record {
            event: ledger_events::Event::Terminal(ledger_events::TerminalEvent::CheckedIn(
                ledger_events::TerminalCheckedIn {
                    cnpj: request().cnpj,
                    product: Product::EasyCash,
                    hardware_id: request().hardware_id,
                    hardware_key: request().hardware_key,
                    license_id: None,
                    ip: None,
                    program_version: None,
                    caixa: None,
                    equipamento: None,
                    outcome: p.outcome,
                },
            )),
        });
        cache.put(&request(), &p, 1, at, StatusCode::OK, Bytes::new());
        assert!(cache.is_empty());
    }
}
