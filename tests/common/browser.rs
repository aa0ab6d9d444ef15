//! Headless Chromium driven over the DevTools protocol, for tests of the dashboard.
//!
//! Not `--dump-dom --virtual-time-budget`: virtual time runs the page's clock (its 1 s polls,
//! `Date.now()`) about a hundred times faster than the wall clock the node's load runs on,
//! so rates would be measured over a few milliseconds. Here the page runs in real time and
//! the test reads it when it chooses. Every step is bounded; the browser is killed by PID.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `chromium --headless=new` process with one page.
pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
}

/// Limit on one DevTools call.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

impl Browser {
    /// Starts Chromium on `url` (its own profile under `dir`) and attaches to the page.
    pub async fn open(url: &str, dir: &Path) -> Self {
        let profile = dir.join("chromium-profile");
        let stderr = dir.join("chromium.stderr");
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1280,1100",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("chromium stderr file"))
            .spawn()
            .expect("run chromium (scripts/test.sh installs it)");
        let mut browser_guard = Guard(Some(child));
        // "DevTools listening on ws://127.0.0.1:<port>/devtools/browser/<id>"
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let text = std::fs::read_to_string(&stderr).unwrap_or_default();
            if let Some(rest) = text.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                break port;
            }
            if let Some(Ok(Some(status))) = browser_guard.0.as_mut().map(Child::try_wait) {
                panic!("chromium exited with {status}: {text}");
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open DevTools in 30 s: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let page_ws = loop {
            let targets: Value = http
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .await
                .expect("DevTools /json/list")
                .json()
                .await
                .expect("DevTools targets");
            let page = targets.as_array().and_then(|list| {
                list.iter()
                    .find(|t| {
                        t["type"] == "page"
                            && t["url"].as_str().is_some_and(|u| u.contains("/dashboard"))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(ws) = page {
                break ws;
            }
            assert!(
                Instant::now() < deadline,
                "no dashboard page among {targets}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) =
            tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(&page_ws))
                .await
                .expect("DevTools connect in time")
                .expect("DevTools websocket");
        Self {
            child: browser_guard.0.take().expect("chromium child"),
            socket,
            next_id: 1,
        }
    }

    /// One DevTools command; its `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        let exchange = async {
            self.socket
                .send(Message::Text(message))
                .await
                .expect("DevTools send");
            while let Some(frame) = self.socket.next().await {
                let Message::Text(text) = frame.expect("DevTools frame") else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if reply["id"] == id {
                    assert!(reply["error"].is_null(), "{method}: {reply}");
                    return reply["result"].clone();
                }
            }
            panic!("DevTools closed during {method}")
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer in {CALL_TIMEOUT:?}"))
    }

    /// Evaluates `expression` in the page; its value (JSON-serialisable).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let result = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        Guard::stop(&mut self.child);
    }
}

/// Kills the browser if opening it fails half-way.
struct Guard(Option<Child>);

impl Guard {
    /// SIGTERM (Chromium then ends its helper processes), SIGKILL after 5 s.
    fn stop(child: &mut Child) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            Guard::stop(child);
        }
    }
}
