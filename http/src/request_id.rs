//! Request ids: every request has one, in `X-Request-Id`. A client's id is kept when it is
//! sane (1–64 characters of `[A-Za-z0-9._:-]`), otherwise one is made (`req_<uuidv7>`). The
//! id is set on the request before any route sees it (so handlers use it as the events'
//! correlation id and the access log and tracing span carry it) and returned on the reply.

use crate::limits::{self, ServerLimits};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use warp::http::HeaderValue;
use warp::hyper::server::accept;
use warp::hyper::service::{make_service_fn, service_fn};
use warp::hyper::{Body, Request, Server};
use warp::{Filter, Reply};

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The peer address of the connection the request being handled came on (set by
    /// [`serve`]); failed authentications are counted per address.
    pub static CLIENT_ADDR: std::net::IpAddr;
}

/// The current request's peer address, when it came through [`serve`].
pub fn client_addr() -> Option<std::net::IpAddr> {
    CLIENT_ADDR.try_with(|addr| *addr).ok()
}

/// Longest client-supplied request id kept.
pub const MAX_LEN: usize = 64;

/// The client's id if it is sane.
pub fn sane(value: &str) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then_some(value)
}

/// The id `serve` gave this request (a new one if the request did not pass through it).
pub fn of(headers: &warp::http::HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(sane)
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()))
}

/// The request's id: the client's if sane, else a new one.
fn assign(request: &mut Request<Body>) -> HeaderValue {
    let given = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(sane)
        .and_then(|v| HeaderValue::from_str(v).ok());
    let id = given.unwrap_or_else(|| {
        HeaderValue::from_str(&format!("req_{}", uuid::Uuid::now_v7().simple()))
            .unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
    });
    request.headers_mut().insert(HEADER, id.clone());
    id
}

/// Binds `addr` and serves `routes` with request ids until `shutdown` resolves (then stops
/// accepting and finishes the requests in flight), within `limits` (header-read and idle
/// timeouts, connections at once: see [`crate::limits`]). Returns the bound address and
/// the server.
pub fn serve<F>(
    routes: F,
    addr: SocketAddr,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()>), String>
where
    F: Filter<Error = Infallible> + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let service = warp::service(routes);
    let make = make_service_fn(move |conn: &limits::LimitedConn| {
        let service = service.clone();
        let peer = conn.peer();
        async move {
            Ok::<_, Infallible>(service_fn(move |mut request: Request<Body>| {
                let id = assign(&mut request);
                let mut service = service.clone();
                CLIENT_ADDR.scope(peer, async move {
                    use warp::hyper::service::Service;
                    let mut response = service.call(request).await?;
                    response.headers_mut().insert(HEADER, id);
                    Ok::<_, Infallible>(response)
                })
            }))
        }
    });
    // Bound here, so a taken address fails the caller at once; registered with the
    // runtime when the server first runs.
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("binding {addr}: {e}"))?;
    Ok((bound, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "HTTP listener failed");
                return;
            }
        };
        let incoming = accept::from_stream(limits::incoming(listener, limits));
        let server = Server::builder(incoming)
            .http1_header_read_timeout(limits.header_read_timeout)
            .serve(make)
            .with_graceful_shutdown(shutdown);
        if let Err(error) = server.await {
            tracing::error!(%error, "HTTP server failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::sane;

    #[test]
    fn a_clients_request_id_is_kept_only_when_sane() {
        assert_eq!(sane("abc-123_x.y:z"), Some("abc-123_x.y:z"));
        assert_eq!(sane(""), None);
        assert_eq!(sane("has space"), None);
        assert_eq!(sane("new\nline"), None);
        assert_eq!(sane(&"a".repeat(65)), None);
        assert!(sane(&"a".repeat(64)).is_some());
    }
}
