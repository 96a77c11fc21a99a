//! Test fixtures for queuepool (not published).
//!
//! - [`TestDb`]: a uniquely named database per test on `DATABASE_URL` (default
//!   [`DEFAULT_DATABASE_URL`]), with a unique `application_name`, dropped afterwards,
//!   so tests run in parallel against one server and count only their own connections.
//! - [`EphemeralCluster`]: `initdb` in a temporary directory, random port, SCRAM
//!   passwords, TLS with a self-signed certificate for `localhost`; stop/start for
//!   restart tests.
//! - [`FaultProxy`]: a TCP proxy that passes through, delays, refuses new connections,
//!   resets open ones or blackholes, switched from the test while it runs.
//! - [`ReplicaSet`]: an ephemeral primary and N streaming standbys (`pg_basebackup
//!   -R`), each behind its own [`FaultProxy`]: promote, stop, kill, blackhole a node,
//!   delay a standby's replay (`recovery_min_apply_delay`), wait for catch-up.
//! - [`PgBouncer`]: PgBouncer in transaction mode on a free port, sized by
//!   [`PgBouncerConfig`], with its admin console.
//!
//! ```no_run
//! # async fn t() -> Result<(), queuepool_testkit::TestkitError> {
//! let db = queuepool_testkit::TestDb::create().await?;
//! let manager = db.manager()?; // connections carry db.application_name()
//! assert_eq!(db.count_connections(db.application_name()).await?, 0);
//! # Ok(()) }
//! ```

mod cluster;
mod error;
mod pgbouncer;
mod proxy;
mod replication;
mod testdb;
mod util;

pub use cluster::EphemeralCluster;
pub use error::TestkitError;
pub use pgbouncer::{PgBouncer, PgBouncerConfig};
pub use proxy::{FaultMode, FaultProxy};
pub use replication::ReplicaSet;
pub use testdb::{DEFAULT_DATABASE_URL, TestDb, database_url, with_params};
pub use util::{free_port, pg_bin_dir, unique_name};
