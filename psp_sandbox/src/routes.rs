//! The sandbox's HTTP routes over [`Sandbox`]'s operations.

use crate::objects::{CaptureBody, Event};
use crate::{error, ok, Sandbox};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "parameter_invalid",
            &e.to_string(),
        ))
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    pub(crate) payment_intent: Option<String>,
}

/// The sandbox's routes: the Stripe-like API and the test-only event list and resend.
pub(crate) fn routes(
    sandbox: Sandbox,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let s = warp::any().map(move || sandbox.clone());
    let idem = warp::header::optional::<String>("idempotency-key");
    let body = warp::body::content_length_limit(64 * 1024).and(warp::body::bytes());

    let create = warp::path!("v1" / "payment_intents")
        .and(warp::post())
        .and(s.clone())
        .and(idem)
        .and(body)
        .map(|s: Sandbox, key, body: bytes::Bytes| match parse(&body) {
            Ok(body) => s.create_intent(key, body),
            Err(r) => *r,
        });
    let retrieve = warp::path!("v1" / "payment_intents" / String)
        .and(warp::get())
        .and(s.clone())
        .map(|id: String, s: Sandbox| match s.lock().intents.get(&id) {
            Some(intent) => ok(intent),
            None => error(
                StatusCode::NOT_FOUND,
                "resource_missing",
                "No such payment_intent",
            ),
        });
    let capture = warp::path!("v1" / "payment_intents" / String / "capture")
        .and(warp::post())
        .and(s.clone())
        .and(idem)
        .and(body)
        .map(|id: String, s: Sandbox, key, body: bytes::Bytes| {
            let parsed = if body.is_empty() {
                Ok(CaptureBody::default())
            } else {
                parse(&body)
            };
            match parsed {
                Ok(b) => s.capture(&id, key, b),
                Err(r) => *r,
            }
        });
    let cancel = warp::path!("v1" / "payment_intents" / String / "cancel")
        .and(warp::post())
        .and(s.clone())
        .map(|id: String, s: Sandbox| s.cancel(&id));
    let refunds = warp::path!("v1" / "refunds")
        .and(warp::post())
        .and(s.clone())
        .and(idem)
        .and(body)
        .map(|s: Sandbox, key, body: bytes::Bytes| match parse(&body) {
            Ok(b) => s.refund(key, b),
            Err(r) => *r,
        });
    let events = warp::path!("v1" / "test" / "events")
        .and(warp::get())
        .and(s.clone())
        .and(warp::query::<EventsQuery>())
        .map(|s: Sandbox, q: EventsQuery| {
            let state = s.lock();
            let list: Vec<&Event> = state
                .events
                .iter()
                .filter(|e| {
                    q.payment_intent
                        .as_ref()
                        .is_none_or(|pi| &e.payment_intent == pi)
                })
                .collect();
            ok(&json!({"object": "list", "data": list}))
        });
    let resend = warp::path!("v1" / "test" / "events" / String / "resend")
        .and(warp::post())
        .and(s)
        .and_then(|id: String, s: Sandbox| async move {
            let event = s.lock().events.iter().find(|e| e.id == id).cloned();
            Ok::<_, Infallible>(match event {
                Some(event) => {
                    let delivered = s.deliver(&event).await;
                    ok(&json!({"id": id, "delivered": delivered}))
                }
                None => error(StatusCode::NOT_FOUND, "resource_missing", "No such event"),
            })
        });
    create
        .or(retrieve)
        .unify()
        .or(capture)
        .unify()
        .or(cancel)
        .unify()
        .or(refunds)
        .unify()
        .or(events)
        .unify()
        .or(resend)
        .unify()
        .recover(|_| async {
            Ok::<_, Infallible>(error(
                StatusCode::NOT_FOUND,
                "resource_missing",
                "Unrecognized request URL",
            ))
        })
        .unify()
}
