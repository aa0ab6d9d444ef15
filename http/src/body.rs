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
    warp::header::optional::<u64>("content-length")
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::stream())
        .and_then(
            move |length: Option<u64>, content_type: Option<String>, stream| async move {
                let body = read_limited(limit, length, stream).await?;
                Ok::<_, warp::Rejection>(
                    body.and_then(|bytes| json_media_type(&content_type, bytes)),
                )
            },
        )
}

/// Every body of this API is JSON. A body declared as something else (`text/plain`,
/// `multipart/form-data`, a form…) is refused with 415 rather than parsed as JSON anyway
/// (found by the API fuzz test). Without a Content-Type the body is taken as JSON.
fn json_media_type(content_type: &Option<String>, body: Bytes) -> LimitedBody {
    let Some(content_type) = content_type else {
        return Ok(body);
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if body.is_empty() || media_type == "application/json" || media_type.ends_with("+json") {
        Ok(body)
    } else {
        Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            kind: "invalid_request_error",
            code: "unsupported_media_type",
            message: format!(
                "The request body must be JSON: send the header `Content-Type: application/json` \
                 (this request said `{}`; curl's -d sends application/x-www-form-urlencoded \
                 unless told otherwise)",
                printable(&media_type)
            ),
            param: Some("Content-Type".into()),
            payment_status: None,
        })
    }
}

/// The client's media type as it may appear in an error message: visible ASCII, at most 64
/// characters, so nothing a client sends can shape the answer beyond that.
fn printable(media_type: &str) -> String {
    media_type
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_encoded_body_is_refused_with_a_415_that_says_what_to_send() {
        let form = Some("application/x-www-form-urlencoded".to_string());
        let Err(error) = json_media_type(&form, Bytes::from_static(b"{\"name\":\"x\"}")) else {
            panic!("a form-encoded body was taken as JSON");
        };
        assert_eq!(error.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(
            error.message.contains("Content-Type: application/json"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("application/x-www-form-urlencoded"),
            "{}",
            error.message
        );
    }

    #[test]
    fn json_with_parameters_or_a_json_suffix_is_accepted() {
        for media_type in [
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ] {
            let body = json_media_type(&Some(media_type.into()), Bytes::from_static(b"{}"));
            assert!(body.is_ok(), "{media_type} was refused");
        }
    }

    #[test]
    fn the_echoed_media_type_is_bounded_and_printable() {
        let hostile = Some(format!("text/{}\u{7}\n", "x".repeat(500)));
        let Err(error) = json_media_type(&hostile, Bytes::from_static(b"{}")) else {
            panic!("a text body was taken as JSON");
        };
        assert!(error.message.len() < 300, "{}", error.message);
        assert!(!error.message.contains('\u{7}'));
    }
}
