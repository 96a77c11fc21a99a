//! `queuepool serve`: the items service.
//!
//! [`router`] builds the axum app for one backend; [`run`] opens the pool, creates the
//! table, serves until SIGINT/SIGTERM and closes the pool.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use queuepool::{Pool, PoolConfig};
use queuepool_axum::{health_routes, pool_routes, record_http_metrics};
use tokio::net::TcpListener;
use tower_http::LatencyUnit;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnFailure, DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::{DEFAULT_QUERY_TIMEOUT, ServeConfig};
use crate::error::CliError;
use crate::store::{Backend, Store};

pub mod api;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod reads;
mod retry;

/// Largest accepted request body: an item is a few hundred bytes.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// How long past `query_timeout` a handler waits for a backend's own timeout error
/// before it drops the query itself (PostgreSQL's `PgConnection::timeout` fires at
/// `query_timeout` and sends a cancel request; MySQL and SQLite rely on the drop).
pub const QUERY_GRACE: Duration = Duration::from_millis(250);

/// Slack of the whole-request backstop beyond the sum of the bounds of its parts.
const REQUEST_MARGIN: Duration = Duration::from_secs(1);

/// The bounds on a request of the service.
///
/// Every handler checks out one connection (bounded by `pool_timeout`, plus
/// `connect_timeout` when it opens one) and runs one query on it (bounded by
/// `query`); a read whose connection is lost mid-query checks out another and runs
/// the query again (bounded, while it keeps losing them) within what is left of
/// `query`. `request` bounds the whole request as a backstop for anything else (a
/// body trickling in, a bug): `pool_timeout + connect_timeout + query_timeout + 1.25
/// s`. A request past it is answered 503 `request_timeout` and its handler dropped
/// (with it any pooled connection, which the pool discards if a query was running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Each database query: past it, 503 `query_timeout` and the connection discarded.
    pub query: Duration,
    /// The whole request.
    pub request: Duration,
}

impl Timeouts {
    /// The bounds for `query_timeout` with `pool`'s checkout bounds.
    pub fn new(query: Duration, pool: &PoolConfig) -> Timeouts {
        Timeouts {
            query,
            request: pool.pool_timeout
                + pool.connect_timeout
                + query
                + QUERY_GRACE
                + REQUEST_MARGIN,
        }
    }
}

impl Default for Timeouts {
    /// The defaults: `query_timeout` 10 s with the default pool's bounds.
    fn default() -> Timeouts {
        Timeouts::new(DEFAULT_QUERY_TIMEOUT, &PoolConfig::default())
    }
}

/// Bounds the whole request and hands the bounds to the handlers (as a request
/// extension, read by [`extract::QueryLimit`]).
async fn bound_request(
    State(timeouts): State<Timeouts>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(timeouts);
    // Cheap clones (the URI is reference-counted), for the one log line of a timeout.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    match tokio::time::timeout(timeouts.request, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                "{method} {}: no response within the request timeout of {:.1} s; the handler \
                 is dropped",
                uri.path(),
                timeouts.request.as_secs_f64()
            );
            error::AppError::RequestTimeout(timeouts.request).into_response()
        }
    }
}

/// The state of the app: the pool (`Db<M>` and `State<Pool<M>>` get it via [`FromRef`]).
pub struct AppState<M: Store> {
    /// The connection pool.
    pub pool: Pool<M>,
}

impl<M: Store> Clone for AppState<M> {
    fn clone(&self) -> Self {
        AppState {
            pool: self.pool.clone(),
        }
    }
}

impl<M: Store> FromRef<AppState<M>> for Pool<M> {
    fn from_ref(state: &AppState<M>) -> Pool<M> {
        state.pool.clone()
    }
}

/// The service's routes with the default [`Timeouts`], without state: merge test
/// routes into it, then call `.with_state(AppState { pool })`.
pub fn routes<M: Store>(prometheus: Option<PrometheusHandle>) -> Router<AppState<M>> {
    routes_with::<M>(prometheus, Timeouts::default())
}

/// [`routes`] with the given bounds on each query and on the whole request.
pub fn routes_with<M: Store>(
    prometheus: Option<PrometheusHandle>,
    timeouts: Timeouts,
) -> Router<AppState<M>> {
    use handlers::{create_item, delete_item, get_item, health, list_items, update_item};
    Router::new()
        .route("/health", get(health::<M>))
        .route("/items", get(list_items::<M>).post(create_item::<M>))
        .route(
            "/items/{id}",
            get(get_item::<M>)
                .put(update_item::<M>)
                .delete(delete_item::<M>),
        )
        .merge(health_routes::<M, AppState<M>>())
        .merge(pool_routes::<M, AppState<M>>(prometheus))
        .merge(queuepool_axum::dashboard::routes::<M, AppState<M>>())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api::ApiDoc::openapi()))
        .fallback(handlers::fallback)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn_with_state(timeouts, bound_request))
        .layer(access_log())
        .layer(middleware::from_fn(record_http_metrics))
}

