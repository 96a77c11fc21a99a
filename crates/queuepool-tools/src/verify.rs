//! `queuepool verify`: the tutorial's second method (look at the server while the pool
//! works), automated.
//!
//! It builds a pool tagged with a unique `application_name` and compares what the pool
//! should hold with what the server shows (`pg_stat_activity`; MySQL/MariaDB:
//! `information_schema.processlist` rows with the pool's connection ids; SQLite: the
//! pool's open handles) at four moments: idle, under a burst of
//! `pool_size + max_overflow` holders, during one extra checkout that must time out,
//! and after release once `overflow_idle` has passed.
//!
//! Through PgBouncer (detected, or named with `--pgbouncer-admin`) it checks two
//! layers instead: the pool's connections are PgBouncer's clients (`SHOW CLIENTS`), and
//! PgBouncer's server connections (`SHOW POOLS`, `SHOW SERVERS`) are found by pid in
//! `pg_stat_activity` on the server, within PgBouncer's pool size (see [`layers`]).

mod layers;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queuepool::{Overflow, Pool, PoolConfig, PoolError, PooledConn};
use serde::Serialize;
use tokio::sync::{Barrier, watch};

use self::layers::Layers;
pub use self::layers::{BouncerView, Snapshot};
use crate::args::{PoolArgs, build, parse_duration, redact_url};
use crate::error::ToolsError;
use crate::progress::Progress;
use crate::table::Table;
use crate::target::{Kind, Observer, Protocol, Query, Target};

/// Options of `queuepool verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Database to check: postgres://, mysql:// or sqlite:// URL
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,
    /// Pool sizes to check.
    #[command(flatten)]
    pub pool: PoolArgs,
    /// How long overflow connections stay idle before they are closed; the check waits
    /// this long after release [default: 1s]
    #[arg(long, value_name = "SECONDS")]
    pub overflow_idle: Option<String>,
    /// The application_name of the pool's connections [default: queuepool_verify_<random>]
    #[arg(long, value_name = "NAME")]
    pub application_name: Option<String>,
    /// PgBouncer's admin console (`postgres://user@host:6432/pgbouncer`; the user in
    /// admin_users or stats_users) [default: detected: when the server's port differs
    /// from the URL's, the console at the URL's address is tried]
    #[arg(long, value_name = "URL")]
    pub pgbouncer_admin: Option<String>,
    /// Through PgBouncer: the server's own URL, to read pg_stat_activity there
    /// [default: the URL with the host, port and database of PgBouncer's SHOW DATABASES]
    #[arg(long, value_name = "URL")]
    pub server_url: Option<String>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// One check: what should be, what is.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `idle`, `burst`, `at limit`, `released`, `closed`, `overall`.
    pub step: &'static str,
    /// What is checked.
    pub check: String,
    /// The expected value.
    pub expected: String,
    /// The observed value.
    pub observed: String,
    /// Whether they match.
    pub pass: bool,
}

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The backend.
    pub backend: Kind,
    /// The database URL without its password.
    pub database: String,
    /// The `application_name` the pool's connections carried.
    pub application_name: String,
    /// Where the observed connection counts come from.
    pub server_view: &'static str,
    /// The pool's `pool_size`.
    pub pool_size: u32,
    /// The pool's `max_overflow`.
    pub max_overflow: u32,
    /// The `pool_timeout` of the checked pool, in seconds.
    pub pool_timeout_s: f64,
    /// `overflow_idle` of the checked pool, in seconds.
    pub overflow_idle_s: f64,
    /// Every check.
    pub rows: Vec<Row>,
    /// Whether every check passed.
    pub passed: bool,
    /// Notes on how the check was run.
    pub notes: Vec<String>,
    /// Through PgBouncer: both layers at each step.
    pub pgbouncer: Option<BouncerView>,
}

