//! A journal delivered again to the notification pool notifies nothing twice.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_journal_notifies_nothing_twice() {
    let receiver = Receiver::start(Mode::Ok);
    let mut w = world("ntf_redeliver", Some(&receiver.url()), &[]).await;
    let a = w.create(r#"{"amount":700,"currency":"eur"}"#).await;
    let r = w
        .post(
            &w.key,
            &format!("/v1/payments/{a}/confirm"),
            r#"{"payment_method":"pm_card_visa"}"#,
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    let b = w.create(r#"{"amount":800,"currency":"usd"}"#).await;
    w.wait_notifications(&a, "a's webhooks delivered", |d| {
        d.len() == 3 && d.iter().all(|n| n["status"] == "delivered")
    })
    .await;
    w.wait_notifications(&b, "b's webhook delivered", |d| {
        d.len() == 1 && d[0]["status"] == "delivered"
    })
    .await;
    assert_eq!(receiver.hits().len(), 4);
    w.node.kill9();

    // Redeliver everything: group offsets back to 0, the pool's stored offsets and
    // processed event ids forgotten. Only the pool's own idempotence remains.
    let group = format!("{}payrail.notification", w.env.namespace);
    reset_group_offsets(&w.env.brokers, &group, &w.env.topic(), PARTITIONS);
    let pool = w.env.pool().await;
    for table in ["journal_offsets", "journal_processed_events"] {
        let n = sqlx::query(&format!("DELETE FROM {table} WHERE consumer = $1"))
            .bind(&group)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        assert!(n > 0, "the pool had rows in {table}");
    }
    let events = read_journal(&w.env.brokers, &w.env.topic(), PARTITIONS)
        .iter()
        .filter(|r| r.headers["event_type"] != kafka_journal::fence::OWNER_CHANGED)
        .count();
    assert_eq!(events, 4);
    let extra: Vec<(&str, &str)> = w
        .extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = NodeProcess::start_on(&w.env, w.node.port, &extra).await;
    // Every record, the start markers of both starts included.
    let total = read_journal(&w.env.brokers, &w.env.topic(), PARTITIONS).len() as i64;
    let consumed = eventually(Duration::from_secs(60), || {
        let (pool, group) = (pool.clone(), group.clone());
        async move {
            let applied: Option<i64> = sqlx::query_scalar(
                "SELECT sum(next_offset)::BIGINT FROM journal_offsets WHERE consumer = $1",
            )
            .bind(&group)
            .fetch_one(&pool)
            .await
            .unwrap();
            (applied == Some(total)).then_some(())
        }
    })
    .await;
    assert!(
        consumed.is_some(),
        "the pool consumed the journal again\n{}",
        node.log_tail()
    );
    // Give the delivery task several rounds to send anything new.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 4, "one notification per event");
    assert_eq!(receiver.hits().len(), 4, "nothing delivered twice");
}
