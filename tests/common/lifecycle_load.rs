//! The lifecycle load of the fault tests: paced workers that each run create (manual
//! capture) → confirm → capture part → refund part, recording every answer timed from when
//! it was due and every command acknowledged, and the checks made of it afterwards.

use super::chaos::{journal_events_in, load_client, percentile, Merchant};
use super::Api;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Create,
    Confirm,
    Capture,
    Refund,
}

/// One answered request, timed from when it was due on the paced schedule (not from when
/// a worker, held up by an earlier slow answer, got round to sending it): a stall shows in
/// every request it delayed, not only in the one that met it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was due, since the run started.
    pub at: Duration,
    /// From due to answered.
    pub latency: Duration,
    /// HTTP status; 0 for a transport error.
    pub status: u16,
    /// The error's `code` for a non-2xx answer.
    pub code: Option<String>,
}

/// What the load saw: every sample, and per payment the commands acknowledged.
#[derive(Default)]
pub struct Observed {
    pub samples: Vec<Sample>,
    pub acknowledged: BTreeMap<String, BTreeSet<Kind>>,
    /// Payment → index of its merchant.
    pub merchant_of: BTreeMap<String, usize>,
}

pub struct Load {
    pub started: Instant,
    pub stop: AtomicBool,
    /// Request slots taken, for pacing at the offered rate.
    pub slots: AtomicU64,
    pub period: Duration,
    pub observed: Mutex<Observed>,
}

impl Load {
    /// Waits for the next slot of the schedule; when it was due.
    pub async fn pace(&self) -> Instant {
        let slot = self.slots.fetch_add(1, Ordering::SeqCst);
        let due = self.started + self.period * slot as u32;
        tokio::time::sleep_until(due.into()).await;
        due
    }

    /// Sends one request (paced) and records it; the body of a 2xx answer.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        base: &str,
        api_key: &str,
        path: &str,
        idem: Option<&str>,
        body: String,
    ) -> Option<Value> {
        let due = self.pace().await;
        let mut request = client
            .post(format!("{base}{path}"))
            .bearer_auth(api_key)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = idem {
            request = request.header("Idempotency-Key", key);
        }
        let (status, answer) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.ok())
            }
            Err(_) => (0, None),
        };
        let sample = Sample {
            at: due - self.started,
            latency: due.elapsed(),
            status,
            code: answer
                .as_ref()
                .filter(|_| !(200..300).contains(&status))
                .and_then(|a| a["error"]["code"].as_str())
                .map(str::to_string),
        };
        match self.observed.lock() {
            Ok(mut o) => o.samples.push(sample),
            Err(p) => p.into_inner().samples.push(sample),
        }
        answer.filter(|_| (200..300).contains(&status))
    }

    pub fn acknowledge(&self, payment_id: &str, kind: Kind) {
        let mut observed = match self.observed.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        observed
            .acknowledged
            .entry(payment_id.to_string())
            .or_default()
            .insert(kind);
    }
}

/// One worker: create (manual capture) → confirm → capture part → refund part, over and
/// over, each step only after the previous one was acknowledged.
pub async fn worker(
    load: Arc<Load>,
    bases: Arc<Vec<String>>,
    merchants: Arc<Vec<Merchant>>,
    index: usize,
) {
    let client = load_client(Duration::from_secs(15));
    let mut flow = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        flow += 1;
        let merchant = &merchants[(index + flow) % merchants.len()];
        // Each flow through one node (any node serves any merchant: it forwards).
        let base = &bases[(index + flow) % bases.len()];
        let key = format!("w{index}-f{flow}");
        let Some(created) = load
            .send(
                &client,
                base,
                &merchant.api_key,
                "/v1/payments",
                Some(&key),
                r#"{"amount":5000,"currency":"eur","capture_method":"manual"}"#.into(),
            )
            .await
        else {
            continue;
        };
        let Some(id) = created["id"].as_str().map(str::to_string) else {
            continue;
        };
        load.acknowledge(&id, Kind::Create);
        match load.observed.lock() {
            Ok(mut o) => o
                .merchant_of
                .insert(id.clone(), (index + flow) % merchants.len()),
            Err(p) => p
                .into_inner()
                .merchant_of
                .insert(id.clone(), (index + flow) % merchants.len()),
        };
        let steps = [
            (
                Kind::Confirm,
                format!("/v1/payments/{id}/confirm"),
                None,
                r#"{"payment_method":"pm_card_visa"}"#.to_string(),
            ),
            (
                Kind::Capture,
                format!("/v1/payments/{id}/capture"),
                None,
                r#"{"amount":3000}"#.to_string(),
            ),
            (
                Kind::Refund,
                format!("/v1/payments/{id}/refunds"),
                Some(format!("{key}-refund")),
                r#"{"amount":1000}"#.to_string(),
            ),
        ];
        for (kind, path, idem, body) in steps {
            if load.stop.load(Ordering::SeqCst) {
                break;
            }
            match load
                .send(
                    &client,
                    base,
                    &merchant.api_key,
                    &path,
                    idem.as_deref(),
                    body,
                )
                .await
            {
                Some(_) => load.acknowledge(&id, kind),
                None => break,
            }
        }
    }
}

