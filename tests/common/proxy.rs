//! A TCP proxy between the node and its broker that can lose the broker's answers while
//! still passing the node's requests: an append is written but its acknowledgement never
//! arrives — the ambiguous failure a hung network or broker produces, made deterministic.
//!
//! Connections of the node's journal producer (Kafka client id `payrail-journal`, as
//! kafka_journal's producer sets it) are "producer" connections; the others (the snapshot
//! projector's and the pools' fetches) are "reader" connections. Answers can be
//! lost on both and restored for producers first, so that a test can keep the node's
//! readers (its snapshot projector) behind while the producer already works again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Default)]
struct Flags {
    lose_producer_answers: AtomicBool,
    lose_reader_answers: AtomicBool,
    dropped_bytes: AtomicU64,
}

pub struct LossyProxy {
    pub port: u16,
    flags: Arc<Flags>,
    /// (producer generation, reader generation): bumping one closes those connections.
    closer: watch::Sender<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
}

/// The node's journal producer's Kafka client id.
const PRODUCER_CLIENT_ID: &[u8] = b"payrail-journal";

/// Copies Kafka request frames client → broker, noting whether they come from the node's
/// producer (request header: api key, api version, correlation id, client id).
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    producer: Arc<AtomicBool>,
) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len).await?;
        let size = i32::from_be_bytes(len).max(0) as usize;
        let mut frame = vec![0u8; size];
        from.read_exact(&mut frame).await?;
        if frame.len() >= 10 {
            let id_len = i16::from_be_bytes([frame[8], frame[9]]).max(0) as usize;
            if frame.get(10..10 + id_len) == Some(PRODUCER_CLIENT_ID) {
                producer.store(true, Ordering::SeqCst);
            }
        }
        to.write_all(&len).await?;
        to.write_all(&frame).await?;
    }
}

/// Copies answers broker → client, dropping them while this kind of connection loses them.
async fn answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    producer: Arc<AtomicBool>,
    flags: Arc<Flags>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let lose = if producer.load(Ordering::SeqCst) {
            flags.lose_producer_answers.load(Ordering::SeqCst)
        } else {
            flags.lose_reader_answers.load(Ordering::SeqCst)
        };
        if lose {
            flags.dropped_bytes.fetch_add(n as u64, Ordering::SeqCst);
        } else {
            to.write_all(&buf[..n]).await?;
        }
    }
}

impl LossyProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let flags = Arc::new(Flags::default());
        let (closer, _) = watch::channel((0u64, 0u64));
        let task = {
            let flags = flags.clone();
            let closer = closer.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    let mut closed = closer.subscribe();
                    let born = *closed.borrow();
                    let flags = flags.clone();
                    tokio::spawn(async move {
                        let producer = Arc::new(AtomicBool::new(false));
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        let is_producer = producer.clone();
                        tokio::select! {
                            _ = requests(client_read, server_write, producer.clone()) => {}
                            _ = answers(server_read, client_write, producer, flags) => {}
                            _ = closed.wait_for(|now| {
                                if is_producer.load(Ordering::SeqCst) {
                                    now.0 != born.0
                                } else {
                                    now.1 != born.1
                                }
                            }) => {}
                        }
                    });
                }
            })
        };
        Self {
            port,
            flags,
            closer,
            task,
        }
    }

    /// From now on the broker's answers are lost on every connection; requests still
    /// reach it.
    pub fn lose_answers(&self) {
        self.flags
            .lose_producer_answers
            .store(true, Ordering::SeqCst);
        self.flags.lose_reader_answers.store(true, Ordering::SeqCst);
    }

    /// Closes the producer connections (their lost answers would desynchronise them) and
    /// passes producers' answers again; readers keep losing theirs.
    pub fn heal_producers(&self) {
        self.closer.send_modify(|g| g.0 += 1);
        self.flags
            .lose_producer_answers
            .store(false, Ordering::SeqCst);
    }

    /// Closes every connection and passes every answer again.
    pub fn heal(&self) {
        self.closer.send_modify(|g| {
            g.0 += 1;
            g.1 += 1;
        });
        self.flags
            .lose_producer_answers
            .store(false, Ordering::SeqCst);
        self.flags
            .lose_reader_answers
            .store(false, Ordering::SeqCst);
    }

    /// Bytes of answers lost so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.flags.dropped_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
