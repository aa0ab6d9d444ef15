//! What every worker of a run reads: the scenario, the targets, the merchants and the
//! run's shared counters. Its own module so the run ([`crate::http_load`]) and the
//! scenarios ([`crate::scenario`]) both use it without importing each other.

use crate::run::{Live, Timeline};
use crate::zipf::MerchantPicker;
use reqwest::header::HeaderValue;
use reqwest::Url;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the simulated merchants do, per iteration. Each HTTP request is reported under its
/// own kind (create, confirm, capture, refund, webhook_wait, get, list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `POST /v1/payments` only.
    Create,
    /// create → confirm (pm_card_visa, manual capture; the node calls the PSP sandbox, which
    /// also sends the node a signed webhook) → capture → refund (all or part). Needs a node
    /// with a PSP sandbox (`payrail psp-sandbox`).
    Lifecycle,
    /// Per 100 iterations, interleaved evenly: create 50, lifecycle 15, create+confirm with
    /// automatic capture 15, GET of a payment this connection created 15,
    /// GET /v1/payments?limit=10 5. Needs a PSP sandbox like `lifecycle`.
    Mixed,
    /// `POST /v1/payment_intents` only: the create of the Stripe-compatible API (a form
    /// body with `metadata[order_no]`, as a Stripe SDK sends it), to compare its cost with
    /// `create`'s (issue 26). Reported under the kind `create`.
    StripeCreate,
    /// `GET /v1/payments/{id}` of a payment this connection created (its first iteration
    /// creates one): an authenticated request answered from the live payment actor, with no
    /// journal append and no PostgreSQL statement, i.e. the node's per-request floor (HTTP,
    /// authentication, one actor hop, JSON) that a create pays before its own work.
    Read,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Lifecycle => "lifecycle",
            Self::Mixed => "mixed",
            Self::StripeCreate => "stripe-create",
            Self::Read => "read",
        }
    }
}

/// A merchant the run created: its id and a ready `Authorization` header.
pub(crate) struct Merchant {
    pub id: String,
    pub authorization: HeaderValue,
}

/// One node of `--target`.
pub(crate) struct Target {
    /// The node's base URL, without a trailing slash.
    pub base: String,
    pub payments_url: Url,
}

/// What every worker of a run reads.
pub(crate) struct Shared {
    pub client: reqwest::Client,
    /// The nodes; connection i talks to `targets[i % len]`.
    pub targets: Vec<Target>,
    pub merchants: Vec<Merchant>,
    pub picker: MerchantPicker,
    pub scenario: Scenario,
    pub idempotency_keys: bool,
    /// `--timeout-ms`; also bounds a wait for a PSP webhook.
    pub timeout: Duration,
    pub timeline: Timeline,
    pub live: Arc<Live>,
    pub max_requests: Option<u64>,
    /// HTTP requests claimed so far, against `max_requests`.
    pub requests_claimed: AtomicU64,
    pub connections: u32,
    pub rate_per_s: Option<u64>,
}

impl Shared {
    /// Claims the next HTTP request's number; `None` once `--max-requests` are claimed.
    pub fn claim_request(&self) -> Option<u64> {
        let n = self.requests_claimed.fetch_add(1, Ordering::Relaxed);
        match self.max_requests {
            Some(max) if n >= max => None,
            _ => Some(n),
        }
    }

    pub(crate) fn requests_spent(&self) -> bool {
        self.max_requests
            .is_some_and(|max| self.requests_claimed.load(Ordering::Relaxed) >= max)
    }
}