/// The type of [`access_log`]'s layer.
type AccessLog = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request) -> tracing::Span,
    DefaultOnRequest,
    DefaultOnResponse,
>;

/// The access log: one `info` line per request, when its response is ready, with the
/// method and path (not the query string, which may carry secrets) in the span and the
/// status and latency in the event:
///
/// ```text
/// INFO request{method=GET path=/items/7}: tower_http::trace::on_response: finished processing request latency=812 μs status=200
/// ```
///
/// Off with `RUST_LOG=info,tower_http=warn`. Failures are also logged once, with their
/// cause, where they are mapped to a status code, so the layer's own failure line is at
/// debug.
fn access_log() -> AccessLog {
    fn span(request: &Request) -> tracing::Span {
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
    }
    TraceLayer::new_for_http()
        .make_span_with(span as fn(&Request) -> tracing::Span)
        .on_request(DefaultOnRequest::new().level(Level::DEBUG))
        .on_response(
            DefaultOnResponse::new()
                .level(Level::INFO)
                .latency_unit(LatencyUnit::Micros),
        )
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG))
}

/// The complete app for `pool`, with the default [`Timeouts`].
pub fn router<M: Store>(pool: Pool<M>, prometheus: Option<PrometheusHandle>) -> Router {
    router_with(pool, prometheus, Timeouts::default())
}

/// The complete app for `pool` with the given bounds.
pub fn router_with<M: Store>(
    pool: Pool<M>,
    prometheus: Option<PrometheusHandle>,
    timeouts: Timeouts,
) -> Router {
    routes_with::<M>(prometheus, timeouts).with_state(AppState { pool })
}

/// [`router_with`], with the reads (`GET /items`, `GET /items/{id}`) going where
/// `reads` says ([`reads::ReadSide`]): standbys with read-your-writes, and the writes
/// returning their token.
pub fn router_with_reads<M: Store>(
    pool: Pool<M>,
    reads: queuepool_axum::Reads<M>,
    prometheus: Option<PrometheusHandle>,
    timeouts: Timeouts,
) -> Router {
    routes_with::<M>(prometheus, timeouts)
        .layer(axum::Extension(reads))
        .with_state(AppState { pool })
}

/// Opens the pool for `M` and creates the items table if it is missing.
pub async fn open_pool<M: Store>(url: &str, config: PoolConfig) -> Result<Pool<M>, CliError> {
    let manager = M::open(url)
        .map_err(|e| CliError::DatabaseUrl(Box::new(e)))?
        .for_pool(&config);
    let pool = Pool::new(manager, config).await.map_err(CliError::Pool)?;
    let mut conn = pool.get().await.map_err(CliError::Pool)?;
    M::migrate(&mut conn)
        .await
        .map_err(|e| CliError::Migrate(Box::new(e)))?;
    Ok(pool)
}

