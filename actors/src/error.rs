//! Errors of the command path, mapped to HTTP once at the edge.

use crate::payment::Refusal;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("no such payment")]
    NotFound,
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("the idempotency key was used with a different request")]
    IdempotencyMismatch,
    /// The append was not attempted (breaker open): nothing was recorded.
    #[error("the journal is unavailable: {0}")]
    JournalUnavailable(String),
    /// The append failed or timed out: its records may or may not be in the journal. The
    /// payment is rebuilt from the journal before its next command; a retried create with
    /// the same Idempotency-Key converges on the same payment id.
    #[error("the journal append's outcome is unknown: {0}")]
    JournalOutcomeUnknown(String),
    /// The partition was spooling and the spool transaction failed after it began (e.g.
    /// the connection dropped after COMMIT reached PostgreSQL): it may or may not have
    /// committed. The journal was not written, so the payment is rebuilt from its snapshot,
    /// which the same transaction wrote; a retry is decided on that, never on the old state.
    #[error("the spool write's outcome is unknown: {0}")]
    SpoolOutcomeUnknown(String),
    #[error("the node is not ready: {0}")]
    NotReady(String),
    #[error("the payment processor is unavailable: {0}")]
    PspUnavailable(String),
    #[error("the payment processor refused: {code}: {message}")]
    PspRefused { code: String, message: String },
    #[error("the command timed out")]
    Timeout,
    #[error("the node is working on its maximum of {0} commands")]
    Overloaded(usize),
    #[error("the merchant has its maximum of {0} commands in flight")]
    MerchantOverloaded(usize),
    #[error("internal error: {0}")]
    Internal(String),
}
