//! What one simulated client does per iteration: the `create`, `lifecycle` and `mixed`
//! scenarios of `payrail loadtest`. Every HTTP request is recorded under its own kind.
//!
//! - `create`: `POST /v1/payments`.
//! - `lifecycle`: create → confirm (`pm_card_visa`, manual capture; the node calls the PSP
//!   sandbox, which also sends the node a signed webhook) → capture (all) → refund (all or a
//!   random part). If confirm answers `processing`, the worker polls the payment until the
//!   webhook moved it on, recorded as one [`KIND_WEBHOOK_WAIT`] (bounded by `--timeout-ms`).
//! - `mixed`: each iteration is the next [`Action`] of an evenly interleaved round of
//!   [`MIX`] (each action its weight times per 100 iterations).
//!
//! A failed step (transport error, unexpected HTTP status, or a payment in another status
//! than the step leads to) is an error of that step's kind and ends the iteration. No step
//! starts after the end of the run or beyond `--max-requests` (which counts HTTP requests).

use crate::http_load::{classify, Shared};
use crate::limits::{MIXED_RECENT_PAYMENTS, WEBHOOK_POLL_INTERVAL_MS};
use crate::report::{ErrorKind, Phase, Recorder};
use crate::schedule::corrected_latency;
use crate::Scenario;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{RequestBuilder, StatusCode};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `POST /v1/payments`.
pub const KIND_CREATE: &str = "create";
/// `POST /v1/payments/{id}/confirm`.
pub const KIND_CONFIRM: &str = "confirm";
/// `POST /v1/payments/{id}/capture`.
pub const KIND_CAPTURE: &str = "capture";
/// `POST /v1/payments/{id}/refunds`.
pub const KIND_REFUND: &str = "refund";
/// A confirm that answered `processing`: from its answer until `GET /v1/payments/{id}`
/// shows the outcome the PSP webhook brought (one entry per wait, however many polls).
pub const KIND_WEBHOOK_WAIT: &str = "webhook_wait";
/// `GET /v1/payments/{id}` of a payment this worker created.
pub const KIND_GET: &str = "get";
/// `GET /v1/payments?limit=10`.
pub const KIND_LIST: &str = "list";

/// The test card that the sandbox authorizes.
const PAYMENT_METHOD: &str = "pm_card_visa";
/// Page size of the `list` requests.
const LIST_LIMIT: u32 = 10;
/// Created amounts, in minor units.
const AMOUNT_MIN: i64 = 100;
const AMOUNT_MAX: i64 = 100_000;

/// One iteration of the `mixed` scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// create only.
    Create,
    /// The whole `lifecycle` iteration (4 requests).
    Lifecycle,
    /// create → confirm with automatic capture (the PSP captures; status `succeeded`).
    CreateConfirm,
    /// `GET /v1/payments/{id}` of a payment this worker created (a create if it has none yet).
    Get,
    /// `GET /v1/payments?limit=10` of a merchant.
    List,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Lifecycle => "lifecycle",
            Self::CreateConfirm => "create_confirm",
            Self::Get => "get",
            Self::List => "list",
        }
    }
}

/// Weights of the `mixed` scenario, per iteration (they sum to 100, so they read as
/// percentages of iterations): mostly plain creates as in checkout traffic, a share of
/// full lifecycles and of automatic-capture confirms, and merchant reads.
pub const MIX: [(Action, u32); 5] = [
    (Action::Create, 50),
    (Action::Lifecycle, 15),
    (Action::CreateConfirm, 15),
    (Action::Get, 15),
    (Action::List, 5),
];

/// `create 50, lifecycle 15, …`, for the report.
pub fn mix_description() -> String {
    let parts: Vec<String> = MIX
        .iter()
        .map(|(action, weight)| format!("{} {weight}", action.name()))
        .collect();
    parts.join(", ")
}

/// Slots in one round of the mix: the weights sum to this, so each round holds every
/// action exactly its weight times.
pub const MIX_ROUND: usize = 100;