/// [`open_pool`], tried again while the pool cannot start, for at most `wait`
/// (`--wait-for-db`; zero: once). A service started before its database (a fleet
/// booting together) waits for it instead of exiting, as HikariCP's
/// `initializationFailTimeout` allows. A bad URL or a failed migration ends at once.
pub async fn open_pool_waiting<M: Store>(
    url: &str,
    config: PoolConfig,
    wait: std::time::Duration,
) -> Result<Pool<M>, CliError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        match open_pool::<M>(url, config.clone()).await {
            Err(CliError::Pool(error)) if tokio::time::Instant::now() + delay < deadline => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                tracing::warn!(
                    "database not reachable yet ({error}); trying again for {:.1} s more (--wait-for-db)",
                    left.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Runs the service with `config` until SIGINT or SIGTERM.
pub async fn run(
    config: ServeConfig,
    prometheus: Option<PrometheusHandle>,
) -> Result<(), CliError> {
    match config.backend {
        Backend::Postgres => {
            run_with::<queuepool_postgres::PgManager>(config, prometheus, reads::postgres).await
        }
        Backend::MySql => {
            run_with::<queuepool_mysql::MySqlManager>(config, prometheus, single_read_side).await
        }
        Backend::Sqlite => {
            run_with::<queuepool_sqlite::SqliteManager>(config, prometheus, single_read_side).await
        }
    }
}

/// Every read on the primary's pool (the only choice for MySQL and SQLite: the
/// configuration refuses `--read-url` with them).
async fn single_read_side<M: Store>(
    pool: &Pool<M>,
    _config: &ServeConfig,
) -> Result<reads::ReadSide<M>, CliError> {
    Ok(reads::ReadSide::single(pool))
}

async fn run_with<M: Store>(
    config: ServeConfig,
    prometheus: Option<PrometheusHandle>,
    read_side: impl AsyncFnOnce(&Pool<M>, &ServeConfig) -> Result<reads::ReadSide<M>, CliError>,
) -> Result<(), CliError> {
    for line in config.describe() {
        tracing::info!("{line}");
    }
    let pool = open_pool_waiting::<M>(
        config.database_url.expose(),
        config.pool.clone(),
        config.wait_for_db,
    )
    .await?;
    tracing::info!("pool ready: {}", pool.status());
    let read_side = read_side(&pool, &config).await?;
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| CliError::Bind {
            addr: config.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(CliError::Serve)?;
    let shutdown = shutdown_signal();
    let shown = display_addr(addr);
    tracing::info!(
        "listening on http://{shown} (API docs: http://{shown}/docs, dashboard: \
         http://{shown}/dashboard, pool: http://{shown}/pool, metrics: http://{shown}/metrics)"
    );
    let app = router_with_reads(
        pool.clone(),
        read_side.reads.clone(),
        prometheus,
        config.timeouts(),
    );
    let served = serve_app(listener, app, pool, shutdown, config.shutdown_timeout).await;
    read_side.close(Duration::from_secs(1)).await;
    served
}

/// The address to print: a wildcard bind is reachable on localhost.
fn display_addr(addr: SocketAddr) -> SocketAddr {
    let mut shown = addr;
    if addr.ip().is_unspecified() {
        shown.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    shown
}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets running
/// requests finish for at most `grace`, and closes the pool so that the database sees
/// none of its connections left.
pub async fn serve<M: Store>(
    listener: TcpListener,
    pool: Pool<M>,
    prometheus: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), CliError> {
    let app = router(pool.clone(), prometheus);
    serve_app(listener, app, pool, shutdown, grace).await
}

/// [`serve`] with a ready-made app (tests add routes to [`routes`]).
pub async fn serve_app<M: Store>(
    listener: TcpListener,
    app: Router,
    pool: Pool<M>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), CliError> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        })
        .into_future();
    let mut server = std::pin::pin!(server);
    let started;
    tokio::select! {
        result = &mut server => {
            // The server only ends by itself on an accept error.
            result.map_err(CliError::Serve)?;
            started = Instant::now();
        }
        () = shutdown => {
            started = Instant::now();
            tracing::info!(
                "shutting down: no new connections, waiting up to {:.1} s for running requests",
                grace.as_secs_f64()
            );
            let _ = stop_tx.send(());
            match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => result.map_err(CliError::Serve)?,
                Err(_) => tracing::warn!(
                    "requests still running after {:.1} s; closing the pool anyway",
                    grace.as_secs_f64()
                ),
            }
        }
    }
    // Lent connections get what is left of the grace period (at least one second) to
    // come back; then every connection is closed.
    let left = grace
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    pool.close(left).await;
    let stats = pool.stats();
    tracing::info!(
        "pool closed: {} ({} connections opened, {} closed in total)",
        pool.status(),
        stats.connections_created,
        stats.closed
    );
    Ok(())
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM, and from then on a second one
/// ends the process at once (exit status 130 or 143, as a shell reports a process
/// killed by that signal) without waiting for running requests or the pool.
///
/// The handlers are installed when this function is called, not when the future is
/// first polled: call it before announcing the service, so that a signal sent as soon
/// as the "listening on" line appears is a graceful shutdown, not the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let mut signals = Signals::install();
    async move {
        let first = signals.recv().await;
        tracing::info!("received {first}; send it again to exit at once");
        tokio::spawn(async move {
            let second = signals.recv().await;
            tracing::warn!(
                "received {second} during shutdown: exiting now, without waiting for \
                 running requests"
            );
            std::process::exit(match second {
                "SIGTERM" => 143,
                _ => 130,
            });
        });
    }
}

/// SIGINT and SIGTERM handlers, installed once and received from many times.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|error| tracing::warn!("cannot listen for {name}: {error}"))
                .ok()
        };
        Signals {
            interrupt: install(SignalKind::interrupt(), "SIGINT"),
            terminate: install(SignalKind::terminate(), "SIGTERM"),
        }
    }

    #[cfg(not(unix))]
    fn install() -> Signals {
        Signals {}
    }

    /// Waits for the next SIGINT or SIGTERM and names it.
    #[cfg(unix)]
    async fn recv(&mut self) -> &'static str {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.interrupt) => "SIGINT",
            () = next(&mut self.terminate) => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) -> &'static str {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
        "SIGINT"
    }
}
