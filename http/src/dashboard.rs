//! `GET /dashboard`: a live page for operators (admin credentials). One HTML page, its
//! script and its style sheet, compiled into the binary from `http/assets/dashboard/`: no
//! CDN, no external URL, and a Content-Security-Policy that allows nothing but this origin.
//!
//! The page polls `/metrics` and `/v1/admin/status` every second. A browser authenticates
//! with its own Basic-auth prompt (any user name, the admin token as the password): an
//! unauthenticated request gets `WWW-Authenticate: Basic`, and the browser then sends the
//! same credentials with the page's same-origin fetches. See docs/DECISIONS.md.

use crate::{authorize_admin, with, AppState};
use std::convert::Infallible;
use warp::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

const INDEX: &str = include_str!("../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard/dashboard.css");

/// Only this origin's scripts, styles, images and fetches; no framing, no forms.
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/dashboard`, `/dashboard/dashboard.js`, `/dashboard/dashboard.css`.
pub fn routes(state: AppState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let auth = warp::header::optional::<String>("authorization");
    let page = warp::path!("dashboard").map(|| (INDEX, "text/html; charset=utf-8"));
    let script = warp::path!("dashboard" / "dashboard.js")
        .map(|| (SCRIPT, "text/javascript; charset=utf-8"));
    let style =
        warp::path!("dashboard" / "dashboard.css").map(|| (STYLE, "text/css; charset=utf-8"));
    warp::get()
        .and(page.or(script).unify().or(style).unify())
        .and(with(state))
        .and(auth)
        .and_then(|(body, content_type), state, auth| serve(state, auth, body, content_type))
}

async fn serve(
    state: AppState,
    auth: Option<String>,
    body: &'static str,
    content_type: &'static str,
) -> Result<Response, Infallible> {
    let mut response = match authorize_admin(&state, &auth) {
        Ok(()) => {
            let mut response = warp::reply::with_status(body, StatusCode::OK).into_response();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Err(error) => {
            // The JSON error object, plus the challenge that makes a browser ask.
            let mut response = error.into_response();
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"payrail admin\", charset=\"UTF-8\""),
            );
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
