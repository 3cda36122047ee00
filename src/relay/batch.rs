//! Forwarding the outbox in requests the center takes: batches sized by the bytes of the
//! request body, under the center's body limit ([`BODY_BYTES_MAX`]) less a margin, and at
//! most [`super::FORWARD_BATCH`] events.
//!
//! Each event is serialized once and measured; a batch is the longest run of pending events,
//! in order, whose request body (`{"cnpj":…,"events":[…]}`, exactly as
//! [`super::upstream::forward_body`] builds it) fits the budget. If the center still answers
//! 413 (a center configured with a smaller limit, a proxy in between), the batch is halved
//! and sent again, and batches stay that small for the rest of the pass. Events are never
//! dropped, skipped or reordered: a pass stops at the first event that cannot be sent, and a
//! re-forward after a lost answer is harmless (the center is idempotent by event id).
//!
//! A single event too large for a request cannot be made by the relay (its events are a few
//! hundred bytes; the center's own payload limit is `ledger_events::MAX_PAYLOAD_BYTES`), but
//! if one is found it is reported ([`UpstreamError::TooLarge`]) and the pass stops there,
//! without a request when it is over the budget here, or after the one request the center
//! refused for it alone.

use std::future::Future;

use ledger_events::Cnpj;
use uuid::Uuid;

use super::upstream::{forward_body, UpstreamError};
use crate::app::relay::{ForwardedEvent, Resolution};
use crate::http::extract::BODY_BYTES_MAX;

/// Left unused under the center's body limit: for anything between the relay and the center
/// that counts bytes differently.
pub const FORWARD_BODY_MARGIN: usize = 4 * 1024;
/// Largest forward request body the relay sends.
pub const FORWARD_BODY_BYTES: usize = BODY_BYTES_MAX - FORWARD_BODY_MARGIN;

/// What one forwarding pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Requests sent (those answered 413 included).
    pub requests: usize,
    /// Requests the center answered 413 (each followed by a halved batch).
    pub too_large: usize,
    /// Events the center decided.
    pub decided: usize,
    /// The largest request body sent, in bytes.
    pub largest_body: usize,
}

/// The request bodies of a run of events, measured once.
#[derive(Debug)]
pub struct Sizes {
    /// Bytes of the body with no events.
    envelope: usize,
    /// Bytes of each event's JSON.
    events: Vec<usize>,
}

