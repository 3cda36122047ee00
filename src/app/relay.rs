//! The central side of on-premises relays: what a relay may forward, and how the center
//! decides each forwarded event.
//!
//! A relay decides check-ins on its copy of its customer's part of the log while the link
//! is down, and writes what happened (binds, renewals by contract, check-in records,
//! contingency entries) to its outbox with event ids it chose. When the link returns it
//! forwards them in order; the center appends each with the relay's event id, so
//! forwarding the same event twice stores it once (the store recognises the retry by id).
//!
//! A relay runs on the customer's premises and is not trusted: everything it forwards is a
//! claim, and the center decides each event again on its own state (the view caught up with
//! the store), with the rules of its own check-in (`crate::domain::checkin`) and of renewal
//! by contract (`crate::domain::license::contract_renewal`), on its own clock's day:
//! - a bind (`license.bound`) only of a license of that customer that is free at the center,
//!   to a terminal that holds no other license of that product, for a customer that is active
//!   and neither blocked nor blacklisted, and, as a check-in chooses, an unusable (blocked,
//!   deactivated or expired) license only when no usable one is free; never one unlinked at
//!   the center after the relay's version (an unlink is support's deliberate act). A bind
//!   already true (that terminal, that key) is accepted with nothing stored;
//! - a renewal (`license.renewed`) only by the license's own contract, of an active license
//!   bound to the terminal whose check-in caused it, and only from the center's expiry to the
//!   expiry the center computes itself today. One the center already has (that expiry or a
//!   later one) is accepted with nothing stored;
//! - a check-in record (`terminal.checked_in`) names its license only when that license is
//!   bound to that terminal (id and key) at the center; otherwise it is stored without the
//!   license (below);
//! - a contingency entry only of the relay's own link: IntelliWeb, for no terminal, license
//!   or grace period (the length is the manual's 7 days past expiry, not the relay's to set);
//!   a clear of that one, or of a terminal's manual contingency by that terminal's check-in;
//! - any other event type is rejected.
//!
//! Terminal-caused events must name as actor the terminal they are about.
//!
//! **The relay's fields are claims; what is stored is the center's decision.** For license
//! events (binds, renewals) the center never stores bytes that differ from its decision: it
//! rejects instead, so the relay, which keeps its own events in its view and skips them when
//! they come back from the center, rebuilds its view from the center's records (a rewritten
//! event would leave the relay's view silently different from the center's). The relay's
//! `expected_version` is only a hint: the decision is on the center's state, and the append
//! is made at the center's version (a version ahead of the center's is read as the center's
//! for the unlink rule). A check-in record is a fact about what the relay answered, which the
//! center keeps; the only field it corrects is the license association (`license_id`
//! cleared when that license is not this terminal's at the center), so a record cannot touch
//! a license the terminal does not hold. Events keep the relay's event ids, so forwarding
//! the same event twice stores it once: a license event already stored under its id is
//! answered with its position before anything is decided again (a decision made once stays
//! made, even if the license moved since), other events are recognised by the store.
//!
//! Every rejection carries a reason, which the relay records with the event.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_events::{
    Actor, Cnpj, ContingencyEvent, ContingencyKind, Event, HardwareId, LicenseBound, LicenseEvent,
    LicenseId, LicenseRenewed, Position, RenewalCause, StreamId, StreamVersion, TerminalCheckedIn,
    TerminalEvent,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AppError, Ledger};
use crate::domain::checkin::usable;
use crate::domain::contract::Contract;
use crate::domain::license::{contract_renewal, RenewalTerms};
use crate::store::{ExpectedVersion, NewEvent, READ_BATCH_MAX};

/// Most events one forward request may carry.
pub const FORWARD_EVENTS_MAX: usize = 500;

/// One event that happened at a relay, as it forwards it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardedEvent {
    /// Chosen once by the relay; a retry reuses it.
    pub event_id: Uuid,
    /// The event's stream (must be the one the event belongs to).
    pub stream_id: String,
    /// For license events: the license's version the relay decided on.
    #[serde(default)]
    pub expected_version: Option<StreamVersion>,
    /// The event type, e.g. `license.bound`.
    pub event_type: String,
    /// The event's data, in the log's JSON form.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Who caused it at the relay (a terminal, or the relay itself).
    pub actor: Actor,
    /// Groups the events of one decision.
    pub correlation_id: Uuid,
    /// When it happened at the relay (kept in the relay's outbox; the center records its
    /// own time).
    pub recorded_at: DateTime<Utc>,
}

