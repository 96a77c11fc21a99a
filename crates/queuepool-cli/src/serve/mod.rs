//! `queuepool serve`: the items service.
//!
//! [`router`] builds the axum app for one backend; [`run`] opens the pool, creates the
//! table, serves until SIGINT/SIGTERM and closes the pool.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use queuepool::{Pool, PoolConfig};
use queuepool_axum::pool_routes;
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::ServeConfig;
use crate::error::CliError;
use crate::store::{Backend, Store};

pub mod api;
pub mod error;
pub mod extract;
pub mod handlers;

/// Largest accepted request body: an item is a few hundred bytes.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

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

/// The service's routes, without state: merge test routes into it, then call
/// `.with_state(AppState { pool })`.
pub fn routes<M: Store>(prometheus: Option<PrometheusHandle>) -> Router<AppState<M>> {
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
        .merge(pool_routes::<M, AppState<M>>(prometheus))
        .merge(queuepool_tools::dashboard::routes::<M, AppState<M>>())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api::ApiDoc::openapi()))
        .fallback(handlers::fallback)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        // Request logs at debug (`RUST_LOG=tower_http=debug`); failures are already
        // logged once, with their cause, where they are mapped to a status code.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
}

/// The complete app for `pool`.
pub fn router<M: Store>(pool: Pool<M>, prometheus: Option<PrometheusHandle>) -> Router {
    routes::<M>(prometheus).with_state(AppState { pool })
}

/// Opens the pool for `M` and creates the items table if it is missing.
pub async fn open_pool<M: Store>(url: &str, config: PoolConfig) -> Result<Pool<M>, CliError> {
    let manager = M::open(url).map_err(|e| CliError::DatabaseUrl(Box::new(e)))?;
    let pool = Pool::new(manager, config).await.map_err(CliError::Pool)?;
    let mut conn = pool.get().await.map_err(CliError::Pool)?;
    M::migrate(&mut conn)
        .await
        .map_err(|e| CliError::Migrate(Box::new(e)))?;
    Ok(pool)
}

/// Runs the service with `config` until SIGINT or SIGTERM.
pub async fn run(
    config: ServeConfig,
    prometheus: Option<PrometheusHandle>,
) -> Result<(), CliError> {
    match config.backend {
        Backend::Postgres => run_with::<queuepool_postgres::PgManager>(config, prometheus).await,
        Backend::MySql => run_with::<queuepool_mysql::MySqlManager>(config, prometheus).await,
        Backend::Sqlite => run_with::<queuepool_sqlite::SqliteManager>(config, prometheus).await,
    }
}

async fn run_with<M: Store>(
    config: ServeConfig,
    prometheus: Option<PrometheusHandle>,
) -> Result<(), CliError> {
    for line in config.describe() {
        tracing::info!("{line}");
    }
    let pool = open_pool::<M>(config.database_url.expose(), config.pool.clone()).await?;
    tracing::info!("pool ready: {}", pool.status());
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| CliError::Bind {
            addr: config.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(CliError::Serve)?;
    let shown = display_addr(addr);
    tracing::info!(
        "listening on http://{shown} (API docs: http://{shown}/docs, pool: http://{shown}/pool)"
    );
    serve(
        listener,
        pool,
        prometheus,
        shutdown_signal(),
        config.shutdown_timeout,
    )
    .await
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

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for SIGINT: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::warn!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
