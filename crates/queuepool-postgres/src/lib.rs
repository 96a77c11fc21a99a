//! PostgreSQL for [`queuepool`]: a [`Manager`](queuepool::Manager) over
//! [tokio-postgres](tokio_postgres) with rustls for TLS.
//!
//! ```no_run
//! use queuepool::{Pool, PoolConfig};
//! use queuepool_postgres::PgManager;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = PgManager::from_url("postgres://app:secret@db.internal/shop?sslrootcert=system")?;
//! let pool = Pool::new(manager, PoolConfig::builder().pool_size(8).build()?).await?;
//! let conn = pool.get().await?;
//! let row = conn.query_typed_one("SELECT $1::int4 + 1", &[(&41i32, tokio_postgres::types::Type::INT4)]).await?;
//! assert_eq!(row.get::<_, i32>(0), 42);
//! # Ok(()) }
//! ```
//!
//! # Connection strings
//! libpq's URL (`postgres://user:pass@host:port/db?key=value`) and key-value
//! (`host=a,b port=5432 user=app target_session_attrs=read-write`) forms, parsed by
//! tokio-postgres (multi-host, `hostaddr`, `connect_timeout`, `keepalives*`,
//! `tcp_user_timeout`, `load_balance_hosts`, `channel_binding`, Unix socket directories
//! as hosts), plus what this crate adds:
//! - `target_session_attrs` = `any` | `read-write` | `read-only` | `primary` |
//!   `standby` | `prefer-standby` with libpq's meaning ([`TargetSessionAttrs`]).
//! - `sslmode` = `disable` | `prefer` (default) | `require` | `verify-ca` | `verify-full`
//!   with libpq's meaning ([`SslMode`]). `verify-ca`/`verify-full` need
//!   `sslrootcert=<pem file>`, or `sslrootcert=system` for the system store (which
//!   implies `verify-full`, as libpq 16); without it they are refused at parse time,
//!   never silently verified against the system store.
//! - `application_name` defaults to `queuepool`, so `pg_stat_activity` shows the pool.
//!
//! SCRAM-SHA-256 (with channel binding over TLS) and MD5 come from tokio-postgres.
//!
//! # Several hosts (failover)
//! As libpq: the hosts are tried in order (shuffled with `load_balance_hosts=random`),
//! every address a host name resolves to is tried, `connect_timeout` bounds each
//! address's attempt (TCP, TLS, authentication, role check) separately, a server that
//! does not match `target_session_attrs` is skipped, and an authentication failure
//! stops the list. Without `connect_timeout` in the string, tell the manager the pool's
//! [`pool_connect_timeout`](PgManager::pool_connect_timeout) so each host gets a share
//! of it: a silent first host must not use up the whole wait.
//!
//! Unlike libpq, the manager remembers (for [`host_recheck`](PgManager::host_recheck),
//! default 10 s) which hosts were silent or unreachable and which role each had: known
//! matches are tried first, silent hosts last (also a host one of whose queries ran past
//! [`PgConnection::timeout`], until it answers a connection again). A ping that times out
//! ([`PgManager::ping_timeout`]) marks its host silent, and every idle connection opened
//! to that host before is then reported broken by `health`, so the pool closes them
//! instead of lending them (or pinging each in turn). [`PgConnection::host`] tells
//! which host a connection went to.
//!
//! # What the pool gets
//! - `is_valid`: the empty query (one round trip), bounded by
//!   [`PgManager::ping_timeout`].
//! - `reset`: nothing at all when the borrower's requests all completed and the server
//!   reported no open transaction: [`PgConnection`] counts each request from send to
//!   the server's `ReadyForQuery`, and the status byte of that message is read from the
//!   wire by a pass-through wrapper under the driver ([`TxStatus`]). An open or failed
//!   transaction gets `ROLLBACK` only. A request whose future was dropped before its
//!   end (abandoned) gets a cancel request, then one empty query that drains the
//!   driver's queue (requests run in order), bounded by [`PgManager::ping_timeout`];
//!   if it does not settle, the connection is discarded. A failed request, or use of
//!   the raw client through `Deref`, costs that one empty query (no cancel).
//!   [`ResetMode::DiscardAll`] also resets the session (all of `DISCARD ALL` except
//!   `DEALLOCATE ALL`).
//! - `health`: [`Health::Disconnected`](queuepool::Health) when the socket is closed,
//!   `Broken` after a [`PgConnection::timeout`].
//! - `is_disconnect`: closed connections, SQLSTATE class 08, 57P01 (admin shutdown),
//!   57P02 (crash shutdown), 57P03 (cannot connect now).
//!
//! # PgBouncer (transaction mode)
//! tokio-postgres' `query`/`execute` with a `&str` prepare a *named* statement in one
//! round trip and bind it in a second; PgBouncer may run the two on different server
//! connections (`prepared statement "s3" does not exist`). Behind PgBouncer use
//! `query_typed` (unnamed statement, parameter types given, one round trip) or the
//! simple protocol. Direct connections can keep named statements per connection with
//! [`PgConnection::prepare_cached`] (opt-in, [`PgManager::statement_cache_capacity`]).
//!
//! Custom types (enums, composites, domains, arrays of them) behind PgBouncer in
//! transaction mode: tokio-postgres resolves an unknown type OID by running its own
//! *named* statements (`typeinfo`), prepared once per client connection and cached in
//! the `Client`. Behind PgBouncer (before 1.21, or with `max_prepared_statements = 0`)
//! the next lookup may run on a server connection that never saw them and fail with
//! `prepared statement "sN" does not exist`; `query_typed` does not help, since the
//! lookup happens when a result or parameter has such a type. What works there:
//! - send and read such values as text: `query_typed("SELECT $1::text::mood", &[(&"ok",
//!   Type::TEXT)])` and `SELECT mood_col::text`, or the simple protocol;
//! - PgBouncer 1.21 or later with `max_prepared_statements` > 0, which re-prepares
//!   protocol-level named statements on whichever server connection it uses.
//!
//! Both are tested against PgBouncer 1.18 in transaction mode (`tests/pgbouncer.rs`:
//! an enum in a typed query fails with `prepared statement "sN" does not exist` once
//! lookups of several client connections mix server connections; as text and over the
//! simple protocol it never fails under the same load).
//!
//! (What the pool itself does is safe there: pings and resets use the simple
//! protocol, and [`ResetMode::DiscardAll`] does not deallocate statements, so direct
//! connections keep their type lookups across resets.)
//!
//! # Timeouts
//! The pool bounds connecting (`connect_timeout`). A query on a connection whose path
//! went silent (blackholed) is bounded by [`PgConnection::timeout`]; server-side,
//! [`PgManager::statement_timeout`]; kernel-side, `tcp_user_timeout` and keepalives.

mod config;
mod connect;
mod connection;
mod error;
mod hosts;
mod manager;
mod routing;
mod socket;
mod tls;
mod tracked;
mod wire;

pub use config::{DEFAULT_APPLICATION_NAME, SslMode, TargetSessionAttrs};
pub use connection::PgConnection;
pub use error::PgError;
pub use manager::{PgManager, ResetMode};
pub use routing::{Lsn, ReadConn, ReadWrite, Route, RoutingConfig, RoutingStats, StandbyStats};
pub use tracked::{
    PgCopyInSink, PgCopyOutStream, PgRowStream, PgSimpleQueryStream, PgTransaction, Tracked,
};
pub use wire::TxStatus;

pub use tokio_postgres;
