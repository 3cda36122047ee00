//! The check-in decision: what a terminal is told, and which events that takes.
//!
//! A check-in reads several aggregates (customer, the terminal's license or the free ones,
//! the contract, open contingencies, the terminal's last recorded check-in) through the
//! projected view and decides, in the manual's order:
//! 1. customer missing or inactive: refused, `Usuário inválido.` (HTTP 401 at the edge);
//!    blocked or blacklisted: refused, `Liberação do sistema não efetivado! ...`;
//! 2. the license bound to this terminal for this product, or else the first free one
//!    (usable licenses first, then the one this terminal held before, then lowest id), which
//!    this check-in binds; none: refused;
//! 3. contract renewal when within the renew-before window;
//! 4. blocked, deactivated: refused; under a type 01 contingency: valid until expiry + 7
//!    days with the contingency texts, refused after; expired: refused; 3 days or fewer left:
//!    valid with the warning; otherwise valid;
//! 5. a manual (type 02) contingency of this terminal is cleared: it reached its server;
//! 6. a `TerminalCheckedIn` is recorded only when something changed (bind, IP, program
//!    version, outcome) or the last recorded one is older than the check-in interval.
//!
//! Binding always picks the same license for the same view (usable first, the terminal's
//! previous one, lowest id) and
//! appends with the version it saw, so two terminals racing for the last free license get
//! one bind and one version conflict, and one terminal's own racing check-ins converge on one
//! license: after a conflict the caller catches the view up and decides again.

use std::net::IpAddr;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ledger_events::answer::OutcomeCode;
use ledger_events::{
    texts, CheckInOutcome, Cnpj, ContingencyCleared, ContingencyKind, Event, HardwareId,
    HardwareKey, LicenseBound, LicenseId, LicenseRenewed, Product, ProgramVersion, RefusalReason,
    RenewalCause, Resources, StreamVersion, TerminalCheckedIn, TerminalNumber,
};
use ledger_projections::rows::{ContingencyRow, ContractRow, CustomerRow, LastCheckIn, LicenseRow};

use super::contract::Contract;
use super::license::{contract_renewal, RenewalTerms};
use super::Calendar;

/// Days a license keeps working past its expiry under a type 01 contingency.
pub const UPSTREAM_GRACE_DAYS: i64 = 7;
/// Days left at or under which terminals are warned.
pub const WARNING_DAYS: i64 = 3;

/// What a terminal sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckInRequest {
    /// The customer.
    pub cnpj: Cnpj,
    /// The product checking in.
    pub product: Product,
    /// The terminal.
    pub hardware_id: HardwareId,
    /// Its license key.
    pub hardware_key: HardwareKey,
    /// Its address.
    pub ip: Option<IpAddr>,
    /// Its program version.
    pub program_version: Option<ProgramVersion>,
    /// "Nº do Caixa".
    pub caixa: Option<TerminalNumber>,
    /// "Equipamento".
    pub equipamento: Option<TerminalNumber>,
}

/// What the decision reads, from the projected view.
#[derive(Clone, Debug)]
pub struct CheckInContext {
    /// The customer, if registered.
    pub customer: Option<CustomerRow>,
    /// The license of this product bound to this terminal, if any.
    pub bound: Option<LicenseRow>,
    /// Every license of this customer and product, by id.
    pub candidates: Vec<LicenseRow>,
    /// The contract of the license that will answer (the caller looks it up once the
    /// license is known; see [`CheckInContext::contract_for`]).
    pub contracts: Vec<ContractRow>,
    /// The customer's open contingency entries.
    pub contingencies: Vec<ContingencyRow>,
    /// The terminal's last recorded check-in for this product, if any.
    pub last_recorded: Option<LastCheckIn>,
    /// How old a recorded check-in may get before an unchanged one is recorded again.
    pub record_interval: Duration,
    /// The customer's calendar: every day rule is about its local day.
    pub calendar: Calendar,
}

impl CheckInContext {
    fn contract_for(&self, license: &LicenseRow) -> Option<Contract> {
        let id = license.contract_id?;
        self.contracts
            .iter()
            .find(|c| c.contract_id == id)
            .map(Contract::from)
    }
}

