//! The lease table in PostgreSQL: plain SQL, one statement per call, each bounded by the
//! query timeout. Every time comparison uses the database's clock (`clock_timestamp()`),
//! never this node's wall clock.

use crate::error::StoreError;
use crate::options::MAX_PARTITIONS;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use std::future::Future;
use std::time::Duration;

/// Rows of `cluster_nodes` read at most (a bound on `live_nodes`).
pub const MAX_NODES: i64 = 4_096;

/// A lease this node just acquired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub partition: i32,
    /// The new owner's epoch: one above the previous owner's.
    pub epoch: u64,
    /// Database time at which the lease expires unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// A row of `partition_leases` (admin view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub partition: i32,
    pub owner_node_id: Option<String>,
    pub owner_url: Option<String>,
    pub epoch: u64,
    pub expires_at: Option<DateTime<Utc>>,
    pub renewed_at: Option<DateTime<Utc>>,
    /// Owned and unexpired by the database's clock at the time of the query.
    pub held: bool,
}

/// A row of `cluster_nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: String,
    pub url: String,
    pub heartbeat_at: DateTime<Utc>,
    pub leaving: bool,
}

/// SQL access to `partition_leases` and `cluster_nodes`.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    pool: PgPool,
    timeout: Duration,
}

/// The `partition_leases` condition under which a partition may be taken: never owned,
/// released, or expired by the database's clock.
const TAKEABLE: &str = "(l.owner_node_id IS NULL OR l.expires_at IS NULL \
                        OR l.expires_at <= clock_timestamp())";

