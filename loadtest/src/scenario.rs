//! What one simulated client does per iteration: the `create`, `stripe-create`, `read`,
//! `lifecycle` and `mixed` scenarios of `payrail loadtest`. Every HTTP request is recorded
//! under its own kind.
//!
//! - `create`: `POST /v1/payments`.
//! - `stripe-create`: `POST /v1/payment_intents`, form-encoded (kind `create`).
//! - `read`: `GET /v1/payments/{id}` of a payment this connection created (kind `get`); an
//!   iteration without one yet creates one.
//! - `lifecycle`: create → confirm (`pm_card_visa`, manual capture; the node calls the PSP
//!   sandbox, which also sends the node a signed webhook) → capture (all) → refund (all or a
//!   random part). If confirm answers `processing`, the worker polls the payment until the
//!   webhook moved it on, recorded as one [`KIND_WEBHOOK_WAIT`] (bounded by `--timeout-ms`).
//! - `mixed`: each iteration is the next [`Action`] of an evenly interleaved round of
//!   [`crate::mix::MIX`] (each action its weight times per 100 iterations).
//!
//! A failed step (transport error, unexpected HTTP status, or a payment in another status
//! than the step leads to) is an error of that step's kind and ends the iteration. No step
//! starts after the end of the run or beyond `--max-requests` (which counts HTTP requests).

use crate::limits::{MIXED_RECENT_PAYMENTS, WEBHOOK_POLL_INTERVAL_MS};
use crate::mix::{mix_description, mix_phase, mix_round, Action, MIX_ROUND};
use crate::replies::{parse_payment, payment_in, send, status_label, ListReply};
use crate::report::{ErrorKind, Phase, Recorder};
use crate::schedule::corrected_latency;
use crate::shared::{Scenario, Shared};
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

/// What one iteration means for `--rate`, for the report.
pub fn iteration_description(scenario: Scenario) -> String {
    match scenario {
        Scenario::Create => "create (1 request)".into(),
        Scenario::Lifecycle => "create, confirm, capture, refund (4 requests)".into(),
        Scenario::Mixed => format!("one action by weight: {}", mix_description()),
        Scenario::StripeCreate => "Stripe-compatible create (1 request)".into(),
        Scenario::Read => "GET of a payment this connection created (1 request)".into(),
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
            Scenario::Read => self.action(Action::Get, merchant, start).await,
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
