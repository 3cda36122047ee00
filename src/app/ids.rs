//! Id allocation for new licenses and contracts.
//!
//! A new license (or contract) gets the next free id. Taking "the view's largest id + 1"
//! makes concurrent grants race for the same id, and all but one of them lose; instead, each
//! process hands out ids from an [`IdAllocator`]: the lowest id it has not handed out yet,
//! never below the view's largest id + 1, so concurrent commands in one process never collide
//! and, when nothing fails, the ids they store are dense. An id whose command stored nothing
//! goes back (its [`Reservation`] is dropped without being marked used) and is handed out
//! again first, so a refused command leaves no gap. Another process on the same log (several
//! nodes on one PostgreSQL database) may still take an id first: the command then finds its
//! stream taken, marks the id used and asks again; by then the view has caught up with the
//! log, so the floor has moved past the other node's ids.

use std::collections::BTreeSet;

/// Ids of one kind this process has handed out (see the module's text).
#[derive(Debug, Default)]
pub struct IdAllocator {
    state: parking_lot::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Lowest id never handed out (0: none handed out yet).
    next: u32,
    /// Ids handed out whose commands stored nothing, lowest first.
    free: BTreeSet<u32>,
}

impl IdAllocator {
    /// An allocator that has handed out nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves an id: the lowest released one that `used` does not know as used, else the
    /// lowest never handed out that is at least `floor` (the view's largest id + 1).
    pub fn reserve(&self, floor: u32, used: impl Fn(u32) -> bool) -> Reservation<'_> {
        let mut state = self.state.lock();
        let id = loop {
            match state.free.pop_first() {
                Some(id) if used(id) => continue,
                Some(id) => break id,
                None => {
                    let id = state.next.max(floor).max(1);
                    state.next = id.saturating_add(1);
                    break id;
                }
            }
        };
        Reservation {
            allocator: self,
            id,
            settled: false,
        }
    }

    fn release(&self, id: u32) {
        self.state.lock().free.insert(id);
    }
}

/// An id handed out to one command. Dropped without [`Reservation::used`], it goes back to
/// the allocator (the command stored nothing under it, or cannot tell: a later command then
/// finds the id taken and moves on).
#[derive(Debug)]
pub struct Reservation<'a> {
    allocator: &'a IdAllocator,
    id: u32,
    settled: bool,
}

impl Reservation<'_> {
    /// The id reserved.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The id is stored under, by this command or another: never hand it out again.
    pub fn used(mut self) {
        self.settled = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.allocator.release(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: u32) -> bool {
        false
    }

    #[test]
    fn reservations_held_at_once_are_distinct_and_dense_from_the_floor() {
        let a = IdAllocator::new();
        let held: Vec<Reservation<'_>> = (0..5).map(|_| a.reserve(1, never)).collect();
        let ids: Vec<u32> = held.iter().map(Reservation::id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        let b = IdAllocator::new();
        assert_eq!(
            b.reserve(8, never).id(),
            8,
            "an empty allocator starts at the floor"
        );
    }

    #[test]
    fn a_dropped_reservation_is_handed_out_again_first_and_a_used_one_never() {
        let a = IdAllocator::new();
        let one = a.reserve(1, never);
        let two = a.reserve(1, never);
        let three = a.reserve(1, never);
        one.used();
        drop(two);
        three.used();
        let again = a.reserve(1, never);
        assert_eq!(again.id(), 2, "the released id comes back first");
        assert_eq!(
            a.reserve(1, never).id(),
            4,
            "then the next never handed out"
        );
    }

    #[test]
    fn the_floor_moves_the_next_id_past_ids_taken_elsewhere() {
        let a = IdAllocator::new();
        a.reserve(1, never).used();
        // Another node stored ids up to 9; the view says so once it caught up.
        let ten = a.reserve(10, never);
        assert_eq!(ten.id(), 10);
        // A floor below what was handed out does not move it back.
        assert_eq!(a.reserve(3, never).id(), 11);
    }

    #[test]
    fn a_released_id_known_as_used_is_skipped() {
        let a = IdAllocator::new();
        let one = a.reserve(1, never);
        let two = a.reserve(1, never);
        drop(one);
        drop(two);
        // Id 1 was stored after all (a command failed after its append): skip it.
        let held = a.reserve(1, |id| id == 1);
        assert_eq!(held.id(), 2);
        assert_eq!(a.reserve(1, never).id(), 3, "1 is gone from the free ids");
    }
}
