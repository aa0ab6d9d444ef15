//! The HTTP surface (warp): merchant REST API, admin API and ops endpoints.
//!
//! Handlers return complete responses; domain errors become error objects in one place,
//! [`error::ApiError`]. Every body is size-limited (`http.max_body_bytes`). The routes are
//! in [`routes`], in boxed groups.
//!
//! It is the edge: it knows the actors (through `NodeHandle`), the pools' read models, the
//! fallback's sink and the Stripe-compatible mapping; nothing below it knows HTTP's types.

pub mod access;
mod body;
mod dashboard;
pub mod error;
pub mod forward;
mod guard;
mod internal;
pub mod limits;
pub mod metrics;
mod money;
pub mod notifications;
pub mod openapi;
mod ops;
mod payments;
pub mod request_id;
mod routes;
mod status;
mod stripe;
pub mod validation;
mod webhooks;

pub use access::set_access_log;
pub use routes::routes;

use error::ApiError;
use payrail_actors::merchants::MerchantRegistry;
use payrail_actors::NodeHandle;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// `[http]` in config.toml. `Debug` leaves the admin token out.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpOptions {
    /// Address the API listens on.
    pub bind: String,
    /// Bearer token of the admin API. Set it through PAYRAIL__HTTP__ADMIN_TOKEN in production.
    pub admin_token: String,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: u64,
    /// Unknown API keys a client address may present per minute (a bucket of this many,
    /// refilled continuously); past it, its unknown keys get 429 without a lookup.
    pub failed_auth_per_minute: u32,
    /// A connection that has not sent a request's complete headers this long after the
    /// server started waiting for them is closed (ms), also one that sends nothing. Not a
    /// keep-alive connection idle after a complete request: `idle_timeout_ms` closes that.
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte is read or written for this long while the server
    /// waits on it is closed (ms). Longer than any request may take without I/O
    /// (`actors.command_timeout_ms`, `cluster.forward_timeout_ms`).
    pub idle_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured: a field added later must be placed here, secret or not.
        let Self {
            bind,
            admin_token: _,
            max_body_bytes,
            failed_auth_per_minute,
            header_read_timeout_ms,
            idle_timeout_ms,
            max_connections,
        } = self;
        f.debug_struct("HttpOptions")
            .field("bind", bind)
            .field("admin_token", &"<redacted>")
            .field("max_body_bytes", max_body_bytes)
            .field("failed_auth_per_minute", failed_auth_per_minute)
            .field("header_read_timeout_ms", header_read_timeout_ms)
            .field("idle_timeout_ms", idle_timeout_ms)
            .field("max_connections", max_connections)
            .finish()
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            admin_token: String::new(),
            max_body_bytes: 64 * 1024,
            failed_auth_per_minute: 60,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
        }
    }
}

impl HttpOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.bind.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "http.bind: {:?} is not ip:port (e.g. 127.0.0.1:8080)",
                self.bind
            ));
        }
        if self.admin_token.len() < 16 || !self.admin_token.chars().all(|c| c.is_ascii_graphic()) {
            return Err("http.admin_token: must be at least 16 visible ASCII characters (set PAYRAIL__HTTP__ADMIN_TOKEN)".into());
        }
        if !(1_024..=10 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err("http.max_body_bytes: allowed 1024..=10485760".into());
        }
        if !(1..=1_000_000).contains(&self.failed_auth_per_minute) {
            return Err("http.failed_auth_per_minute: allowed 1..=1000000".into());
        }
        if !(100..=120_000).contains(&self.header_read_timeout_ms) {
            return Err("http.header_read_timeout_ms: allowed 100..=120000".into());
        }
        if !(200..=3_600_000).contains(&self.idle_timeout_ms) {
            return Err("http.idle_timeout_ms: allowed 200..=3600000".into());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("http.max_connections: allowed 1..=1000000".into());
        }
        Ok(())
    }
}

