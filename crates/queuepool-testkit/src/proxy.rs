//! [`FaultProxy`]: a TCP proxy between the pool and the server that injects faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::TestkitError;

/// What the proxy does; switch at any time with [`FaultProxy::set_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultMode {
    /// Forward bytes both ways.
    PassThrough,
    /// Forward every chunk after this delay (each direction).
    Latency(Duration),
    /// Accept new connections and reset them at once (the server looks down); open
    /// connections keep working.
    RefuseNew,
    /// Accept new connections and never answer; open connections stop forwarding in
    /// both directions (bytes are read and dropped, so the sender sees no error): a
    /// network path that went silent.
    Blackhole,
}

struct Shared {
    mode: Mutex<FaultMode>,
    reset_gen: watch::Sender<u64>,
    open: AtomicUsize,
    accepted: AtomicUsize,
}

impl Shared {
    fn mode(&self) -> FaultMode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A TCP proxy on `127.0.0.1:<random port>` forwarding to `target`, controlled from the
/// test. Stops (and resets every connection) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &self.shared.mode())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a pass-through proxy to `target`.
    pub async fn start(target: SocketAddr) -> Result<FaultProxy, TestkitError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(TestkitError::io("binding the proxy"))?;
        let addr = listener
            .local_addr()
            .map_err(TestkitError::io("reading the proxy address"))?;
        let (reset_gen, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            mode: Mutex::new(FaultMode::PassThrough),
            reset_gen,
            open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Ok(FaultProxy {
            addr,
            target,
            shared,
            accept_task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The current mode.
    pub fn mode(&self) -> FaultMode {
        self.shared.mode()
    }

    /// Switches the mode; applies to the next chunk of every open connection and to
    /// every new connection.
    pub fn set_mode(&self, mode: FaultMode) {
        *self.shared.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        debug!(?mode, "fault proxy mode");
    }

    /// Resets (TCP RST) every open connection, both sides.
    pub fn reset_all(&self) {
        self.shared.reset_gen.send_modify(|g| *g += 1);
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted.load(Ordering::Acquire)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.reset_all();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of file descriptors or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::AcqRel);
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.open.fetch_add(1, Ordering::AcqRel);
            handle(client, target, &shared).await;
            shared.open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

fn rst(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn handle(mut client: TcpStream, target: SocketAddr, shared: &Shared) {
    let mut reset = shared.reset_gen.subscribe();
    let _ = client.set_nodelay(true);
    match shared.mode() {
        FaultMode::RefuseNew => {
            rst(&client);
            return;
        }
        FaultMode::Blackhole => {
            let mut sink = [0u8; 4096];
            tokio::select! {
                _ = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} } => {}
                _ = reset.changed() => rst(&client),
            }
            return;
        }
        FaultMode::PassThrough | FaultMode::Latency(_) => {}
    }
    let mut server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            rst(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let was_reset = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        tokio::select! {
            _ = async { tokio::join!(pump(&mut cr, &mut sw, shared), pump(&mut sr, &mut cw, shared)) } => false,
            _ = reset.changed() => true,
        }
    };
    if was_reset {
        rst(&client);
        rst(&server);
    }
}

async fn pump(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // Pass the end of stream on; the other direction finishes by itself.
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        match shared.mode() {
            FaultMode::Blackhole => continue,
            FaultMode::Latency(d) => tokio::time::sleep(d).await,
            FaultMode::PassThrough | FaultMode::RefuseNew => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
