//! Stripe API compatibility, without I/O: what the HTTP edge needs to speak Stripe's dialect
//! over payrail's own commands and views.
//!
//! - [`form`]: `application/x-www-form-urlencoded` bodies and query strings with Stripe's
//!   bracket notation (`metadata[k]=v`, `expand[]=x`, `expand[0]=x`), and typed reading of
//!   the parameters that names the one at fault.
//! - [`objects`]: `payment_intent`, `refund` and `list` objects built from payrail's payment
//!   view; the status mapping; a failure's `last_payment_error`.
//! - [`error`]: Stripe's error object and HTTP codes, so each SDK raises its own error type.
//! - [`events`]: Stripe event objects for webhooks in Stripe's format.

pub mod error;
pub mod events;
pub mod form;
pub mod objects;

pub use error::StripeError;
pub use form::{Params, Value};
pub use objects::{List, Payment, PaymentIntent, Refund, RefundSource};
