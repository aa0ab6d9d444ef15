//! What a payment-keyed read model (a row per payment holding its sequence and state) does
//! with the next event: the pure half of a projection; reading and writing the row is the
//! caller's (the snapshot projector, the notification pool).

use crate::machine::{evolve, EventContext, Payment};
use crate::PaymentEvent;

/// What a payment-keyed projection should do with an event.
#[derive(Debug)]
pub enum NextState {
    /// Store this state (its `sequence` is the event's).
    Store(Box<Payment>),
    /// The row is already at or past this event.
    AlreadyApplied,
    /// The event does not apply to the stored state.
    NotApplicable,
}

/// The state after the event at `ctx.sequence`, from the `stored` row (its sequence and
/// state), if the payment has one.
pub fn next_state(
    stored: Option<(u64, Payment)>,
    ctx: EventContext<'_>,
    event: &PaymentEvent,
) -> NextState {
    let prior = match stored {
        Some((sequence, _)) if sequence >= ctx.sequence => return NextState::AlreadyApplied,
        Some((_, state)) => Some(state),
        None => None,
    };
    let sequence = ctx.sequence;
    match evolve(prior, ctx, event) {
        Some(mut next) => {
            next.sequence = sequence;
            NextState::Store(Box::new(next))
        }
        None => NextState::NotApplicable,
    }
}