/// (p50, p99, max, count) of the samples' latencies.
pub fn percentiles(samples: &[&Sample]) -> (Duration, Duration, Duration, usize) {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default(),
        latencies.len(),
    )
}

/// The event type an acknowledged command must have left in the journal.
pub fn journaled_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Create => "payment.created",
        Kind::Confirm => "payment.authorized",
        Kind::Capture => "payment.succeeded",
        Kind::Refund => "refund.created",
    }
}

pub fn observed_merchants(load: &Load) -> BTreeMap<String, usize> {
    match load.observed.lock() {
        Ok(o) => o.merchant_of.clone(),
        Err(p) => p.into_inner().merchant_of.clone(),
    }
}

/// Payment → its merchant's API key.
pub fn merchant_keys(
    merchants: &[Merchant],
    merchant_of: &BTreeMap<String, usize>,
) -> BTreeMap<String, String> {
    merchant_of
        .iter()
        .map(|(payment, m)| (payment.clone(), merchants[*m].api_key.clone()))
        .collect()
}

/// Reads every acknowledged payment (16 at a time, so a 60 s outage's thousands do not
/// stretch the outage) and checks it shows at least what was acknowledged; returns how
/// many were read.
pub async fn check_readable(
    api: &Api,
    acknowledged: &BTreeMap<String, BTreeSet<Kind>>,
    keys: &BTreeMap<String, String>,
) -> usize {
    use futures::StreamExt;
    futures::stream::iter(acknowledged)
        .map(|(payment_id, kinds)| async move {
            let key = keys.get(payment_id).expect("the payment's merchant");
            let r = api.get_payment(key, payment_id).await;
            assert_eq!(r.status, 200, "{payment_id} after the restart: {}", r.body);
            let p = &r.body;
            if kinds.contains(&Kind::Refund) {
                assert!(
                    p["amount_refunded"].as_i64() >= Some(1000),
                    "{payment_id}: {p}"
                );
            }
            if kinds.contains(&Kind::Capture) {
                assert_eq!(p["amount_captured"], 3000, "{payment_id}: {p}");
                assert_eq!(p["status"], "succeeded", "{payment_id}: {p}");
            } else if kinds.contains(&Kind::Confirm) {
                assert!(
                    p["status"] == "requires_capture" || p["status"] == "succeeded",
                    "{payment_id}: {p}"
                );
            }
        })
        .buffer_unordered(16)
        .count()
        .await
}

impl Load {
    /// A load offering `rate` requests per second from now.
    pub fn new(rate: u64) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            stop: AtomicBool::new(false),
            slots: AtomicU64::new(0),
            period: Duration::from_nanos(1_000_000_000 / rate.max(1)),
            observed: Mutex::new(Observed::default()),
        })
    }

    /// The commands acknowledged so far, per payment.
    pub fn acknowledged(&self) -> BTreeMap<String, BTreeSet<Kind>> {
        match self.observed.lock() {
            Ok(o) => o.acknowledged.clone(),
            Err(p) => p.into_inner().acknowledged.clone(),
        }
    }

    /// Everything observed, taken out.
    pub fn take_observed(&self) -> Observed {
        match self.observed.lock() {
            Ok(mut o) => std::mem::take(&mut *o),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }
}

/// Every acknowledged command's event is in the journal (read with an independent client),
/// and every acknowledged payment's events are at sequences 1..n with one event each.
/// Returns how many commands were checked.
pub fn assert_every_acknowledged_step_journaled(
    brokers: &str,
    topic: &str,
    partitions: u32,
    acknowledged: &BTreeMap<String, BTreeSet<Kind>>,
) -> usize {
    let (events, _) = journal_events_in(brokers, topic, partitions);
    let mut by_payment: BTreeMap<String, BTreeMap<u64, BTreeSet<(String, String)>>> =
        BTreeMap::new();
    for e in &events {
        by_payment
            .entry(e.payment_id.clone())
            .or_default()
            .entry(e.sequence)
            .or_default()
            .insert((e.event_id.to_string(), e.event_type.clone()));
    }
    let mut acknowledged_commands = 0;
    for (payment_id, kinds) in acknowledged {
        let Some(journaled) = by_payment.get(payment_id) else {
            panic!("acknowledged payment {payment_id} is not in the journal");
        };
        let sequences: Vec<u64> = journaled.keys().copied().collect();
        assert_eq!(
            sequences,
            (1..=journaled.len() as u64).collect::<Vec<_>>(),
            "{payment_id}: sequences 1..n"
        );
        for (sequence, ids) in journaled {
            assert_eq!(
                ids.len(),
                1,
                "{payment_id}: one event at {sequence}: {ids:?}"
            );
        }
        let types: BTreeSet<&str> = journaled
            .values()
            .flat_map(|ids| ids.iter().map(|(_, t)| t.as_str()))
            .collect();
        for kind in kinds {
            acknowledged_commands += 1;
            assert!(
                types.contains(journaled_type(*kind)),
                "{payment_id}: acknowledged {kind:?} but the journal has {types:?}"
            );
        }
    }
    acknowledged_commands
}
