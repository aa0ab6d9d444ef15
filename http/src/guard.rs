//! What every state-changing request (any method but GET, HEAD and OPTIONS) passes before a
//! route sees it, whatever its body: a declared Content-Type must be JSON, and a browser's
//! request must come from the node's own origin.
//!
//! Why: admin routes accept the dashboard's Basic credentials, which a browser attaches by
//! itself. A page elsewhere can make the operator's browser send a "simple" cross-site
//! request (a form post: `application/x-www-form-urlencoded`, `text/plain` or
//! `multipart/form-data`, no preflight) to, say, `/v1/settlements/run`. Refusing those media
//! types on every state-changing route, even with an empty body, and refusing a foreign
//! `Origin` (or `Sec-Fetch-Site: cross-site`) closes that path. Clients that are not
//! browsers send neither header and are unaffected.
//!
//! One exception (issue 26): the Stripe-compatible routes (`/v1/payment_intents…`,
//! `/v1/refunds…`) take `application/x-www-form-urlencoded`, as the Stripe SDKs send it, but
//! only with an `Authorization: Bearer` API key (else 401 here, before routing). A
//! cross-site form cannot set that header (and a browser's remembered Basic credentials are
//! not a Bearer key), so the exception opens no path for a forged request; the origin checks
//! still apply.

use crate::error::{ApiError, Refused};
use warp::http::{Method, StatusCode};
use warp::Filter;

/// The filter in front of every route.
pub(crate) fn state_changing() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(
            |method: Method, path: warp::path::FullPath, headers: warp::http::HeaderMap| async move {
                let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
                check(
                    &method,
                    &Headers {
                        content_type: text("content-type"),
                        origin: text("origin"),
                        host: text("host"),
                        fetch_site: text("sec-fetch-site"),
                        path: Some(path.as_str()),
                        authorization: text("authorization"),
                    },
                )
                .map_err(|e| warp::reject::custom(Refused(e)))
            },
        )
        .untuple_one()
}

/// The request headers the check reads (`None`: absent).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Headers<'a> {
    pub content_type: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub host: Option<&'a str>,
    pub fetch_site: Option<&'a str>,
    /// The request's path (without the query).
    pub path: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

