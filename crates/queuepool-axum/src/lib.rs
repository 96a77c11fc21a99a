//! axum integration for the [`queuepool`] connection pool.
//!
//! This is the Rust form of the `get_db` dependency of a FastAPI + SQLAlchemy app:
//! a handler that takes a [`Db<M>`] argument borrows one pooled connection for the
//! duration of the request. The connection goes back to the pool when the handler's
//! future is dropped: when the handler returns, when it panics, and when the client
//! disconnects and hyper drops the request. There is no code path that forgets it,
//! because the return is the `Drop` of [`queuepool::PooledConn`].
//!
//! The pool lives in the router's state; any state `S` with `Pool<M>: FromRef<S>` works
//! (the pool itself, or an `AppState` struct with a `FromRef` impl).
//!
//! * [`Db`]: the extractor. Its rejection is a [`DbError`], so a saturated pool answers
//!   `503 Service Unavailable` with `Retry-After` and a JSON body.
//! * [`DbRead`]: the extractor for reads, routed by the state's [`Reads`]: with
//!   `queuepool_postgres::ReadWrite` (feature `postgres`) a read goes to a standby
//!   that has replayed the client's own writes (the [`READ_AFTER`] token its last write
//!   returned), else to the primary; with a plain pool ([`Reads::single`]) it is a
//!   [`Db`]. A read that loses its connection goes again elsewhere ([`DbRead::retry`]).
//! * [`DbError`]: maps pool and driver errors to status codes in one place, shows the
//!   client a safe message and logs the details (never the password or the SQL).
//! * [`pool_routes`]: `GET /pool` (the SQLAlchemy status line and every counter, as
//!   JSON) and `GET /metrics` (Prometheus text, from a [`PrometheusHandle`] whose
//!   recorder the binary installs: a library never installs one).
//! * [`health_routes`]: `GET /health/live` (the process answers) and `GET /health/ready`
//!   (the pool can lend a connection), for load balancers and orchestrators.
//! * [`record_http_metrics`]: a middleware counting and timing requests by route and
//!   status; [`describe_metrics`] gives every metric its `# HELP` line.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use queuepool::{Manager, Pool};
//! use queuepool_axum::{Db, DbError, pool_routes};
//!
//! async fn handler<M: Manager>(db: Db<M>) -> Result<&'static str, DbError> {
//!     let _conn: &M::Connection = &db; // run queries here
//!     Ok("ok")
//! }
//!
//! fn app<M: Manager>(pool: Pool<M>) -> Router {
//!     Router::new()
//!         .route("/", get(handler::<M>))
//!         .merge(pool_routes::<M, Pool<M>>(None))
//!         .with_state(pool)
//! }
//! ```
//!
//! [`PrometheusHandle`]: metrics_exporter_prometheus::PrometheusHandle

pub mod dashboard;
mod error;
mod extract;
mod read;
mod routes;

pub use error::{DbError, RETRY_AFTER_SECS, json_error};
pub use extract::Db;
pub use read::{
    BoxFuture, DbRead, READ_AFTER, ReadAfter, ReadRoute, ReadRouter, Reads, RoutedConn,
};
pub use routes::{
    READY_TIMEOUT, describe_metrics, health_routes, live, pool_report, pool_routes, ready,
    record_http_metrics,
};
