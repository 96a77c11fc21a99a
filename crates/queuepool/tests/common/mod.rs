//! A fake database for the pool's tests: controllable connect latency and failures,
//! pings, resets and server restarts, and a log of what the pool did.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queuepool::{Health, Manager, Pool, PoolConfig};

#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("connection refused")]
    Refused,
    #[error("server closed the connection unexpectedly")]
    Disconnected,
    #[error("syntax error")]
    Query,
}

#[derive(Debug)]
pub struct FakeConn {
    pub id: u64,
    generation: u64,
    pub in_tx: bool,
    busy: bool,
    server: Arc<Server>,
}

impl FakeConn {
    /// A query taking `d`; fails if the server restarted since the connection opened.
    pub async fn query(&mut self, d: Duration) -> Result<(), FakeError> {
        self.busy = true;
        tokio::time::sleep(d).await;
        self.busy = false;
        if self.generation != self.server.generation.load(SeqCst) || self.severed() {
            return Err(FakeError::Disconnected);
        }
        Ok(())
    }

    fn severed(&self) -> bool {
        self.id <= self.server.severed_up_to.load(SeqCst)
    }

    pub fn begin(&mut self) {
        self.in_tx = true;
    }
}

/// What the fake server does and counts. All fields are shared with the manager.
#[derive(Debug, Default)]
pub struct Server {
    pub generation: AtomicU64,
    pub down: AtomicBool,
    pub connect_ms: AtomicU64,
    pub ping_ms: AtomicU64,
    pub reset_ms: AtomicU64,
    pub fail_reset: AtomicBool,
    pub connects: AtomicUsize,
    pub connect_attempts: AtomicUsize,
    pub pings: AtomicUsize,
    pub resets: AtomicUsize,
    pub closes: AtomicUsize,
    pub connecting_now: AtomicUsize,
    pub max_connecting_seen: AtomicUsize,
    /// Connections with an id up to this one had their socket closed by the server.
    pub severed_up_to: AtomicU64,
    next_id: AtomicU64,
}

impl Server {
    pub fn restart(&self) {
        self.generation.fetch_add(1, SeqCst);
    }

    /// Closes the socket of every connection opened so far (a terminated backend that
    /// the driver has noticed).
    pub fn sever_all(&self) {
        self.severed_up_to.store(self.next_id.load(SeqCst), SeqCst);
    }
}

#[derive(Clone, Debug, Default)]
pub struct FakeManager {
    pub server: Arc<Server>,
}

async fn sleep_ms(ms: &AtomicU64) {
    let ms = ms.load(SeqCst);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

impl Manager for FakeManager {
    type Connection = FakeConn;
    type Error = FakeError;

    async fn connect(&self) -> Result<FakeConn, FakeError> {
        let s = &self.server;
        s.connect_attempts.fetch_add(1, SeqCst);
        let now = s.connecting_now.fetch_add(1, SeqCst) + 1;
        s.max_connecting_seen.fetch_max(now, SeqCst);
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let _leave = Leave(&s.connecting_now);
        sleep_ms(&s.connect_ms).await;
        if s.down.load(SeqCst) {
            return Err(FakeError::Refused);
        }
        s.connects.fetch_add(1, SeqCst);
        Ok(FakeConn {
            id: s.next_id.fetch_add(1, SeqCst) + 1,
            generation: s.generation.load(SeqCst),
            in_tx: false,
            busy: false,
            server: s.clone(),
        })
    }

    async fn is_valid(&self, conn: &mut FakeConn) -> Result<(), FakeError> {
        self.server.pings.fetch_add(1, SeqCst);
        sleep_ms(&self.server.ping_ms).await;
        if conn.generation != self.server.generation.load(SeqCst) || self.server.down.load(SeqCst) {
            return Err(FakeError::Disconnected);
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut FakeConn) -> Result<(), FakeError> {
        self.server.resets.fetch_add(1, SeqCst);
        sleep_ms(&self.server.reset_ms).await;
        if self.server.fail_reset.load(SeqCst) {
            return Err(FakeError::Query);
        }
        conn.in_tx = false;
        Ok(())
    }

    fn needs_reset(&self, conn: &FakeConn) -> bool {
        conn.in_tx
    }

    fn health(&self, conn: &mut FakeConn) -> Health {
        if conn.severed() {
            Health::Disconnected
        } else if conn.busy {
            Health::Broken
        } else {
            Health::Ok
        }
    }

    fn is_disconnect(&self, error: &FakeError) -> bool {
        matches!(error, FakeError::Disconnected)
    }

    async fn close(&self, _conn: FakeConn) {
        self.server.closes.fetch_add(1, SeqCst);
    }
}

pub fn config() -> queuepool::ConfigBuilder {
    PoolConfig::builder()
}

pub async fn pool(config: queuepool::ConfigBuilder) -> (Pool<FakeManager>, Arc<Server>) {
    let manager = FakeManager::default();
    let server = manager.server.clone();
    let pool = Pool::new(manager, config.build().expect("valid test config"))
        .await
        .expect("pool builds");
    (pool, server)
}

/// Lets spawned tasks (resets, closes, maintenance) run without advancing time much.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Captures the log lines emitted on this thread while the guard lives.
///
/// One global subscriber for the whole test binary, writing to a per-thread buffer:
/// with a thread-local default subscriber (`set_default`), tracing's callsite interest
/// cache races with tests on other threads and events get lost now and then.
pub struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<String>>>>> = const { std::cell::RefCell::new(None) };
}

struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(lines) = c.borrow().as_ref() {
                lines
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(buf).into_owned());
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn capture() -> Self {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("the test binary's only subscriber");
        });
        let lines = Arc::new(Mutex::new(Vec::new()));
        CAPTURE.with(|c| *c.borrow_mut() = Some(lines.clone()));
        Logs { lines }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn all(&self) -> String {
        self.lines.lock().unwrap().concat()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}
