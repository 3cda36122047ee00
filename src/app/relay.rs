//! The central side of on-premises relays: what a relay may forward, and how the center
//! decides each forwarded event.
//!
//! A relay decides check-ins on its copy of its customer's part of the log while the link
//! is down, and writes what happened (binds, renewals by contract, check-in records,
//! contingency entries) to its outbox with event ids it chose. When the link returns it
//! forwards them in order; the center appends each with the relay's event id, so
//! forwarding the same event twice stores it once (the store recognises the retry by id).
//!
//! License events carry the license version the relay decided on. If the license changed
//! at the center since, the center decides again on its own state, which wins:
//! - a bind is accepted when the license is already bound to that very terminal, or is free,
//!   active, unblocked, and was not unlinked at the center since the relay's version (an
//!   unlink is support's deliberate act); otherwise it is rejected;
//! - a renewal is accepted when the center already has that expiry or a later one, or the
//!   license is still active (appended on the current version); otherwise rejected.
//!
//! Check-in records and contingency entries are facts about the relay's side: appended
//! whatever the stream's version. A relay enters only IntelliWeb contingencies (its own link
//! failing); it may clear any kind (a terminal's check-in at the relay ends its manual one).

use chrono::{DateTime, Utc};
use ledger_events::{
    Actor, ActorKind, Cnpj, ContingencyEvent, ContingencyKind, Event, LicenseEvent, Position,
    StreamId, StreamVersion, TerminalEvent,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AppError, Ledger};
use crate::store::{ExpectedVersion, NewEvent, StoreError};

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
        if let Event::Contingency(ContingencyEvent::Entered(c)) = &event {
            if c.kind != ContingencyKind::Intelliweb {
                return reject(
                    "a relay enters only IntelliWeb contingencies (manual ones are support's)"
                        .into(),
                );
            }
        }
        if self.view().customer_of(&event) != Some(cnpj) {
            return reject(format!("{stream} is not of customer {cnpj}"));
        }
        let actor = if fwd.actor.kind == ActorKind::Terminal {
            fwd.actor.clone()
        } else {
            relay.clone()
        };
        let new = NewEvent {
            event_id: fwd.event_id,
            event: event.clone(),
            actor,
            correlation_id: fwd.correlation_id,
        };
        let Event::License(license_event) = &event else {
            let appended = self
                .store()
                .append(&stream, ExpectedVersion::Any, vec![new])
                .await?;
            return Ok(accepted(appended.positions.end()));
        };
        let Some(expected) = fwd.expected_version else {
            return reject("a license event needs the expected_version it was decided on".into());
        };
        let actual = match self
            .store()
            .append(&stream, ExpectedVersion::Exact(expected), vec![new.clone()])
            .await
        {
            Ok(appended) => return Ok(accepted(appended.positions.end())),
            Err(StoreError::WrongExpectedVersion { actual, .. }) => actual,
            Err(e) => return Err(e.into()),
        };
        // The license moved at the center: decide on the center's state.
        self.settle_conflict(&stream, actual).await?;
        let license_id = license_event.license_id();
        let Some(row) = self.view().license(license_id) else {
            return reject(format!("license {license_id} does not exist"));
        };
        match license_event {
            LicenseEvent::Bound(b) => {
                match row.binding {
                    Some(bound) if bound.hardware_id == b.hardware_id => {
                        return Ok(Resolution::Accepted { position: None })
                    }
                    Some(bound) => {
                        return reject(format!(
                            "license {license_id} is bound to terminal {} at the center",
                            bound.hardware_id
                        ))
                    }
                    None => {}
                }
                if !row.active || row.blocked {
                    return reject(format!(
                        "license {license_id} is blocked or deactivated at the center"
                    ));
                }
                if self.unlinked_since(&stream, expected).await? {
                    return reject(format!(
                        "license {license_id} was unlinked at the center after the relay's \
                         version {expected}"
                    ));
                }
            }
            LicenseEvent::Renewed(r) => {
                if row.expires_on >= r.expires_on {
                    return Ok(Resolution::Accepted { position: None });
                }
                if !row.active {
                    return reject(format!("license {license_id} is deactivated at the center"));
                }
            }
            _ => return reject(format!("{} is not accepted from a relay", fwd.event_type)),
        }
        match self
            .store()
            .append(&stream, ExpectedVersion::Exact(row.version), vec![new])
            .await
        {
            Ok(appended) => Ok(accepted(appended.positions.end())),
            // Moved again meanwhile (a version conflict): the relay forwards again later
            // and gets a fresh decision.
            Err(e) => Err(e.into()),
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

fn accepted(position: &Position) -> Resolution {
    Resolution::Accepted {
        position: Some(*position),
    }
}
