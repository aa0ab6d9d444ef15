//! `LeaseStore` against real PostgreSQL: the SQL alone, no keeper.

mod common;

use common::TestDb;
use std::time::Duration;

#[tokio::test]
async fn acquire_of_a_held_unexpired_lease_fails() {
    let db = TestDb::new("store_held").await;
    let store = db.store();
    let first = store.acquire(0, "a", "http://a", 60_000).await.unwrap();
    assert_eq!(first.map(|l| l.epoch), Some(1));
    assert_eq!(
        store.acquire(0, "b", "http://b", 60_000).await.unwrap(),
        None
    );
    // Not even its owner takes it twice: a new epoch needs an expired or released lease.
    assert_eq!(
        store.acquire(0, "a", "http://a", 60_000).await.unwrap(),
        None
    );
    let rows = store.table().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].owner_node_id.as_deref(), Some("a"));
    assert_eq!((rows[0].epoch, rows[0].held), (1, true));
    db.drop_database().await;
}

#[tokio::test]
async fn epochs_strictly_increase_per_partition_across_owners() {
    let db = TestDb::new("store_epochs").await;
    let store = db.store();
    let mut epochs = Vec::new();
    let a = store
        .acquire(3, "a", "http://a", 60_000)
        .await
        .unwrap()
        .unwrap();
    epochs.push(a.epoch);
    // Graceful: released, the next owner raises the epoch.
    assert!(store.release("a", 3, a.epoch).await.unwrap());
    let b = store
        .acquire(3, "b", "http://b", 200)
        .await
        .unwrap()
        .unwrap();
    epochs.push(b.epoch);
    // Expiry: b stops renewing; once expired by the database clock, c takes it.
    assert_eq!(
        store.acquire(3, "c", "http://c", 60_000).await.unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = store
        .acquire(3, "c", "http://c", 60_000)
        .await
        .unwrap()
        .unwrap();
    epochs.push(c.epoch);
    // The previous owners can neither renew nor release with their stale epochs.
    assert!(store
        .renew("b", &[(3, b.epoch)], 60_000)
        .await
        .unwrap()
        .is_empty());
    assert!(!store.release("b", 3, b.epoch).await.unwrap());
    assert_eq!(epochs, vec![1, 2, 3]);
    db.drop_database().await;
}

#[tokio::test]
async fn concurrent_acquires_of_a_free_partition_have_one_winner() {
    let db = TestDb::new("store_race").await;
    let store = db.store();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let node = format!("n{n}");
            store.acquire(1, &node, "http://x", 60_000).await.unwrap()
        });
    }
    let mut winners = Vec::new();
    while let Some(result) = tasks.join_next().await {
        winners.extend(result.unwrap());
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(winners[0].epoch, 1);
    db.drop_database().await;
}

#[tokio::test]
async fn renew_extends_only_rows_whose_owner_and_epoch_match() {
    let db = TestDb::new("store_renew").await;
    let store = db.store();
    let a0 = store
        .acquire(0, "a", "http://a", 60_000)
        .await
        .unwrap()
        .unwrap();
    let a1 = store
        .acquire(1, "a", "http://a", 60_000)
        .await
        .unwrap()
        .unwrap();
    store
        .acquire(2, "b", "http://b", 60_000)
        .await
        .unwrap()
        .unwrap();
    let before = store.table().await.unwrap();
    let renewed = store
        .renew("a", &[(0, a0.epoch), (1, a1.epoch + 1), (2, 1)], 60_000)
        .await
        .unwrap();
    assert_eq!(renewed, vec![0]);
    let after = store.table().await.unwrap();
    assert!(after[0].expires_at > before[0].expires_at);
    assert_eq!(after[1].expires_at, before[1].expires_at);
    assert_eq!(after[2].expires_at, before[2].expires_at);
    assert!(store.renew("a", &[], 60_000).await.unwrap().is_empty());
    db.drop_database().await;
}

#[tokio::test]
async fn release_ends_the_lease_now_and_keeps_the_epoch() {
    let db = TestDb::new("store_release").await;
    let store = db.store();
    let a = store
        .acquire(5, "a", "http://a", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !store.release("b", 5, a.epoch).await.unwrap(),
        "not b's lease"
    );
    assert!(store.release("a", 5, a.epoch).await.unwrap());
    let row = &store.table().await.unwrap()[0];
    assert_eq!(
        (row.owner_node_id.as_deref(), row.epoch, row.held),
        (None, 1, false)
    );
    assert_eq!(
        store.free_partitions(6).await.unwrap(),
        vec![0, 1, 2, 3, 4, 5]
    );
    db.drop_database().await;
}

#[tokio::test]
async fn live_nodes_leave_out_leaving_and_silent_nodes() {
    let db = TestDb::new("store_nodes").await;
    let store = db.store();
    store.heartbeat("a", "http://a").await.unwrap();
    store.heartbeat("b", "http://b").await.unwrap();
    store.heartbeat("c", "http://c").await.unwrap();
    store.leave("b").await.unwrap();
    let live: Vec<String> = store
        .live_nodes(60_000)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(live, vec!["a", "c"]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.heartbeat("c", "http://c2").await.unwrap();
    let live = store.live_nodes(100).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(
        (live[0].node_id.as_str(), live[0].url.as_str()),
        ("c", "http://c2")
    );
    // A heartbeat after leaving (a restart with the same id) counts again.
    store.heartbeat("b", "http://b").await.unwrap();
    assert_eq!(store.live_nodes(60_000).await.unwrap().len(), 3);
    assert_eq!(store.prune_nodes(60_000).await.unwrap(), 0);
    db.drop_database().await;
}
