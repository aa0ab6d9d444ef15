//! What can go wrong with a fallback write, and which failures leave its outcome unknown.

use kafka_journal::spool::SpoolError;

/// Why a partition cannot take events in fallback now.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("the journal fallback is off (spool.max_rows = 0)")]
    Disabled,
    #[error("the journal's end for partition {0} is not known yet (the node started while the journal was unavailable)")]
    EndUnknown(i32),
    #[error("partition {0}: the snapshot projector lagged by more than spool.unprojected_tail_max records when the journal failed")]
    TailLost(i32),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("projecting spooled events: {0}")]
    Projection(String),
    #[error("partition {partition}: the lease of epoch {epoch} was taken over; nothing spooled")]
    Superseded { partition: i32, epoch: u64 },
    /// This node does not serve the partition (any more): it must not spool for it.
    #[error("partition {0} is not served by this node; nothing spooled")]
    NotServed(i32),
    /// The spool transaction failed after it began: PostgreSQL may have committed it (a
    /// connection cut after COMMIT reached the server) or not. The caller must treat what
    /// it tried to write as possibly written.
    #[error("the spool write's outcome is unknown: {0}")]
    OutcomeUnknown(String),
}

impl FallbackError {
    /// Whether nothing was written for sure (the write was refused, or never began). Every
    /// other failure happened inside a transaction that may have committed.
    pub fn nothing_written(&self) -> bool {
        !matches!(self, FallbackError::OutcomeUnknown(_))
    }
}

/// Maps a failure inside a begun spool transaction: refusals decided before anything was
/// sent (a full spool, a moved lease, a record without an event id) stay definite; anything
/// else (a query or the COMMIT failing, a projection error) may have been committed.
pub(super) fn inside_transaction(error: FallbackError) -> FallbackError {
    match error {
        FallbackError::Spool(SpoolError::Full(_))
        | FallbackError::Spool(SpoolError::MissingEventId)
        | FallbackError::Superseded { .. }
        | FallbackError::NotServed(_)
        | FallbackError::OutcomeUnknown(_) => error,
        other => FallbackError::OutcomeUnknown(other.to_string()),
    }
}