/// One append the check-in needs, with the stream version it was decided on.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Bind the license (stream `license-{id}`).
    Bind {
        /// The license's stream version seen.
        expected_version: StreamVersion,
        /// The event.
        event: Event,
    },
    /// Renew the license by its contract (stream `license-{id}`).
    Renew {
        /// The license's stream version after the bind, if any.
        expected_version: StreamVersion,
        /// The event.
        event: Event,
    },
    /// Close this terminal's manual contingency (stream `contingency-{cnpj}`; any version).
    ClearManualContingency {
        /// The event.
        event: Event,
    },
    /// Record the check-in (stream `terminal-{cnpj}-{hardware id}`, any version: the
    /// caller serializes one terminal's check-ins, and a duplicate record from another node
    /// is harmless).
    Record {
        /// The event.
        event: Event,
    },
}

/// The decision: appends to make, then the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckInPlan {
    /// Appends, in order.
    pub steps: Vec<Step>,
    /// What the terminal is told (as recorded).
    pub outcome: CheckInOutcome,
    /// The machine-readable code.
    pub code: OutcomeCode,
    /// The answering license, after the plan's own bind and renewal.
    pub license_id: Option<LicenseId>,
    /// The license's expiry after renewal.
    pub license_expires_on: Option<NaiveDate>,
    /// The date shown (the contingency's own expiry under contingency).
    pub shown_expiry: Option<NaiveDate>,
    /// Days left until `shown_expiry`.
    pub days_left: Option<i64>,
    /// Resources sent with a selling answer (empty when refused).
    pub resources: Resources,
    /// The exact pt-BR texts, in display order.
    pub messages: Vec<String>,
    /// Until when the same context gives the same decision: the next day (every date rule
    /// is by day) or the moment the check-in is due to be recorded again, whichever comes
    /// first. A decision with no steps may be reused for the same request until then, as
    /// long as nothing it was decided from changed.
    pub holds_until: DateTime<Utc>,
}

/// Whether a license can answer a check-in on `day` (active, unblocked, not expired): a
/// check-in binds usable free licenses before unusable ones.
pub fn usable(l: &LicenseRow, day: NaiveDate) -> bool {
    l.active && !l.blocked && l.expires_on >= day
}