/// One round of the mix, interleaved by smooth weighted round-robin (nginx's upstream
/// balancing): every action appears exactly its weight times, spread evenly rather than
/// drawn at random, so a short run still sends every kind and two runs send the same mix.
pub fn mix_round() -> Vec<Action> {
    let total: i64 = MIX.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut current = [0i64; MIX.len()];
    let mut round = Vec::with_capacity(MIX_ROUND);
    for _ in 0..MIX_ROUND {
        for (credit, (_, weight)) in current.iter_mut().zip(MIX) {
            *credit += i64::from(weight);
        }
        let mut best = 0;
        for (i, credit) in current.iter().enumerate() {
            if *credit > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        round.push(MIX[best].0);
    }
    round
}

/// Where connection `connection` of `connections` starts in [`mix_round`]: the
/// connections start evenly apart, so together they walk the whole round from the start.
pub fn mix_phase(connection: u32, connections: u32) -> usize {
    let connections = usize::try_from(connections.max(1)).unwrap_or(1);
    let connection = usize::try_from(connection).unwrap_or(0) % connections;
    connection * MIX_ROUND / connections
}

/// What one iteration means for `--rate`, for the report.
pub fn iteration_description(scenario: Scenario) -> String {
    match scenario {
        Scenario::Create => "create (1 request)".into(),
        Scenario::Lifecycle => "create, confirm, capture, refund (4 requests)".into(),
        Scenario::Mixed => format!("one action by weight: {}", mix_description()),
        Scenario::StripeCreate => "Stripe-compatible create (1 request)".into(),
    }
}

/// When a step's latency starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// When it is sent; it is not sent after the end of the run.
    Now,
    /// At this intended send time (open loop, first request of an iteration): the latency
    /// is corrected for coordinated omission.
    Scheduled(Instant),
}

/// Why an iteration ended before its last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// The step failed and was recorded as an error of its kind.
    Failed,
    /// `--max-requests` is spent: the worker stops.
    Budget,
    /// The run is over: no new step starts.
    End,
}

/// The parts of a payment the scenarios look at.
#[derive(Debug, serde::Deserialize)]
struct PaymentReply {
    id: String,
    status: String,
}

#[derive(serde::Deserialize)]
struct ListReply {
    #[allow(dead_code)] // parsed to check the shape of the answer
    data: Vec<serde::de::IgnoredAny>,
}

/// Known payment and refund statuses, as stable labels for [`ErrorKind::UnexpectedStatus`].
const STATUSES: [&str; 7] = [
    "requires_payment_method",
    "requires_capture",
    "processing",
    "succeeded",
    "failed",
    "canceled",
    "pending",
];

fn status_label(status: &str) -> &'static str {
    STATUSES
        .iter()
        .find(|s| **s == status)
        .copied()
        .unwrap_or("other")
}

/// Payment ids go into URL paths: accept only what the node issues (`pay_` + alphanumerics).
fn safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_payment(body: &[u8]) -> Result<PaymentReply, ErrorKind> {
    let payment: PaymentReply = serde_json::from_slice(body).map_err(|_| ErrorKind::Transport)?;
    if safe_id(&payment.id) {
        Ok(payment)
    } else {
        Err(ErrorKind::Transport)
    }
}

/// The payment, if its status is one of `allowed`.
fn payment_in(body: &[u8], allowed: &[&str]) -> Result<PaymentReply, ErrorKind> {
    let payment = parse_payment(body)?;
    if allowed.contains(&payment.status.as_str()) {
        Ok(payment)
    } else {
        Err(ErrorKind::UnexpectedStatus(status_label(&payment.status)))
    }
}

