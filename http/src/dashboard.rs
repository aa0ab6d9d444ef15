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
use std::sync::Arc;
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
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let auth = warp::header::optional::<String>("authorization");
    let page = warp::path!("dashboard")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(page);
    let script = warp::path!("dashboard" / "dashboard.js")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(script);
    let style = warp::path!("dashboard" / "dashboard.css")
        .and(warp::get())
        .and(with(state))
        .and(auth)
        .and_then(style);
    page.or(script).unify().or(style).unify()
}

/// `GET /dashboard`: the page.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "admin",
    security(("admin_token" = []), ("admin_basic" = [])),
    responses(
        (status = 200, description = "The live dashboard (HTML)", body = String, content_type = "text/html"),
        (status = 401, description = "No or wrong admin credentials; `WWW-Authenticate: Basic`", body = crate::error::ErrorResponse),
    )
)]
pub(crate) async fn page(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    serve(state, auth, INDEX, "text/html; charset=utf-8").await
}

/// `GET /dashboard/dashboard.js`: the page's script.
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.js",
    tag = "admin",
    security(("admin_token" = []), ("admin_basic" = [])),
    responses(
        (status = 200, description = "JavaScript", body = String, content_type = "text/javascript"),
        (status = 401, description = "No or wrong admin credentials", body = crate::error::ErrorResponse),
    )
)]
pub(crate) async fn script(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    serve(state, auth, SCRIPT, "text/javascript; charset=utf-8").await
}

/// `GET /dashboard/dashboard.css`: the page's style sheet.
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.css",
    tag = "admin",
    security(("admin_token" = []), ("admin_basic" = [])),
    responses(
        (status = 200, description = "CSS", body = String, content_type = "text/css"),
        (status = 401, description = "No or wrong admin credentials", body = crate::error::ErrorResponse),
    )
)]
pub(crate) async fn style(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    serve(state, auth, STYLE, "text/css; charset=utf-8").await
}

async fn serve(
    state: Arc<AppState>,
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
