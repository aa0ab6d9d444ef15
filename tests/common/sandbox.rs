//! `SandboxProcess`: a `payrail psp-sandbox` child process, and a node wired to one.

use super::{free_port, NodeProcess, TestEnv, WEBHOOK_SECRET};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `payrail psp-sandbox` child process calling back `node_port`.
pub struct SandboxProcess {
    child: Child,
    pub port: u16,
    pub base: String,
}

impl SandboxProcess {
    pub fn start(env: &TestEnv, node_port: u16, extra: &[&str]) -> Self {
        let port = free_port();
        let log = std::fs::File::create(env.dir.join(format!("sandbox-{port}.log")))
            .expect("sandbox log");
        let child = Command::new(env!("CARGO_BIN_EXE_payrail"))
            .args([
                "psp-sandbox",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--webhook-url",
                &format!("http://127.0.0.1:{node_port}/webhooks/psp/sandbox"),
                "--webhook-secret",
                WEBHOOK_SECRET,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn psp sandbox");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sandbox did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Environment pointing a node at this sandbox.
    pub fn node_env(&self) -> Vec<(String, String)> {
        vec![
            ("PAYRAIL__PSP__SANDBOX_URL".into(), self.base.clone()),
            ("PAYRAIL__PSP__WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
        ]
    }
}

/// A node of `env` wired to a PSP sandbox of its own (which sends it signed webhooks);
/// drop the sandbox after the node's last use.
pub async fn node_with_sandbox(env: &TestEnv) -> (NodeProcess, SandboxProcess) {
    let port = free_port();
    let sandbox = SandboxProcess::start(env, port, &[]);
    let sandbox_env = sandbox.node_env();
    let extra: Vec<(&str, &str)> = sandbox_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = NodeProcess::start_on(env, port, &extra).await;
    (node, sandbox)
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
