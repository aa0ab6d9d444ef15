//! Request bodies read up to a limit, with or without Content-Length.

use crate::error::ApiError;
use bytes::Bytes;
use warp::http::StatusCode;
use warp::Filter;

/// A request body read up to `limit` bytes, whether or not the client sent Content-Length
/// (a chunked body is cut off at the limit too).
pub(crate) type LimitedBody = Result<Bytes, ApiError>;

pub(crate) fn limited_body(
    limit: u64,
) -> impl Filter<Extract = (LimitedBody,), Error = warp::Rejection> + Clone {
    // Its media type was checked before routing (`guard`): JSON, or none declared.
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, stream| async move {
            read_limited(limit, length, stream).await
        })
}

/// An oversized body is read and discarded up to this many bytes before the 413 is sent, so
/// a client still writing its body can read the error instead of a reset connection. Past
/// it the connection is closed.
const DRAIN_LIMIT_BYTES: u64 = 1024 * 1024;

pub(crate) async fn drain<S, B>(stream: &mut std::pin::Pin<Box<S>>, limit: u64)
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let mut seen: u64 = 0;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.remaining() as u64;
        if seen > limit {
            break;
        }
    }
}

pub(crate) async fn read_limited<S, B>(
    limit: u64,
    length: Option<u64>,
    stream: S,
) -> Result<LimitedBody, warp::Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    use bytes::BufMut;
    use futures::StreamExt;
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "invalid_request_error",
        code: "body_too_large",
        message: format!("The request body is larger than {limit} bytes"),
        param: None,
        payment_status: None,
    };
    let mut stream = Box::pin(stream);
    if length.is_some_and(|l| l > limit) {
        drain(&mut stream, DRAIN_LIMIT_BYTES).await;
        return Ok(Err(too_large()));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let Ok(mut chunk) = chunk else {
            return Ok(Err(ApiError::invalid(
                "body_unreadable",
                "The request body could not be read",
                None,
            )));
        };
        if (body.len() + chunk.remaining()) as u64 > limit {
            drain(&mut stream, DRAIN_LIMIT_BYTES).await;
            return Ok(Err(too_large()));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.put_slice(part);
            chunk.advance(n);
        }
    }
    Ok(Ok(body.freeze()))
}
