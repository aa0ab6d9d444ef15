//! With the broker down, creates fail fast with 503 and journal nothing; when it is back,
//! the same request (same idempotency key) succeeds. Uses a private tansu broker so that
//! stopping it does not disturb other tests.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct PrivateBroker {
    child: Child,
    port: u16,
}

impl PrivateBroker {
    fn start(dir: &Path, port: u16) -> Self {
        let tansu = std::env::var("PAYRAIL_TANSU_BIN").unwrap_or_else(|_| "tansu".into());
        let log =
            std::fs::File::create(dir.join(format!("tansu-{}.log", uuid::Uuid::now_v7().simple())))
                .unwrap();
        let child = Command::new(&tansu)
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the private broker ({tansu}): {e}; run scripts/test.sh, which installs tansu"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "private broker did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_within_the_timeout_journals_nothing_and_recovers() {
    let mut env = TestEnv::new("outage").await;
    let broker_dir = env.dir.join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = PrivateBroker::start(&broker_dir, free_port());
    env.brokers = format!("127.0.0.1:{}", broker.port);
    let node = NodeProcess::start(
        &env,
        &[
            ("PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS", "2000"),
            ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "500"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Outage").await;
    let body = r#"{"amount":4200,"currency":"eur"}"#;
    let first = api.create_payment(&key, Some("before-outage"), body).await;
    assert_eq!(first.status, 201, "{}", first.body);

    broker.kill9();
    let started = Instant::now();
    let refused = api.create_payment(&key, Some("during-outage"), body).await;
    let elapsed = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "journal_unavailable");
    assert!(elapsed < Duration::from_secs(10), "503 took {elapsed:?}");
    let ready = api
        .send(reqwest::Method::GET, "/readyz", None, None, None)
        .await;
    assert_eq!(
        ready.status, 503,
        "not ready without the journal: {}",
        ready.body
    );
    assert_eq!(ready.body["journal"], false);
    assert_eq!(ready.body["database"], true);

    let port = broker.port;
    let _broker = PrivateBroker::start(&broker_dir, port);
    let journal = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    let created = created_for(&journal, &merchant_id);
    assert_eq!(
        created.len(),
        1,
        "only the acknowledged payment is journaled"
    );

    // The client retries with the same key once the journal is back.
    let retried = eventually(Duration::from_secs(30), || {
        let api = api.clone();
        let key = key.clone();
        async move {
            let r = api.create_payment(&key, Some("during-outage"), body).await;
            (r.status == 201).then_some(r.body)
        }
    })
    .await;
    assert!(
        retried.is_some(),
        "creates succeed again after the broker is back: {}",
        node.log_tail()
    );
    let journal = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    assert_eq!(created_for(&journal, &merchant_id).len(), 2);
}
