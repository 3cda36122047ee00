//! Running a check-in: build the context from the view, decide, append the plan's steps
//! with the versions they were decided on, and on a conflict catch up and decide again.

use ledger_events::{Actor, StreamId};
use ledger_projections::rows::ContractRow;
use ledger_projections::view::LedgerView;
use uuid::Uuid;

use super::{derived_v7, AppError, Ledger};
use crate::domain::checkin::{decide_check_in, CheckInContext, CheckInPlan, CheckInRequest, Step};
use crate::store::{ExpectedVersion, StoreError};

/// What a check-in's appends may do (see [`Ledger::check_in_admitted`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission<R> {
    /// Append every step.
    Write,
    /// Append every step but the check-in record (the answer is the same).
    SkipRecord,
    /// Append nothing and answer `R` instead.
    Refuse(R),
}

/// A check-in's result under an [`Admission`].
#[derive(Clone, Debug)]
pub enum Admitted<R> {
    /// The decision, with the steps that were appended.
    Plan(CheckInPlan),
    /// Refused by the admission: nothing was appended.
    Refused(R),
}

/// The decision's inputs, read from `view`.
pub fn check_in_context(
    view: &LedgerView,
    req: &CheckInRequest,
    record_interval: chrono::Duration,
    calendar: crate::domain::Calendar,
) -> CheckInContext {
    let mut bound = view.bound_license(&req.cnpj, req.product, &req.hardware_id);
    let candidates = if bound.is_none() {
        // The bound-license index and the rows are updated one after the other; when they
        // disagree, a row bound to this terminal wins, so a check-in never binds a second
        // license because it read the index just before the row.
        let all = view.licenses_of(&req.cnpj, req.product);
        bound = all
            .iter()
            .find(|l| l.binding.is_some_and(|b| b.hardware_id == req.hardware_id))
            .cloned();
        if bound.is_some() {
            Vec::new()
        } else {
            all
        }
    } else {
        Vec::new()
    };
    let mut contracts: Vec<ContractRow> = Vec::new();
    for id in bound
        .iter()
        .chain(candidates.iter())
        .filter_map(|l| l.contract_id)
    {
        if !contracts.iter().any(|c| c.contract_id == id) {
            if let Some(c) = view.contract(id) {
                contracts.push(c);
            }
        }
    }
    // The bound license carries its last check-in; the terminal's row (a map per product)
    // is read only when that is not this terminal's.
    let last_recorded = match bound.as_mut().and_then(|l| l.last_check_in.take()) {
        Some(last) if last.hardware_id == req.hardware_id => Some(last),
        _ => view
            .terminal(&req.cnpj, &req.hardware_id)
            .and_then(|t| t.last.get(&req.product).cloned()),
    };
    let customer = view.customer(&req.cnpj);
    // The customer's own zone, when its profile names one.
    let calendar = calendar.for_customer(customer.as_ref().and_then(|c| c.time_zone.as_ref()));
    CheckInContext {
        customer,
        bound,
        candidates,
        contracts,
        contingencies: view.open_contingencies(&req.cnpj),
        last_recorded,
        record_interval,
        calendar,
    }
}

impl Ledger {
    /// The decision's inputs, read from the view.
    pub fn check_in_context(&self, req: &CheckInRequest) -> CheckInContext {
        check_in_context(
            self.view(),
            req,
            self.config().record_interval,
            self.calendar(),
        )
    }

    /// Handles a terminal's check-in: binds a free license on first contact, renews by
    /// contract when due, records the check-in when something changed, and returns the
    /// decision with the texts to show. Races (two terminals, or one terminal twice) are
    /// settled by the store's version checks.
    pub async fn check_in(&self, req: &CheckInRequest) -> Result<CheckInPlan, AppError> {
        match self
            .check_in_admitted(req, |_, _| Admission::<std::convert::Infallible>::Write)
            .await?
        {
            Admitted::Plan(plan) => Ok(plan),
            Admitted::Refused(never) => match never {},
        }
    }