/// Decides a check-in at `now` from `ctx`. Pure.
pub fn decide_check_in(
    req: &CheckInRequest,
    ctx: &CheckInContext,
    now: DateTime<Utc>,
) -> CheckInPlan {
    let day = ctx.calendar.day(now);
    let mut steps = Vec::new();

    // 1. The customer.
    let customer_refusal = match &ctx.customer {
        None => Some(RefusalReason::CustomerInactive),
        Some(c) if !c.active => Some(RefusalReason::CustomerInactive),
        Some(c) if c.blocked || c.blacklisted => Some(RefusalReason::CustomerBlocked),
        Some(_) => None,
    };
    if let Some(reason) = customer_refusal {
        return finish(
            req,
            ctx,
            now,
            steps,
            None,
            false,
            CheckInOutcome::Refused { reason },
        );
    }

    // 2. The license: this terminal's, or the first free one, which it binds.
    let (mut license, bound_now) = match &ctx.bound {
        Some(l) => match &l.binding {
            Some(b) if b.hardware_key == req.hardware_key => (l.clone(), false),
            // Same hardware id, another key: not this terminal's license.
            _ => {
                let refused = CheckInOutcome::Refused {
                    reason: RefusalReason::NoLicenseAvailable,
                };
                return finish(req, ctx, now, steps, None, false, refused);
            }
        },
        None => {
            let mut free: Vec<&LicenseRow> = ctx
                .candidates
                .iter()
                .filter(|l| l.binding.is_none())
                .collect();
            // Usable first; among those, the one this terminal held before (manual, "Caso
            // tratado": after Desassociar it comes back to its license, #1680); then lowest id.
            let held_before = |l: &LicenseRow| {
                l.last_check_in
                    .as_ref()
                    .is_some_and(|c| c.hardware_id == req.hardware_id)
            };
            free.sort_by_key(|l| (!usable(l, day), !held_before(l), l.license_id));
            let Some(chosen) = free.first() else {
                let refused = CheckInOutcome::Refused {
                    reason: RefusalReason::NoLicenseAvailable,
                };
                return finish(req, ctx, now, steps, None, false, refused);
            };
            let event: Event = LicenseBound {
                license_id: chosen.license_id,
                hardware_id: req.hardware_id,
                hardware_key: req.hardware_key,
                ip: req.ip,
                caixa: req.caixa,
                equipamento: req.equipamento,
            }
            .into();
            steps.push(Step::Bind {
                expected_version: chosen.version,
                event,
            });
            let mut l = (*chosen).clone();
            l.version += 1;
            (l, true)
        }
    };

    // 3. Contract renewal.
    if license.active {
        if let Some(contract) = ctx.contract_for(&license) {
            let terms = RenewalTerms {
                contract,
                customer_active: true,
                today: day,
            };
            if let (Some(expires_on), Some(contract_id)) = (
                contract_renewal(license.expires_on, &terms, day),
                license.contract_id,
            ) {
                steps.push(Step::Renew {
                    expected_version: license.version,
                    event: LicenseRenewed {
                        license_id: license.license_id,
                        previous_expiry: license.expires_on,
                        expires_on,
                        cause: RenewalCause::Contract { contract_id },
                    }
                    .into(),
                });
                license.expires_on = expires_on;
                license.version += 1;
            }
        }
    }

    // 4. The outcome.
    let upstream = ctx
        .contingencies
        .iter()
        .any(|c| c.kind == ContingencyKind::Intelliweb && c.cleared_at.is_none());
    let outcome = if license.blocked {
        CheckInOutcome::Refused {
            reason: RefusalReason::LicenseBlocked,
        }
    } else if !license.active {
        CheckInOutcome::Refused {
            reason: RefusalReason::LicenseDeactivated,
        }
    } else if upstream {
        let grace = license.expires_on + Duration::days(UPSTREAM_GRACE_DAYS);
        if day <= grace {
            CheckInOutcome::Contingency {
                kind: ContingencyKind::Intelliweb,
                expires_on: grace,
            }
        } else {
            CheckInOutcome::Refused {
                reason: RefusalReason::GraceExpired,
            }
        }
    } else if day > license.expires_on {
        CheckInOutcome::Refused {
            reason: RefusalReason::LicenseExpired,
        }
    } else {
        let days_left = (license.expires_on - day).num_days();
        if days_left <= WARNING_DAYS {
            CheckInOutcome::ExpiringSoon {
                expires_on: license.expires_on,
                days_left: days_left as u16,
            }
        } else {
            CheckInOutcome::Valid {
                expires_on: license.expires_on,
            }
        }
    };

    // 5. A manual contingency of this terminal ends: it reached its server.
    if ctx.contingencies.iter().any(|c| {
        c.kind == ContingencyKind::Manual
            && c.hardware_id == Some(req.hardware_id)
            && c.cleared_at.is_none()
    }) {
        steps.push(Step::ClearManualContingency {
            event: ContingencyCleared {
                cnpj: req.cnpj,
                kind: ContingencyKind::Manual,
                hardware_id: Some(req.hardware_id),
                note: None,
            }
            .into(),
        });
    }

    finish(req, ctx, now, steps, Some(license), bound_now, outcome)
}

