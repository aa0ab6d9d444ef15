//! A node on a private broker that tests kill, pause and restart (the journal outage
//! tests), and the journal's view of each payment read with an independent client.

use super::broker::PrivateBroker;
use super::chaos::{load_client, spool_drained};
use super::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Per payment: sequence → the distinct (event id, event type) journaled for it.
pub type JournalByPayment = HashMap<String, BTreeMap<u64, Vec<(String, String)>>>;

pub struct Outage {
    pub env: TestEnv,
    pub broker: PrivateBroker,
    pub sandbox: SandboxProcess,
    pub node: NodeProcess,
    pub api: Api,
    pub merchant_id: String,
    pub key: String,
    pub node_extra: Vec<(String, String)>,
}

/// A node on a private broker with the PSP sandbox; `extra` adds node settings.
pub async fn outage_world(name: &str, extra: &[(&str, &str)]) -> Outage {
    let mut env = TestEnv::new(name).await;
    let broker_dir = env.dir.join("broker");
    std::fs::create_dir_all(&broker_dir).expect("broker dir");
    let broker = PrivateBroker::start(&broker_dir, free_port());
    env.brokers = broker.brokers();
    let port = free_port();
    let sandbox = SandboxProcess::start(&env, port, &[]);
    let mut node_extra: Vec<(String, String)> = sandbox.node_env();
    for (k, v) in [
        ("PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS", "2000"),
        ("PAYRAIL__JOURNAL__ADMIN_TIMEOUT_MS", "2000"),
        ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "500"),
        ("PAYRAIL__SPOOL__REPLAY_INTERVAL_MS", "100"),
    ]
    .iter()
    .chain(extra.iter())
    {
        node_extra.push((k.to_string(), v.to_string()));
    }
    let node = start_node(&env, port, &node_extra).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant(name).await;
    Outage {
        env,
        broker,
        sandbox,
        node,
        api,
        merchant_id,
        key,
        node_extra,
    }
}

pub async fn start_node(env: &TestEnv, port: u16, extra: &[(String, String)]) -> NodeProcess {
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    NodeProcess::start_on(env, port, &extra).await
}

impl Outage {
    pub async fn post(&self, path: &str, idem: Option<&str>, body: &str) -> Reply {
        self.api
            .send(
                reqwest::Method::POST,
                path,
                Some(&self.key),
                idem,
                Some(body.to_string()),
            )
            .await
    }

    /// Confirms `id` with a card the sandbox approves; asserts 200 and returns the status.
    pub async fn confirm(&self, id: &str) -> String {
        let r = self
            .post(
                &format!("/v1/payments/{id}/confirm"),
                None,
                r#"{"payment_method":"pm_card_visa"}"#,
            )
            .await;
        assert_eq!(r.status, 200, "confirm: {}", r.body);
        r.body["status"].as_str().unwrap_or_default().to_string()
    }

    pub async fn create(&self, idem: &str, body: &str) -> String {
        let r = self.post("/v1/payments", Some(idem), body).await;
        assert!(
            r.status == 201 || r.status == 200,
            "create: {}\n{}",
            r.body,
            self.node.log_tail()
        );
        r.body["id"].as_str().expect("id").to_string()
    }

