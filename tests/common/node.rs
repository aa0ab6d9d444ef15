//! `NodeProcess`: a `payrail node` child process that a test starts, signals and SIGKILLs.

use super::{free_port, TestEnv};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A `payrail node` child process.
pub struct NodeProcess {
    child: Child,
    pub port: u16,
    pub base: String,
    pub log: PathBuf,
}

impl NodeProcess {
    pub async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        Self::start_on(env, free_port(), extra).await
    }

    pub async fn start_on(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Self {
        let mut node = Self::spawn_on(env, port, extra);
        node.wait_ready(Duration::from_secs(90)).await;
        node
    }

    /// Like [`NodeProcess::start_on`], but returns once the node answers HTTP at all, ready
    /// or not (a node started during an outage serves the partitions it can while the
    /// others wait for the journal).
    pub async fn start_listening_on(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Self {
        let mut node = Self::spawn_on(env, port, extra);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("node exited with {status}: {}", node.log_tail());
            }
            if client
                .get(format!("{}/readyz", node.base))
                .send()
                .await
                .is_ok()
            {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "node not listening: {}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn spawn_on(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Self {
        let log = env
            .dir
            .join(format!("node-{port}-{}.log", uuid::Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("node log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_payrail"));
        command
            .arg("node")
            .envs(env.node_env(port))
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            // PAYRAIL_TEST_NODE_LOG overrides the filter, e.g. to debug one module.
            .env(
                "RUST_LOG",
                std::env::var("PAYRAIL_TEST_NODE_LOG")
                    .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
            )
            // The node logs to stdout and panics to stderr: keep both in the log file.
            .stdout(file.try_clone().expect("node log"))
            .stderr(file);
        let child = command.spawn().expect("spawn payrail node");
        Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node exited with {status}: {}", self.log_tail());
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("node not ready in {timeout:?}: {}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The node's exit status if it exits within `timeout`.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// SIGKILL: no shutdown hooks, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`, `-TERM`) to the node.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
