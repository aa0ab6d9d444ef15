//! The node's configuration: `config.toml` (or `--config <path>`), then environment
//! variables `PAYRAIL__<SECTION>__<KEY>` on top. Every value is checked at start-up; a bad
//! one stops the node with a message naming the key and what is allowed.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use kafka_journal::JournalOptions;
use payrail_actors::fallback::{DeliveryOptions, SpoolOptions};
use payrail_actors::psp::PspOptions;
use payrail_actors::ActorOptions;
use payrail_http::HttpOptions;
use payrail_pools::notification::options::NotificationOptions;
use payrail_supervisor::{GiveUpPolicy, RestartPolicy};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[database]` in config.toml. `Debug` shows the URL without its password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseOptions {
    /// PostgreSQL URL.
    pub url: String,
    /// Connections in the pool at most.
    pub max_connections: u32,
    /// Wait for a free connection at most (ms).
    pub acquire_timeout_ms: u64,
    /// A pooled connection idle longer than this is pinged before use (ms); one in steady
    /// use is not (a ping per query cost a round trip per query; BENCHMARKS.md, issue 13).
    pub ping_idle_after_ms: u64,
}

impl std::fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured: a field added later must be placed here, secret or not.
        let Self {
            url,
            max_connections,
            acquire_timeout_ms,
            ping_idle_after_ms,
        } = self;
        f.debug_struct("DatabaseOptions")
            .field("url", &redact_url(url))
            .field("max_connections", max_connections)
            .field("acquire_timeout_ms", acquire_timeout_ms)
            .field("ping_idle_after_ms", ping_idle_after_ms)
            .finish()
    }
}

/// `url` with the password of its user info (`user:password@`) and any `password=`
/// parameter replaced, for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    let mut shown = url.to_string();
    if let Some(scheme_end) = shown.find("://") {
        let rest = scheme_end + 3;
        let authority_end = shown[rest..]
            .find(['/', '?'])
            .map_or(shown.len(), |i| rest + i);
        if let Some(at) = shown[rest..authority_end].rfind('@').map(|i| rest + i) {
            if let Some(colon) = shown[rest..at].find(':').map(|i| rest + i) {
                shown.replace_range(colon + 1..at, "<redacted>");
            }
        }
    }
    if let Some(start) = shown.find("password=").map(|i| i + "password=".len()) {
        let end = shown[start..].find('&').map_or(shown.len(), |i| start + i);
        shown.replace_range(start..end, "<redacted>");
    }
    shown
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            max_connections: 16,
            acquire_timeout_ms: 5_000,
            ping_idle_after_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorOptions {
    /// Restart policy of partition workers and actors.
    pub restart: RestartPolicy,
    /// Consecutive failed appends that open the journal circuit breaker.
    pub breaker_failure_threshold: u32,
    /// Time the breaker stays open before it lets a probe through (ms).
    pub breaker_cool_down_ms: u64,
    /// What the node does when a supervisor exceeds its restart intensity: `not_ready`
    /// (stay up, `/readyz` says why) or `exit` (exit non-zero for an orchestrator).
    pub on_give_up: GiveUpPolicy,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            restart: RestartPolicy::default(),
            breaker_failure_threshold: 3,
            breaker_cool_down_ms: 2_000,
            on_give_up: GiveUpPolicy::NotReady,
        }
    }
}

/// `[cluster]`: what nodes share, and how this node takes part.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterOptions {
    /// Authenticates node-to-node requests (`/internal/...`: fallback delivery, forwarded
    /// requests). Set PAYRAIL__CLUSTER__SECRET in production; the same on every node.
    pub secret: String,
    /// This node's id, unique in the cluster and stable across its restarts. Empty (the
    /// default): a single node that owns every partition, without leases.
    pub node_id: String,
    /// The URL other nodes forward this node's partitions' requests to. Empty: derived
    /// from `http.bind`.
    pub advertise_url: String,
    /// Lease length (ms); renewed every third of it. A dead node's partitions move after
    /// two thirds to four thirds of it (expiry, then the next keeper round), plus the
    /// takeover's catch-up. Default 3000 (see docs/DECISIONS.md, "Cluster").
    pub lease_ms: u64,
    /// The node stops acknowledging this long (ms) before its lease could expire, by its
    /// own monotonic clock from the last renewal it sent. It must cover a forward step of
    /// the database's clock (expiry is measured on it) and the time a reply takes to leave
    /// the node; see docs/DECISIONS.md, "Clock steps". 0 (the default): `lease_ms / 6`.
    pub safety_margin_ms: u64,
    /// How long a partition being handed over waits for its commands in flight (ms).
    /// Default 3000.
    pub drain_timeout_ms: u64,
    /// A new owner gives up catching a partition up after this long (ms) and tries again.
    /// Default 60000.
    pub catch_up_timeout_ms: u64,
    /// A request forwarded to the owner node is abandoned after this long (ms) with a 503
    /// (its outcome, for a command, is then unknown; retry with the same Idempotency-Key).
    /// Default 10000.
    pub forward_timeout_ms: u64,
    /// How long the owners read from `partition_leases` are cached for routing (ms); a
    /// forward that fails refreshes them at once. Default 500.
    pub owner_cache_ms: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            // None ships: config.toml names a development placeholder, refused beyond
            // loopback (`Config::check_secrets`).
            secret: String::new(),
            node_id: String::new(),
            advertise_url: String::new(),
            lease_ms: 3_000,
            safety_margin_ms: 0,
            drain_timeout_ms: 3_000,
            catch_up_timeout_ms: 60_000,
            forward_timeout_ms: 10_000,
            owner_cache_ms: 500,
        }
    }
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("secret", &"<redacted>")
            .field("node_id", &self.node_id)
            .field("advertise_url", &self.advertise_url)
            .field("lease_ms", &self.lease_ms)
            .field("safety_margin_ms", &self.safety_margin_ms)
            .finish()
    }
}

impl ClusterOptions {
    fn validate(&self) -> Result<(), String> {
        if self.secret.len() < 16 || !self.secret.chars().all(|c| c.is_ascii_graphic()) {
            return Err("cluster.secret: must be at least 16 visible ASCII characters (set PAYRAIL__CLUSTER__SECRET)".into());
        }
        if !self.node_id.is_empty()
            && (self.node_id.len() > 64
                || !self
                    .node_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        {
            return Err("cluster.node_id: 1-64 characters of [A-Za-z0-9._-]".into());
        }
        if !(300..=600_000).contains(&self.lease_ms) {
            return Err("cluster.lease_ms: allowed 300..=600000".into());
        }
        if self.safety_margin_ms * 2 > self.lease_ms {
            return Err("cluster.safety_margin_ms: allowed 0..=lease_ms/2 (0: lease_ms/6)".into());
        }
        if !(100..=600_000).contains(&self.drain_timeout_ms) {
            return Err("cluster.drain_timeout_ms: allowed 100..=600000".into());
        }
        if !(1_000..=3_600_000).contains(&self.catch_up_timeout_ms) {
            return Err("cluster.catch_up_timeout_ms: allowed 1000..=3600000".into());
        }
        if !(100..=600_000).contains(&self.forward_timeout_ms) {
            return Err("cluster.forward_timeout_ms: allowed 100..=600000".into());
        }
        if self.owner_cache_ms > 60_000 {
            return Err("cluster.owner_cache_ms: allowed 0..=60000".into());
        }
        Ok(())
    }

    /// Whether this node takes part in a cluster (leases) rather than owning everything.
    pub fn is_clustered(&self) -> bool {
        !self.node_id.is_empty()
    }
}

/// A subscriber pool a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    Analytics,
    Ledger,
    Settlement,
    Notification,
}

/// Which subscriber pools this node runs, each on the partitions this node owns; a node
/// with `run = []` only takes commands and keeps its snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolsOptions {
    pub run: Vec<PoolKind>,
    /// The pools this node runs read the journal through one fetch per partition (each
    /// keeps its own offsets); `false`: each pool fetches on its own.
    pub shared_fetch: bool,
}

impl Default for PoolsOptions {
    fn default() -> Self {
        Self {
            shared_fetch: true,
            run: vec![
                PoolKind::Analytics,
                PoolKind::Ledger,
                PoolKind::Settlement,
                PoolKind::Notification,
            ],
        }
    }
}

impl PoolsOptions {
    pub fn runs(&self, pool: PoolKind) -> bool {
        self.run.contains(&pool)
    }

    fn validate(&self) -> Result<(), String> {
        for (i, pool) in self.run.iter().enumerate() {
            if self.run[..i].contains(pool) {
                let name = format!("{pool:?}").to_lowercase();
                return Err(format!("pools.run: {name} is listed twice"));
            }
        }
        Ok(())
    }
}

/// `log.format`: how log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the enclosing spans (`request_id`, …).
    Json,
}

/// `[log]` in config.toml. The level filter is `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogOptions {
    pub format: LogFormat,
    /// One `payrail::access` line per HTTP request: method, route, status, duration, request id.
    pub access_log: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

/// `[metrics]` in config.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsOptions {
    /// Record metrics and serve `GET /metrics`. Off: no recorder is installed, nothing is
    /// recorded and `/metrics` answers 503 (used to measure what metrics cost).
    pub enabled: bool,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log: LogOptions,
    pub metrics: MetricsOptions,
    pub journal: JournalOptions,
    pub database: DatabaseOptions,
    pub http: HttpOptions,
    pub actors: ActorOptions,
    pub supervisor: SupervisorOptions,
    pub psp: PspOptions,
    pub notification: NotificationOptions,
    pub pools: PoolsOptions,
    pub spool: SpoolOptions,
    pub fallback: DeliveryOptions,
    pub cluster: ClusterOptions,
}

