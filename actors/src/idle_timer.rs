//! [`IdleTimer`]: one task per node that tells idle actors when to check whether they should
//! passivate. ractor's `send_after` spawns a tokio task per timer; with one pending idle
//! check per live payment actor that task was ~520 B of every actor (100k live actors:
//! ~50 MB), so payment actors share this one instead.

use ractor::{ActorRef, Message};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A cheap, cloneable handle to the timer task. The task ends when every handle is dropped.
pub struct IdleTimer<M: Message> {
    requests: mpsc::UnboundedSender<Due<M>>,
}

impl<M: Message> Clone for IdleTimer<M> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<M: Message> IdleTimer<M> {
    /// Starts the timer task; `check` builds the message each due actor gets. Must be
    /// called inside a tokio runtime.
    pub fn start(check: fn() -> M) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(receiver, check));
        Self { requests }
    }

    /// Sends `actor` the check message at `at` (or at once, when `at` is past). Each actor
    /// keeps at most one check pending, so the timer holds at most one entry per live actor
    /// (plus those of actors stopped since, until their time comes). A stopped actor's
    /// check is dropped.
    pub fn check_at(&self, at: Instant, actor: ActorRef<M>) {
        // Only fails once the node's runtime is shutting down: no actor needs a check then.
        let _ = self.requests.send(Due { at, actor });
    }
}

struct Due<M: Message> {
    at: Instant,
    actor: ActorRef<M>,
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

async fn run<M: Message>(mut requests: mpsc::UnboundedReceiver<Due<M>>, check: fn() -> M) {
    let mut pending: BinaryHeap<Reverse<Due<M>>> = BinaryHeap::new();
    loop {
        let next = pending.peek().map(|Reverse(due)| due.at);
        tokio::select! {
            request = requests.recv() => match request {
                Some(due) => pending.push(Reverse(due)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use std::time::Duration;
    use tokio::sync::mpsc::UnboundedSender;

    struct Probe;
    enum ProbeMsg {
        Check,
    }
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
            _: ActorRef<ProbeMsg>,
            _: ProbeMsg,
            state: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = state.1.send((state.0, Instant::now()));
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_actor_is_checked_once_at_its_time_in_order_of_time() {
        let timer = IdleTimer::start(|| ProbeMsg::Check);
        let (seen, mut checks) = mpsc::unbounded_channel();
        let start = Instant::now();
        // Scheduled out of order: the timer must order them by time.
        for (id, after_ms) in [(1u32, 300u64), (2, 100), (3, 200), (4, 100)] {
            let (actor, _) = Actor::spawn(None, Probe, (id, seen.clone()))
                .await
                .unwrap_or_else(|e| panic!("spawn: {e}"));
            timer.check_at(start + Duration::from_millis(after_ms), actor);
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
        let timer = IdleTimer::start(|| ProbeMsg::Check);
        let (seen, mut checks) = mpsc::unbounded_channel();
        let start = Instant::now();
        let (gone, handle) = Actor::spawn(None, Probe, (1, seen.clone()))
            .await
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        let (live, _) = Actor::spawn(None, Probe, (2, seen.clone()))
            .await
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        timer.check_at(start + Duration::from_millis(50), gone.clone());
        timer.check_at(start + Duration::from_millis(80), live);
        gone.stop(None);
        let _ = handle.await;
        let Some((id, _)) = checks.recv().await else {
            panic!("the live actor was not checked")
        };
        assert_eq!(id, 2);
        assert!(checks.try_recv().is_err());
    }
}
