//! `GET /openapi.json`: the API contract (OpenAPI 3.1), generated from the code by utoipa.
//!
//! Each handler carries its own `#[utoipa::path]` (route, parameters, bodies, answers, auth),
//! and the request and response types derive their schemas, so the document changes with
//! the code. `tests/openapi.rs` fails when a served route is missing from the document or the
//! document lists a route that is not served. The metrics' `route` label comes from the
//! same document ([`route_template`]).

use std::convert::Infallible;
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// Every state-changing operation passes `guard::check` before routing: each documents its
/// 403 (foreign origin) and 415 (a declared Content-Type that is not JSON), shaped like its
/// own 401 error object. Generated, so a new route is covered without being told.
struct GuardedOperations;

impl Modify for GuardedOperations {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut operation.responses.responses;
                let Some(error) = responses.get("401").cloned() else {
                    continue;
                };
                let with = |description: &str| match error.clone() {
                    utoipa::openapi::RefOr::T(mut response) => {
                        response.description = description.into();
                        utoipa::openapi::RefOr::T(response)
                    }
                    reference => reference,
                };
                responses.entry("403".into()).or_insert_with(|| {
                    with(
                        "A state-changing request from another origin (`Origin`, `Sec-Fetch-Site`)",
                    )
                });
                responses
                    .entry("415".into())
                    .or_insert_with(|| with("A declared Content-Type that is not JSON"));
            }
        }
    }
}

/// The security schemes named in the handlers' `security(...)`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "merchant_api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A merchant's secret API key (`Authorization: Bearer sk_…`), shown \
                         once when the merchant is created. A merchant sees only its own data.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The node's admin token (`http.admin_token`), as \
                         `Authorization: Bearer <token>`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "The admin token as the password of HTTP Basic (any user name): what a \
                         browser sends for the dashboard.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "psp_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Stripe-Signature",
                "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">` with the PSP webhook \
                 secret; older than `psp.webhook_tolerance_s` is refused.",
            ))),
        );
        components.add_security_scheme(
            "cluster_secret",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                payrail_actors::fallback::CLUSTER_SECRET_HEADER,
                "The cluster's shared secret (`cluster.secret`): node-to-node requests only.",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "payrail",
        description = "A payment-processing runtime on a Kafka journal. Amounts are integers in \
                       the currency's minor unit; currencies are ISO 4217 codes. Errors are \
                       `{\"error\": {type, code, message, param}}` objects. Every reply carries \
                       `X-Request-Id`.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::create_merchant,
        crate::ops::roll_api_key,
        crate::payments::create_payment,
        crate::payments::list_payments,
        crate::payments::get_payment,
        crate::payments::confirm_payment,
        crate::payments::capture_payment,
        crate::payments::cancel_payment,
        crate::payments::create_refund,
        crate::webhooks::psp_webhook,
        crate::stripe::doc::create_intent_doc,
        crate::stripe::doc::list_intents_doc,
        crate::stripe::doc::retrieve_intent_doc,
        crate::stripe::doc::update_intent_doc,
        crate::stripe::doc::confirm_intent_doc,
        crate::stripe::doc::capture_intent_doc,
        crate::stripe::doc::cancel_intent_doc,
        crate::stripe::doc::create_refund_doc,
        crate::stripe::doc::list_refunds_doc,
        crate::stripe::doc::retrieve_refund_doc,
        crate::money::balance,
        crate::money::ledger_entries,
        crate::money::list_settlements,
        crate::money::run_settlements,
        crate::money::pay_settlement,
        crate::money::payment_metrics,
        crate::money::channel_metrics,
        crate::notifications::list,
        crate::notifications::resend,
        crate::ops::consumer_lag,
        crate::ops::journal_status,
        crate::ops::cluster_status,
        crate::metrics::scrape,
        crate::status::node_status,
        crate::dashboard::page,
        crate::dashboard::script,
        crate::dashboard::style,
        crate::internal::receive_events,
        openapi_json,
    ),
    modifiers(&SecuritySchemes, &GuardedOperations),
    tags(
        (name = "payments", description = "Create and move payments; refunds."),
        (name = "stripe", description = "Stripe-compatible PaymentIntents and Refunds (form-encoded, Stripe's objects and errors): docs/stripe-compat.md."),
        (name = "money", description = "Balance, ledger, settlements and analytics."),
        (name = "notifications", description = "Webhooks sent to merchants."),
        (name = "webhooks", description = "Signed webhooks from the PSP."),
        (name = "admin", description = "Operators: merchants, journal, cluster, metrics."),
        (name = "ops", description = "Health, readiness and this document."),
        (name = "internal", description = "Node-to-node (cluster secret)."),
    )
)]
pub struct ApiDoc;

/// The document, rendered once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"openapi: {e}\"}}"))
    })
}