    pub async fn admin_journal(&self) -> Value {
        let r = self
            .api
            .send(
                reqwest::Method::GET,
                "/v1/admin/journal",
                Some(ADMIN_TOKEN),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    pub async fn readyz(&self) -> Reply {
        self.api
            .send(reqwest::Method::GET, "/readyz", None, None, None)
            .await
    }

    /// Waits until every partition is in fallback, as the replayer makes them while the
    /// breaker is open (so a restart knows where each partition's journal ended).
    pub async fn wait_all_in_fallback(&self) {
        let all_in = eventually(Duration::from_secs(20), || async {
            let ready = self.readyz().await;
            (ready.body["partitions_in_fallback"]
                .as_array()
                .map(|a| a.len() as u32)
                == Some(PARTITIONS))
            .then_some(())
        })
        .await;
        assert!(all_in.is_some(), "{}", self.readyz().await.body);
    }

    /// Waits until the spool is empty and no partition is in fallback.
    pub async fn wait_replayed(&self, timeout: Duration) {
        let client = load_client(Duration::from_secs(5));
        let done = eventually(timeout, || async {
            spool_drained(&client, &self.node.base).await.ok()
        })
        .await;
        assert!(
            done.is_some(),
            "the spool was not replayed: {}\n{}",
            self.admin_journal().await,
            self.node.log_tail()
        );
    }
}

/// Per payment: its journaled events (sequence → event ids seen), read with an independent
/// client. A record appended twice (timed out, then spooled; or replayed again after a
/// crash) carries the same event id.
pub fn journaled_events(env: &TestEnv) -> JournalByPayment {
    by_payment(read_journal(&env.brokers, &env.topic(), PARTITIONS))
}

/// What every reader applies: [`journaled_events`] without the records the epoch fence
/// drops (written under an epoch already superseded in their partition, or in a range a
/// takeover in fallback voided: see `kafka_journal::fence`), and the event ids of the
/// records it dropped. The voided ranges are read from PostgreSQL, where readers find them.
pub async fn journaled_events_fenced(env: &TestEnv) -> (JournalByPayment, Vec<String>) {
    let pool = env.pool().await;
    let voided: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT partition, epoch, from_offset FROM journal_void_fences WHERE topic = $1",
    )
    .bind(env.topic())
    .fetch_all(&pool)
    .await
    .expect("voided ranges");
    let mut records = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut highest: HashMap<i32, u64> = HashMap::new();
    let mut fenced = Vec::new();
    let admitted = records
        .into_iter()
        .filter(|r| {
            let epoch: u64 = r
                .headers
                .get("owner_epoch")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            // The rule every reader applies (kafka_journal::fence::VoidFences).
            let void = kafka_journal::fence::VoidFences::new(
                voided
                    .iter()
                    .filter(|(partition, _, _)| *partition == r.partition)
                    .map(|(_, above, from)| (*above as u64, *from))
                    .collect(),
            )
            .voids(epoch, r.offset);
            let seen = highest.entry(r.partition).or_insert(0);
            if void || epoch < *seen {
                fenced.push(r.headers.get("event_id").cloned().unwrap_or_default());
                return false;
            }
            *seen = epoch;
            true
        })
        .collect();
    (by_payment(admitted), fenced)
}

fn by_payment(records: Vec<super::JournalRecord>) -> JournalByPayment {
    use kafka_journal::codec::{Codec, CodecKind};
    let mut by_payment: JournalByPayment = HashMap::new();
    for record in records {
        if record.headers.get("event_type").map(String::as_str)
            == Some(kafka_journal::fence::OWNER_CHANGED)
        {
            continue;
        }
        let Some(content_type) = record.headers.get("content_type") else {
            continue;
        };
        let codec = CodecKind::from_content_type(content_type).expect("codec");
        let envelope: kafka_journal::Envelope<payrail_actors::payment::PaymentEvent> =
            codec.decode(&record.value).expect("envelope");
        let ids = by_payment
            .entry(envelope.payment_id.clone())
            .or_default()
            .entry(envelope.sequence)
            .or_default();
        let id = envelope.event_id.to_string();
        if !ids.iter().any(|(seen, _)| *seen == id) {
            ids.push((id, envelope.event_type.clone()));
        }
    }
    by_payment
}

/// Asserts `payment_id`'s journaled events are 1..n, one event per sequence, and returns
/// their types in order.
pub fn assert_in_sequence(journal: &JournalByPayment, payment_id: &str) -> Vec<String> {
    let events = journal
        .get(payment_id)
        .unwrap_or_else(|| panic!("{payment_id} is not in the journal"));
    let sequences: Vec<u64> = events.keys().copied().collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(sequences, expected, "{payment_id}: sequences 1..n, no gap");
    events
        .iter()
        .map(|(sequence, ids)| {
            assert_eq!(
                ids.len(),
                1,
                "{payment_id}: one event for sequence {sequence}: {ids:?}"
            );
            ids[0].1.clone()
        })
        .collect()
}