fn millis(ms: u64) -> i64 {
    // Out-of-range values make PostgreSQL refuse the interval, which is reported as usual.
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn epoch_to_sql(epoch: u64) -> Result<i64, StoreError> {
    i64::try_from(epoch).map_err(|_| StoreError::Corrupt(format!("epoch {epoch} above i64")))
}

fn epoch_from_sql(epoch: i64) -> Result<u64, StoreError> {
    u64::try_from(epoch).map_err(|_| StoreError::Corrupt(format!("negative epoch {epoch}")))
}

impl LeaseStore {
    /// `query_timeout` bounds every statement, the wait for a pooled connection included.
    pub fn new(pool: PgPool, query_timeout: Duration) -> Self {
        Self {
            pool,
            timeout: query_timeout,
        }
    }

    async fn bounded<T>(
        &self,
        query: &'static str,
        run: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(StoreError::Database { query, source }),
            Err(_) => Err(StoreError::Timeout {
                query,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// A single node's start (no leases): raises the epoch of each of `partitions` by one
    /// and returns them, in partition order. The node writes under these epochs and first
    /// journals an owner-change marker per partition, so a write its previous incarnation
    /// left in doubt on a hung broker, landing after the restart, is fenced like a zombie's
    /// (issue 22). The rows are left expired: nothing here keeps a cluster node from taking
    /// a partition later, and a later incarnation raises them again.
    pub async fn raise_single_node_epochs(
        &self,
        partitions: u32,
        node_id: &str,
    ) -> Result<Vec<(i32, u64)>, StoreError> {
        let q = sqlx::query_as::<_, (i32, i64)>(
            "INSERT INTO partition_leases AS l \
               (partition, owner_node_id, owner_url, epoch, expires_at, renewed_at) \
             SELECT p, $2, NULL, 1, clock_timestamp(), clock_timestamp() \
               FROM generate_series(0, $1 - 1) AS p \
             ON CONFLICT (partition) DO UPDATE \
             SET owner_node_id = EXCLUDED.owner_node_id, owner_url = NULL, epoch = l.epoch + 1, \
                 expires_at = clock_timestamp(), renewed_at = clock_timestamp() \
             RETURNING partition, epoch",
        )
        .bind(i32::try_from(partitions.min(MAX_PARTITIONS)).unwrap_or(i32::MAX))
        .bind(node_id)
        .fetch_all(&self.pool);
        let mut rows = self.bounded("raise_single_node_epochs", q).await?;
        rows.sort_unstable();
        rows.into_iter()
            .map(|(partition, epoch)| Ok((partition, epoch_from_sql(epoch)?)))
            .collect()
    }

    /// Records that `node_id` is alive now (database time) at `url`; clears `leaving`.
    pub async fn heartbeat(&self, node_id: &str, url: &str) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO cluster_nodes (node_id, url, heartbeat_at, leaving) \
             VALUES ($1, $2, clock_timestamp(), FALSE) \
             ON CONFLICT (node_id) DO UPDATE \
             SET url = EXCLUDED.url, heartbeat_at = EXCLUDED.heartbeat_at, leaving = FALSE",
        )
        .bind(node_id)
        .bind(url);
        self.bounded("heartbeat", q.execute(&self.pool)).await?;
        Ok(())
    }

    /// Nodes that heartbeated within the last `lease_ms` and are not leaving.
    pub async fn live_nodes(&self, lease_ms: u64) -> Result<Vec<NodeRow>, StoreError> {
        let q = sqlx::query(
            "SELECT node_id, url, heartbeat_at, leaving FROM cluster_nodes \
             WHERE NOT leaving \
               AND heartbeat_at + $1::bigint * interval '1 millisecond' > clock_timestamp() \
             ORDER BY node_id LIMIT $2",
        )
        .bind(millis(lease_ms))
        .bind(MAX_NODES);
        let rows = self.bounded("live_nodes", q.fetch_all(&self.pool)).await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRow {
                    node_id: r.try_get("node_id")?,
                    url: r.try_get("url")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                    leaving: r.try_get("leaving")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|source| StoreError::Database {
                query: "live_nodes",
                source,
            })
    }

    /// Partitions in `0..partitions` that `acquire` could take now.
    pub async fn free_partitions(&self, partitions: u32) -> Result<Vec<i32>, StoreError> {
        let sql = format!(
            "SELECT g.p FROM generate_series(0, $1::int - 1) AS g(p) \
             LEFT JOIN partition_leases l ON l.partition = g.p \
             WHERE l.partition IS NULL OR {TAKEABLE} ORDER BY g.p"
        );
        let n = i32::try_from(partitions.min(MAX_PARTITIONS)).unwrap_or(0);
        let q = sqlx::query_scalar::<_, i32>(&sql).bind(n);
        self.bounded("free_partitions", q.fetch_all(&self.pool))
            .await
    }

    /// Takes `partition` for `node_id` if it is free, released or expired, raising its epoch
    /// by one in the same statement; `None` if another node holds it unexpired.
    ///
    /// The row is first locked `FOR UPDATE`, in the same transaction: the upsert alone
    /// changes no key column, so it would take only `FOR NO KEY UPDATE`, which does not wait
    /// for the spool's `FOR KEY SHARE` fence (`fallback::fence_spool`). With the lock, a
    /// takeover waits for every spool transaction of the old epoch to commit (its rows are
    /// then in the spool the new owner replays) — while the old owner's renewals, also
    /// `NO KEY UPDATE`, never wait for spool traffic (issue 22, defect 7).
    pub async fn acquire(
        &self,
        partition: i32,
        node_id: &str,
        url: &str,
        lease_ms: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let sql = format!(
            "INSERT INTO partition_leases AS l \
               (partition, owner_node_id, owner_url, epoch, expires_at, renewed_at) \
             VALUES ($1, $2, $3, 1, \
               clock_timestamp() + $4::bigint * interval '1 millisecond', clock_timestamp()) \
             ON CONFLICT (partition) DO UPDATE \
             SET owner_node_id = EXCLUDED.owner_node_id, owner_url = EXCLUDED.owner_url, \
                 epoch = l.epoch + 1, \
                 expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond', \
                 renewed_at = clock_timestamp() \
             WHERE {TAKEABLE} \
             RETURNING epoch, expires_at"
        );
        let take = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT 1 FROM partition_leases WHERE partition = $1 FOR UPDATE")
                .bind(partition)
                .fetch_optional(&mut *tx)
                .await?;
            let row = sqlx::query(&sql)
                .bind(partition)
                .bind(node_id)
                .bind(url)
                .bind(millis(lease_ms))
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row)
        };
        let row = self.bounded("acquire", take).await?;
        let Some(row) = row else { return Ok(None) };
        let read = |row: &sqlx::postgres::PgRow| -> Result<(i64, DateTime<Utc>), sqlx::Error> {
            Ok((row.try_get("epoch")?, row.try_get("expires_at")?))
        };
        let (epoch, expires_at) = read(&row).map_err(|source| StoreError::Database {
            query: "acquire",
            source,
        })?;
        Ok(Some(Lease {
            partition,
            epoch: epoch_from_sql(epoch)?,
            expires_at,
        }))
    }

    /// Extends the leases in `held` (partition, epoch) that `node_id` still owns with that
    /// very epoch; returns the partitions renewed. A partition missing from the answer was
    /// released or taken by another node.
    pub async fn renew(
        &self,
        node_id: &str,
        held: &[(i32, u64)],
        lease_ms: u64,
    ) -> Result<Vec<i32>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let partitions: Vec<i32> = held.iter().map(|(p, _)| *p).collect();
        let epochs = held
            .iter()
            .map(|(_, e)| epoch_to_sql(*e))
            .collect::<Result<Vec<i64>, _>>()?;
        let q = sqlx::query_scalar::<_, i32>(
            "UPDATE partition_leases AS l \
             SET expires_at = clock_timestamp() + $2::bigint * interval '1 millisecond', \
                 renewed_at = clock_timestamp() \
             FROM unnest($3::int4[], $4::int8[]) AS h(partition, epoch) \
             WHERE l.partition = h.partition AND l.epoch = h.epoch AND l.owner_node_id = $1 \
             RETURNING l.partition",
        )
        .bind(node_id)
        .bind(millis(lease_ms))
        .bind(partitions)
        .bind(epochs);
        self.bounded("renew", q.fetch_all(&self.pool)).await
    }

    /// Graceful handover: if `node_id` still owns `partition` at `epoch`, the lease ends now
    /// (no owner, expired) and keeps its epoch, so the next owner raises it. Returns whether
    /// the row matched.
    pub async fn release(
        &self,
        node_id: &str,
        partition: i32,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let q = sqlx::query(
            "UPDATE partition_leases \
             SET owner_node_id = NULL, owner_url = NULL, expires_at = clock_timestamp() \
             WHERE partition = $1 AND owner_node_id = $2 AND epoch = $3",
        )
        .bind(partition)
        .bind(node_id)
        .bind(epoch_to_sql(epoch)?);
        let done = self.bounded("release", q.execute(&self.pool)).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks `node_id` leaving: it no longer counts in the other nodes' fair share.
    pub async fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        let q =
            sqlx::query("UPDATE cluster_nodes SET leaving = TRUE WHERE node_id = $1").bind(node_id);
        self.bounded("leave", q.execute(&self.pool)).await?;
        Ok(())
    }

    /// Forgets nodes whose last heartbeat is older than `retention_ms`; returns how many.
    pub async fn prune_nodes(&self, retention_ms: u64) -> Result<u64, StoreError> {
        let q = sqlx::query(
            "DELETE FROM cluster_nodes \
             WHERE heartbeat_at < clock_timestamp() - $1::bigint * interval '1 millisecond'",
        )
        .bind(millis(retention_ms));
        let done = self.bounded("prune_nodes", q.execute(&self.pool)).await?;
        Ok(done.rows_affected())
    }

    /// Every lease row, by partition (admin view).
    pub async fn table(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let q = sqlx::query(
            "SELECT partition, owner_node_id, owner_url, epoch, expires_at, renewed_at, \
                    (owner_node_id IS NOT NULL AND expires_at > clock_timestamp()) AS held \
             FROM partition_leases ORDER BY partition LIMIT $1",
        )
        .bind(i64::from(MAX_PARTITIONS));
        let rows = self.bounded("table", q.fetch_all(&self.pool)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let read = || -> Result<(LeaseRow, i64), sqlx::Error> {
                let row = LeaseRow {
                    partition: r.try_get("partition")?,
                    owner_node_id: r.try_get("owner_node_id")?,
                    owner_url: r.try_get("owner_url")?,
                    epoch: 0,
                    expires_at: r.try_get("expires_at")?,
                    renewed_at: r.try_get("renewed_at")?,
                    held: r.try_get("held")?,
                };
                Ok((row, r.try_get("epoch")?))
            };
            let (mut row, epoch) = read().map_err(|source| StoreError::Database {
                query: "table",
                source,
            })?;
            row.epoch = epoch_from_sql(epoch)?;
            out.push(row);
        }
        Ok(out)
    }
}
