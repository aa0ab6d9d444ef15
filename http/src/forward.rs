//! Routing in a cluster: a merchant's requests are served by the node that owns the
//! merchant's partition. Any other node forwards them there once; a forwarded request
//! that still does not land on the owner (a handover in progress) gets a 503 with
//! `Retry-After` instead of another hop, so requests never loop.

use crate::error::ApiError;
use crate::AppState;
use bytes::Bytes;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::hyper::Body;
use warp::reply::Response;
use warp::Filter;

/// Set on a forwarded request (value: the forwarding node's id). A node that does not own
/// the partition answers such a request 503 rather than forwarding it again.
pub const FORWARDED_HEADER: &str = "x-payrail-forwarded-by";

/// The headers a forwarded request keeps; the rest (hop-by-hop, host, length) are the
/// client's connection's, not the request's.
const KEPT_HEADERS: [&str; 5] = [
    "authorization",
    "idempotency-key",
    "stripe-signature",
    "content-type",
    "x-request-id",
];

/// A partition's owner as the lease table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node_id: String,
    pub url: String,
}

/// Who owns which partition (the lease table, cached by the node).
#[async_trait::async_trait]
pub trait OwnerDirectory: Send + Sync + 'static {
    /// The node holding a live lease on `partition`; `refresh` skips the cache.
    async fn owner(&self, partition: i32, refresh: bool) -> Option<Owner>;
    /// This node's id.
    fn node_id(&self) -> &str;
    /// The lease table and the live nodes, for `GET /v1/admin/cluster`.
    async fn status(&self) -> Result<serde_json::Value, String>;
}

/// Forwards requests for partitions this node does not own.
#[derive(Clone)]
pub struct Forwarder {
    directory: Arc<dyn OwnerDirectory>,
    client: reqwest::Client,
}

impl Forwarder {
    pub fn new(directory: Arc<dyn OwnerDirectory>, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| format!("building the forwarding client: {e}"))?;
        Ok(Self { directory, client })
    }

    pub fn directory(&self) -> &Arc<dyn OwnerDirectory> {
        &self.directory
    }
}

/// The parts of a request needed to send it on.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: Method,
    /// Path and query, e.g. `/v1/payments?limit=3`.
    pub path_and_query: String,
    pub headers: HeaderMap,
}

/// Captures an [`Incoming`] (the body is read by the route itself).
pub fn incoming() -> impl Filter<Extract = (Incoming,), Error = Infallible> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .map(
            |method, path: warp::path::FullPath, query: String, headers| Incoming {
                method,
                path_and_query: if query.is_empty() {
                    path.as_str().to_string()
                } else {
                    format!("{}?{query}", path.as_str())
                },
                headers,
            },
        )
}

fn moving(partition: i32) -> ApiError {
    ApiError::unavailable(
        "partition_moving",
        format!(
            "partition {partition} is moving between nodes; retry (with the same Idempotency-Key)"
        ),
    )
}

/// `Ok(None)`: serve it here (single node, or this node owns the merchant's partition).
/// `Ok(Some(response))`: the owner's answer. `Err`: a 503 to retry.
pub async fn to_owner(
    state: &AppState,
    merchant_id: &str,
    request: &Incoming,
    body: &Bytes,
) -> Result<Option<Response>, ApiError> {
    let Some(forwarder) = &state.forwarder else {
        return Ok(None);
    };
    let partition = state.node.runtime().partition_of(merchant_id);
    if state.node.ownership().owns(partition) {
        return Ok(None);
    }
    if request.headers.contains_key(FORWARDED_HEADER) {
        // Sent here as the owner, but the partition is not served here (any more, or
        // yet): never a second hop.
        return Err(moving(partition));
    }
    let directory = &forwarder.directory;
    let owner = match directory.owner(partition, false).await {
        Some(owner) if owner.node_id == directory.node_id() => {
            // This node holds the lease but has not finished taking over.
            return Err(moving(partition));
        }
        Some(owner) => owner,
        None => return Err(moving(partition)),
    };
    let url = format!(
        "{}{}",
        owner.url.trim_end_matches('/'),
        request.path_and_query
    );
    // reqwest speaks `http` 1, warp `http` 0.2: the method and headers cross as bytes.
    let method = reqwest::Method::from_bytes(request.method.as_str().as_bytes())
        .map_err(|_| ApiError::not_found("Unrecognized request method"))?;
    let mut outgoing = forwarder
        .client
        .request(method, &url)
        .header(FORWARDED_HEADER, directory.node_id())
        .body(body.clone());
    for name in KEPT_HEADERS {
        if let Some(value) = request.headers.get(name) {
            outgoing = outgoing.header(name, value.as_bytes());
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(partition, owner = %owner.node_id, %error, "forwarding to the owner failed");
            // The owner may be gone: read the lease table again for the retry.
            let _ = directory.owner(partition, true).await;
            return Err(ApiError::unavailable(
                "owner_unreachable",
                format!("the node owning partition {partition} did not answer; retry (with the same Idempotency-Key)"),
            ));
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in ["content-type", "retry-after"] {
        if let Some(value) = answer.headers().get(name) {
            if let Ok(value) = warp::http::HeaderValue::from_bytes(value.as_bytes()) {
                headers.insert(name, value);
            }
        }
    }
    let bytes = answer.bytes().await.map_err(|error| {
        ApiError::unavailable(
            "owner_unreachable",
            format!(
                "the owner's answer was cut off ({error}); retry (with the same Idempotency-Key)"
            ),
        )
    })?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Some(response))
}
