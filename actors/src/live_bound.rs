//! [`LiveBound`]: a bound on the number of live actors of one kind (payment actors).
//!
//! Passivation bounds memory by idle time only: at 2,400 creates/s a 60 s passivation keeps
//! ~144k payment actors live. The bound caps the count: when a new actor makes the count pass
//! `max`, the node's idle timer asks the actors whose idle check is due soonest (the least
//! recently active, as of their last check) to passivate now, as many as the excess.
//!
//! Each live actor holds a [`LiveSlot`]; the timer's entry for it holds the slot's
//! [`EvictionToken`]. Actors asked to leave but not yet stopped are counted apart
//! (`evicting`), so one excess is answered by one eviction, not one per new actor; the count
//! is settled by the slot's drop however the actor ends (stopped, panicked, its `Evict`
//! message lost with its mailbox).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

const LIVE: u8 = 0;
const ASKED: u8 = 1;
const ENDED: u8 = 2;

/// The count of live actors of one kind, and how many of them were asked to leave.
#[derive(Debug)]
pub struct LiveBound {
    max: usize,
    live: AtomicUsize,
    /// Asked to leave (their token is `ASKED`) and not ended yet.
    evicting: AtomicUsize,
}

/// Held by one live actor for its whole life: counted in [`LiveBound::live`] until dropped.
#[derive(Debug)]
pub struct LiveSlot {
    bound: Arc<LiveBound>,
    token: EvictionToken,
}

/// Names one live actor to the timer: whether it was asked to leave, or has ended.
#[derive(Debug, Clone)]
pub struct EvictionToken(Arc<AtomicU8>);

impl LiveBound {
    pub fn new(max: usize) -> Arc<Self> {
        assert!(max > 0, "a live bound must allow at least one actor");
        Arc::new(Self {
            max,
            live: AtomicUsize::new(0),
            evicting: AtomicUsize::new(0),
        })
    }

    /// Counts one more live actor until the returned slot is dropped.
    pub fn enter(self: &Arc<Self>) -> LiveSlot {
        self.live.fetch_add(1, Ordering::AcqRel);
        LiveSlot {
            bound: self.clone(),
            token: EvictionToken(Arc::new(AtomicU8::new(LIVE))),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Live actors over the bound that nobody has asked to leave yet.
    pub fn excess(&self) -> usize {
        let evicting = self.evicting.load(Ordering::Acquire);
        self.live()
            .saturating_sub(evicting)
            .saturating_sub(self.max)
    }

    /// Marks the actor of `token` as asked to leave: `false` when it was asked already or
    /// has ended (then nothing is counted and it need not be told).
    pub fn ask(&self, token: &EvictionToken) -> bool {
        // Counted before the mark, so the slot's drop never sees `ASKED` uncounted.
        self.evicting.fetch_add(1, Ordering::AcqRel);
        if token
            .0
            .compare_exchange(LIVE, ASKED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            true
        } else {
            self.evicting.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }
}

impl LiveSlot {
    /// What the timer keeps for this actor.
    pub fn token(&self) -> EvictionToken {
        self.token.clone()
    }

    /// The actor was asked to leave and cannot now (a write in doubt to settle first): it is
    /// no longer counted as leaving, so the bound asks another one.
    pub fn decline(&self) {
        if self
            .token
            .0
            .compare_exchange(ASKED, LIVE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.bound.evicting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        if self.token.0.swap(ENDED, Ordering::AcqRel) == ASKED {
            self.bound.evicting.fetch_sub(1, Ordering::AcqRel);
        }
        let before = self.bound.live.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a live count fell below zero");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excess_is_what_passes_the_bound() {
        let bound = LiveBound::new(2);
        let slots: Vec<_> = (0..5).map(|_| bound.enter()).collect();
        assert_eq!(bound.live(), 5);
        assert_eq!(bound.excess(), 3);
        drop(slots);
        assert_eq!(bound.live(), 0);
        assert_eq!(bound.excess(), 0);
    }

    #[test]
    fn an_actor_asked_to_leave_is_not_counted_twice() {
        let bound = LiveBound::new(1);
        let a = bound.enter();
        let _b = bound.enter();
        assert_eq!(bound.excess(), 1);
        assert!(bound.ask(&a.token()));
        assert_eq!(bound.excess(), 0, "one excess, one eviction");
        assert!(!bound.ask(&a.token()), "asked once only");
        drop(a);
        assert_eq!(bound.excess(), 0);
        assert_eq!(bound.evicting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn an_ended_actor_cannot_be_asked() {
        let bound = LiveBound::new(1);
        let a = bound.enter();
        let token = a.token();
        drop(a);
        assert!(!bound.ask(&token));
        assert_eq!(bound.evicting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_declined_eviction_asks_for_another() {
        let bound = LiveBound::new(1);
        let a = bound.enter();
        let _b = bound.enter();
        assert!(bound.ask(&a.token()));
        a.decline();
        assert_eq!(bound.excess(), 1, "the bound is still passed");
        assert!(bound.ask(&a.token()), "it can be asked again later");
    }
}