    /// Like [`Ledger::check_in`], with `admit` deciding, for each decision that would append
    /// anything (seeing the decision and the context it was made on), whether its appends
    /// are written, written without the check-in record (the answer is the same), or refused
    /// (`R` is then returned and nothing is appended). The write quotas of the HTTP edge
    /// (`crate::http::quotas`) are applied here, under the terminal's turn.
    pub async fn check_in_admitted<R>(
        &self,
        req: &CheckInRequest,
        mut admit: impl FnMut(&CheckInPlan, &CheckInContext) -> Admission<R>,
    ) -> Result<Admitted<R>, AppError> {
        // One check-in at a time per terminal on this node: its own racing check-ins then
        // decide one after the other instead of settling by conflicts.
        let _turn = self.terminal_lock(&req.cnpj, &req.hardware_id).lock().await;
        let actor = Actor::terminal(&req.hardware_id);
        // A conflict on a bind means another terminal took that license: each one is progress
        // for someone, so a terminal may lose once per free license before it decides on a
        // view with none left (many terminals of one shop starting at once).
        let mut attempts = self.config().conflict_retries + 1;
        let mut attempt = 0;
        while attempt < attempts {
            attempt += 1;
            let ctx = self.check_in_context(req);
            if attempt == 1 {
                attempts = attempts.saturating_add(ctx.candidates.len() as u32);
            }
            let mut plan = decide_check_in(req, &ctx, self.clock().now());
            if !plan.steps.is_empty() {
                match admit(&plan, &ctx) {
                    Admission::Write => {}
                    Admission::SkipRecord => {
                        plan.steps.retain(|s| !matches!(s, Step::Record { .. }));
                    }
                    Admission::Refuse(r) => return Ok(Admitted::Refused(r)),
                }
            }
            match self.run_steps(req, &plan, &actor).await {
                Ok(last) => {
                    if last > 0 {
                        self.wait_for(last).await?;
                    }
                    return Ok(Admitted::Plan(plan));
                }
                Err(StoreError::WrongExpectedVersion { stream, actual, .. }) => {
                    self.settle_conflict(&stream, actual).await?;
                }
                // The store is away (a database outage): a decision that only records the
                // check-in is still the right answer; the record is skipped (the terminal's
                // next check-in records it). Binds and renewals need the store.
                Err(e)
                    if e.is_unavailable()
                        && plan.steps.iter().all(|s| matches!(s, Step::Record { .. })) =>
                {
                    tracing::warn!(error = %e, terminal = %req.hardware_id, "store unavailable: answering the check-in without recording it");
                    return Ok(Admitted::Plan(plan));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contention {
            stream: StreamId::terminal(&req.cnpj, &req.hardware_id),
            attempts,
        })
    }

    /// Appends the plan's steps in order; returns the last position appended (0 if none).
    async fn run_steps(
        &self,
        req: &CheckInRequest,
        plan: &CheckInPlan,
        actor: &Actor,
    ) -> Result<u64, StoreError> {
        let attempt = Uuid::now_v7();
        let mut last = 0;
        for (i, step) in plan.steps.iter().enumerate() {
            let (stream, expected, event) = match step {
                Step::Bind {
                    expected_version,
                    event,
                }
                | Step::Renew {
                    expected_version,
                    event,
                } => (
                    event.stream_id(),
                    ExpectedVersion::Exact(*expected_version),
                    event,
                ),
                Step::ClearManualContingency { event } => {
                    (event.stream_id(), ExpectedVersion::Any, event)
                }
                Step::Record { event } => (
                    StreamId::terminal(&req.cnpj, &req.hardware_id),
                    ExpectedVersion::Any,
                    event,
                ),
            };
            let command_id = derived_v7(attempt, &(i as u32).to_be_bytes());
            let appended = self
                .append(&stream, expected, vec![event.clone()], actor, command_id)
                .await?;
            last = *appended.positions.end();
        }
        Ok(last)
    }
}
