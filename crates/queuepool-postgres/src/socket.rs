//! Opening the socket: TCP (with keepalives and `TCP_USER_TIMEOUT`) or a Unix socket.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connected socket, before TLS.
#[derive(Debug)]
pub(crate) enum RawStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Socket options copied from the tokio-postgres config.
#[derive(Debug, Clone)]
pub(crate) struct SocketOptions {
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) tcp_user_timeout: Option<Duration>,
    pub(crate) keepalive: Option<TcpKeepalive>,
}

impl SocketOptions {
    pub(crate) fn from_config(pg: &tokio_postgres::Config) -> Self {
        let keepalive = pg.get_keepalives().then(|| {
            let mut k = TcpKeepalive::new().with_time(pg.get_keepalives_idle());
            if let Some(interval) = pg.get_keepalives_interval() {
                k = k.with_interval(interval);
            }
            if let Some(retries) = pg.get_keepalives_retries() {
                k = k.with_retries(retries);
            }
            k
        });
        SocketOptions {
            connect_timeout: pg.get_connect_timeout().copied(),
            tcp_user_timeout: pg.get_tcp_user_timeout().copied(),
            keepalive,
        }
    }
}

async fn bounded<T>(
    timeout: Option<Duration>,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connection attempt timed out after {t:?} (connect_timeout)"),
            ))
        }),
        None => fut.await,
    }
}

pub(crate) async fn connect_tcp(
    addr: std::net::SocketAddr,
    opts: &SocketOptions,
) -> io::Result<RawStream> {
    let stream = bounded(opts.connect_timeout, TcpStream::connect(addr)).await?;
    stream.set_nodelay(true)?;
    let sock = SockRef::from(&stream);
    if let Some(t) = opts.tcp_user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    if let Some(k) = &opts.keepalive {
        sock.set_tcp_keepalive(k)?;
    }
    Ok(RawStream::Tcp(stream))
}

pub(crate) async fn connect_unix(
    dir: &Path,
    port: u16,
    opts: &SocketOptions,
) -> io::Result<RawStream> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let stream = bounded(opts.connect_timeout, UnixStream::connect(path)).await?;
    Ok(RawStream::Unix(stream))
}

impl AsyncRead for RawStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            RawStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            RawStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            RawStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            RawStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    /// One non-empty buffer (a query's message, or its one TLS record: the common
    /// case) goes out with `send`; several (TLS records queued by a large write) with
    /// one `writev`. Forwarding every call as `writev`, as before, cost measurably more
    /// client CPU per query over TLS than tokio-postgres's own socket, which sends
    /// (docs/BENCHMARKS.md, pg group).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            return self.poll_write(cx, only);
        }
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            RawStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            RawStream::Tcp(s) => s.is_write_vectored(),
            RawStream::Unix(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Both paths of `poll_write_vectored` (one non-empty buffer: `send`; several:
    /// `writev`) write what they report, in order, and report what they wrote.
    #[tokio::test]
    async fn vectored_writes_deliver_every_buffer_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut raw = RawStream::Tcp(client.unwrap());
        let (mut peer, _) = server.unwrap();
        assert!(raw.is_write_vectored());

        let one = [
            io::IoSlice::new(b""),
            io::IoSlice::new(b"query"),
            io::IoSlice::new(b""),
        ];
        assert_eq!(raw.write_vectored(&one).await.unwrap(), 5);
        let mut several = vec![io::IoSlice::new(b"rec1"), io::IoSlice::new(b"rec2")];
        let mut left = 8;
        while left > 0 {
            let n = raw.write_vectored(&several).await.unwrap();
            assert!(n > 0 && n <= left);
            left -= n;
            io::IoSlice::advance_slices(&mut several.as_mut_slice(), n);
        }
        assert_eq!(
            raw.write_vectored(&[io::IoSlice::new(b"")]).await.unwrap(),
            0
        );
        raw.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"queryrec1rec2");
    }
}