/// Adds the record step when due and builds the answer.
fn finish(
    req: &CheckInRequest,
    ctx: &CheckInContext,
    now: DateTime<Utc>,
    mut steps: Vec<Step>,
    license: Option<LicenseRow>,
    bound_now: bool,
    outcome: CheckInOutcome,
) -> CheckInPlan {
    let license_id = license.as_ref().map(|l| l.license_id);
    let last = ctx.last_recorded.as_ref();
    let changed = match last {
        None => true,
        Some(last) => {
            bound_now
                || last.ip != req.ip
                || last.program_version != req.program_version
                || last.outcome != outcome
                || now.signed_duration_since(last.at) >= ctx.record_interval
        }
    };
    if changed {
        steps.push(Step::Record {
            event: TerminalCheckedIn {
                cnpj: req.cnpj,
                product: req.product,
                hardware_id: req.hardware_id,
                hardware_key: req.hardware_key,
                license_id,
                ip: req.ip,
                program_version: req.program_version.clone(),
                caixa: req.caixa,
                equipamento: req.equipamento,
                outcome,
            }
            .into(),
        });
    }
    let day = ctx.calendar.day(now);
    let next_day = ctx.calendar.next_day_start(now);
    let holds_until = match last {
        Some(last) => next_day.min(last.at + ctx.record_interval),
        None => next_day,
    };
    let (code, shown_expiry, messages) = present(&outcome, license.as_ref());
    let sells = code.sells();
    CheckInPlan {
        steps,
        outcome,
        code,
        license_id,
        license_expires_on: license.as_ref().map(|l| l.expires_on),
        shown_expiry,
        days_left: shown_expiry.map(|d| (d - day).num_days()),
        resources: match (&license, sells) {
            (Some(l), true) => l.resources.clone(),
            _ => Resources::default(),
        },
        messages,
        holds_until,
    }
}

/// The code, the date shown and the exact pt-BR texts for an outcome.
pub fn present(
    outcome: &CheckInOutcome,
    license: Option<&LicenseRow>,
) -> (OutcomeCode, Option<NaiveDate>, Vec<String>) {
    let expiry = license.map(|l| l.expires_on);
    match *outcome {
        CheckInOutcome::Valid { expires_on } => (
            OutcomeCode::Valid,
            Some(expires_on),
            vec![texts::expires_on(expires_on)],
        ),
        CheckInOutcome::ExpiringSoon {
            expires_on,
            days_left,
        } => (
            OutcomeCode::Expiring,
            Some(expires_on),
            vec![
                texts::expires_on(expires_on),
                texts::days_left_warning(i64::from(days_left)),
                texts::license_date(expires_on),
            ],
        ),
        // Under the warning, `DATA DA LICENÇA:` (manual, "Contingência"): the date selling
        // ends, the contingency's own expiry (type 01) or the license's (type 02, whose
        // contingency lasts only the offline code's day).
        CheckInOutcome::Contingency {
            kind: ContingencyKind::Intelliweb,
            expires_on,
        } => (
            OutcomeCode::ContingencyUpstream,
            Some(expires_on),
            vec![
                texts::CONTINGENCY_UPSTREAM.to_owned(),
                texts::expires_on_contingency_upstream(expires_on),
                texts::license_date(expires_on),
            ],
        ),
        CheckInOutcome::Contingency {
            kind: ContingencyKind::Manual,
            expires_on,
        } => (
            OutcomeCode::ContingencyManual,
            Some(expires_on),
            vec![
                texts::expires_on_contingency_manual(expires_on),
                texts::license_date(expiry.unwrap_or(expires_on)),
            ],
        ),
        CheckInOutcome::Refused { reason } => {
            let (code, text) = match reason {
                RefusalReason::CustomerInactive => {
                    (OutcomeCode::CustomerInactive, texts::CUSTOMER_INACTIVE)
                }
                RefusalReason::CustomerBlocked => {
                    (OutcomeCode::CustomerBlocked, texts::NOT_RELEASED)
                }
                RefusalReason::NoLicenseAvailable => (OutcomeCode::NoLicense, texts::NO_LICENSE),
                RefusalReason::LicenseBlocked => (OutcomeCode::Blocked, texts::NOT_RELEASED),
                RefusalReason::LicenseDeactivated => {
                    (OutcomeCode::Deactivated, texts::NOT_RELEASED)
                }
                RefusalReason::LicenseExpired => (OutcomeCode::Expired, texts::NOT_RELEASED),
                RefusalReason::GraceExpired => (OutcomeCode::GraceExpired, texts::NOT_RELEASED),
            };
            let messages = match (reason, expiry) {
                // The AVISO of a 401 (manual, "Cliente Inativado").
                (RefusalReason::CustomerInactive, _) => texts::refused_401(text),
                // "licença expirada": the refusal, then the date it expired.
                (RefusalReason::LicenseExpired, Some(expiry)) => {
                    vec![text.to_owned(), texts::expires_on(expiry)]
                }
                _ => vec![text.to_owned()],
            };
            (code, expiry, messages)
        }
    }
}
