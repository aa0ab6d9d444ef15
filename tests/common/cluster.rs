//! Helpers of the cluster tests: `payrail node` processes with `cluster.node_id`, their
//! view of who serves what (`GET /v1/admin/cluster`), and the journal's epochs.

use super::{Api, JournalRecord, NodeProcess, TestEnv, ADMIN_TOKEN};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Partitions of the cluster tests' journal: two per node of a three-node cluster.
pub const PARTITIONS: u32 = 6;

/// Held by each cluster test for its whole run: several clusters of debug nodes at once on
/// two cores would starve the lease renewals and measure the machine, not the cluster.
pub static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// A short lease keeps the tests short; the takeover benchmark uses the default (6 s).
pub const LEASE_MS: &str = "2000";

pub async fn cluster_node(env: &TestEnv, node_id: &str, extra: &[(&str, &str)]) -> NodeProcess {
    cluster_node_on(env, node_id, super::free_port(), extra).await
}

/// A cluster node on `port` (e.g. one the clients know before the node starts).
pub async fn cluster_node_on(
    env: &TestEnv,
    node_id: &str,
    port: u16,
    extra: &[(&str, &str)],
) -> NodeProcess {
    let partitions = PARTITIONS.to_string();
    let mut vars = vec![
        ("PAYRAIL__CLUSTER__NODE_ID", node_id),
        ("PAYRAIL__CLUSTER__LEASE_MS", LEASE_MS),
        ("PAYRAIL__CLUSTER__DRAIN_TIMEOUT_MS", "1000"),
        ("PAYRAIL__JOURNAL__PARTITIONS", partitions.as_str()),
    ];
    vars.extend_from_slice(extra);
    NodeProcess::start_on(env, port, &vars).await
}

