//! Typed errors of the lease layer.

/// A failed lease statement: the `query` names which one (`renew`, `acquire`, ...).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The statement (connection wait included) did not finish within the query timeout.
    #[error("lease query `{query}` timed out after {timeout_ms} ms")]
    Timeout {
        query: &'static str,
        timeout_ms: u64,
    },
    /// PostgreSQL or the connection failed.
    #[error("lease query `{query}` failed: {source}")]
    Database {
        query: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A value in the table is out of the range this crate accepts (e.g. a negative epoch).
    #[error("lease table holds an impossible value: {0}")]
    Corrupt(String),
}

/// An error of the keeper or its handle.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid lease options: {0}")]
    InvalidOptions(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `Leases::shutdown()` gave up waiting; leases not released expire by themselves.
    #[error("the lease keeper did not finish its shutdown within {0} ms")]
    ShutdownTimeout(u64),
    /// The keeper task ended (aborted or panicked) before finishing its shutdown; its
    /// leases expire by themselves.
    #[error("the lease keeper task is gone")]
    KeeperGone,
}