/// A Stripe-compatible route (`crate::stripe`): forms are its body.
pub(crate) fn is_stripe_path(path: &str) -> bool {
    ["/v1/payment_intents", "/v1/refunds"].iter().any(|root| {
        path.strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Refuses a state-changing request with a non-JSON Content-Type (415) or from another
/// origin (403). Safe methods pass untouched.
pub(crate) fn check(method: &Method, headers: &Headers<'_>) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(content_type) = headers.content_type {
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let stripe_form = media_type == "application/x-www-form-urlencoded"
            && headers.path.is_some_and(is_stripe_path);
        let bearer = headers
            .authorization
            .is_some_and(|a| a.starts_with("Bearer ") && !a[7..].trim().is_empty());
        if stripe_form && !bearer {
            // What a cross-site form (or the dashboard's Basic credentials) would send: refused
            // here, as the authentication error a Stripe SDK expects of a missing key.
            return Err(ApiError::unauthorized(
                "A form body on this route needs your API key as `Authorization: Bearer <key>`",
            ));
        }
        if media_type != "application/json" && !media_type.ends_with("+json") && !stripe_form {
            return Err(unsupported_media_type(&media_type));
        }
    }
    if let Some(site) = headers.fetch_site {
        if !matches!(site.trim(), "same-origin" | "none") {
            return Err(foreign_origin());
        }
    }
    if let Some(origin) = headers.origin {
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let same = match (authority, headers.host) {
            (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host.trim()),
            _ => false, // `null`, another scheme, or no Host to compare with
        };
        if !same {
            return Err(foreign_origin());
        }
    }
    Ok(())
}

fn unsupported_media_type(media_type: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        kind: "invalid_request_error",
        code: "unsupported_media_type",
        message: format!(
            "The request body must be JSON: send the header `Content-Type: application/json` \
             or none (this request said `{}`; curl's -d sends application/x-www-form-urlencoded \
             unless told otherwise)",
            printable(media_type)
        ),
        param: Some("Content-Type".into()),
        payment_status: None,
    }
}

fn foreign_origin() -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        kind: "invalid_request_error",
        code: "origin_forbidden",
        message: "A state-changing request from another origin is refused".into(),
        param: Some("Origin".into()),
        payment_status: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn post(headers: Headers<'_>) -> Result<(), u16> {
        check(&Method::POST, &headers).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn a_form_or_text_content_type_is_refused_even_without_a_body() {
        for content_type in [
            "application/x-www-form-urlencoded",
            "text/plain;charset=UTF-8",
            "multipart/form-data; boundary=x",
        ] {
            let headers = Headers {
                content_type: Some(content_type),
                ..Headers::default()
            };
            assert_eq!(post(headers), Err(415), "{content_type}");
        }
    }

    #[test]
    fn json_or_no_content_type_passes() {
        for content_type in [
            None,
            Some("application/json"),
            Some("application/merge-patch+json; charset=utf-8"),
        ] {
            let headers = Headers {
                content_type,
                ..Headers::default()
            };
            assert_eq!(post(headers), Ok(()), "{content_type:?}");
        }
    }

    #[test]
    fn a_foreign_origin_is_refused_and_the_nodes_own_passes() {
        let own = Headers {
            origin: Some("http://127.0.0.1:8080"),
            host: Some("127.0.0.1:8080"),
            ..Headers::default()
        };
        assert_eq!(post(own), Ok(()));
        for origin in ["https://evil.example", "null", "http://127.0.0.1:8081"] {
            let foreign = Headers {
                origin: Some(origin),
                host: Some("127.0.0.1:8080"),
                ..Headers::default()
            };
            assert_eq!(post(foreign), Err(403), "{origin}");
        }
        let cross_site = Headers {
            fetch_site: Some("cross-site"),
            ..Headers::default()
        };
        assert_eq!(post(cross_site), Err(403));
    }

    #[test]
    fn a_refused_media_type_says_what_to_send_bounded_and_printable() {
        let form = Headers {
            content_type: Some("application/x-www-form-urlencoded"),
            ..Headers::default()
        };
        let Err(error) = check(&Method::POST, &form) else {
            panic!("a form was taken");
        };
        assert!(error.message.contains("Content-Type: application/json"));
        assert!(error.message.contains("application/x-www-form-urlencoded"));
        let hostile = format!("text/{}\u{7}\n", "x".repeat(500));
        let headers = Headers {
            content_type: Some(&hostile),
            ..Headers::default()
        };
        let Err(error) = check(&Method::POST, &headers) else {
            panic!("a text body was taken");
        };
        assert!(error.message.len() < 300, "{}", error.message);
        assert!(!error.message.contains('\u{7}'));
    }

    #[test]
    fn a_form_passes_on_the_stripe_routes_only_with_a_bearer_key() {
        let form = |path, authorization| Headers {
            content_type: Some("application/x-www-form-urlencoded"),
            path: Some(path),
            authorization,
            ..Headers::default()
        };
        for path in [
            "/v1/payment_intents",
            "/v1/payment_intents/pay_1/confirm",
            "/v1/refunds",
        ] {
            assert_eq!(post(form(path, Some("Bearer sk_test_1"))), Ok(()), "{path}");
            // The dashboard's Basic credentials, none, or an empty Bearer: refused before
            // routing, as an authentication error.
            for authorization in [Some("Basic YWRtaW46dG9rZW4="), None, Some("Bearer  ")] {
                assert_eq!(
                    post(form(path, authorization)),
                    Err(401),
                    "{path} {authorization:?}"
                );
            }
        }
        for path in [
            "/v1/payments",
            "/v1/settlements/run",
            "/v1/refundsx",
            "/v1/payment_intentsx",
        ] {
            assert_eq!(
                post(form(path, Some("Bearer sk_test_1"))),
                Err(415),
                "{path}"
            );
        }
        // Other media types stay refused, and a foreign origin too.
        let text = Headers {
            content_type: Some("text/plain"),
            ..form("/v1/payment_intents", Some("Bearer sk_test_1"))
        };
        assert_eq!(post(text), Err(415));
        let foreign = Headers {
            origin: Some("https://evil.example"),
            host: Some("127.0.0.1:8080"),
            ..form("/v1/payment_intents", Some("Bearer sk_test_1"))
        };
        assert_eq!(post(foreign), Err(403));
    }

    #[test]
    fn safe_methods_are_not_checked() {
        let form = Headers {
            content_type: Some("text/plain"),
            origin: Some("https://evil.example"),
            ..Headers::default()
        };
        assert_eq!(check(&Method::GET, &form).map_err(|e| e.status), Ok(()));
    }
}
