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

    /// Follows the framing of what was just read. Every read of a driver's buffer
    /// goes through here, so the common case is cheap: a read that holds whole
    /// messages is walked header to header, with no copy and no per-byte work; only a
    /// header split between two reads is gathered in `header`.
    fn observe(&mut self, mut bytes: &[u8]) {
        if self.mode == Mode::SslAnswer {
            let Some((&answer, rest)) = bytes.split_first() else {
                return;
            };
            self.mode = if answer == b'N' {
                Mode::Framed
            } else {
                Mode::Off
            };
            bytes = rest;
        }
        if self.mode != Mode::Framed {
            return;
        }
        loop {
            // The rest of a body begun in an earlier read.
            if self.body_left > 0 {
                let Some(next) = bytes.get(self.body_left..) else {
                    self.body_left -= bytes.len();
                    return;
                };
                if self.in_ready {
                    // ReadyForQuery has a one-byte body: the status.
                    self.state.set(bytes[0]);
                }
                bytes = next;
                self.body_left = 0;
            }
            // Whole headers (the common case).
            if self.header_len == 0 {
                while let Some((header, rest)) = bytes.split_first_chunk::<5>() {
                    let Some((body, ready)) = read_header(header) else {
                        self.mode = Mode::Off;
                        return;
                    };
                    let Some(next) = rest.get(body..) else {
                        self.body_left = body - rest.len();
                        self.in_ready = ready;
                        return;
                    };
                    if ready {
                        self.state.set(rest[0]);
                    }
                    bytes = next;
                }
            }
            if bytes.is_empty() {
                return;
            }
            // A header split between reads: gather it.
            while self.header_len < 5 {
                let Some((&byte, rest)) = bytes.split_first() else {
                    return;
                };
                self.header[self.header_len] = byte;
                self.header_len += 1;
                bytes = rest;
            }
            self.header_len = 0;
            let Some((body, ready)) = read_header(&self.header) else {
                self.mode = Mode::Off;
                return;
            };
            self.body_left = body;
            self.in_ready = ready;
        }
    }
}

/// A message's header (type byte, then a 4-byte big-endian length that counts itself):
/// its body length, and whether it is a ReadyForQuery (`Z` with a one-byte body, the
/// status). `None` for a length below 4, a protocol violation the driver reports: the
/// sniffer stops looking rather than guess.
fn read_header(header: &[u8; 5]) -> Option<(usize, bool)> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let body = len.checked_sub(4)?;
    Some((body, header[0] == b'Z' && body == 1))
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

    /// Cut in two at every byte, `bytes` leaves the sniffer at `status`.
    fn every_split_ends_in(bytes: &[u8], status: TxStatus) {
        for split in 0..bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(feed(Mode::Framed, &[a, b]), status, "split {split}");
        }
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
        every_split_ends_in(&bytes, TxStatus::InTransaction);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(feed(Mode::Framed, &singles), TxStatus::InTransaction);
    }

    /// The status after the first `n` bytes, by a plain walk of the whole stream: the
    /// one-byte body of the last complete ReadyForQuery (`Z`, length 5) within them.
    fn reference(bytes: &[u8], n: usize) -> TxStatus {
        let (mut at, mut status) = (0, TxStatus::Unknown);
        while at + 5 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            if bytes[at] == b'Z' && len == 5 && at + 6 <= n {
                let state = WireState::default();
                state.set(bytes[at + 5]);
                status = state.status();
            }
            at += 1 + len;
        }
        status
    }

    #[test]
    fn the_status_is_exact_after_every_read_however_the_stream_is_cut() {
        // Messages of every shape the fast path and the gathering path meet: empty
        // bodies, bodies holding fake headers, a 'Z' whose body is not one byte, long
        // rows, ReadyForQuery back to back.
        let mut bytes = Vec::new();
        for (i, status) in [b'I', b'T', b'E', b'T', b'I', b'E', b'I']
            .into_iter()
            .enumerate()
        {
            bytes.extend(msg(b'1', b""));
            bytes.extend(msg(b'D', b"Z\0\0\0\x05T"));
            bytes.extend(msg(b'Z', b"TI"));
            bytes.extend(msg(b'D', &vec![b'Z'; 7 + 97 * i]));
            bytes.extend(msg(b'C', b"SELECT 1\0"));
            bytes.extend(msg(b'Z', &[status]));
            bytes.extend(msg(b'Z', &[status]));
        }
        // Reads cut by a fixed pseudo-random sequence of lengths (1..=40), many times.
        let mut seed: u32 = 12345;
        for round in 0..300 {
            let state = Arc::new(WireState::default());
            let mut s = Sniff::new((), state.clone(), Mode::Framed);
            let mut at = 0;
            while at < bytes.len() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let cut = if round == 0 {
                    1
                } else {
                    1 + (seed >> 16) as usize % 40
                };
                let end = (at + cut).min(bytes.len());
                s.observe(&bytes[at..end]);
                at = end;
                assert_eq!(
                    state.status(),
                    reference(&bytes, at),
                    "round {round}, at {at}"
                );
                assert_eq!(s.mode, Mode::Framed, "round {round}, at {at}");
            }
        }
        // All at once, too.
        assert_eq!(
            feed(Mode::Framed, &[&bytes]),
            reference(&bytes, bytes.len())
        );
    }

    #[test]
    fn a_length_below_four_stops_the_sniffer_wherever_the_header_is_cut() {
        let mut bytes = msg(b'Z', b"T");
        bytes.extend([b'C', 0, 0, 0, 3]);
        bytes.extend(msg(b'Z', b"I"));
        every_split_ends_in(&bytes, TxStatus::InTransaction);
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
