//! Faults on one node: a hung or dead broker, a payment actor that panics. Each test owns a
//! private broker (tests/common/broker.rs) so it can pause or kill it, and asserts what a
//! client sees and what the journal holds (read with an independent Kafka client).
//!
//! The broker tests here run with the journal fallback off (`spool.max_rows = 0`): they pin
//! what an outage means without the spool (503s that never fork a key). With the spool the
//! same faults are acknowledged; that is `tests/journal_fallback.rs`.

mod common;

// The tests, grouped by what fails; they share the helpers below.
#[path = "faults/actors.rs"]
mod actors;
#[path = "faults/breaker.rs"]
mod breaker;
#[path = "faults/supervision.rs"]
mod supervision;
#[path = "faults/unacknowledged.rs"]
mod unacknowledged;

use common::broker::PrivateBroker;
use common::*;
use kafka_journal::codec::{Codec, CodecKind};
use kafka_journal::Envelope;
use payrail_actors::payment::PaymentEvent;

/// Every payment event in the journal, decoded, in journal order per partition.
fn journal_events(brokers: &str, topic: &str) -> Vec<Envelope<PaymentEvent>> {
    read_journal(brokers, topic, PARTITIONS)
        .into_iter()
        .filter_map(|r| {
            let codec = CodecKind::from_content_type(r.headers.get("content_type")?).ok()?;
            codec.decode(&r.value).ok()
        })
        .collect()
}

async fn private_setup(
    name: &str,
    extra: &[(&str, &str)],
) -> (TestEnv, PrivateBroker, NodeProcess) {
    let mut env = TestEnv::new(name).await;
    let broker_dir = env.dir.join("broker");
    std::fs::create_dir_all(&broker_dir).expect("broker dir");
    let broker = PrivateBroker::start(&broker_dir, free_port());
    env.brokers = broker.brokers();
    let node = NodeProcess::start(&env, extra).await;
    (env, broker, node)
}

async fn cancel(api: &Api, key: &str, id: &str) -> Reply {
    api.send(
        reqwest::Method::POST,
        &format!("/v1/payments/{id}/cancel"),
        Some(key),
        None,
        Some("{}".into()),
    )
    .await
}

/// A node on the shared broker with fault injection on and the given settings.
async fn fault_injecting_node(name: &str, extra: &[(&str, &str)]) -> (TestEnv, NodeProcess) {
    let env = TestEnv::new(name).await;
    let mut settings = vec![("PAYRAIL__ACTORS__FAULT_INJECTION", "true")];
    settings.extend_from_slice(extra);
    let node = NodeProcess::start(&env, &settings).await;
    (env, node)
}

async fn readyz(api: &Api) -> Reply {
    api.send(reqwest::Method::GET, "/readyz", None, None, None)
        .await
}