/// The center's decision on one forwarded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Resolution {
    /// Stored (now or by an earlier forward of the same event), at `position`; or already
    /// true at the center (`position` is then `None`: nothing needed storing).
    Accepted {
        /// Where the event is stored, if it was.
        position: Option<Position>,
    },
    /// The center's state contradicts it; the relay drops it and follows the center.
    Rejected {
        /// Why, for the relay's log and status.
        reason: String,
    },
}

/// What the center decided on one forwarded event.
enum Decision {
    /// Store this event (the relay's, or the record as the center keeps it).
    Store {
        event: Event,
        actor: Actor,
        expected: ExpectedVersion,
    },
    /// Already true at the center: nothing to store.
    Holds,
    /// Refused, with the reason the relay records.
    Reject(String),
}

/// The actor of an event a terminal's check-in caused: that terminal, which the relay must
/// name.
fn terminal_actor(fwd: &ForwardedEvent, hardware_id: &HardwareId) -> Result<Actor, String> {
    let actor = Actor::terminal(hardware_id);
    if fwd.actor != actor {
        return Err(format!(
            "{} is caused by the check-in of terminal {hardware_id}, not by {:?} {}",
            fwd.event_type, fwd.actor.kind, fwd.actor.name
        ));
    }
    Ok(actor)
}

impl Ledger {
    /// Decides one event forwarded by the relay of `cnpj` (see the module documentation).
    /// `relay` is the relay's own actor, recorded for events a terminal did not cause.
    /// Input errors (an unknown type, a stream that is not the event's, another customer's
    /// event) are `Rejected`, not errors: the relay must drop them, retrying cannot help.
    pub async fn accept_forwarded(
        &self,
        cnpj: Cnpj,
        relay: &Actor,
        fwd: &ForwardedEvent,
    ) -> Result<Resolution, AppError> {
        let reject = |reason: String| Ok(Resolution::Rejected { reason });
        let event = match Event::from_data_json(&fwd.event_type, fwd.data.clone()) {
            Ok(e) => e,
            Err(e) => return reject(format!("{}: {e}", fwd.event_type)),
        };
        let stream = event.stream_id();
        if stream.as_str() != fwd.stream_id {
            return reject(format!(
                "{} belongs to stream {stream}, not {}",
                fwd.event_type, fwd.stream_id
            ));
        }
        let allowed = matches!(
            &event,
            Event::License(LicenseEvent::Bound(_) | LicenseEvent::Renewed(_))
                | Event::Terminal(TerminalEvent::CheckedIn(_))
                | Event::Contingency(_)
        );
        if !allowed {
            return reject(format!("{} is not accepted from a relay", fwd.event_type));
        }
        // Decide on the center's state: everything stored so far, including this request's
        // earlier events, is in the view.
        self.catch_up().await?;
        if self.view().customer_of(&event) != Some(cnpj) {
            return reject(format!("{stream} is not of customer {cnpj}"));
        }
        // A retry of a license event the center stored earlier answers where it is, whatever
        // the license's state now (a decision made once stays made). Other events are
        // recognised by the store itself when appended again.
        if matches!(event, Event::License(_)) {
            if let Some(position) = self.stored_position(&stream, fwd.event_id).await? {
                return Ok(Resolution::Accepted {
                    position: Some(position),
                });
            }
        }
        let day = self.today();
        let decision = match &event {
            Event::License(LicenseEvent::Bound(b)) => {
                self.decide_forwarded_bind(cnpj, fwd, b, day).await?
            }
            Event::License(LicenseEvent::Renewed(r)) => {
                self.decide_forwarded_renewal(cnpj, fwd, r, day)
            }
            Event::Terminal(TerminalEvent::CheckedIn(t)) => self.decide_forwarded_record(fwd, t),
            Event::Contingency(c) => decide_forwarded_contingency(fwd, relay, c),
            _ => Decision::Reject(format!("{} is not accepted from a relay", fwd.event_type)),
        };
        let (event, actor, expected) = match decision {
            Decision::Store {
                event,
                actor,
                expected,
            } => (event, actor, expected),
            Decision::Holds => return Ok(Resolution::Accepted { position: None }),
            Decision::Reject(reason) => return reject(reason),
        };
        let new = NewEvent {
            event_id: fwd.event_id,
            event,
            actor,
            correlation_id: fwd.correlation_id,
        };
        // A license that moved at the center meanwhile (a version conflict) fails the
        // request: the relay forwards again later and gets a fresh decision.
        let appended = self.store().append(&stream, expected, vec![new]).await?;
        Ok(accepted(appended.positions.end()))
    }