impl VerifyReport {
    /// The report as a table with a verdict line.
    pub fn render(&self) -> String {
        let mut out = format!(
            "queuepool verify: {} ({}), application_name {}\n\
             pool_size {}, max_overflow {}, pool_timeout {:.2} s, overflow_idle {:.2} s; \
             observed = {}\n\n",
            self.database,
            self.backend,
            self.application_name,
            self.pool_size,
            self.max_overflow,
            self.pool_timeout_s,
            self.overflow_idle_s,
            self.server_view,
        );
        let mut table =
            Table::new(&["step", "check", "expected", "observed", "result"]).left_aligned();
        for row in &self.rows {
            table.row(vec![
                row.step.to_owned(),
                row.check.clone(),
                row.expected.clone(),
                row.observed.clone(),
                if row.pass { "PASS" } else { "FAIL" }.to_owned(),
            ]);
        }
        out.push_str(&table.render());
        if let Some(view) = &self.pgbouncer {
            out.push_str(&view.render());
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        let failed = self.rows.iter().filter(|r| !r.pass).count();
        if failed == 0 {
            out.push_str(&format!("\nPASS: all {} checks passed\n", self.rows.len()));
        } else {
            out.push_str(&format!(
                "\nFAIL: {failed} of {} checks failed\n",
                self.rows.len()
            ));
        }
        out
    }
}

/// Default `overflow_idle` of the checked pool.
const OVERFLOW_IDLE: Duration = Duration::from_secs(1);
/// Default `pool_timeout` of the checked pool, unless `--pool-timeout` is given.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a count may take to settle (connections opening or closing).
const SETTLE: Duration = Duration::from_secs(3);

/// Runs `verify` and returns its report; the caller prints it and sets the exit status.
pub async fn run(args: &VerifyArgs) -> Result<VerifyReport, ToolsError> {
    let kind = Kind::from_url(&args.database_url)?;
    match kind {
        Kind::Postgres => run_with::<queuepool_postgres::PgManager>(args).await,
        Kind::MySql => run_with::<queuepool_mysql::MySqlManager>(args).await,
        Kind::Sqlite => run_with::<queuepool_sqlite::SqliteManager>(args).await,
    }
}

fn config(args: &VerifyArgs) -> Result<(PoolConfig, Vec<String>), ToolsError> {
    let mut notes = Vec::new();
    let preset = args.pool.preset()?;
    let mut builder = args.pool.builder()?.name("verify").prefill(true);
    if args.pool.pool_timeout()?.is_none() {
        builder = builder.pool_timeout(CHECK_TIMEOUT);
        notes.push(format!(
            "pool_timeout is {:.0} s for this check (the {preset} preset's {} s would make the \
             extra checkout wait that long); pass --pool-timeout to check another value",
            CHECK_TIMEOUT.as_secs_f64(),
            preset.sizes().2.as_secs()
        ));
    }
    let overflow_idle = match &args.overflow_idle {
        Some(raw) => parse_duration("--overflow-idle", raw)?,
        None => OVERFLOW_IDLE,
    };
    builder = builder.overflow_idle(overflow_idle);
    let config = build(builder)?;
    if config.max_overflow == Overflow::Unlimited {
        return Err(ToolsError::arg(
            "--max-overflow",
            "verify needs a limit to reach: give a number",
        ));
    }
    if config.max_connections() > 1000 {
        return Err(ToolsError::arg(
            "--pool-size",
            "verify opens pool_size + max_overflow connections at once: at most 1000",
        ));
    }
    Ok((config, notes))
}

fn tag(args: &VerifyArgs) -> String {
    args.application_name
        .clone()
        .unwrap_or_else(|| format!("queuepool_verify_{:08x}", rand::random::<u32>()))
}

/// Counts the pool's connections as the server sees them (SQLite: open handles).
/// MySQL rows are matched by every connection id the manager ever reported, so a
/// connection killed on the server, or closed, is looked for and not found.
async fn observe<T: Target>(
    obs: &mut View,
    pool: &Pool<T>,
    seen: &mut BTreeSet<u32>,
) -> Result<usize, ToolsError> {
    let obs = match obs {
        View::Layers(layers) => return layers.clients().await,
        View::Plain(obs) => obs,
    };
    seen.extend(pool.manager().known_ids());
    let ids: Vec<u32> = seen.iter().copied().collect();
    match obs.count(&ids).await? {
        Some(n) => Ok(n),
        None => {
            let stats = pool.stats();
            Ok(
                usize::try_from(stats.connections_created.saturating_sub(stats.closed))
                    .unwrap_or(usize::MAX),
            )
        }
    }
}

/// Samples until the count equals `want` or `within` has passed; returns the last count.
async fn settle<T: Target>(
    obs: &mut View,
    pool: &Pool<T>,
    seen: &mut BTreeSet<u32>,
    want: usize,
    within: Duration,
) -> Result<usize, ToolsError> {
    let deadline = Instant::now() + within;
    loop {
        let n = observe(obs, pool, seen).await?;
        if n == want || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_row(step: &'static str, check: &str, expected: usize, observed: usize) -> Row {
    Row {
        step,
        check: check.to_owned(),
        expected: expected.to_string(),
        observed: observed.to_string(),
        pass: expected == observed,
    }
}

fn status_row(
    step: &'static str,
    pool: &Pool<impl Target>,
    idle: usize,
    out: usize,
    overflow: i64,
) -> Row {
    let s = pool.status();
    Row {
        step,
        check: "pool status: idle / checked out / overflow".to_owned(),
        expected: format!("{idle} / {out} / {overflow}"),
        observed: format!("{} / {} / {}", s.idle, s.checked_out, s.overflow),
        pass: (s.idle, s.checked_out, s.overflow) == (idle, out, overflow),
    }
}

/// Where the pool's connections are counted.
enum View {
    /// The server's own view (or SQLite's handles).
    Plain(Observer),
    /// PgBouncer's clients, and its servers on the server.
    Layers(Box<Layers>),
}

impl View {
    /// What is counted, as a report row says it.
    fn counted(&self, kind: Kind) -> &'static str {
        match self {
            View::Plain(_) => kind.counted(),
            View::Layers(_) => "PgBouncer clients (SHOW CLIENTS)",
        }
    }

    /// Through PgBouncer: records both layers and adds their checks to `rows`.
    async fn layers(
        &mut self,
        step: &'static str,
        pool: &Pool<impl Target>,
        rows: &mut Vec<Row>,
    ) -> Result<(), ToolsError> {
        if let View::Layers(layers) = self {
            let s = pool.status();
            rows.extend(layers.snapshot(step, s.idle + s.checked_out).await?);
        }
        Ok(())
    }

    async fn close(self) {
        if let View::Plain(obs) = self {
            obs.close().await;
        }
    }
}

/// What one burst holder saw.
enum Held {
    /// Checked out; the server id of its connection, if the backend has one.
    Ok(Option<i64>, u64),
    /// The checkout or the query failed.
    Failed(String),
}

async fn run_with<T: Target>(args: &VerifyArgs) -> Result<VerifyReport, ToolsError> {
    let (config, mut notes) = config(args)?;
    let tag = tag(args);
    let progress = Progress::spinner(args.json);
    let size = config.pool_size as usize;
    let total = config.max_connections();
    let overflow = total - size;
    let mut rows = Vec::new();

    progress.step(format!(
        "verify [1/5] connecting ({})",
        T::KIND.server_view()
    ));
    let bouncer = match T::KIND {
        Kind::Postgres => {
            crate::pgbouncer::detect(&args.database_url, args.pgbouncer_admin.as_deref()).await?
        }
        _ if args.pgbouncer_admin.is_some() || args.server_url.is_some() => {
            return Err(ToolsError::arg(
                if args.pgbouncer_admin.is_some() {
                    "--pgbouncer-admin"
                } else {
                    "--server-url"
                },
                "PgBouncer sits in front of PostgreSQL only",
            ));
        }
        _ => None,
    };
    let mut obs = match &bouncer {
        None => View::Plain(Observer::connect(T::KIND, &args.database_url, &tag).await?),
        // Opened once the pool has connected: PgBouncer lists the database then.
        Some(_) => View::Plain(Observer::Sqlite),
    };
    let mut seen = BTreeSet::new();
    let manager = T::open(&args.database_url, &tag)?;
    let pool = Pool::new(manager, config.clone())
        .await
        .map_err(|e| ToolsError::pool("could not start the pool", e))?;
    if let Some(admin) = bouncer {
        let layers =
            Layers::open(admin, &args.database_url, args.server_url.as_deref(), &tag).await?;
        notes.push(format!(
            "through {} ({} mode): the pool's connections are PgBouncer's clients; its server \
             connections are counted apart, on the server",
            layers.view.version, layers.view.pool_mode
        ));
        obs = View::Layers(Box::new(layers));
    }
    let counted = obs.counted(T::KIND);

    progress.step(format!("verify [2/5] idle: expecting {size} connections"));
    let idle_seen = settle(&mut obs, &pool, &mut seen, size, SETTLE).await?;
    rows.push(count_row("idle", counted, size, idle_seen));
    rows.push(status_row("idle", &pool, size, 0, 0));
    obs.layers("idle", &pool, &mut rows).await?;

    progress.step(format!("verify [3/5] burst: {total} concurrent holders"));
    let (release_tx, release_rx) = watch::channel(false);
    let ready = Arc::new(Barrier::new(total + 1));
    let query = Query {
        sql: Arc::from("SELECT 1"),
        protocol: Protocol::Extended,
    };
    let mut holders = Vec::with_capacity(total);
    for _ in 0..total {
        let pool = pool.clone();
        let ready = ready.clone();
        let mut release = release_rx.clone();
        let query = query.clone();
        holders.push(tokio::spawn(async move {
            let got = tokio::time::timeout(Duration::from_secs(10), pool.get()).await;
            let held = match got {
                Ok(Ok(mut conn)) => match hold_query::<T>(&mut *conn, &query).await {
                    Ok(id) => (Held::Ok(id, PooledConn::id(&conn)), Some(conn)),
                    Err(e) => (Held::Failed(e), Some(conn)),
                },
                Ok(Err(e)) => (Held::Failed(crate::error::chain(&e)), None),
                Err(_) => (Held::Failed("no connection within 10 s".into()), None),
            };
            ready.wait().await;
            let (outcome, conn) = held;
            let _ = release.wait_for(|r| *r).await;
            drop(conn);
            outcome
        }));
    }
    ready.wait().await;
    let burst_seen = settle(&mut obs, &pool, &mut seen, total, SETTLE).await?;
    let burst_status = pool.status();
    let mut burst_layers = Vec::new();
    obs.layers("burst", &pool, &mut burst_layers).await?;

    progress.step(format!(
        "verify [4/5] at the limit: one more checkout must time out after {:.2} s",
        config.pool_timeout.as_secs_f64()
    ));
    let started = Instant::now();
    let extra =
        tokio::time::timeout(config.pool_timeout + Duration::from_secs(5), pool.get()).await;
    let waited = started.elapsed();
    let limit_seen = observe(&mut obs, &pool, &mut seen).await?;

    release_tx.send_replace(true);
    let mut granted = 0;
    let mut failures = Vec::new();
    let mut server_ids = BTreeSet::new();
    let mut pool_ids = BTreeSet::new();
    for holder in holders {
        match holder.await {
            Ok(Held::Ok(id, pool_id)) => {
                granted += 1;
                if let Some(id) = id {
                    server_ids.insert(id);
                }
                pool_ids.insert(pool_id);
            }
            Ok(Held::Failed(e)) => failures.push(e),
            Err(e) => failures.push(format!("holder task failed: {e}")),
        }
    }
    rows.push(Row {
        step: "burst",
        check: "holders that got a connection and ran SELECT 1".to_owned(),
        expected: total.to_string(),
        observed: match failures.first() {
            None => granted.to_string(),
            Some(first) => format!("{granted} ({} failed: {first})", failures.len()),
        },
        pass: granted == total,
    });
    rows.push(count_row("burst", counted, total, burst_seen));
    let (distinct_check, distinct) = if T::KIND == Kind::Sqlite {
        ("distinct pool connections among holders", pool_ids.len())
    } else {
        ("distinct server backends among holders", server_ids.len())
    };
    match &obs {
        View::Layers(layers) => {
            // Transaction mode: each holder had a server only for its SELECT, so they
            // share PgBouncer's few server connections.
            let limit = (layers.view.pool_size + layers.view.reserve_pool) as usize;
            rows.push(Row {
                step: "burst",
                check: format!("{distinct_check} (shared through PgBouncer)"),
                expected: format!("1..={}", limit.min(total)),
                observed: distinct.to_string(),
                pass: (1..=limit.min(total)).contains(&distinct),
            });
        }
        View::Plain(_) => rows.push(count_row("burst", distinct_check, total, distinct)),
    }
    rows.extend(burst_layers);
    rows.push(Row {
        step: "burst",
        check: "pool status: checked out / overflow".to_owned(),
        expected: format!("{total} / {overflow}"),
        observed: format!("{} / {}", burst_status.checked_out, burst_status.overflow),
        pass: burst_status.checked_out == total && burst_status.overflow == overflow as i64,
    });

    let timeout = config.pool_timeout;
    let low = timeout.saturating_sub(Duration::from_millis(50));
    let high = timeout + Duration::from_millis(1500);
    let (observed, pass) = match extra {
        Ok(Err(e @ PoolError::Timeout { .. })) => {
            let text = e.to_string();
            let head = text.split(',').next().unwrap_or(&text).to_owned();
            (
                format!("timeout after {:.2} s ({head}...)", waited.as_secs_f64()),
                waited >= low && waited <= high,
            )
        }
        Ok(Err(e)) => (
            format!(
                "other error after {:.2} s: {}",
                waited.as_secs_f64(),
                crate::error::chain(&e)
            ),
            false,
        ),
        Ok(Ok(_conn)) => (
            format!("got a connection after {:.2} s", waited.as_secs_f64()),
            false,
        ),
        Err(_) => (
            format!("still waiting after {:.2} s", waited.as_secs_f64()),
            false,
        ),
    };
    rows.push(Row {
        step: "at limit",
        check: format!("checkout #{} fails with the pool timeout", total + 1),
        expected: format!("timeout after {:.2} s", timeout.as_secs_f64()),
        observed,
        pass,
    });
    rows.push(count_row(
        "at limit",
        &format!("{counted} (none beyond the limit)"),
        total,
        limit_seen,
    ));

    progress.step(format!(
        "verify [5/5] released: waiting for overflow_idle ({:.2} s) to close {overflow} overflow connections",
        config.overflow_idle.as_secs_f64()
    ));
    tokio::time::sleep(config.overflow_idle).await;
    let released_seen = settle(
        &mut obs,
        &pool,
        &mut seen,
        size,
        SETTLE + Duration::from_secs(1),
    )
    .await?;
    rows.push(count_row(
        "released",
        &format!("{counted} after overflow_idle"),
        size,
        released_seen,
    ));
    rows.push(status_row("released", &pool, size, 0, 0));
    obs.layers("released", &pool, &mut rows).await?;

    let stats = pool.stats();
    rows.push(Row {
        step: "overall",
        check: "connections opened (none replaced)".to_owned(),
        expected: total.to_string(),
        observed: stats.connections_created.to_string(),
        pass: stats.connections_created == total as u64,
    });
    rows.push(Row {
        step: "overall",
        check: "connections invalidated / connect errors".to_owned(),
        expected: "0 / 0".to_owned(),
        observed: format!("{} / {}", stats.invalidated, stats.connect_errors),
        pass: stats.invalidated == 0 && stats.connect_errors == 0,
    });

    pool.close(Duration::from_secs(2)).await;
    if T::KIND != Kind::Sqlite {
        let closed_seen = settle(&mut obs, &pool, &mut seen, 0, SETTLE).await?;
        rows.push(count_row(
            "closed",
            &format!("{counted} after pool.close()"),
            0,
            closed_seen,
        ));
        obs.layers("closed", &pool, &mut rows).await?;
    } else {
        notes.push("SQLite has no server: the observed counts are the pool's open handles (opened - closed)".to_owned());
    }
    if T::KIND == Kind::MySql {
        notes.push("MySQL/MariaDB rows are matched by connection id (mysql_async sends no connect attributes)".to_owned());
    }
    let pgbouncer = match &obs {
        View::Layers(layers) => Some(layers.view.clone()),
        View::Plain(_) => None,
    };
    obs.close().await;
    progress.finish();

    let passed = rows.iter().all(|r| r.pass);
    Ok(VerifyReport {
        backend: T::KIND,
        database: redact_url(&args.database_url),
        application_name: tag,
        server_view: if pgbouncer.is_some() {
            "PgBouncer's SHOW CLIENTS; its servers in pg_stat_activity on the server"
        } else {
            T::KIND.server_view()
        },
        pool_size: config.pool_size,
        max_overflow: u32::try_from(overflow).unwrap_or(u32::MAX),
        pool_timeout_s: config.pool_timeout.as_secs_f64(),
        overflow_idle_s: config.overflow_idle.as_secs_f64(),
        rows,
        passed,
        notes,
        pgbouncer,
    })
}

async fn hold_query<T: Target>(
    conn: &mut T::Connection,
    query: &Query,
) -> Result<Option<i64>, String> {
    T::run(conn, query)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    T::server_id(conn)
        .await
        .map_err(|e| crate::error::chain(&e))
}
