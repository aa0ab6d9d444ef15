//! `LeaseKeeper` on real PostgreSQL: fair share, expiry, graceful handover, shutdown.

mod common;

use common::proxy::StallProxy;
use common::{options, pool, wait_for, Node, Seen, TestDb, LEASE_MS, MARGIN_MS};
use payrail_cluster::LeaseError;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const NO_DELAY: Duration = Duration::ZERO;
const LIMIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_single_keeper_takes_every_partition_with_epoch_1() {
    let db = TestDb::new("single").await;
    let a = Node::start(pool(&db.url, 2).await, options("a", 6), NO_DELAY);
    wait_for("a owns 6", LIMIT, &[&a.leases], 6, || a.owned().len() == 6).await;
    let expected: BTreeMap<i32, u64> = (0..6).map(|p| (p, 1)).collect();
    assert_eq!(a.owned(), expected);
    for p in 0..6 {
        assert_eq!(a.leases.valid(p), Some(1), "partition {p}");
    }
    assert_eq!(a.leases.valid(6), None, "not a partition of the topic");
    for row in db.store().table().await.unwrap() {
        assert_eq!(row.owner_node_id.as_deref(), Some("a"));
        assert_eq!(row.owner_url.as_deref(), Some("http://a.test:8080"));
        assert_eq!((row.epoch, row.held), (1, true));
    }
    a.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn two_keepers_split_six_partitions_three_each_never_both_valid() {
    let db = TestDb::new("split").await;
    let a = Node::start(pool(&db.url, 2).await, options("a", 6), NO_DELAY);
    let b = Node::start(pool(&db.url, 2).await, options("b", 6), NO_DELAY);
    let both = [&a.leases, &b.leases];
    let split = || a.owned().len() == 3 && b.owned().len() == 3;
    wait_for("3/3", LIMIT, &both, 6, split).await;
    // Stable: sampled for two leases, the split holds and no partition is valid twice.
    let until = Instant::now() + Duration::from_millis(2 * LEASE_MS);
    while Instant::now() < until {
        common::assert_single_owner(&both, 6);
        assert!(split(), "a {:?} b {:?}", a.owned(), b.owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in 0..6 {
        let owners = [a.leases.valid(p), b.leases.valid(p)];
        assert_eq!(
            owners.iter().flatten().count(),
            1,
            "partition {p}: {owners:?}"
        );
    }
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}

/// `a` loses the database (its task keeps running, its statements hang): its `valid()`
/// turns false by its own clock within `lease_ms - margin`, before `b` takes the partitions
/// (which `b` does only once they expired by the database clock, raising their epochs).
#[tokio::test]
async fn a_stalled_keeper_turns_invalid_before_the_other_takes_over() {
    let db = TestDb::new("stall").await;
    let proxy = StallProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let a = Node::start(
        pool(&db.url_via(proxy.port), 2).await,
        options("a", 6),
        NO_DELAY,
    );
    let b = Node::start(pool(&db.url, 2).await, options("b", 6), NO_DELAY);
    let both = [&a.leases, &b.leases];
    let split = || a.owned().len() == 3 && b.owned().len() == 3;
    wait_for("3/3", LIMIT, &both, 6, split).await;
    let a_held = a.owned();

    let paused_at = Instant::now();
    proxy.pause();
    // Statements already through the proxy finish within ms; then the table stops moving.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let expiry: BTreeMap<i32, _> = db
        .store()
        .table()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| a_held.contains_key(&r.partition))
        .map(|r| (r.partition, r.expires_at.unwrap()))
        .collect();

    let mut a_invalid: BTreeMap<i32, Instant> = BTreeMap::new();
    let mut b_valid: BTreeMap<i32, Instant> = BTreeMap::new();
    let start = Instant::now();
    while b_valid.len() < a_held.len() {
        assert!(start.elapsed() < LIMIT, "b never took over: {b_valid:?}");
        common::assert_single_owner(&both, 6);
        let now = Instant::now();
        for &p in a_held.keys() {
            if a.leases.valid(p).is_none() {
                a_invalid.entry(p).or_insert(now);
            }
            if b.leases.valid(p).is_some() {
                b_valid.entry(p).or_insert(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rows = db.store().table().await.unwrap();
    let valid_for = Duration::from_millis(LEASE_MS - MARGIN_MS);
    for (&p, &old_epoch) in &a_held {
        let lapsed = a_invalid[&p].duration_since(paused_at);
        assert!(
            lapsed <= valid_for + Duration::from_millis(60),
            "{p}: {lapsed:?}"
        );
        assert!(
            a_invalid[&p] < b_valid[&p],
            "partition {p}: a still valid when b took it"
        );
        let row = &rows[p as usize];
        assert_eq!(row.owner_node_id.as_deref(), Some("b"));
        assert_eq!(row.epoch, old_epoch + 1, "partition {p}");
        // b's acquisition (or a renewal after it) happened after a's lease expired.
        assert!(row.renewed_at.unwrap() >= expiry[&p], "partition {p}");
    }
    // a forgets them one lease after its last renewal, by its own clock.
    wait_for("a lost them", LIMIT, &both, 6, || a.owned().is_empty()).await;
    proxy.resume();
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn an_aborted_keeper_is_invalid_at_once_and_cannot_shut_down() {
    let db = TestDb::new("abort").await;
    let a = Node::start(pool(&db.url, 2).await, options("a", 3), NO_DELAY);
    wait_for("a owns 3", LIMIT, &[&a.leases], 3, || a.owned().len() == 3).await;
    a.task.abort();
    let _ = a.task.await;
    assert!((0..3).all(|p| a.leases.valid(p).is_none()));
    assert!(a.leases.owned().is_empty());
    assert!(matches!(
        a.leases.shutdown().await,
        Err(LeaseError::KeeperGone)
    ));
    db.drop_database().await;
}

/// A third keeper joins 3/3: each old owner hands one partition over (releasing, drained
/// after 200 ms, released) and the newcomer takes it with the next epoch. The drain
/// timeout is 5 s, so a quick handover shows the drain acknowledgement triggered it.
#[tokio::test]
async fn a_joining_keeper_gets_its_share_by_graceful_handover() {
    let db = TestDb::new("join").await;
    let drain = Duration::from_millis(200);
    let a = Node::start(pool(&db.url, 2).await, options("a", 6), drain);
    let b = Node::start(pool(&db.url, 2).await, options("b", 6), drain);
    let split = || a.owned().len() == 3 && b.owned().len() == 3;
    wait_for("3/3", LIMIT, &[&a.leases, &b.leases], 6, split).await;
    let before: BTreeMap<i32, u64> = a.owned().into_iter().chain(b.owned()).collect();

    let joined_at = Instant::now();
    let c = Node::start(pool(&db.url, 2).await, options("c", 6), drain);
    let all = [&a.leases, &b.leases, &c.leases];
    let fair = || a.owned().len() == 2 && b.owned().len() == 2 && c.owned().len() == 2;
    wait_for("2/2/2", Duration::from_secs(3), &all, 6, fair).await;
    assert!(joined_at.elapsed() < Duration::from_secs(3));

    let gained: Vec<(Instant, i32, u64)> = c
        .seen()
        .into_iter()
        .filter_map(|(at, s)| match s {
            Seen::Gained { partition, epoch } => Some((at, partition, epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(gained.len(), 2, "{gained:?}");
    for (gained_at, p, epoch) in gained {
        assert_eq!(epoch, before[&p] + 1, "partition {p}");
        let removed_after_join = |n: &Node| {
            n.seen()
                .into_iter()
                .find(|(t, s)| *t >= joined_at && *s == Seen::Removed { partition: p })
                .map(|(t, _)| t)
        };
        let (old, removed) = [&a, &b]
            .into_iter()
            .find_map(|n| removed_after_join(n).map(|t| (n, t)))
            .unwrap_or_else(|| panic!("partition {p} was not handed over"));
        let drained = old
            .seen()
            .into_iter()
            .find(|(t, s)| *t >= removed && *s == Seen::Drained { partition: p })
            .map(|(t, _)| t)
            .unwrap_or_else(|| panic!("partition {p} never drained"));
        assert!(removed + drain <= drained, "partition {p}");
        assert!(
            drained < gained_at,
            "partition {p}: taken before it drained"
        );
    }
    a.stop().await;
    b.stop().await;
    c.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn shutdown_releases_every_partition_and_leaves() {
    let db = TestDb::new("shutdown").await;
    let a = Node::start(pool(&db.url, 2).await, options("a", 6), NO_DELAY);
    let b = Node::start(pool(&db.url, 2).await, options("b", 6), NO_DELAY);
    let split = || a.owned().len() == 3 && b.owned().len() == 3;
    wait_for("3/3", LIMIT, &[&a.leases, &b.leases], 6, split).await;
    let a_held = a.owned();
    let a_leases = a.leases.clone();
    let started = Instant::now();
    a.stop().await;
    // Released, not expired: well within one lease.
    assert!(started.elapsed() < Duration::from_millis(LEASE_MS));
    assert!((0..6).all(|p| a_leases.valid(p).is_none()));
    let nodes = sqlx::query_as::<_, (String, bool)>("SELECT node_id, leaving FROM cluster_nodes")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(nodes.contains(&("a".to_string(), true)), "{nodes:?}");
    wait_for("b owns 6", LIMIT, &[&b.leases], 6, || b.owned().len() == 6).await;
    for (p, epoch) in a_held {
        assert_eq!(b.owned()[&p], epoch + 1, "partition {p}");
    }
    b.stop().await;
    db.drop_database().await;
}
