//! A transparent stream wrapper that reads the backend's `ReadyForQuery` messages.
//!
//! tokio-postgres keeps the transaction status that PostgreSQL reports after every
//! query (`ReadyForQuery`: idle, in a transaction, in a failed transaction) to itself.
//! The pool needs it to skip the `ROLLBACK` when a connection comes back clean and to
//! roll back only when it does not (an unconditional `ROLLBACK` costs a round trip and
//! makes the server log `WARNING: there is no transaction in progress` on every
//! return). [`Sniff`] sits under the driver, on the plaintext side of TLS, follows the
//! message framing (a type byte and a 4-byte big-endian length) of what it reads, and
//! stores the status byte of each `ReadyForQuery` in a shared [`WireState`]. It never
//! changes, buffers or delays a byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsStream};

/// The transaction status the server reported in its last `ReadyForQuery` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block (queries are rejected until `ROLLBACK`).
    Failed,
    /// No `ReadyForQuery` seen yet.
    Unknown,
}

/// Shared between the stream (written by the driver task) and the connection handle.
#[derive(Debug, Default)]
pub(crate) struct WireState {
    status: AtomicU8,
}

impl WireState {
    pub(crate) fn status(&self) -> TxStatus {
        match self.status.load(Ordering::Acquire) {
            b'I' => TxStatus::Idle,
            b'T' => TxStatus::InTransaction,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Unknown,
        }
    }

    fn set(&self, byte: u8) {
        self.status.store(byte, Ordering::Release);
    }
}

/// What [`Sniff`] does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Pass through without looking (TLS ciphertext).
    Off,
    /// The next byte is the single-byte answer to an `SSLRequest`: `S` means TLS
    /// follows (switch off), `N` means plaintext messages follow (switch to framed).
    SslAnswer,
    /// Parse backend message framing.
    Framed,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Sniff<S> {
    inner: S,
    state: Arc<WireState>,
    mode: Mode,
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
    in_ready: bool,
    /// For cancel requests: `shutdown` completes only at the server's end of stream.
    drain_on_shutdown: bool,
    shut: bool,
}

impl<S> Sniff<S> {
    pub(crate) fn new(inner: S, state: Arc<WireState>, mode: Mode) -> Self {
        Sniff {
            inner,
            state,
            mode,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            in_ready: false,
            drain_on_shutdown: false,
            shut: false,
        }
    }

    /// A stream for a cancel request. tokio-postgres writes the request and shuts the
    /// stream down without waiting for the server; the server closes the connection
    /// only once it has signalled the backend. So here `shutdown` also reads (and
    /// drops) until the end of stream: when the cancel request's future completes,
    /// the cancel has reached the backend, and a query sent after it is not hit by it.
    pub(crate) fn for_cancel(inner: S, state: Arc<WireState>) -> Self {
        let mut sniff = Sniff::new(inner, state, Mode::Off);
        sniff.drain_on_shutdown = true;
        sniff
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.mode {
                Mode::Off => return,
                Mode::SslAnswer => {
                    self.mode = if bytes[0] == b'N' {
                        Mode::Framed
                    } else {
                        Mode::Off
                    };
                    bytes = &bytes[1..];
                }
                Mode::Framed if self.body_left > 0 => {
                    let take = self.body_left.min(bytes.len());
                    if self.in_ready && self.body_left == 1 {
                        // ReadyForQuery has a one-byte body: the status.
                        self.state.set(bytes[0]);
                    }
                    self.body_left -= take;
                    bytes = &bytes[take..];
                }
                Mode::Framed => {
                    let take = (5 - self.header_len).min(bytes.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&bytes[..take]);
                    self.header_len += take;
                    bytes = &bytes[take..];
                    if self.header_len == 5 {
                        self.header_len = 0;
                        let len = u32::from_be_bytes([
                            self.header[1],
                            self.header[2],
                            self.header[3],
                            self.header[4],
                        ]) as usize;
                        // The length counts itself; a length below 4 is a protocol
                        // violation the driver reports; stop looking rather than guess.
                        if len < 4 {
                            self.mode = Mode::Off;
                            return;
                        }
                        self.body_left = len - 4;
                        self.in_ready = self.header[0] == b'Z' && self.body_left == 1;
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && this.mode != Mode::Off
        {
            this.observe(&buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.shut {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.shut = true;
        }
        if !this.drain_on_shutdown {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => {}
                // A reset is an end of stream too.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: TlsStream + Unpin> TlsStream for Sniff<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn feed(mode: Mode, chunks: &[&[u8]]) -> TxStatus {
        let state = Arc::new(WireState::default());
        let mut s = Sniff::new((), state.clone(), mode);
        for c in chunks {
            s.observe(c);
        }
        state.status()
    }

    #[test]
    fn tracks_the_last_ready_for_query_status() {
        let mut bytes = msg(b'C', b"BEGIN\0");
        bytes.extend(msg(b'Z', b"T"));
        assert_eq!(feed(Mode::Framed, &[&bytes]), TxStatus::InTransaction);
        bytes.extend(msg(b'E', b"SERROR\0C42P01\0\0"));
        bytes.extend(msg(b'Z', b"E"));
        assert_eq!(feed(Mode::Framed, &[&bytes]), TxStatus::Failed);
        bytes.extend(msg(b'C', b"ROLLBACK\0"));
        bytes.extend(msg(b'Z', b"I"));
        assert_eq!(feed(Mode::Framed, &[&bytes]), TxStatus::Idle);
    }

    #[test]
    fn framing_survives_any_chunking() {
        let mut bytes = msg(b'D', &[b'Z'; 300]); // a data row full of 'Z' bytes
        bytes.extend(msg(b'Z', b"T"));
        bytes.extend(msg(b'D', b"Z\0\0\0\x05I"));
        for split in 0..bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(
                feed(Mode::Framed, &[a, b]),
                TxStatus::InTransaction,
                "split {split}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(feed(Mode::Framed, &singles), TxStatus::InTransaction);
    }

    #[test]
    fn ssl_answer_n_switches_to_framed_and_s_switches_off() {
        let mut plain = vec![b'N'];
        plain.extend(msg(b'Z', b"I"));
        assert_eq!(feed(Mode::SslAnswer, &[&plain]), TxStatus::Idle);
        let mut tls = vec![b'S'];
        tls.extend(msg(b'Z', b"I"));
        assert_eq!(feed(Mode::SslAnswer, &[&tls]), TxStatus::Unknown);
        assert_eq!(feed(Mode::Off, &[&msg(b'Z', b"I")]), TxStatus::Unknown);
    }
}