impl Config {
    /// Reads `path` (which must exist when `explicit`) and the environment, then validates.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, String> {
        if explicit && !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        let config: Config = Figment::new()
            .merge(Toml::file(path))
            .merge(Env::prefixed("PAYRAIL__").split("__"))
            .extract()
            .map_err(|e| {
                e.into_iter()
                    .map(|e| {
                        let key = e.path.join(".").to_lowercase();
                        let source = e
                            .metadata
                            .as_ref()
                            .map(|m| format!(" (from {})", m.name))
                            .unwrap_or_default();
                        if key.is_empty() {
                            format!("{}{source}", e.kind)
                        } else {
                            format!("{key}: {}{source}", e.kind)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.journal.validate()?;
        self.http.validate()?;
        self.actors.validate()?;
        self.psp.validate()?;
        self.notification.validate()?;
        self.pools.validate()?;
        self.spool.validate()?;
        self.fallback.validate()?;
        self.cluster.validate()?;
        if !(self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err("database.url: must be a postgres:// URL".into());
        }
        if !(1..=1_000).contains(&self.database.max_connections) {
            return Err("database.max_connections: allowed 1..=1000".into());
        }
        if self.supervisor.restart.max_restarts == 0 {
            return Err("supervisor.restart.max_restarts: must be at least 1".into());
        }
        self.check_idle_timeout()?;
        self.check_secrets()
    }

    /// While a request is worked on, its connection moves no byte: the idle timeout must
    /// outlast the longest a request may legitimately take, or it cuts answers off.
    fn check_idle_timeout(&self) -> Result<(), String> {
        for (key, value) in [
            ("actors.command_timeout_ms", self.actors.command_timeout_ms),
            (
                "cluster.forward_timeout_ms",
                self.cluster.forward_timeout_ms,
            ),
        ] {
            if self.http.idle_timeout_ms <= value {
                return Err(format!(
                    "http.idle_timeout_ms ({}) must exceed {key} ({value}): a request may take that long without a byte on its connection",
                    self.http.idle_timeout_ms
                ));
            }
        }
        Ok(())
    }

    /// A node listening beyond loopback refuses to start with a missing or placeholder
    /// secret, naming each key and the variable that sets it: the shipped config.toml's
    /// development values are public, and with the PSP's anyone could sign a webhook. On
    /// loopback they stay usable for development.
    fn check_secrets(&self) -> Result<(), String> {
        let beyond_loopback = self
            .http
            .bind
            .parse::<std::net::SocketAddr>()
            .map_or(true, |addr| !addr.ip().is_loopback());
        if !beyond_loopback {
            return Ok(());
        }
        let unsafe_keys: Vec<String> = [
            (
                "http.admin_token",
                "PAYRAIL__HTTP__ADMIN_TOKEN",
                &self.http.admin_token,
            ),
            (
                "psp.webhook_secret",
                "PAYRAIL__PSP__WEBHOOK_SECRET",
                &self.psp.webhook_secret,
            ),
            (
                "cluster.secret",
                "PAYRAIL__CLUSTER__SECRET",
                &self.cluster.secret,
            ),
        ]
        .into_iter()
        .filter(|(_, _, value)| is_placeholder_secret(value))
        .map(|(key, variable, _)| format!("{key} (set {variable})"))
        .collect();
        if unsafe_keys.is_empty() {
            return Ok(());
        }
        Err(format!(
            "http.bind {} listens beyond loopback with a missing or placeholder secret: {}; give each a random value of at least 16 characters (e.g. `openssl rand -hex 32`), the cluster secret the same on every node",
            self.http.bind,
            unsafe_keys.join(", ")
        ))
    }
}

/// Missing, or a development value: those config.toml ships are all marked `change_me`.
fn is_placeholder_secret(secret: &str) -> bool {
    let lower = secret.to_ascii_lowercase();
    lower.trim().is_empty()
        || ["change_me", "change-me", "changeme"]
            .iter()
            .any(|m| lower.contains(m))
}

#[cfg(test)]
mod tests;