    /// A forwarded bind, decided as a check-in would bind (see the module documentation).
    async fn decide_forwarded_bind(
        &self,
        cnpj: Cnpj,
        fwd: &ForwardedEvent,
        b: &LicenseBound,
        day: NaiveDate,
    ) -> Result<Decision, AppError> {
        let reject = |reason: String| Ok(Decision::Reject(reason));
        let actor = match terminal_actor(fwd, &b.hardware_id) {
            Ok(a) => a,
            Err(reason) => return reject(reason),
        };
        let Some(expected) = fwd.expected_version else {
            return reject("a license event needs the expected_version it was decided on".into());
        };
        let view = self.view();
        let license_id = b.license_id;
        let Some(row) = view.license(license_id) else {
            return reject(format!("license {license_id} does not exist"));
        };
        match row.binding {
            Some(bound) if bound.hardware_id == b.hardware_id => {
                if bound.hardware_key == b.hardware_key {
                    return Ok(Decision::Holds);
                }
                return reject(format!(
                    "license {license_id} is bound to terminal {} with another key at the center",
                    bound.hardware_id
                ));
            }
            Some(bound) => {
                return reject(format!(
                    "license {license_id} is bound to terminal {} at the center",
                    bound.hardware_id
                ))
            }
            None => {}
        }
        match view.customer(&cnpj) {
            Some(c) if c.active && !c.blocked && !c.blacklisted => {}
            _ => {
                return reject(format!(
                    "customer {cnpj} is inactive, blocked or blacklisted at the center: a \
                     check-in binds no license"
                ))
            }
        }
        let of_product = view.licenses_of(&cnpj, row.product);
        if let Some(other) = of_product
            .iter()
            .find(|l| l.binding.is_some_and(|x| x.hardware_id == b.hardware_id))
        {
            return reject(format!(
                "terminal {} already holds license {} of {} at the center",
                b.hardware_id, other.license_id, row.product
            ));
        }
        if !usable(&row, day)
            && of_product
                .iter()
                .any(|l| l.binding.is_none() && usable(l, day))
        {
            return reject(format!(
                "license {license_id} is blocked, deactivated or expired at the center while \
                 usable ones are free: a check-in binds those first"
            ));
        }
        if self
            .unlinked_since(&row_stream(license_id), expected.min(row.version))
            .await?
        {
            return reject(format!(
                "license {license_id} was unlinked at the center after the relay's version \
                 {expected}"
            ));
        }
        Ok(Decision::Store {
            event: b.clone().into(),
            actor,
            expected: ExpectedVersion::Exact(row.version),
        })
    }

    /// A forwarded renewal, decided as a check-in renews by contract (see the module
    /// documentation).
    fn decide_forwarded_renewal(
        &self,
        cnpj: Cnpj,
        fwd: &ForwardedEvent,
        r: &LicenseRenewed,
        day: NaiveDate,
    ) -> Decision {
        let reject = Decision::Reject;
        let view = self.view();
        let license_id = r.license_id;
        let Some(row) = view.license(license_id) else {
            return reject(format!("license {license_id} does not exist"));
        };
        if fwd.expected_version.is_none() {
            return reject("a license event needs the expected_version it was decided on".into());
        }
        if row.expires_on >= r.expires_on {
            return Decision::Holds;
        }
        let Some(bound) = row.binding else {
            return reject(format!(
                "license {license_id} is bound to no terminal at the center: a renewal by \
                 contract comes only with its terminal's check-in"
            ));
        };
        let actor = match terminal_actor(fwd, &bound.hardware_id) {
            Ok(a) => a,
            Err(reason) => return reject(reason),
        };
        let contract_id = match (r.cause, row.contract_id) {
            (RenewalCause::Contract { contract_id }, Some(own)) if contract_id == own => own,
            _ => {
                return reject(format!(
                    "a relay renews license {license_id} only by its own contract at the center"
                ))
            }
        };
        match view.customer(&cnpj) {
            Some(c) if c.active && !c.blocked && !c.blacklisted => {}
            _ => {
                return reject(format!(
                    "customer {cnpj} is inactive, blocked or blacklisted at the center: no \
                     renewal"
                ))
            }
        }
        if !row.active {
            return reject(format!("license {license_id} is deactivated at the center"));
        }
        let Some(contract) = view.contract(contract_id) else {
            return reject(format!(
                "contract {contract_id} does not exist at the center"
            ));
        };
        let terms = RenewalTerms {
            contract: Contract::from(&contract),
            customer_active: true,
            today: day,
        };
        let Some(expires_on) = contract_renewal(row.expires_on, &terms, day) else {
            return reject(format!(
                "contract {contract_id} renews license {license_id} (expiring {}) on no date \
                 today ({day}) at the center",
                row.expires_on
            ));
        };
        if r.previous_expiry != row.expires_on || r.expires_on != expires_on {
            return reject(format!(
                "the center renews license {license_id} from {} to {expires_on}, not from {} \
                 to {}",
                row.expires_on, r.previous_expiry, r.expires_on
            ));
        }
        Decision::Store {
            event: r.clone().into(),
            actor,
            expected: ExpectedVersion::Exact(row.version),
        }
    }

