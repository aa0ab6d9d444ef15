//! A private tansu broker for one test, which the test can kill, pause and resume without
//! disturbing other tests (they use the shared broker).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateBroker {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl PrivateBroker {
    /// Starts tansu on `port` with its sqlite store in `dir` (kept across restarts).
    pub fn start(dir: &Path, port: u16) -> Self {
        Self::start_advertising(dir, port, port)
    }

    /// Like [`PrivateBroker::start`], but clients are told to connect to `advertised`
    /// (e.g. a proxy in front of the broker).
    pub fn start_advertising(dir: &Path, port: u16, advertised: u16) -> Self {
        let tansu = std::env::var("PAYRAIL_TANSU_BIN").unwrap_or_else(|_| "tansu".into());
        let log =
            std::fs::File::create(dir.join(format!("tansu-{}.log", uuid::Uuid::now_v7().simple())))
                .expect("broker log");
        let child = Command::new(&tansu)
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting the private broker ({tansu}): {e}; run scripts/test.sh, which installs tansu")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "private broker did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        index_headers(&dir.join("tansu.db"));
        Self {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGSTOP: the broker hangs (connections stay open, nothing is answered).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`PrivateBroker::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL (connections are refused from now on).
    pub fn kill9(&mut self) {
        let _ = self.signal_cont_quietly();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal_cont_quietly(&self) -> std::io::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
    }

    /// Kills this broker and starts a new one on the same port and store.
    pub fn restart(&mut self) {
        self.kill9();
        *self = Self::start(&self.dir.clone(), self.port);
    }
}

/// Adds the header index tansu 0.6's sqlite schema lacks, as `scripts/broker.sh` does for
/// the shared broker: without it every fetched record scans every header ever written, so
/// a broker that restarts with a backlog answers fetches and appends slower and slower.
fn index_headers(db: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/index_tansu_headers.py");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let status = Command::new("python3").arg(&script).arg(db).status();
        match status {
            Ok(s) if s.success() => return,
            Ok(s) if s.code() == Some(1) => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("indexing the private broker's headers: {other:?}"),
        }
    }
    panic!("the private broker did not create its schema in 10 s");
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}
