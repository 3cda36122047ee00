//! The license domain: commands, and the pure decisions that turn a command into events.
//!
//! Every aggregate (customer, contract, license, offline activation, emergency release) is a
//! state folded from its own stream plus a `decide(state, command, now)` that returns the
//! events to append or a [`DomainError`]. Decisions are pure: no I/O, no clock (time comes in
//! as `now`), no store. `apply` has no business logic and cannot fail. The check-in decision
//! ([`checkin`]) reads several aggregates through the projected view instead of one stream.
//!
//! Invariant: nothing in `domain` imports tokio, actix, the store or the file system.

use chrono::{DateTime, Utc};
use ledger_events::{Event, StreamVersion};

pub mod calendar;
pub mod checkin;
pub mod contract;
pub mod customer;
pub mod license;
pub mod release;

/// A business rejection. Never an I/O error: those belong to the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The aggregate does not exist (e.g. renewing a license never granted).
    #[error("{what} {id} does not exist")]
    NotFound {
        /// Kind of thing ("license", "customer", "contract").
        what: &'static str,
        /// Its id as shown.
        id: String,
    },
    /// The aggregate exists already (e.g. registering a CNPJ twice).
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// Kind of thing.
        what: &'static str,
        /// Its id as shown.
        id: String,
    },
    /// The command does not apply in the aggregate's current state.
    #[error("{0}")]
    Rejected(String),
    /// A field of the command is invalid.
    #[error("{field}: {problem}")]
    InvalidField {
        /// The command field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The actor lacks a right the command needs.
    #[error("not allowed: {0}")]
    Forbidden(String),
}

impl DomainError {
    pub(crate) fn rejected(s: impl Into<String>) -> Self {
        DomainError::Rejected(s.into())
    }
}

/// An aggregate: a state folded from one stream and a pure decision.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// What callers ask of it (its `Debug` form is the body a command id's digest covers).
    type Command: Send + Sync + std::fmt::Debug;

    /// Folds one event of this aggregate's stream (no business logic, cannot fail; events of
    /// other aggregates are ignored).
    fn apply(&mut self, event: &Event);

    /// Decides which events `command` produces at `now`, or why it is refused.
    fn decide(
        &self,
        command: &Self::Command,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, DomainError>;
}

/// An aggregate state with the stream version it was folded to.
#[derive(Clone, Debug, Default)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream's version (0 when the stream does not exist).
    pub version: StreamVersion,
}

impl<A: Aggregate> Loaded<A> {
    /// Folds a whole stream.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut loaded = Self::default();
        for e in events {
            loaded.state.apply(e);
            loaded.version += 1;
        }
        loaded
    }
}

pub use calendar::Calendar;

/// Given / when / then for aggregates: `given(events).when(command, now)` returns what
/// `decide` returns on the folded state.
#[cfg(test)]
pub(crate) fn given<A: Aggregate>(events: &[Event]) -> Loaded<A> {
    Loaded::from_events(events.iter())
}
