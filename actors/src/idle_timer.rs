//! [`IdleTimer`]: one task per node that tells idle actors when to check whether they should
//! passivate. ractor's `send_after` spawns a tokio task per timer; with one pending idle
//! check per live payment actor that task was ~520 B of every actor (100k live actors:
//! ~50 MB), so payment actors share this one instead.
//!
//! It also keeps the actors' [`LiveBound`]: the pending checks are ordered by time, so the
//! soonest due is the least recently active (as of its last check); when live actors pass
//! the bound, those are told to passivate now (`evict`), as many as the excess.

use crate::live_bound::{EvictionToken, LiveBound};
use ractor::{ActorRef, Message};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A cheap, cloneable handle to the timer task. The task ends when every handle is dropped.
pub struct IdleTimer<M: Message> {
    requests: mpsc::UnboundedSender<Due<M>>,
    bound: Arc<LiveBound>,
}

impl<M: Message> Clone for IdleTimer<M> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
            bound: self.bound.clone(),
        }
    }
}

impl<M: Message> IdleTimer<M> {
    /// Starts the timer task; `check` builds the message each due actor gets, `evict` the
    /// one an actor gets when live actors pass `bound`. Must be called inside a tokio
    /// runtime.
    pub fn start(check: fn() -> M, evict: fn() -> M, bound: Arc<LiveBound>) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(receiver, check, evict, bound.clone()));
        Self { requests, bound }
    }

    /// The live actors this timer bounds: each actor takes its slot here.
    pub fn bound(&self) -> &Arc<LiveBound> {
        &self.bound
    }

    /// Sends `actor` the check message at `at` (or at once, when `at` is past). Each actor
    /// keeps at most one check pending, so the timer holds at most one entry per live actor
    /// (plus those of actors stopped since, until their time comes). A stopped actor's
    /// check is dropped. An actor told to leave by the bound gets no check: it had its one
    /// entry taken, and must schedule again if it stays ([`LiveSlot::decline`](crate::live_bound::LiveSlot::decline)).
    pub fn check_at(&self, at: Instant, actor: ActorRef<M>, token: EvictionToken) {
        // Only fails once the node's runtime is shutting down: no actor needs a check then.
        let _ = self.requests.send(Due { at, actor, token });
    }
}

struct Due<M: Message> {
    at: Instant,
    actor: ActorRef<M>,
    token: EvictionToken,
}

impl<M: Message> PartialEq for Due<M> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl<M: Message> Eq for Due<M> {}
impl<M: Message> PartialOrd for Due<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<M: Message> Ord for Due<M> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

async fn run<M: Message>(
    mut requests: mpsc::UnboundedReceiver<Due<M>>,
    check: fn() -> M,
    evict: fn() -> M,
    bound: Arc<LiveBound>,
) {
    let mut pending: BinaryHeap<Reverse<Due<M>>> = BinaryHeap::new();
    loop {
        let next = pending.peek().map(|Reverse(due)| due.at);
        tokio::select! {
            request = requests.recv() => match request {
                Some(due) => {
                    pending.push(Reverse(due));
                    // A new actor registers here first: the moment the count can pass.
                    evict_excess(&mut pending, &bound, evict);
                }
                None => return,
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while pending.peek().is_some_and(|Reverse(due)| due.at <= now) {
                    if let Some(Reverse(due)) = pending.pop() {
                        // A stopped actor refuses it; nothing to do then.
                        let _ = due.actor.cast(check());
                    }
                }
            }
        }
    }
}

