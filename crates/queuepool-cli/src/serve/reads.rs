//! Reads on standbys (`--read-url`): where the idempotent reads go, their retry on
//! another server, and the read-your-writes token the writes return.
//!
//! Without `--read-url` every read runs on the primary's pool ([`Reads::single`]) and
//! the writes return no token. With it, [`queuepool_postgres::ReadWrite`] routes each
//! read (`GET /items`, `GET /items/{id}`) to a standby that has replayed the client's
//! writes, else to the primary, and each write's response carries the token
//! ([`READ_AFTER`](queuepool_axum::READ_AFTER), `x-read-after`) that the client sends
//! back. `GET /health` stays on the primary: it says whether writes can work.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::Response;
use queuepool::Pool;
use queuepool_axum::{Db, DbRead, Reads};
use queuepool_postgres::{PgManager, ReadWrite, RoutingConfig};

use super::AppState;
use super::error::AppError;
use super::handlers::bounded;
use super::retry::{Read, Retries};
use crate::config::ServeConfig;
use crate::error::CliError;
use crate::store::Store;

/// The read side of a running service: the [`Reads`] the handlers use, and the
/// standbys' pools to close at shutdown.
pub struct ReadSide<M: Store> {
    /// Where reads go.
    pub reads: Reads<M>,
    routing: Option<ReadWrite>,
}

impl<M: Store> ReadSide<M> {
    /// Every read on `pool`.
    pub fn single(pool: &Pool<M>) -> ReadSide<M> {
        ReadSide {
            reads: Reads::single(pool.clone()),
            routing: None,
        }
    }

    /// Stops the standby probes and closes the standbys' pools (the primary's pool is
    /// closed by the caller), each waiting at most `grace` for lent connections.
    ///
    /// # Cancel safety
    /// Cancel safe: the pools are closed from the first poll.
    pub async fn close(&self, grace: Duration) {
        if let Some(routing) = &self.routing {
            routing.close(grace).await;
            let stats = routing.stats();
            tracing::info!(
                "read routing closed: {} reads on the primary ({} of them for a token no \
                 standby had replayed), {}",
                stats.primary_reads,
                stats.primary_reads_for_freshness,
                stats
                    .standbys
                    .iter()
                    .map(|s| format!("{} on {}", s.reads, s.label))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
}

/// The read side of a PostgreSQL service: [`ReadWrite`] over the primary's `pool` and
/// one pool per host of `--read-url` (sized as the primary's), when it is set.
pub async fn postgres(
    pool: &Pool<PgManager>,
    config: &ServeConfig,
) -> Result<ReadSide<PgManager>, CliError> {
    let Some(url) = &config.read_url else {
        return Ok(ReadSide::single(pool));
    };
    let manager = PgManager::from_url(url.expose()).map_err(|e| CliError::Config {
        key: "read_url".to_owned(),
        message: e.to_string(),
    })?;
    let routing = RoutingConfig::default().with_max_lag(config.max_replica_lag);
    let mut pool_config = config.pool.clone();
    pool_config.name = "read".to_owned();
    let rw = ReadWrite::with_standbys(pool.clone(), manager.split_hosts(), pool_config, routing)
        .await
        .map_err(CliError::Pool)?;
    tracing::info!(
        "reads on {} standby(s): {} (max replica lag {:.1} s); a read goes to one that has \
         replayed the client's writes (x-read-after), else to the primary",
        rw.standby_pools().count(),
        rw.standby_pools()
            .map(|p| p.manager().host_label())
            .collect::<Vec<_>>()
            .join(", "),
        config.max_replica_lag.as_secs_f64()
    );
    Ok(ReadSide {
        reads: Reads::new(rw.clone()),
        routing: Some(rw),
    })
}

/// The [`Reads`] of the app: the one [`router_with_reads`](super::router_with_reads)
/// put in the request's extensions, else every read on the state's pool.
#[derive(Debug)]
pub struct ReadsOf<M: Store>(pub Reads<M>);

impl<M: Store> FromRequestParts<AppState<M>> for ReadsOf<M> {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<M>,
    ) -> Result<Self, Infallible> {
        Ok(ReadsOf(
            parts
                .extensions
                .get::<Reads<M>>()
                .cloned()
                .unwrap_or_else(|| Reads::single(state.pool.clone())),
        ))
    }
}

/// [`finish`](super::handlers::finish) for a routed read: a timeout discards the
/// connection, another error is reported to the pool and the router.
fn finish<M: Store, T>(
    outcome: Result<Result<T, M::Error>, tokio::time::error::Elapsed>,
    db: &mut DbRead<M>,
    limit: Duration,
) -> Result<T, AppError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) if M::is_query_timeout(&error) => {
            DbRead::invalidate(db);
            Err(AppError::QueryTimeout(limit))
        }
        Ok(Err(error)) => Err(DbRead::error(db, error).into()),
        Err(_) => {
            DbRead::invalidate(db);
            Err(AppError::QueryTimeout(limit))
        }
    }
}

/// Runs `query` on `db`; while it loses its connection, runs it again on another
/// server (a standby that qualifies, else the primary), within what is left of
/// `limit`, at most `max_retries` times ([`retry::read`](super::retry) for routed
/// reads, which says why once is not enough).
pub(crate) async fn read<M: Store, R: Read<M>>(
    mut db: DbRead<M>,
    query: R,
    limit: Duration,
    max_retries: usize,
) -> Result<R::Output, AppError> {
    let mut retries = Retries::new(limit, max_retries);
    let mut outcome = finish(
        bounded(limit, query.run(&mut db, limit)).await,
        &mut db,
        limit,
    );
    loop {
        let (lost, left) = match retries.next(outcome) {
            Ok(retry) => retry,
            Err(outcome) => return outcome,
        };
        tracing::info!(
            "a read query lost its connection to {} ({lost}); retrying it on another \
             server (retry {})",
            DbRead::route(&db),
            retries.done()
        );
        db = DbRead::retry(db).await?;
        outcome = finish(
            bounded(left, query.run(&mut db, left)).await,
            &mut db,
            limit,
        );
    }
}

/// Adds the write's read-your-writes token to `response` (nothing without
/// `--read-url`). The write has committed: if the token cannot be read (within
/// `limit`), the response goes without it and a warning is logged.
pub(crate) async fn with_token<M: Store>(
    reads: &Reads<M>,
    db: &mut Db<M>,
    limit: Duration,
    mut response: Response,
) -> Response {
    match tokio::time::timeout(limit, reads.token_header(db)).await {
        Ok(Ok(Some((name, value)))) => {
            response.headers_mut().insert(name, value);
        }
        Ok(Ok(None)) => {}
        Ok(Err(error)) => {
            tracing::warn!(
                "a write committed but its read-your-writes token could not be read \
                 ({error}); the response has no x-read-after header"
            );
            let _ = Db::error(db, error);
        }
        Err(_) => {
            Db::invalidate(db);
            tracing::warn!(
                "a write committed but its read-your-writes token was not read within the \
                 query timeout; the response has no x-read-after header"
            );
        }
    }
    response
}