    /// A forwarded check-in record: kept, naming its license only when that license is the
    /// terminal's at the center.
    fn decide_forwarded_record(&self, fwd: &ForwardedEvent, t: &TerminalCheckedIn) -> Decision {
        let actor = match terminal_actor(fwd, &t.hardware_id) {
            Ok(a) => a,
            Err(reason) => return Decision::Reject(reason),
        };
        let mut record = t.clone();
        if let Some(id) = t.license_id {
            let holds = self.view().license(id).is_some_and(|row| {
                row.cnpj == t.cnpj
                    && row.product == t.product
                    && row.binding.is_some_and(|b| {
                        b.hardware_id == t.hardware_id && b.hardware_key == t.hardware_key
                    })
            });
            if !holds {
                record.license_id = None;
            }
        }
        Decision::Store {
            event: record.into(),
            actor,
            expected: ExpectedVersion::Any,
        }
    }

    /// Where the event `event_id` is stored in `stream`, if it is.
    async fn stored_position(
        &self,
        stream: &StreamId,
        event_id: Uuid,
    ) -> Result<Option<Position>, AppError> {
        let mut from: StreamVersion = 1;
        loop {
            let records = self
                .store()
                .read_stream(stream, from, READ_BATCH_MAX)
                .await?;
            let Some(last) = records.last() else {
                return Ok(None);
            };
            from = last.envelope.stream_version + 1;
            if let Some(r) = records.iter().find(|r| r.envelope.event_id == event_id) {
                return Ok(Some(r.envelope.position));
            }
        }
    }

    /// Whether the license stream has an unlink after version `after`.
    async fn unlinked_since(
        &self,
        stream: &StreamId,
        after: StreamVersion,
    ) -> Result<bool, AppError> {
        let records = self.store().read_stream(stream, after + 1, 10_000).await?;
        for r in records {
            if matches!(r.event(), Ok(Event::License(LicenseEvent::Unlinked(_)))) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn row_stream(license_id: LicenseId) -> StreamId {
    StreamId::license(license_id)
}

/// A forwarded contingency change: the relay's own IntelliWeb one, or a terminal's manual
/// one cleared by that terminal's check-in.
fn decide_forwarded_contingency(
    fwd: &ForwardedEvent,
    relay: &Actor,
    c: &ContingencyEvent,
) -> Decision {
    match c {
        ContingencyEvent::Entered(e) => {
            if e.kind == ContingencyKind::Intelliweb
                && e.hardware_id.is_none()
                && e.license_id.is_none()
                && e.grace_until.is_none()
            {
                Decision::Store {
                    event: Event::Contingency(c.clone()),
                    actor: relay.clone(),
                    expected: ExpectedVersion::Any,
                }
            } else {
                Decision::Reject(
                    "a relay enters only its own IntelliWeb contingency, for no terminal, \
                     license or grace period (manual ones are support's)"
                        .into(),
                )
            }
        }
        ContingencyEvent::Cleared(e) => match (e.kind, e.hardware_id) {
            (ContingencyKind::Intelliweb, None) => Decision::Store {
                event: Event::Contingency(c.clone()),
                actor: relay.clone(),
                expected: ExpectedVersion::Any,
            },
            (ContingencyKind::Manual, Some(hw)) => match terminal_actor(fwd, &hw) {
                Ok(actor) => Decision::Store {
                    event: Event::Contingency(c.clone()),
                    actor,
                    expected: ExpectedVersion::Any,
                },
                Err(reason) => Decision::Reject(reason),
            },
            _ => Decision::Reject(
                "a relay clears only its own IntelliWeb contingency or a terminal's manual one \
                 at that terminal's check-in"
                    .into(),
            ),
        },
    }
}

fn accepted(position: &Position) -> Resolution {
    Resolution::Accepted {
        position: Some(*position),
    }
}