/// What the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub node: NodeHandle,
    pub merchants: MerchantRegistry,
    pub admin_token: String,
    pub pool: sqlx::PgPool,
    /// Shared secret of PSP webhook signatures.
    pub psp_webhook_secret: String,
    /// Accepted age of a signed webhook (s).
    pub psp_webhook_tolerance_s: i64,
    pub settlements: payrail_pools::settlement::SettlementService,
    /// The node's journal consumers (snapshots and the four pools), for their lag.
    pub consumers: kafka_journal::lag::ConsumerMonitor,
    /// `cluster.secret`: authenticates node-to-node requests (`/internal/...`).
    pub cluster_secret: String,
    /// This node's pools, fed spooled events during a journal outage.
    pub pool_sink: payrail_actors::fallback::PoolSink,
    /// In a cluster: sends requests for partitions this node does not own to their owner.
    pub forwarder: Option<forward::Forwarder>,
}

pub(crate) fn with<T: Clone + Send>(
    value: T,
) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
}

pub(crate) fn bearer(header: &Option<String>) -> Option<&str> {
    header.as_deref()?.strip_prefix("Bearer ").map(str::trim)
}

pub(crate) async fn authenticate(
    state: &AppState,
    header: &Option<String>,
) -> Result<String, ApiError> {
    let Some(key) = bearer(header) else {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. Use Authorization: Bearer <key>.",
        ));
    };
    use payrail_actors::merchants::AuthOutcome;
    match state
        .merchants
        .authenticate_from(key, request_id::client_addr())
        .await
    {
        Ok(AuthOutcome::Merchant(merchant_id)) => Ok(merchant_id),
        Ok(AuthOutcome::Unknown) => Err(ApiError::unauthorized("Invalid API key provided")),
        Ok(AuthOutcome::Throttled(wait)) => Err(ApiError::rate_limited(format!(
            "Too many requests with invalid API keys from this address; retry in {} s",
            wait.as_secs().max(1)
        ))),
        Err(e) => {
            tracing::error!(error = %e, "authentication lookup failed");
            Err(ApiError::unavailable(
                "database_unavailable",
                "Authentication is unavailable",
            ))
        }
    }
}

pub(crate) fn authorize_admin(state: &AppState, header: &Option<String>) -> Result<(), ApiError> {
    if admin_credentials_valid(&state.admin_token, header.as_deref()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("Invalid or missing admin token"))
    }
}

