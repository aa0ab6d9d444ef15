//! The payment aggregate: pure state machine ([`machine`]), its events ([`events`]), and
//! the API view of a payment ([`view`]).

pub mod events;
pub mod machine;
pub mod view;

pub use events::{CaptureMethod, PaymentCreated, PaymentEvent};
pub use machine::{
    decide, evolve, Command, CreatePayment, Outcome, Payment, PaymentStatus, Refund, RefundStatus,
    Refusal,
};
pub use view::{PaymentView, RefundView};
