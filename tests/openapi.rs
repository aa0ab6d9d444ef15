//! The OpenAPI document against what the node serves: a route the code declares but the
//! document lacks fails, and so does a documented route that a real node does not serve.

mod common;

use common::{Api, NodeProcess, TestEnv};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// `(METHOD, /path/{}/template)`: parameters are `{}` whatever their name.
type Route = (String, String);

fn normalized(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every route the HTTP crate declares: each `warp::path!(…)` with the method filter that
/// follows it (read from the source, so a route added without documentation is caught).
fn declared_routes() -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("http/src");
    let mut files = vec![dir];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read http/src") {
                files.push(entry.expect("dir entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read source");
        let mut rest = source.as_str();
        while let Some(start) = rest.find("warp::path!(") {
            let after = &rest[start + "warp::path!(".len()..];
            let end = after.find(')').expect("warp::path! closes");
            let segments: Vec<String> = after[..end]
                .split('/')
                .map(|s| {
                    let s = s.trim();
                    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                        Some(literal) => literal.to_string(),
                        None => "{}".to_string(),
                    }
                })
                .collect();
            let tail = &after[end..];
            let method = ["get", "post", "put", "delete", "patch"]
                .into_iter()
                .filter_map(|m| tail.find(&format!("warp::{m}()")).map(|i| (i, m)))
                .min()
                .map(|(_, m)| m.to_ascii_uppercase())
                .unwrap_or_else(|| panic!("no method filter after warp::path!({})", &after[..end]));
            routes.insert((method, format!("/{}", segments.join("/"))));
            rest = &after[end..];
        }
    }
    routes
}

fn documented_routes(document: &Value) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                routes.insert((method.to_ascii_uppercase(), normalized(path)));
            }
        }
    }
    routes
}

#[test]
fn every_declared_route_is_documented_and_every_documented_route_declared() {
    let document: Value =
        serde_json::from_str(payrail_http::openapi::document()).expect("document is JSON");
    let declared = declared_routes();
    let documented = documented_routes(&document);
    assert!(declared.len() >= 20, "the scan found {declared:?}");
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let undeclared: Vec<_> = documented.difference(&declared).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in /openapi.json: {undocumented:?}"
    );
    assert!(
        undeclared.is_empty(),
        "in /openapi.json but not served: {undeclared:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_serves_the_document_and_every_route_in_it() {
    let env = TestEnv::new("openapi").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);

    let served = api
        .send(reqwest::Method::GET, "/openapi.json", None, None, None)
        .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body["openapi"], "3.1.0");
    let expected: Value =
        serde_json::from_str(payrail_http::openapi::document()).expect("document is JSON");
    assert_eq!(
        served.body, expected,
        "the node serves the compiled document"
    );

    // Each documented operation, without credentials: the route must exist (any answer but
    // "Unrecognized request URL" or 405), and the answer must be one the document lists.
    let mut probed = 0;
    for (path, item) in expected["paths"].as_object().expect("paths") {
        let concrete = path
            .split('/')
            .map(|s| match s {
                "{id}" => "pay_0000000000000000",
                "{channel}" => "sandbox",
                other if other.starts_with('{') => "x",
                other => other,
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "post"] {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let reply = api
                .send(
                    method.to_ascii_uppercase().parse().expect("method"),
                    &concrete,
                    None,
                    None,
                    (method == "post").then(|| "{}".to_string()),
                )
                .await;
            probed += 1;
            let unrouted =
                reply.status == 404 && reply.body["error"]["message"] == "Unrecognized request URL";
            assert!(
                !unrouted && reply.status != 405,
                "{method} {path}: not served ({} {})",
                reply.status,
                reply.body
            );
            let listed = operation["responses"]
                .as_object()
                .expect("responses")
                .contains_key(&reply.status.to_string());
            assert!(
                listed,
                "{method} {path} answered {} without credentials, which the document does not list",
                reply.status
            );
        }
    }
    assert!(probed >= 20, "probed {probed} operations");
}