/// Every documented route as `(method, template)`, e.g. `("POST", "/v1/payments/{id}/capture")`.
pub fn routes() -> &'static [(String, String)] {
    static ROUTES: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let doc = ApiDoc::openapi();
        let mut routes = Vec::new();
        for (path, item) in doc.paths.paths.iter() {
            for (method, operation) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                if operation.is_some() {
                    routes.push((method.to_string(), path.clone()));
                }
            }
        }
        // Literal segments before parameters: `/v1/admin/status` is not `/v1/admin/{x}`.
        routes.sort_by_key(|(_, template)| template.matches('{').count());
        routes
    })
}

/// The route template of a request path, for the metrics' `route` label: the documented
/// template it matches (`/v1/payments/{id}`), or `other`, so the label has a bounded number
/// of values whatever paths clients send.
pub fn route_template(path: &str) -> &'static str {
    // Runs on every request: the templates are split once, and a path is compared segment
    // by segment without allocating.
    let path = path.trim_matches('/');
    templates()
        .iter()
        .find(|(parts, _)| {
            let mut segments = path.split('/');
            parts.iter().all(|part| match (part, segments.next()) {
                (Some(literal), Some(segment)) => *literal == segment,
                (None, Some(segment)) => !segment.is_empty(),
                (_, None) => false,
            }) && segments.next().is_none()
        })
        .map(|(_, template)| template.as_str())
        .unwrap_or("other")
}

/// Each documented template once, split into segments (`None` for a parameter), in the
/// order of [`routes`] (literal templates first).
fn templates() -> &'static [(Vec<Option<String>>, String)] {
    static TEMPLATES: OnceLock<Vec<(Vec<Option<String>>, String)>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut templates: Vec<(Vec<Option<String>>, String)> = Vec::new();
        for (_, template) in routes() {
            if templates.iter().any(|(_, t)| t == template) {
                continue;
            }
            let parts = template
                .trim_matches('/')
                .split('/')
                .map(|part| (!part.starts_with('{')).then(|| part.to_string()))
                .collect();
            templates.push((parts, template.clone()));
        }
        templates
    })
}

/// `GET /openapi.json`: this document. Public, like the routes it describes.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Result<Response, Infallible> {
    let mut response = document().into_response();
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn ids_in_paths_become_their_template_and_unknown_paths_one_value() {
        assert_eq!(route_template("/v1/payments"), "/v1/payments");
        assert_eq!(route_template("/v1/payments/pay_123"), "/v1/payments/{id}");
        assert_eq!(
            route_template("/v1/payments/pay_123/capture"),
            "/v1/payments/{id}/capture"
        );
        assert_eq!(
            route_template("/v1/payments/pay_1/refunds"),
            "/v1/payments/{id}/refunds"
        );
        assert_eq!(
            route_template("/webhooks/psp/sandbox"),
            "/webhooks/psp/{channel}"
        );
        assert_eq!(route_template("/v1/payments/pay_1/explode"), "other");
        assert_eq!(route_template("/../../etc/passwd"), "other");
        assert_eq!(route_template("/v1/payments//capture"), "other");
        assert_eq!(route_template("/v1/payments/pay_1/capture/x"), "other");
        assert_eq!(route_template("/v1/admin/status"), "/v1/admin/status");
        assert_eq!(route_template("/"), "other");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_auth_schemes() {
        let doc: serde_json::Value =
            serde_json::from_str(super::document()).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        for scheme in [
            "merchant_api_key",
            "admin_token",
            "psp_signature",
            "cluster_secret",
        ] {
            assert!(
                doc["components"]["securitySchemes"][scheme].is_object(),
                "{scheme} missing"
            );
        }
        assert!(doc["components"]["schemas"]["ErrorResponse"].is_object());
    }

    #[test]
    fn the_documented_bounds_are_the_ones_the_code_enforces() {
        use crate::validation::{MAX_CHANNEL_LEN, MAX_EMAIL_LEN, MAX_ORDER_NO_LEN};
        let doc: serde_json::Value =
            serde_json::from_str(super::document()).expect("the document is JSON");
        let create = &doc["components"]["schemas"]["CreatePaymentBody"]["properties"];
        assert_eq!(
            create["amount"]["maximum"].as_i64(),
            Some(payrail_actors::money::MAX_AMOUNT)
        );
        assert_eq!(create["amount"]["minimum"].as_i64(), Some(1));
        assert_eq!(
            create["customer_email"]["maxLength"].as_u64(),
            Some(MAX_EMAIL_LEN as u64)
        );
        assert_eq!(
            create["order_no"]["maxLength"].as_u64(),
            Some(MAX_ORDER_NO_LEN as u64)
        );
        assert_eq!(
            create["channel"]["pattern"].as_str(),
            Some(format!("^[a-z0-9_-]{{1,{MAX_CHANNEL_LEN}}}$").as_str())
        );
        let roll = &doc["components"]["schemas"]["RollApiKeyBody"]["properties"];
        assert_eq!(
            roll["expire_old_in_s"]["maximum"].as_u64(),
            Some(payrail_actors::merchants::MAX_ROLLED_KEY_GRACE.as_secs())
        );
    }
}