/// The admin token from `Authorization: Bearer <token>`, or from `Authorization: Basic
/// base64(<any user>:<token>)` so a browser's own Basic-auth prompt (and the credentials
/// it then sends with the dashboard's same-origin fetches) works. Compared in constant
/// time; an empty token never matches.
fn admin_credentials_valid(admin_token: &str, header: Option<&str>) -> bool {
    use base64::Engine;
    let Some(header) = header else {
        return false;
    };
    let given: Vec<u8> = if let Some(token) = header.strip_prefix("Bearer ").map(str::trim) {
        token.as_bytes().to_vec()
    } else {
        let Some((scheme, encoded)) = header.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        // user-id ":" password (RFC 7617); the user is not checked.
        match decoded.iter().position(|b| *b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    };
    let ok: bool = given.ct_eq(admin_token.as_bytes()).into();
    ok && !given.is_empty() && !admin_token.is_empty()
}

pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

pub(crate) fn respond(result: Result<Response, ApiError>) -> Result<Response, Infallible> {
    Ok(result.unwrap_or_else(ApiError::into_response))
}

#[cfg(test)]
mod tests {
    use super::{admin_credentials_valid, HttpOptions};
    use base64::Engine;

    fn options() -> HttpOptions {
        HttpOptions {
            admin_token: "admin-token-0123456789".into(),
            ..HttpOptions::default()
        }
    }

    #[test]
    fn the_server_limits_are_validated_within_their_ranges() {
        assert_eq!(options().validate(), Ok(()));
        let refused = |change: fn(&mut HttpOptions), key: &str| {
            let mut options = options();
            change(&mut options);
            let error = options.validate().expect_err(key);
            assert!(error.starts_with(key), "{key}: {error}");
        };
        refused(
            |o| o.header_read_timeout_ms = 99,
            "http.header_read_timeout_ms",
        );
        refused(
            |o| o.header_read_timeout_ms = 120_001,
            "http.header_read_timeout_ms",
        );
        refused(|o| o.idle_timeout_ms = 199, "http.idle_timeout_ms");
        refused(|o| o.idle_timeout_ms = 3_600_001, "http.idle_timeout_ms");
        refused(|o| o.max_connections = 0, "http.max_connections");
        refused(|o| o.max_connections = 1_000_001, "http.max_connections");
        let mut edges = options();
        edges.header_read_timeout_ms = 100;
        edges.idle_timeout_ms = 200;
        edges.max_connections = 1;
        assert_eq!(edges.validate(), Ok(()));
        edges.header_read_timeout_ms = 120_000;
        edges.idle_timeout_ms = 3_600_000;
        edges.max_connections = 1_000_000;
        assert_eq!(edges.validate(), Ok(()));
    }

    #[test]
    fn debug_shows_the_server_limits_but_not_the_admin_token() {
        let shown = format!("{:?}", options());
        for field in [
            "header_read_timeout_ms: 10000",
            "idle_timeout_ms: 60000",
            "max_connections: 10000",
        ] {
            assert!(shown.contains(field), "{field}: {shown}");
        }
        assert!(!shown.contains("0123456789"), "{shown}");
    }

    const TOKEN: &str = "admin-token-0123456789";

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn the_admin_token_is_accepted_as_bearer_or_as_a_basic_password() {
        assert!(admin_credentials_valid(
            TOKEN,
            Some(&format!("Bearer {TOKEN}"))
        ));
        assert!(admin_credentials_valid(
            TOKEN,
            Some(&basic(&format!("admin:{TOKEN}")))
        ));
        assert!(admin_credentials_valid(
            TOKEN,
            Some(&basic(&format!(":{TOKEN}")))
        ));
        // The scheme is case-insensitive (RFC 7617); a colon in the password is kept.
        let lower = basic(&format!("anyone:{TOKEN}")).replacen("Basic", "basic", 1);
        assert!(admin_credentials_valid(TOKEN, Some(&lower)));
        assert!(admin_credentials_valid(
            "a:b-0123456789abcdef",
            Some(&basic("u:a:b-0123456789abcdef"))
        ));
    }

    #[test]
    fn bad_basic_credentials_are_refused() {
        // Not base64.
        assert!(!admin_credentials_valid(
            TOKEN,
            Some("Basic !!!not-base64!!!")
        ));
        // No colon between user and password.
        assert!(!admin_credentials_valid(TOKEN, Some(&basic(TOKEN))));
        // Wrong token, a prefix of it, the token as the user name.
        assert!(!admin_credentials_valid(
            TOKEN,
            Some(&basic("admin:wrong-token-0123456789"))
        ));
        assert!(!admin_credentials_valid(
            TOKEN,
            Some(&basic(&format!("admin:{}", &TOKEN[..8])))
        ));
        assert!(!admin_credentials_valid(
            TOKEN,
            Some(&basic(&format!("{TOKEN}:")))
        ));
        // Empty token given, or none configured.
        assert!(!admin_credentials_valid(TOKEN, Some(&basic("admin:"))));
        assert!(!admin_credentials_valid("", Some(&basic("admin:"))));
        assert!(!admin_credentials_valid("", Some("Bearer ")));
        // Other schemes, no header, a bare scheme.
        assert!(!admin_credentials_valid(
            TOKEN,
            Some(&format!("Token {TOKEN}"))
        ));
        assert!(!admin_credentials_valid(TOKEN, None));
        assert!(!admin_credentials_valid(TOKEN, Some("Basic")));
    }
}
