//! Rate limits: failed authentication per client address, and offline activations per token
//! and per address (counter-key guessing and brute force). Fixed one-minute windows in a
//! bounded map; a key over its limit answers 429 until the window ends.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

/// Failed authentications one address may make per minute.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 60;
/// Offline activations one token, or one address, may request per minute.
pub const OFFLINE_ACTIVATIONS_PER_MINUTE: u32 = 30;
/// Most keys tracked at once; past it the windows start over.
const KEYS_MAX: usize = 100_000;

/// What a window counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// Failed authentications from an address.
    AuthFailure(IpAddr),
    /// Offline activations by a token (its name).
    OfflineByToken(String),
    /// Offline activations from an address.
    OfflineByAddress(IpAddr),
}

/// Fixed-window counters.
#[derive(Debug, Default)]
pub struct RateLimits {
    windows: DashMap<LimitKey, (u64, u32), ahash::RandomState>,
}

fn minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl RateLimits {
    /// Whether `key` has reached `limit` in the current minute (without counting).
    pub fn exhausted(&self, key: &LimitKey, limit: u32) -> bool {
        let now = minute();
        self.windows
            .get(key)
            .is_some_and(|w| w.0 == now && w.1 >= limit)
    }

    /// Counts one event for `key`; returns whether it is still within `limit`.
    pub fn hit(&self, key: LimitKey, limit: u32) -> bool {
        let now = minute();
        if self.windows.len() >= KEYS_MAX {
            self.windows.clear();
        }
        let mut w = self.windows.entry(key).or_insert((now, 0));
        if w.0 != now {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
        w.1 <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_refused_past_its_limit_and_others_are_not() {
        let l = RateLimits::default();
        let a = LimitKey::AuthFailure("127.0.0.1".parse().unwrap());
        let b = LimitKey::AuthFailure("127.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(l.hit(a.clone(), 3));
        }
        assert!(l.exhausted(&a, 3));
        assert!(!l.hit(a.clone(), 3));
        assert!(!l.exhausted(&b, 3));
        assert!(l.hit(b, 3));
    }
}
