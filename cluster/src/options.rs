//! Lease options (`[cluster]` in config.toml once the node wires them in).

use crate::error::LeaseError;
use serde::Deserialize;
use std::time::Duration;

/// How a node takes, keeps and hands over partition leases.
///
/// Two limits have a default derived from `lease_ms` (so that a config that only shortens
/// the lease stays consistent); leave them out (`None`) to get it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseOptions {
    /// This node's id in `partition_leases` and `cluster_nodes`: unique in the cluster and
    /// stable across restarts of the same node. Required (no default).
    pub node_id: String,
    /// The URL other nodes forward a partition's requests to (stored as `owner_url`).
    pub advertise_url: String,
    /// Lease length (ms): a lease expires this long after its last renewal, by the database's
    /// clock. Renewals run every `lease_ms / 3`. Default 6000.
    pub lease_ms: u64,
    /// Safety margin (ms): this node treats its lease as valid only until
    /// `lease_ms - safety_margin_ms` after the instant it *sent* its last successful renewal,
    /// on its own monotonic clock, so it stops acknowledging before the database lets
    /// another node take the partition. It must cover the time between `Leases::valid()`
    /// and the reply leaving the node, plus clock-rate drift. Default `lease_ms / 6`.
    pub safety_margin_ms: Option<u64>,
    /// Partitions of the journal topic (partitions `0..partitions` are leased). Default 6.
    pub partitions: u32,
    /// Each SQL statement (heartbeat, renew, acquire, release, ...) is abandoned after this
    /// long (ms), connection wait included. Must be below `lease_ms / 3`. Default
    /// `lease_ms / 6`.
    pub query_timeout_ms: Option<u64>,
    /// Graceful handover (ms): after marking a partition releasing, wait this long at most
    /// for the node to report it drained (`Leases::drained`), then release it anyway.
    /// Default 3000.
    pub drain_timeout_ms: u64,
    /// `Leases::shutdown()` waits this long at most (ms) for the keeper to drain, release
    /// and leave; leases not released by then expire by themselves. Default 10000.
    pub shutdown_timeout_ms: u64,
    /// At startup, forget `cluster_nodes` rows whose last heartbeat is older than this (ms).
    /// Default one day.
    pub node_retention_ms: u64,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            advertise_url: "http://127.0.0.1:8080".into(),
            lease_ms: 6_000,
            safety_margin_ms: None,
            partitions: 6,
            query_timeout_ms: None,
            drain_timeout_ms: 3_000,
            shutdown_timeout_ms: 10_000,
            node_retention_ms: 86_400_000,
        }
    }
}

/// Partitions beyond this are refused (Kafka partitions are `i32`; this bounds every
/// per-round list as well).
pub const MAX_PARTITIONS: u32 = 65_536;

impl LeaseOptions {
    /// Checks the options; every other method assumes they passed.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let bad = |why: String| Err(LeaseError::InvalidOptions(why));
        if self.node_id.trim().is_empty() {
            return bad("node_id must be set".into());
        }
        if self.advertise_url.trim().is_empty() {
            return bad("advertise_url must be set".into());
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return bad(format!("partitions must be in 1..={MAX_PARTITIONS}"));
        }
        if !(30..=3_600_000).contains(&self.lease_ms) {
            return bad("lease_ms must be in 30..=3600000".into());
        }
        let margin = self.safety_margin().as_millis();
        if margin == 0 || margin * 2 > u128::from(self.lease_ms) {
            return bad("safety_margin_ms must be in 1..=lease_ms/2".into());
        }
        let timeout = self.query_timeout();
        if timeout.is_zero() || timeout >= self.renew_interval() {
            return bad("query_timeout_ms must be in 1..lease_ms/3".into());
        }
        if self.shutdown_timeout_ms == 0 {
            return bad("shutdown_timeout_ms must be positive".into());
        }
        Ok(())
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// The safety margin (explicit, or `lease_ms / 6`).
    pub fn safety_margin(&self) -> Duration {
        Duration::from_millis(self.safety_margin_ms.unwrap_or(self.lease_ms / 6))
    }

    /// How long after a renewal was sent the lease counts as valid on this node.
    pub fn valid_for(&self) -> Duration {
        self.lease().saturating_sub(self.safety_margin())
    }

    /// Time between two keeper rounds (heartbeat, renew, rebalance): `lease_ms / 3`.
    pub fn renew_interval(&self) -> Duration {
        Duration::from_millis(self.lease_ms / 3)
    }

    /// The limit on each SQL statement (explicit, or `lease_ms / 6`).
    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms.unwrap_or(self.lease_ms / 6))
    }

    /// The drain limit of a graceful handover.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The limit on `Leases::shutdown()`.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// The `cluster_nodes` retention.
    pub fn node_retention(&self) -> Duration {
        Duration::from_millis(self.node_retention_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> LeaseOptions {
        LeaseOptions {
            node_id: "n1".into(),
            ..LeaseOptions::default()
        }
    }

    #[test]
    fn defaults_derive_margin_and_timeout_from_the_lease() {
        let o = named();
        assert!(o.validate().is_ok());
        assert_eq!(o.safety_margin(), Duration::from_millis(1_000));
        assert_eq!(o.query_timeout(), Duration::from_millis(1_000));
        assert_eq!(o.renew_interval(), Duration::from_millis(2_000));
        assert_eq!(o.valid_for(), Duration::from_millis(5_000));
        let short = LeaseOptions {
            lease_ms: 600,
            ..named()
        };
        assert_eq!(short.safety_margin(), Duration::from_millis(100));
        assert!(short.validate().is_ok());
    }

    #[test]
    fn missing_node_id_and_oversized_margin_are_refused() {
        assert!(LeaseOptions::default().validate().is_err());
        let o = LeaseOptions {
            safety_margin_ms: Some(4_000),
            ..named()
        };
        assert!(o.validate().is_err());
        let o = LeaseOptions {
            query_timeout_ms: Some(2_000),
            ..named()
        };
        assert!(o.validate().is_err());
    }

    #[test]
    fn deserializes_partially_and_refuses_unknown_fields() {
        let o: LeaseOptions =
            serde_json::from_str(r#"{"node_id": "n1", "lease_ms": 900}"#).expect("valid");
        assert_eq!((o.lease_ms, o.partitions), (900, 6));
        assert_eq!(o.safety_margin(), Duration::from_millis(150));
        let unknown = serde_json::from_str::<LeaseOptions>(r#"{"lease": 900}"#);
        assert!(unknown.is_err());
    }
}
