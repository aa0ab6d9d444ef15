//! A TCP proxy that can cut every connection through it at once, mid-stream: between a node
//! and PostgreSQL it makes the fault a dropped database connection gives — a statement or a
//! COMMIT whose answer never arrives, though the server may have applied it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct CutProxy {
    pub port: u16,
    /// Bumping it closes every connection open at that moment (new ones are accepted).
    cuts: watch::Sender<u64>,
    cut_connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cuts, watching) = watch::channel(0u64);
        let cut_connections = Arc::new(AtomicU64::new(0));
        let counted = cut_connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut cut = watching.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client, mut server) = (client, server);
                    cut.mark_unchanged();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Dropping both halves resets the connection for both sides.
                });
            }
        });
        Self {
            port,
            cuts,
            cut_connections,
            task,
        }
    }

    /// Cuts every connection open now.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections cut so far.
    pub fn cut_connections(&self) -> u64 {
        self.cut_connections.load(Ordering::Relaxed)
    }

    /// `url` (a PostgreSQL URL) with its host and port replaced by this proxy's.
    pub fn database_url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let credentials = authority
            .rsplit_once('@')
            .map(|(c, _)| format!("{c}@"))
            .unwrap_or_default();
        format!("{scheme}://{credentials}127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of a PostgreSQL URL (5432 when the URL names none).
pub fn upstream_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    }
}