impl Sizes {
    /// Serializes each event (as the request does) and measures it.
    pub fn measure(cnpj: Cnpj, events: &[ForwardedEvent]) -> Result<Sizes, UpstreamError> {
        let len = |v: &serde_json::Value| {
            serde_json::to_vec(v)
                .map(|b| b.len())
                .map_err(|e| UpstreamError::Malformed(format!("an outbox event: {e}")))
        };
        let envelope = len(&forward_body(cnpj, &[]))?;
        let events = events
            .iter()
            .map(|e| {
                serde_json::to_vec(e)
                    .map(|b| b.len())
                    .map_err(|e| UpstreamError::Malformed(format!("an outbox event: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sizes { envelope, events })
    }

    /// Bytes of the request body carrying events `from..to`.
    pub fn body(&self, from: usize, to: usize) -> usize {
        let events: usize = self.events[from..to].iter().sum();
        self.envelope + events + (to - from).saturating_sub(1)
    }

    /// How many events from `from` on fit one body of at most `max_bytes` and `max_events`
    /// events (0 when the first alone does not fit).
    pub fn fitting(&self, from: usize, max_bytes: usize, max_events: usize) -> usize {
        let mut bytes = self.envelope;
        let mut n = 0;
        for size in self.events[from..].iter().take(max_events) {
            let more = size + usize::from(n > 0);
            if bytes + more > max_bytes {
                break;
            }
            bytes += more;
            n += 1;
        }
        n
    }
}

/// Forwards `events` in order with `send` (one request per call), in batches of at most
/// `max_bytes` of body and `max_events` events, halving a batch the center refuses with 413;
/// hands each answer to `decided` before the next request. Stops at the first failure, with
/// the events before it sent and decided.
pub async fn forward_in_batches<'a, S, Fut, D>(
    cnpj: Cnpj,
    events: &'a [ForwardedEvent],
    max_bytes: usize,
    max_events: usize,
    mut send: S,
    mut decided: D,
) -> Result<ForwardStats, (UpstreamError, ForwardStats)>
where
    S: FnMut(&'a [ForwardedEvent]) -> Fut,
    Fut: Future<Output = Result<Vec<(Uuid, Resolution)>, UpstreamError>>,
    D: FnMut(Vec<(Uuid, Resolution)>) -> Result<(), UpstreamError>,
{
    let mut stats = ForwardStats::default();
    let sizes = Sizes::measure(cnpj, events).map_err(|e| (e, stats))?;
    let mut max_events = max_events.max(1);
    let mut from = 0;
    while from < events.len() {
        let n = sizes.fitting(from, max_bytes, max_events);
        if n == 0 {
            let event = &events[from];
            return Err((
                UpstreamError::TooLarge {
                    event_id: event.event_id,
                    bytes: sizes.body(from, from + 1),
                    limit: max_bytes,
                },
                stats,
            ));
        }
        let to = from + n;
        let body = sizes.body(from, to);
        stats.requests += 1;
        stats.largest_body = stats.largest_body.max(body);
        match send(&events[from..to]).await {
            Ok(results) => {
                stats.decided += results.len();
                decided(results).map_err(|e| (e, stats))?;
                from = to;
            }
            Err(UpstreamError::Refused { status: 413, .. }) if n > 1 => {
                stats.too_large += 1;
                max_events = n / 2;
                tracing::warn!(
                    events = n,
                    bytes = body,
                    "the center refused a forward as too large; halving the batch"
                );
            }
            Err(UpstreamError::Refused { status: 413, .. }) => {
                stats.too_large += 1;
                return Err((
                    UpstreamError::TooLarge {
                        event_id: events[from].event_id,
                        bytes: body,
                        limit: max_bytes,
                    },
                    stats,
                ));
            }
            Err(e) => return Err((e, stats)),
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::future::ready;

    use chrono::TimeZone;
    use futures_util::FutureExt;
    use ledger_events::Actor;

    use super::*;

    fn cnpj() -> Cnpj {
        "11222333000181".parse().unwrap()
    }

    /// A check-in record as the relay writes it, `pad` extra bytes in its data.
    fn event(i: usize, pad: usize) -> ForwardedEvent {
        ForwardedEvent {
            event_id: Uuid::from_u128(i as u128 + 1),
            stream_id: "terminal-50026B77825EEC01".into(),
            expected_version: None,
            event_type: "TerminalCheckedIn".into(),
            data: serde_json::json!({"n": i, "pad": "x".repeat(pad)}),
            actor: Actor::system("relay").unwrap(),
            correlation_id: Uuid::from_u128(7),
            recorded_at: chrono::Utc.with_ymd_and_hms(2031, 1, 1, 10, 0, 0).unwrap(),
        }
    }

    /// A center that answers 413 to a body over `limit` bytes (measured on the body as sent)
    /// and otherwise accepts every event, keeping what it got.
    struct FakeCenter {
        limit: usize,
        got: Vec<Uuid>,
        bodies: Vec<usize>,
    }

    impl FakeCenter {
        fn send(
            &mut self,
            batch: &[ForwardedEvent],
        ) -> std::future::Ready<Result<Vec<(Uuid, Resolution)>, UpstreamError>> {
            let body = serde_json::to_vec(&forward_body(cnpj(), batch))
                .unwrap()
                .len();
            self.bodies.push(body);
            if body > self.limit {
                return ready(Err(UpstreamError::Refused {
                    status: 413,
                    message: "body too large".into(),
                }));
            }
            self.got.extend(batch.iter().map(|e| e.event_id));
            ready(Ok(batch
                .iter()
                .map(|e| (e.event_id, Resolution::Accepted { position: None }))
                .collect()))
        }
    }

    fn drain(
        events: &[ForwardedEvent],
        center: &mut FakeCenter,
        max_bytes: usize,
    ) -> (
        Result<ForwardStats, (UpstreamError, ForwardStats)>,
        Vec<Uuid>,
    ) {
        let mut decided = Vec::new();
        let result = forward_in_batches(
            cnpj(),
            events,
            max_bytes,
            super::super::FORWARD_BATCH,
            |batch| center.send(batch),
            |results| {
                decided.extend(results.into_iter().map(|(id, _)| id));
                Ok(())
            },
        )
        .now_or_never()
        .expect("the fake center answers at once");
        (result, decided)
    }

    #[test]
    fn finding_5_a_center_throttling_a_forward_loses_and_skips_nothing() {
        // The center takes 300 events, then answers 429 (its write quota for the relay
        // token): the pass stops there, and the next pass forwards the rest, in order.
        let events: Vec<_> = (0..1000).map(|i| event(i, 100)).collect();
        let mut got: Vec<Uuid> = Vec::new();
        let mut decided: Vec<Uuid> = Vec::new();
        let mut quota = 300usize;
        let pass = |pending: &[ForwardedEvent],
                    got: &mut Vec<Uuid>,
                    decided: &mut Vec<Uuid>,
                    quota: &mut usize| {
            forward_in_batches(
                cnpj(),
                pending,
                FORWARD_BODY_BYTES,
                super::super::FORWARD_BATCH,
                |batch| {
                    if *quota == 0 {
                        return ready(Err(UpstreamError::Throttled {
                            retry_after_s: 42,
                            message: "relay_events_per_minute".into(),
                        }));
                    }
                    *quota = quota.saturating_sub(batch.len());
                    got.extend(batch.iter().map(|e| e.event_id));
                    ready(Ok(batch
                        .iter()
                        .map(|e| (e.event_id, Resolution::Accepted { position: None }))
                        .collect()))
                },
                |results| {
                    decided.extend(results.into_iter().map(|(id, _)| id));
                    Ok(())
                },
            )
            .now_or_never()
            .expect("answers at once")
        };
        let (e, stats) = pass(&events, &mut got, &mut decided, &mut quota).unwrap_err();
        assert!(
            matches!(
                e,
                UpstreamError::Throttled {
                    retry_after_s: 42,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(stats.decided, decided.len());
        assert!(
            decided.len() >= 300 && decided.len() < 1000,
            "{}",
            decided.len()
        );
        // The relay resolves what was decided; the rest stays pending for the next pass.
        quota = usize::MAX;
        let rest = events[decided.len()..].to_vec();
        pass(&rest, &mut got, &mut decided, &mut quota).unwrap();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(got, ids, "every event once, in order");
        assert_eq!(decided, ids);
    }

    #[test]
    fn a_batch_body_measures_exactly_what_the_request_sends() {
        let events: Vec<_> = (0..5).map(|i| event(i, i * 37)).collect();
        let sizes = Sizes::measure(cnpj(), &events).unwrap();
        for (from, to) in [(0, 0), (0, 1), (1, 4), (0, 5)] {
            let sent = serde_json::to_vec(&forward_body(cnpj(), &events[from..to]))
                .unwrap()
                .len();
            assert_eq!(sizes.body(from, to), sent, "events {from}..{to}");
        }
    }

    #[test]
    fn ten_thousand_events_drain_in_order_once_each_in_bodies_under_the_limit() {
        let events: Vec<_> = (0..10_000).map(|i| event(i, 500)).collect();
        let mut center = FakeCenter {
            limit: BODY_BYTES_MAX,
            got: Vec::new(),
            bodies: Vec::new(),
        };
        let (result, decided) = drain(&events, &mut center, FORWARD_BODY_BYTES);
        let stats = result.unwrap();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(center.got, ids, "every event once, in order");
        assert_eq!(decided, ids, "every decision recorded, in order");
        assert_eq!(stats.too_large, 0, "{stats:?}");
        assert!(center.bodies.iter().all(|b| *b <= FORWARD_BODY_BYTES));
        assert_eq!(stats.largest_body, *center.bodies.iter().max().unwrap());
        // Full batches: every body but the last has no room for one more event.
        let sizes = Sizes::measure(cnpj(), &events).unwrap();
        let largest_event = sizes.events.iter().max().unwrap() + 1;
        let (last, full) = center.bodies.split_last().unwrap();
        assert!(*last <= FORWARD_BODY_BYTES);
        assert!(
            full.iter().all(|b| b + largest_event > FORWARD_BODY_BYTES),
            "{:?}",
            center.bodies
        );
    }

    #[test]
    fn a_center_refusing_bodies_as_too_large_gets_halved_batches_and_everything_in_order() {
        let events: Vec<_> = (0..10_000).map(|i| event(i, 500)).collect();
        // The center takes 8 KiB; the relay believes 60 KiB.
        let mut center = FakeCenter {
            limit: 8 * 1024,
            got: Vec::new(),
            bodies: Vec::new(),
        };
        let (result, decided) = drain(&events, &mut center, FORWARD_BODY_BYTES);
        let stats = result.unwrap();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(center.got, ids, "every event once, in order");
        assert_eq!(decided, ids);
        // Halved a few times on the first batch, then that small for the rest of the pass: a
        // few refusals (at most log2 of the batch cap), not one per batch.
        assert!((1..=8).contains(&stats.too_large), "{stats:?}");
        assert_eq!(stats.requests, center.bodies.len());
        let refused = center.bodies.iter().filter(|b| **b > center.limit).count();
        assert_eq!(refused, stats.too_large);
        assert!(
            center.bodies[refused..].iter().all(|b| *b <= center.limit),
            "every refusal came before the first accepted batch: {:?}",
            &center.bodies[..refused + 1]
        );
    }

    #[test]
    fn an_event_too_large_for_any_request_is_reported_and_nothing_after_it_is_sent() {
        let mut events: Vec<_> = (0..10).map(|i| event(i, 100)).collect();
        events[4] = event(4, 2000);
        // Too large for the center's limit: one refused request for it alone, then reported.
        let mut center = FakeCenter {
            limit: 1500,
            got: Vec::new(),
            bodies: Vec::new(),
        };
        let (result, decided) = drain(&events, &mut center, FORWARD_BODY_BYTES);
        let (e, stats) = result.unwrap_err();
        let first: Vec<Uuid> = events[..4].iter().map(|e| e.event_id).collect();
        assert_eq!(center.got, first, "the events before it, in order");
        assert_eq!(decided, first);
        assert!(
            matches!(e, UpstreamError::TooLarge { event_id, .. } if event_id == events[4].event_id),
            "{e}"
        );
        assert_eq!(stats.requests, center.bodies.len());
        assert!(stats.requests <= 6, "no loop: {stats:?}");

        // Too large for the relay's own budget: reported without a request for it.
        let mut center = FakeCenter {
            limit: BODY_BYTES_MAX,
            got: Vec::new(),
            bodies: Vec::new(),
        };
        let (result, _) = drain(&events, &mut center, 1500);
        let (e, stats) = result.unwrap_err();
        assert_eq!(center.got, first);
        assert_eq!(stats.requests, center.bodies.len());
        assert!(
            center.bodies.iter().all(|b| *b <= 1500),
            "no request carried it: {:?}",
            center.bodies
        );
        assert!(
            matches!(e, UpstreamError::TooLarge { event_id, limit: 1500, .. } if event_id == events[4].event_id),
            "{e}"
        );
    }
}
