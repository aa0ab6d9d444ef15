//! The routes, in boxed groups: the operators' and merchants' set-up, the payments API,
//! money and operations, notifications and the Stripe-compatible API. Each group is a
//! [`BoxedFilter`], so the compiler sees a handful of small filter types instead of one
//! type nested thirty `or`s deep (issue 24: that nesting made this crate the slowest of
//! the workspace to build). The groups are tried in the order the routes were before.

use crate::{
    access, body, dashboard, error, forward, guard, internal, metrics, money, notifications,
    openapi, ops, payments, request_id, status, stripe, webhooks, with, AppState,
};
use std::convert::Infallible;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

type Routes = BoxedFilter<(Response,)>;

/// All routes, with error recovery.
pub fn routes(
    state: AppState,
    max_body_bytes: u64,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    // One allocation for the node's life: each request's filter chain clones only this Arc
    // (cloning the state itself copied its strings and the producer's config per request,
    // ~20 % of the node's CPU per create; BENCHMARKS.md, issue 13).
    let state = Arc::new(state);
    let routes = set_up(state.clone(), max_body_bytes)
        .or(payment_routes(state.clone(), max_body_bytes))
        .unify()
        .or(money_and_operations(state.clone(), max_body_bytes))
        .unify()
        .or(notifications::routes(state.clone()).boxed())
        .unify()
        .or(stripe::routes(state.clone(), max_body_bytes))
        .unify();
    guard::state_changing()
        .and(routes)
        .recover(error::recover)
        .unify()
        .with(warp::log::custom(access::record_request))
        .with(warp::trace(|info| {
            let request_id = info
                .request_headers()
                .get(request_id::HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!(
                "request",
                method = %info.method(),
                path = %info.path(),
                request_id = %request_id
            )
        }))
}

/// Health, readiness, the OpenAPI document, and merchants' creation and key rolls.
fn set_up(state: Arc<AppState>, max_body_bytes: u64) -> Routes {
    let auth = warp::header::optional::<String>("authorization");
    let body = body::limited_body(max_body_bytes);
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and_then(ops::healthz);
    let openapi_json = warp::path!("openapi.json")
        .and(warp::get())
        .and_then(openapi::openapi_json);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with(state.clone()))
        .and_then(ops::readyz);
    let merchants = warp::path!("v1" / "merchants")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and(body.clone())
        .and_then(ops::create_merchant);
    let roll_api_key = warp::path!("v1" / "merchants" / String / "roll_api_key")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and(body.clone())
        .and_then(|id, state, auth, body| ops::roll_api_key(state, id, auth, body));
    healthz
        .or(openapi_json)
        .unify()
        .or(readyz)
        .unify()
        .or(merchants)
        .unify()
        .or(roll_api_key)
        .unify()
        .boxed()
}

/// The payments API (`/v1/payments…`) and the PSP's webhooks.
fn payment_routes(state: Arc<AppState>, max_body_bytes: u64) -> Routes {
    let auth = warp::header::optional::<String>("authorization");
    let body = body::limited_body(max_body_bytes);
    let create = warp::path!("v1" / "payments")
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(body.clone())
        .and_then(payments::create_payment);
    let get = warp::path!("v1" / "payments" / String)
        .and(warp::get())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and_then(|id, state, incoming, auth| payments::get_payment(state, incoming, id, auth));
    let list = warp::path!("v1" / "payments")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<payments::ListQuery>())
        .and(auth)
        .and_then(payments::list_payments);
    let confirm = warp::path!("v1" / "payments" / String / "confirm")
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and(body.clone())
        .and_then(|id, state, incoming, auth, body| {
            payments::confirm_payment(state, incoming, id, auth, body)
        });
    let capture = warp::path!("v1" / "payments" / String / "capture")
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and(body.clone())
        .and_then(|id, state, incoming, auth, body| {
            payments::capture_payment(state, incoming, id, auth, body)
        });
    let cancel = warp::path!("v1" / "payments" / String / "cancel")
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and(body.clone())
        .and_then(|id, state, incoming, auth, body| {
            payments::cancel_payment(state, incoming, id, auth, body)
        });
    let action = confirm.or(capture).unify().or(cancel).unify();
    let refunds = warp::path!("v1" / "payments" / String / "refunds")
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(body.clone())
        .and_then(|id, state, incoming, auth, key, body| {
            payments::create_refund(state, incoming, id, auth, key, body)
        });
    let webhook = warp::path!("webhooks" / "psp" / String)
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(warp::header::optional::<String>("stripe-signature"))
        .and(body.clone())
        .and_then(|channel, state, incoming, signature, body| {
            webhooks::psp_webhook(state, incoming, channel, signature, body)
        });
    create
        .or(get)
        .unify()
        .or(list)
        .unify()
        .or(refunds)
        .unify()
        .or(action)
        .unify()
        .or(webhook)
        .unify()
        .boxed()
}

/// Balances, ledger, settlements and analytics; the admin and operators' endpoints; the
/// internal delivery endpoint of the fallback.
fn money_and_operations(state: Arc<AppState>, max_body_bytes: u64) -> Routes {
    let auth = warp::header::optional::<String>("authorization");
    let body = body::limited_body(max_body_bytes);
    let internal_body = body::limited_body(payrail_actors::fallback::sink::MAX_BATCH_BODY_BYTES);
    let balance_route = warp::path!("v1" / "balance")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(money::balance);
    let entries = warp::path!("v1" / "ledger" / "entries")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<money::EntriesQuery>())
        .and(auth)
        .and_then(money::ledger_entries);
    let settlements_run = warp::path!("v1" / "settlements" / "run")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and(body.clone())
        .and_then(money::run_settlements);
    let settlements_pay = warp::path!("v1" / "settlements" / String / "pay")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and_then(|id, state, auth| money::pay_settlement(state, id, auth));
    let settlements_list = warp::path!("v1" / "settlements")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(money::list_settlements);
    let channels = warp::path!("v1" / "analytics" / "channel-metrics")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<money::MetricsQuery>())
        .and(auth)
        .and_then(money::channel_metrics);
    let consumers = warp::path!("v1" / "admin" / "consumers")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(ops::consumer_lag);
    let journal_admin = warp::path!("v1" / "admin" / "journal")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(ops::journal_status);
    let metrics_route = warp::path!("metrics")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(metrics::scrape);
    let cluster_admin = warp::path!("v1" / "admin" / "cluster")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(ops::cluster_status);
    let node_status = warp::path!("v1" / "admin" / "status")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(status::node_status);
    let internal_events = warp::path!("internal" / "v1" / "events")
        .and(warp::post())
        .and(with(state.clone()))
        // From the headers, before a byte of the body is read.
        .and(internal::cluster_authenticated(state.clone()))
        .and(internal_body)
        .and_then(internal::receive_events);
    let metrics = warp::path!("v1" / "analytics" / "payment-metrics")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<money::MetricsQuery>())
        .and(auth)
        .and_then(money::payment_metrics);

    metrics
        .or(balance_route)
        .unify()
        .or(entries)
        .unify()
        .or(settlements_run)
        .unify()
        .or(settlements_pay)
        .unify()
        .or(settlements_list)
        .unify()
        .or(channels)
        .unify()
        .or(consumers)
        .unify()
        .or(journal_admin)
        .unify()
        .or(cluster_admin)
        .unify()
        .or(node_status)
        .unify()
        .or(dashboard::routes(state.clone()))
        .unify()
        .or(metrics_route)
        .unify()
        .or(internal_events)
        .unify()
        .boxed()
}