/// Sends `request` and reads the whole body (so the connection goes back to the pool);
/// any status but `expect` is an error.
async fn send(request: RequestBuilder, expect: StatusCode) -> Result<Vec<u8>, ErrorKind> {
    let response = request.send().await.map_err(|e| classify(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| classify(&e))?;
    if status == expect {
        Ok(body.to_vec())
    } else {
        Err(ErrorKind::Http(status.as_u16()))
    }
}

/// One connection's client: runs iterations and records them (no shared locks).
pub(crate) struct Worker {
    shared: Arc<Shared>,
    /// The node this connection talks to (`Shared::targets`).
    target: usize,
    rng: StdRng,
    recorder: Recorder,
    /// The mix's round and where this connection is in it (`mixed` only).
    mix: Vec<Action>,
    mix_next: usize,
    /// Payments this worker created (merchant index, id), newest last, for the mix's reads.
    recent: VecDeque<(usize, String)>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, connection: u32) -> Self {
        let target = connection as usize % shared.targets.len().max(1);
        let shared_connections = shared.connections;
        Self {
            shared,
            target,
            rng: StdRng::from_entropy(),
            recorder: Recorder::default(),
            mix: mix_round(),
            mix_next: mix_phase(connection, shared_connections),
            recent: VecDeque::new(),
        }
    }

    fn base(&self) -> &str {
        &self.shared.targets[self.target].base
    }

    pub fn into_recorder(self) -> Recorder {
        self.recorder
    }

    /// Runs one iteration of the scenario; `false` once `--max-requests` is spent.
    pub async fn iterate(&mut self, start: Start) -> bool {
        let merchant = self.shared.picker.pick(&mut self.rng);
        let result = match self.shared.scenario {
            Scenario::Create => self.create(merchant, start).await.map(drop),
            Scenario::StripeCreate => self.stripe_create(merchant, start).await,
            Scenario::Lifecycle => self.lifecycle(merchant, start).await,
            Scenario::Mixed => {
                let action = self
                    .mix
                    .get(self.mix_next % self.mix.len().max(1))
                    .copied()
                    .unwrap_or(Action::Create);
                self.mix_next = (self.mix_next + 1) % MIX_ROUND;
                self.action(action, merchant, start).await
            }
        };
        result != Err(Halt::Budget)
    }

    async fn action(&mut self, action: Action, merchant: usize, start: Start) -> Result<(), Halt> {
        match action {
            Action::Create => self.create(merchant, start).await.map(drop),
            Action::Lifecycle => self.lifecycle(merchant, start).await,
            Action::CreateConfirm => {
                let (id, _) = self.create(merchant, start).await?;
                self.confirm(merchant, &id, "automatic", "succeeded").await
            }
            Action::Get => {
                if self.recent.is_empty() {
                    return self.create(merchant, start).await.map(drop);
                }
                let pick = self.rng.gen_range(0..self.recent.len());
                let Some((owner, id)) = self.recent.get(pick).cloned() else {
                    return Ok(());
                };
                let url = format!("{}/v1/payments/{id}", self.base());
                self.step(
                    KIND_GET,
                    owner,
                    start,
                    StatusCode::OK,
                    |c, _| c.get(url),
                    |b| {
                        let payment = parse_payment(b)?;
                        // Another payment than asked for is a wrong answer.
                        if payment.id == id {
                            Ok(())
                        } else {
                            Err(ErrorKind::Transport)
                        }
                    },
                )
                .await
            }
            Action::List => {
                let url = format!("{}/v1/payments?limit={LIST_LIMIT}", self.base());
                self.step(
                    KIND_LIST,
                    merchant,
                    start,
                    StatusCode::OK,
                    |c, _| c.get(url),
                    |b| {
                        serde_json::from_slice::<ListReply>(b)
                            .map(drop)
                            .map_err(|_| ErrorKind::Transport)
                    },
                )
                .await
            }
        }
    }

    async fn lifecycle(&mut self, merchant: usize, start: Start) -> Result<(), Halt> {
        let (id, amount) = self.create(merchant, start).await?;
        self.confirm(merchant, &id, "manual", "requires_capture")
            .await?;
        let url = format!("{}/v1/payments/{id}/capture", self.base());
        self.step(
            KIND_CAPTURE,
            merchant,
            Start::Now,
            StatusCode::OK,
            |c, _| json_post(c, url, "{}".into()),
            |b| payment_in(b, &["succeeded"]).map(drop),
        )
        .await?;
        // Half of the refunds return everything, the others a random part.
        let refund: i64 = if self.rng.gen_bool(0.5) {
            amount
        } else {
            self.rng.gen_range(1..amount.max(2))
        };
        let url = format!("{}/v1/payments/{id}/refunds", self.base());
        let idempotency_key = self.idempotency_key();
        self.step(
            KIND_REFUND,
            merchant,
            Start::Now,
            StatusCode::CREATED,
            |c, _| {
                let body = format!(r#"{{"amount":{refund},"reason":"requested_by_customer"}}"#);
                with_key(json_post(c, url, body), idempotency_key)
            },
            // `pending` is a refund the PSP has not answered yet: recorded all the same.
            |b| payment_in(b, &["succeeded", "pending"]).map(drop),
        )
        .await
    }

    /// `POST /v1/payments`; returns the payment id and its amount.
    async fn create(&mut self, merchant: usize, start: Start) -> Result<(String, i64), Halt> {
        let amount: i64 = self.rng.gen_range(AMOUNT_MIN..=AMOUNT_MAX);
        let idempotency_key = self.idempotency_key();
        let url = self.shared.targets[self.target].payments_url.clone();
        let payment = self
            .step(
                KIND_CREATE,
                merchant,
                start,
                StatusCode::CREATED,
                |c, n| {
                    let body = format!(
                        r#"{{"amount":{amount},"currency":"eur","order_no":"lt-{n}","channel":"web"}}"#
                    );
                    with_key(json_post(c, url, body), idempotency_key)
                },
                parse_payment,
            )
            .await?;
        if self.recent.len() >= MIXED_RECENT_PAYMENTS {
            self.recent.pop_front();
        }
        self.recent.push_back((merchant, payment.id.clone()));
        Ok((payment.id, amount))
    }

    /// `POST /v1/payment_intents` with the same amounts and order numbers as [`Self::create`],
    /// form-encoded as a Stripe SDK sends it; Stripe answers a create with 200.
    async fn stripe_create(&mut self, merchant: usize, start: Start) -> Result<(), Halt> {
        let amount: i64 = self.rng.gen_range(AMOUNT_MIN..=AMOUNT_MAX);
        let idempotency_key = self.idempotency_key();
        let url = format!("{}/v1/payment_intents", self.base());
        self.step(
            KIND_CREATE,
            merchant,
            start,
            StatusCode::OK,
            |c, n| {
                let request = c
                    .post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(format!(
                        "amount={amount}&currency=eur&metadata%5Border_no%5D=lt-{n}"
                    ));
                with_key(request, idempotency_key)
            },
            |body| payment_in(body, &["requires_payment_method"]),
        )
        .await
        .map(drop)
    }

    /// Confirms with [`PAYMENT_METHOD`] and `capture_method`; the payment must end in
    /// `target` (at once, or after the PSP's webhook if the node answers `processing`).
    async fn confirm(
        &mut self,
        merchant: usize,
        id: &str,
        capture_method: &str,
        target: &'static str,
    ) -> Result<(), Halt> {
        let url = format!("{}/v1/payments/{id}/confirm", self.base());
        let body = format!(
            r#"{{"payment_method":"{PAYMENT_METHOD}","capture_method":"{capture_method}"}}"#
        );
        let payment = self
            .step(
                KIND_CONFIRM,
                merchant,
                Start::Now,
                StatusCode::OK,
                |c, _| json_post(c, url, body),
                |b| payment_in(b, &[target, "processing"]),
            )
            .await?;
        if payment.status == "processing" {
            self.await_webhook(merchant, id, target).await
        } else {
            Ok(())
        }
    }

    /// Polls `GET /v1/payments/{id}` until its status is `target`, for at most
    /// `--timeout-ms`; recorded as one [`KIND_WEBHOOK_WAIT`]. The polls do not count against
    /// `--max-requests`.
    async fn await_webhook(&mut self, merchant: usize, id: &str, target: &str) -> Result<(), Halt> {
        let shared = Arc::clone(&self.shared);
        let started = Instant::now();
        let phase = shared.timeline.phase_at(started);
        let deadline = started + shared.timeout;
        let url = format!("{}/v1/payments/{id}", self.base());
        shared.live.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = loop {
            tokio::time::sleep(Duration::from_millis(WEBHOOK_POLL_INTERVAL_MS)).await;
            let request = match shared.merchants.get(merchant) {
                Some(m) => shared
                    .client
                    .get(url.as_str())
                    .header(AUTHORIZATION, m.authorization.clone()),
                None => break Err(ErrorKind::Transport),
            };
            let status = match send(request, StatusCode::OK).await {
                Ok(body) => match parse_payment(&body) {
                    Ok(p) => p.status,
                    Err(e) => break Err(e),
                },
                Err(e) => break Err(e),
            };
            if status == target {
                break Ok(());
            }
            if status != "processing" {
                break Err(ErrorKind::UnexpectedStatus(status_label(&status)));
            }
            if Instant::now() >= deadline {
                break Err(ErrorKind::Timeout);
            }
        };
        let waited = started.elapsed();
        self.finish(KIND_WEBHOOK_WAIT, phase, merchant, outcome, waited)
    }

    fn idempotency_key(&self) -> Option<String> {
        self.shared
            .idempotency_keys
            .then(|| uuid::Uuid::new_v4().simple().to_string())
    }

    /// Sends one request of `kind` as `merchant` and records its outcome. `build` gets the
    /// client and the request's number (claimed from `--max-requests`); the answer must have
    /// status `expect` and pass `parse`.
    async fn step<T>(
        &mut self,
        kind: &'static str,
        merchant: usize,
        start: Start,
        expect: StatusCode,
        build: impl FnOnce(&reqwest::Client, u64) -> RequestBuilder,
        parse: impl FnOnce(&[u8]) -> Result<T, ErrorKind>,
    ) -> Result<T, Halt> {
        let shared = Arc::clone(&self.shared);
        let timeline = shared.timeline;
        let from = match start {
            Start::Scheduled(at) => at,
            Start::Now => {
                let now = Instant::now();
                if now >= timeline.end() {
                    return Err(Halt::End);
                }
                now
            }
        };
        let n = shared.claim_request().ok_or(Halt::Budget)?;
        let phase = timeline.phase_at(from);
        shared.live.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = match shared.merchants.get(merchant) {
            Some(m) => {
                let request =
                    build(&shared.client, n).header(AUTHORIZATION, m.authorization.clone());
                match send(request, expect).await {
                    Ok(body) => parse(&body),
                    Err(e) => Err(e),
                }
            }
            None => Err(ErrorKind::Transport),
        };
        let latency = corrected_latency(
            from.saturating_duration_since(timeline.start),
            timeline.start.elapsed(),
        );
        self.finish(kind, phase, merchant, outcome, latency)
    }

    /// Ends an in-flight request (or wait) of `kind` and records its outcome.
    fn finish<T>(
        &mut self,
        kind: &'static str,
        phase: Phase,
        merchant: usize,
        outcome: Result<T, ErrorKind>,
        latency: Duration,
    ) -> Result<T, Halt> {
        self.shared.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.shared.live.finished(outcome.is_ok());
        match outcome {
            Ok(value) => {
                self.recorder.ok(phase, kind, merchant, latency);
                Ok(value)
            }
            Err(e) => {
                self.recorder.error(phase, kind, e);
                Err(Halt::Failed)
            }
        }
    }
}

fn json_post(client: &reqwest::Client, url: impl reqwest::IntoUrl, body: String) -> RequestBuilder {
    client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
}

fn with_key(request: RequestBuilder, idempotency_key: Option<String>) -> RequestBuilder {
    match idempotency_key {
        Some(key) => request.header("Idempotency-Key", key),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn counts(actions: &[Action]) -> BTreeMap<&'static str, u32> {
        let mut seen = BTreeMap::new();
        for action in actions {
            *seen.entry(action.name()).or_default() += 1;
        }
        seen
    }

    #[test]
    fn a_round_of_the_mix_holds_each_action_exactly_its_weight_times() {
        assert_eq!(MIX.iter().map(|(_, w)| w).sum::<u32>(), MIX_ROUND as u32);
        let round = mix_round();
        assert_eq!(round.len(), MIX_ROUND);
        let seen = counts(&round);
        for (action, weight) in MIX {
            assert_eq!(seen.get(action.name()).copied(), Some(weight), "{seen:?}");
        }
        assert_eq!(
            mix_description(),
            "create 50, lifecycle 15, create_confirm 15, get 15, list 5"
        );
    }

    #[test]
    fn every_action_appears_within_a_fifth_of_a_round_from_any_point() {
        // Interleaved, not blocked: the rarest action (5 of 100) comes every 20 slots, so
        // any 20 consecutive iterations of one connection hold every action.
        let round = mix_round();
        for start in 0..MIX_ROUND {
            let window: Vec<Action> = (0..20).map(|i| round[(start + i) % MIX_ROUND]).collect();
            assert_eq!(counts(&window).len(), MIX.len(), "from slot {start}");
        }
    }

    #[test]
    fn connections_start_evenly_apart_in_the_round() {
        assert_eq!(mix_phase(0, 4), 0);
        assert_eq!(mix_phase(1, 4), 25);
        assert_eq!(mix_phase(3, 4), 75);
        assert_eq!(mix_phase(5, 4), 25);
        assert_eq!(mix_phase(0, 0), 0);
    }

    #[test]
    fn payments_are_checked_for_status_and_a_safe_id() {
        let ok = br#"{"id":"pay_01abc","status":"requires_capture","amount":5}"#;
        assert_eq!(
            payment_in(ok, &["requires_capture"]).unwrap().id,
            "pay_01abc"
        );
        assert_eq!(
            payment_in(ok, &["succeeded"]).unwrap_err(),
            ErrorKind::UnexpectedStatus("requires_capture")
        );
        let odd = br#"{"id":"pay_1","status":"weird"}"#;
        assert_eq!(
            payment_in(odd, &["succeeded"]).unwrap_err(),
            ErrorKind::UnexpectedStatus("other")
        );
        let unsafe_id = br#"{"id":"../merchants","status":"succeeded"}"#;
        assert_eq!(parse_payment(unsafe_id).unwrap_err(), ErrorKind::Transport);
        assert_eq!(
            parse_payment(b"not json").unwrap_err(),
            ErrorKind::Transport
        );
        assert_eq!(
            ErrorKind::UnexpectedStatus("failed").label(),
            "status_failed"
        );
    }
}