/// The partitions `api`'s node serves now, with their epochs.
pub async fn serving(api: &Api) -> Option<BTreeMap<i32, u64>> {
    let response = api
        .client
        .get(format!("{}/v1/admin/cluster", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    body["serving"]
        .as_array()?
        .iter()
        .map(|s| Some((s["partition"].as_i64()? as i32, s["epoch"].as_u64()?)))
        .collect()
}

/// Waits until the nodes behind `apis` serve every partition between them, each exactly
/// once and each node its fair share (no more handovers to come); returns partition →
/// (index of its node, epoch).
pub async fn settled(apis: &[&Api], timeout: Duration) -> BTreeMap<i32, (usize, u64)> {
    served_once_by(apis, timeout, true).await
}

/// Like [`settled`] without the fair share: every partition served by exactly one node
/// (with six partitions on four nodes the keepers' share is two, so a node may serve none).
pub async fn served_once(apis: &[&Api], timeout: Duration) -> BTreeMap<i32, (usize, u64)> {
    served_once_by(apis, timeout, false).await
}

async fn served_once_by(
    apis: &[&Api],
    timeout: Duration,
    fair_share: bool,
) -> BTreeMap<i32, (usize, u64)> {
    let deadline = Instant::now() + timeout;
    let low = PARTITIONS as usize / apis.len();
    let high = (PARTITIONS as usize).div_ceil(apis.len());
    loop {
        let mut owners = BTreeMap::new();
        let mut twice = false;
        let mut fair = true;
        for (index, api) in apis.iter().enumerate() {
            let served = serving(api).await.unwrap_or_default();
            fair &= (low..=high).contains(&served.len());
            for (partition, epoch) in served {
                twice |= owners.insert(partition, (index, epoch)).is_some();
            }
        }
        if !twice && (fair || !fair_share) && owners.len() == PARTITIONS as usize {
            return owners;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not settle within {timeout:?}: {owners:?} (a partition twice: {twice})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn partition_of(merchant_id: &str) -> i32 {
    kafka_journal::partition_for(merchant_id.as_bytes(), PARTITIONS)
}

/// Merchants until every partition has at least `per_partition` of them.
pub async fn merchants_on_every_partition(
    api: &Api,
    per_partition: usize,
) -> BTreeMap<i32, Vec<(String, String)>> {
    let mut by_partition: BTreeMap<i32, Vec<(String, String)>> = BTreeMap::new();
    for n in 0..(PARTITIONS as usize * per_partition * 20) {
        if by_partition.len() == PARTITIONS as usize
            && by_partition.values().all(|m| m.len() >= per_partition)
        {
            return by_partition;
        }
        let (id, key) = api.merchant(&format!("cluster-{n}")).await;
        let list = by_partition.entry(partition_of(&id)).or_default();
        if list.len() < per_partition {
            list.push((id, key));
        }
    }
    panic!("merchants did not cover every partition: {by_partition:?}");
}

pub fn event_type(record: &JournalRecord) -> &str {
    record
        .headers
        .get("event_type")
        .map(String::as_str)
        .unwrap_or("")
}

pub fn owner_epoch(record: &JournalRecord) -> u64 {
    record
        .headers
        .get("owner_epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0)
}

/// Two cluster nodes, settled, and a merchant whose partition node b (index 1) serves.
pub struct TwoNodes {
    pub nodes: [NodeProcess; 2],
    pub apis: Vec<Api>,
    /// Partition → (index of its node, epoch) once settled.
    pub owners: BTreeMap<i32, (usize, u64)>,
    /// The merchant's partition, served by node b.
    pub partition: i32,
    pub merchant_id: String,
    pub key: String,
}

impl TwoNodes {
    pub async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let nodes = [
            cluster_node(env, "node-a", extra).await,
            cluster_node(env, "node-b", extra).await,
        ];
        let apis: Vec<Api> = nodes.iter().map(Api::new).collect();
        let owners = settled(&apis.iter().collect::<Vec<_>>(), Duration::from_secs(90)).await;
        let merchants = merchants_on_every_partition(&apis[0], 1).await;
        let (partition, (merchant_id, key)) = merchants
            .iter()
            .find(|(p, _)| owners[p].0 == 1)
            .map(|(p, list)| (*p, list[0].clone()))
            .expect("node b owns a partition");
        Self {
            nodes,
            apis,
            owners,
            partition,
            merchant_id,
            key,
        }
    }
}

/// In `partition` of `records`: the owner-change marker of `epoch`, and the merchant's first
/// `payment.created` (if any).
pub fn marker_and_create<'a>(
    records: &'a [JournalRecord],
    partition: i32,
    epoch: u64,
    merchant_id: &str,
) -> (&'a JournalRecord, Option<&'a JournalRecord>) {
    let mine = || records.iter().filter(move |r| r.partition == partition);
    let marker = mine()
        .find(|r| event_type(r) == "partition.owner_changed" && owner_epoch(r) == epoch)
        .unwrap_or_else(|| {
            panic!("partition {partition}: no owner-change marker of epoch {epoch}")
        });
    let created = mine()
        .find(|r| event_type(r) == "payment.created" && r.key.as_deref() == Some(merchant_id));
    (marker, created)
}

/// Retries a create through `api` every `pause` until it answers 201, allowing only 503s
/// (a partition moving) meanwhile; panics after `limit`. Returns the time since `since` and
/// the number of tries.
pub async fn created_once_served(
    api: &Api,
    key: &str,
    idempotency_key: &str,
    body: &str,
    since: Instant,
    limit: Duration,
    pause: Duration,
) -> (Duration, u32) {
    let mut tries = 0;
    loop {
        tries += 1;
        let reply = api.create_payment(key, Some(idempotency_key), body).await;
        if reply.status == 201 {
            return (since.elapsed(), tries);
        }
        assert_eq!(
            reply.status, 503,
            "only retryable refusals while the partition moves: {}",
            reply.body
        );
        assert!(
            since.elapsed() < limit,
            "not served again within {limit:?}: {}",
            reply.body
        );
        tokio::time::sleep(pause).await;
    }
}

/// Creates with new keys for `key`'s merchant through `entry` until one of `nodes` has
/// skipped a look-up since (its fresh-key filter answers for that merchant's partition; no
/// other creates may run meanwhile). Panics after 30 s.
pub async fn until_a_fresh_key_filter_answers(entry: &Api, nodes: &[&Api], key: &str, label: &str) {
    async fn skipped(nodes: &[&Api]) -> f64 {
        let mut sum = 0.0;
        for node in nodes {
            sum += node.lookups_skipped().await;
        }
        sum
    }
    let before = skipped(nodes).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        let body = r#"{"amount":900,"currency":"usd"}"#;
        let fresh = entry
            .create_payment(key, Some(&format!("fresh-{label}-{n}")), body)
            .await;
        assert_eq!(fresh.status, 201, "{}", fresh.body);
        if skipped(nodes).await > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: no fresh-key filter answered within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
