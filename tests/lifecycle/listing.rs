//! Listing a merchant's payments, page by page, newest first.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_the_merchants_payments_newest_first() {
    let w = world("list", &[], &[]).await;
    // Keyed creates get ids derived from their keys, which do not sort by time: the list
    // must still come newest first (6 payments: id order matches by chance 1 time in 720).
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = format!(r#"{{"amount":{},"currency":"eur"}}"#, 100 + i);
        let r = w
            .api
            .create_payment(&w.key, Some(&format!("list-{i}")), &body)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let page = |after: Option<String>| {
        let w = &w;
        async move {
            let query = match after {
                Some(a) => format!("/v1/payments?limit=2&starting_after={a}"),
                None => "/v1/payments?limit=2".to_string(),
            };
            w.api
                .send(reqwest::Method::GET, &query, Some(&w.key), None, None)
                .await
                .body
        }
    };
    let listed = eventually(Duration::from_secs(10), || async {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let body = page(after.clone()).await;
            assert_eq!(body["object"], "list");
            let data = body["data"].as_array().unwrap().clone();
            all.extend(data.iter().map(|p| p["id"].as_str().unwrap().to_string()));
            if body["has_more"] != true {
                break;
            }
            after = all.last().cloned();
        }
        (all == ids).then_some(all)
    })
    .await;
    assert!(
        listed.is_some(),
        "pages list every payment once, newest first"
    );
    let bad = w
        .api
        .send(
            reqwest::Method::GET,
            "/v1/payments?limit=0",
            Some(&w.key),
            None,
            None,
        )
        .await;
    assert_eq!(bad.status, 400);
}