/// Tells the soonest-due actors to leave until the live count is back within the bound (or
/// no entry is left: the others are between checks and are asked at a later round).
fn evict_excess<M: Message>(
    pending: &mut BinaryHeap<Reverse<Due<M>>>,
    bound: &LiveBound,
    evict: fn() -> M,
) {
    while bound.excess() > 0 {
        let Some(Reverse(due)) = pending.pop() else {
            return;
        };
        // An entry of an ended actor, or of one asked already, is dropped and the next tried.
        if bound.ask(&due.token) {
            // If the actor is stopping, its slot's drop settles the count.
            let _ = due.actor.cast(evict());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use std::time::Duration;
    use tokio::sync::mpsc::UnboundedSender;

    struct Probe;
    #[derive(Debug, PartialEq)]
    enum ProbeMsg {
        Check,
        Evict,
    }
    /// Reports each message with the probe's id; stops when told to leave.
    impl Actor for Probe {
        type Msg = ProbeMsg;
        type State = (u32, UnboundedSender<(u32, Instant)>);
        type Arguments = (u32, UnboundedSender<(u32, Instant)>);
        async fn pre_start(
            &self,
            _: ActorRef<ProbeMsg>,
            args: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(args)
        }
        async fn handle(
            &self,
            myself: ActorRef<ProbeMsg>,
            message: ProbeMsg,
            state: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = state.1.send((state.0, Instant::now()));
            if message == ProbeMsg::Evict {
                myself.stop(None);
            }
            Ok(())
        }
    }

    fn timer(max_live: usize) -> IdleTimer<ProbeMsg> {
        IdleTimer::start(
            || ProbeMsg::Check,
            || ProbeMsg::Evict,
            LiveBound::new(max_live),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn each_actor_is_checked_once_at_its_time_in_order_of_time() {
        let timer = timer(1_000);
        let (seen, mut checks) = mpsc::unbounded_channel();
        let start = Instant::now();
        let mut slots = Vec::new();
        // Scheduled out of order: the timer must order them by time.
        for (id, after_ms) in [(1u32, 300u64), (2, 100), (3, 200), (4, 100)] {
            let (actor, _) = Actor::spawn(None, Probe, (id, seen.clone()))
                .await
                .unwrap_or_else(|e| panic!("spawn: {e}"));
            let slot = timer.bound().enter();
            timer.check_at(start + Duration::from_millis(after_ms), actor, slot.token());
            slots.push(slot);
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            let Some((id, at)) = checks.recv().await else {
                panic!("a check is missing")
            };
            let due = match id {
                1 => 300,
                3 => 200,
                _ => 100,
            };
            assert!(
                at >= start + Duration::from_millis(due),
                "actor {id} was checked before its time"
            );
            order.push(id);
        }
        assert_eq!(order.last(), Some(&1), "order: {order:?}");
        assert_eq!(order.get(2), Some(&3), "order: {order:?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(checks.try_recv().is_err(), "an actor was checked twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_actor_is_skipped_and_the_timer_goes_on() {
        let timer = timer(1_000);
        let (seen, mut checks) = mpsc::unbounded_channel();
        let start = Instant::now();
        let (a, b) = (timer.bound().enter(), timer.bound().enter());
        let (gone, handle) = Actor::spawn(None, Probe, (1, seen.clone()))
            .await
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        let (live, _) = Actor::spawn(None, Probe, (2, seen.clone()))
            .await
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        timer.check_at(start + Duration::from_millis(50), gone.clone(), a.token());
        timer.check_at(start + Duration::from_millis(80), live, b.token());
        gone.stop(None);
        let _ = handle.await;
        let Some((id, _)) = checks.recv().await else {
            panic!("the live actor was not checked")
        };
        assert_eq!(id, 2);
        assert!(checks.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_the_least_recently_active_are_told_to_leave_first() {
        let timer = timer(2);
        let (seen, mut told) = mpsc::unbounded_channel();
        let start = Instant::now();
        let mut slots = Vec::new();
        // Actor i's check is due at (i + 1) s: actor 0 is the least recently active.
        for id in 0..4u32 {
            let (actor, _) = Actor::spawn(None, Probe, (id, seen.clone()))
                .await
                .unwrap_or_else(|e| panic!("spawn: {e}"));
            let slot = timer.bound().enter();
            let due = start + Duration::from_secs(u64::from(id) + 1);
            timer.check_at(due, actor, slot.token());
            slots.push(Some(slot));
        }
        let mut evicted = Vec::new();
        for _ in 0..2 {
            let Some((id, at)) = told.recv().await else {
                panic!("an eviction is missing")
            };
            assert!(
                at < start + Duration::from_secs(1),
                "told at once, not at its check"
            );
            evicted.push(id);
            // The actor ends: its slot goes with it.
            slots[id as usize] = None;
        }
        evicted.sort_unstable();
        assert_eq!(evicted, [0, 1], "the two soonest due leave");
        assert_eq!(timer.bound().live(), 2);
        // No third eviction: the two left are within the bound (they get their checks).
        let Some((id, _)) = told.recv().await else {
            panic!("no check came")
        };
        assert_eq!(
            id, 2,
            "actor 2 gets its idle check at its time, nothing before"
        );
    }
}
