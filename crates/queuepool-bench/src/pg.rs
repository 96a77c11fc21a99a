//! The `pg` group (issue 10 §4): the PostgreSQL pools side by side against a real
//! server. 32 tasks share a pool of 8; each checks a connection out (timed), runs
//! `SELECT 1` over the simple protocol and returns it. Plain TCP against the given
//! server (`sslmode=disable` for every pool), or with `--tls` every pool over TLS
//! (certificate verified) against an ephemeral cluster of the testkit.

use std::future::Future;
use std::io::Read as _;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use queuepool_postgres::tokio_postgres::config::{Host, SslMode};
use queuepool_postgres::tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use queuepool_postgres::tokio_postgres::{self, NoTls, Socket};
use queuepool_testkit::EphemeralCluster;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::args::PgArgs;
use crate::error::BenchError;
use crate::report::{self, Paired, median, paired};
use crate::runner::histogram;

/// Pool size of every pool in the group.
pub const POOL_SIZE: u32 = 8;
/// Concurrent tasks.
pub const TASKS: usize = 32;
/// Scenario name in the table and the JSON (plain TCP).
pub const SCENARIO: &str = "select1-32-tasks-pool-8";
/// Scenario name with `--tls`.
pub const SCENARIO_TLS: &str = "select1-32-tasks-pool-8-tls";
/// Runtime worker threads (the machine the figures come from has two cores).
const WORKERS: usize = 2;
/// Longest wait a pool may impose before the run is declared broken.
const CHECKOUT_LIMIT: Duration = Duration::from_secs(30);

/// Which pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgPoolKind {
    /// queuepool + `PgManager`, defaults (pre_ping on, rollback on return).
    Queuepool,
    /// Diagnostic: queuepool's core over a bare tokio-postgres manager with
    /// deadpool-postgres's connector and recycling (no request tracking, no wire
    /// sniffer, no reset): the core's share of a difference against deadpool-postgres,
    /// apart from `PgManager`'s.
    QueuepoolBare,
    /// deadpool-postgres, `RecyclingMethod::Fast`.
    Deadpool,
    /// bb8-postgres with `test_on_check_out(false)`.
    Bb8NoTest,
    /// bb8-postgres with its defaults (`SELECT` round trip on every checkout).
    Bb8Default,
    /// sqlx `PgPool` with `test_before_acquire(false)`.
    SqlxNoTest,
    /// sqlx `PgPool` with its default `test_before_acquire(true)` (a ping on every
    /// checkout of a connection idle for more than a second, as sqlx 0.8 does).
    SqlxDefault,
}

impl PgPoolKind {
    /// The pools of a run, in the order they are printed and interleaved (reversed
    /// in every other repetition).
    pub const ALL: [PgPoolKind; 7] = [
        PgPoolKind::Queuepool,
        PgPoolKind::QueuepoolBare,
        PgPoolKind::Deadpool,
        PgPoolKind::Bb8NoTest,
        PgPoolKind::Bb8Default,
        PgPoolKind::SqlxNoTest,
        PgPoolKind::SqlxDefault,
    ];

    /// The name used in the table and the JSON (`pool` key).
    pub fn name(self) -> &'static str {
        match self {
            PgPoolKind::Queuepool => "queuepool",
            PgPoolKind::QueuepoolBare => "queuepool-core-bare-manager",
            PgPoolKind::Deadpool => "deadpool-postgres",
            PgPoolKind::Bb8NoTest => "bb8-postgres",
            PgPoolKind::Bb8Default => "bb8-postgres-test-on-checkout",
            PgPoolKind::SqlxNoTest => "sqlx-pgpool",
            PgPoolKind::SqlxDefault => "sqlx-pgpool-test-before-acquire",
        }
    }

    /// Parses a `--pool` name.
    pub fn parse(name: &str) -> Option<PgPoolKind> {
        PgPoolKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The connection string every pool gets: the user's, with `sslmode=disable` added when
/// it names no `sslmode` (PostgreSQL's default `prefer` would give queuepool TLS and the
/// `NoTls` peers plain TCP). Any other `sslmode` is refused: TLS is `--tls`, against
/// a cluster whose certificate the bench knows.
pub fn plain_url(url: &str) -> Result<String, BenchError> {
    let lower = url.to_ascii_lowercase();
    if let Some(at) = lower.find("sslmode=") {
        let value: String = lower[at + "sslmode=".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if value == "disable" {
            return Ok(url.to_owned());
        }
        return Err(BenchError::Args(format!(
            "`--database-url`: sslmode={value}: without --tls the pg group measures plain \
             connections; use sslmode=disable or leave it out, or --tls for TLS against an \
             ephemeral cluster"
        )));
    }
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{sep}sslmode=disable"))
    } else {
        Ok(format!("{url} sslmode=disable"))
    }
}

fn pool_error(kind: PgPoolKind, err: impl std::fmt::Display) -> BenchError {
    BenchError::Pool {
        pool: kind.name(),
        message: err.to_string(),
    }
}

const QUERY: &str = "SELECT 1";

/// A lent connection that runs the bench's query, `SELECT 1` over the simple protocol.
trait Select1: Send {
    fn select1(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// The query on a tokio-postgres client (what every peer lends).
async fn client_select1(client: &tokio_postgres::Client) -> Result<(), String> {
    client
        .simple_query(QUERY)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A pool as the bench uses it: lend one connection (returned when it is dropped).
trait Lend: Send + Sync + 'static {
    type Conn<'a>: Select1
    where
        Self: 'a;
    /// Whether building the pool already opened `POOL_SIZE` connections.
    const PREFILLED: bool;
    fn lend(&self) -> impl Future<Output = Result<Self::Conn<'_>, String>> + Send;
}

impl Select1 for queuepool::PooledConn<queuepool_postgres::PgManager> {
    async fn select1(&mut self) -> Result<(), String> {
        // `PgConnection::simple_query`, the tracked path (not the raw client's).
        self.simple_query(QUERY)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Both queuepool rows (`PgManager`, and the diagnostic bare manager).
impl<M: queuepool::Manager> Lend for queuepool::Pool<M>
where
    queuepool::PooledConn<M>: Select1,
{
    type Conn<'a> = queuepool::PooledConn<M>;
    const PREFILLED: bool = true;
    async fn lend(&self) -> Result<Self::Conn<'_>, String> {
        self.get().await.map_err(|e| e.to_string())
    }
}

impl Select1 for deadpool_postgres::Object {
    async fn select1(&mut self) -> Result<(), String> {
        client_select1(self).await
    }
}

impl Lend for deadpool_postgres::Pool {
    type Conn<'a> = deadpool_postgres::Object;
    const PREFILLED: bool = false;
    async fn lend(&self) -> Result<Self::Conn<'_>, String> {
        self.get().await.map_err(|e| e.to_string())
    }
}

/// What bb8-postgres and deadpool-postgres need of a TLS connector ([`NoTls`] or
/// rustls).
/// (Associated type bounds in the supertrait: implied wherever `T: PgTls` is.)
trait PgTls:
    MakeTlsConnect<
        Socket,
        Stream: Send + Sync,
        TlsConnect: Send + Sync + TlsConnect<Socket, Future: Send>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> PgTls for T where
    T: MakeTlsConnect<
            Socket,
            Stream: Send + Sync,
            TlsConnect: Send + Sync + TlsConnect<Socket, Future: Send>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

type Bb8Pool<T> = bb8::Pool<bb8_postgres::PostgresConnectionManager<T>>;

impl<T: PgTls> Select1 for bb8::PooledConnection<'_, bb8_postgres::PostgresConnectionManager<T>> {
    async fn select1(&mut self) -> Result<(), String> {
        client_select1(self).await
    }
}

impl<T: PgTls> Lend for Bb8Pool<T> {
    type Conn<'a> = bb8::PooledConnection<'a, bb8_postgres::PostgresConnectionManager<T>>;
    const PREFILLED: bool = false;
    async fn lend(&self) -> Result<Self::Conn<'_>, String> {
        self.get().await.map_err(|e| e.to_string())
    }
}

impl Select1 for sqlx::pool::PoolConnection<sqlx::Postgres> {
    async fn select1(&mut self) -> Result<(), String> {
        // `raw_sql` is sqlx's simple-protocol query (no statement preparation). Through
        // `Executor::execute`, whose boxed future is `Send` as written (what
        // `RawSql::execute` calls too); the generic `RawSql::execute` inside an
        // `async fn` of a trait trips the compiler's higher-ranked `Send` check.
        sqlx::Executor::execute(&mut **self, sqlx::raw_sql(QUERY))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl Lend for sqlx::PgPool {
    type Conn<'a> = sqlx::pool::PoolConnection<sqlx::Postgres>;
    const PREFILLED: bool = false;
    async fn lend(&self) -> Result<Self::Conn<'_>, String> {
        self.acquire().await.map_err(|e| e.to_string())
    }
}

/// One pool under test, with the name its errors are reported under.
struct Bench<P> {
    pool: Arc<P>,
    kind: PgPoolKind,
}

impl<P> Clone for Bench<P> {
    fn clone(&self) -> Self {
        Bench {
            pool: self.pool.clone(),
            kind: self.kind,
        }
    }
}

impl<P: Lend> Bench<P> {
    /// One operation: check out (returning how long that waited), run `SELECT 1`,
    /// return the connection.
    async fn op(&self) -> Result<Duration, BenchError> {
        let t0 = Instant::now();
        let mut conn = self
            .pool
            .lend()
            .await
            .map_err(|e| pool_error(self.kind, e))?;
        let waited = t0.elapsed();
        conn.select1().await.map_err(|e| pool_error(self.kind, e))?;
        Ok(waited)
    }

    /// Opens `POOL_SIZE` connections (all held at once) unless the pool did already.
    async fn prefill(&self) -> Result<(), BenchError> {
        if P::PREFILLED {
            return Ok(());
        }
        let mut held = Vec::new();
        for _ in 0..POOL_SIZE {
            held.push(
                self.pool
                    .lend()
                    .await
                    .map_err(|e| pool_error(self.kind, e))?,
            );
        }
        Ok(())
    }
}

/// One repetition's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PgRep {
    /// Completed operations per second.
    pub ops_per_sec: f64,
    /// Process CPU time (user + system, all threads) per operation, µs.
    pub cpu_us_per_op: f64,
    /// 99th percentile checkout wait, µs.
    pub p99_wait_us: f64,
}

/// Process CPU time (user + system, every thread, including exited ones) from
/// `/proc/self/stat`, in clock ticks of 10 ms (Linux's fixed `USER_HZ` of 100).
fn process_cpu() -> Result<Duration, BenchError> {
    let mut stat = String::new();
    std::fs::File::open("/proc/self/stat")
        .and_then(|mut f| f.read_to_string(&mut stat))
        .map_err(|e| pool_error_io("/proc/self/stat", e))?;
    parse_cpu(&stat).ok_or_else(|| BenchError::Pool {
        pool: "cpu clock",
        message: "cannot parse /proc/self/stat".to_owned(),
    })
}

fn pool_error_io(what: &'static str, e: std::io::Error) -> BenchError {
    BenchError::Pool {
        pool: what,
        message: e.to_string(),
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name in
/// field 2 may contain spaces, so fields are counted after its closing parenthesis.
fn parse_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn run<P: Lend>(
    rt: &tokio::runtime::Runtime,
    kind: PgPoolKind,
    pool: P,
    warmup: Duration,
    secs: Duration,
) -> Result<PgRep, BenchError> {
    let pool = Bench {
        pool: Arc::new(pool),
        kind,
    };
    rt.block_on(pool.prefill())?;
    let warm_end = Instant::now() + warmup;
    let end = warm_end + secs;
    let handles: Vec<_> = (0..TASKS)
        .map(|_| rt.spawn(worker(pool.clone(), warm_end, end)))
        .collect();
    rt.block_on(async move {
        tokio::time::sleep_until(warm_end.into()).await;
        let cpu0 = process_cpu()?;
        tokio::time::sleep_until(end.into()).await;
        let cpu1 = process_cpu()?;
        let mut ops = 0u64;
        let mut waits = histogram();
        for handle in handles {
            let (n, w) = handle.await.map_err(|e| BenchError::Pool {
                pool: "bench task",
                message: e.to_string(),
            })??;
            ops += n;
            // Same bounds on both sides: adding cannot fail.
            waits
                .add(&w)
                .expect("histograms built with identical bounds");
        }
        let ops_f = ops.max(1) as f64;
        Ok(PgRep {
            ops_per_sec: ops as f64 / secs.as_secs_f64(),
            cpu_us_per_op: (cpu1.saturating_sub(cpu0)).as_secs_f64() * 1e6 / ops_f,
            p99_wait_us: waits.value_at_quantile(0.99) as f64 / 1_000.0,
        })
    })
}

async fn worker<P: Lend>(
    pool: Bench<P>,
    warm_end: Instant,
    end: Instant,
) -> Result<(u64, Histogram<u64>), BenchError> {
    let mut waits = histogram();
    let mut ops = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let waited = pool.op().await?;
        if t0 >= warm_end {
            ops += 1;
            waits.saturating_record(u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Ok((ops, waits))
}

/// Where the pools connect.
enum Server {
    /// The given server, plain TCP: the connection string with `sslmode=disable`.
    Plain(String),
    /// An ephemeral cluster of the testkit, TLS with its certificate verified.
    Tls(TlsServer),
}

/// The `--tls` server and what each client needs to verify it.
struct TlsServer {
    /// Kept for the run: dropping it stops the cluster.
    cluster: EphemeralCluster,
    /// rustls configuration of the tokio-postgres peers (the cluster's certificate
    /// as the only root).
    rustls: Arc<rustls::ClientConfig>,
}

impl TlsServer {
    fn start(rt: &tokio::runtime::Runtime) -> Result<TlsServer, BenchError> {
        let cluster = rt
            .block_on(EphemeralCluster::new())
            .map_err(|e| BenchError::Pool {
                pool: "ephemeral TLS cluster",
                message: e.to_string(),
            })?;
        let rustls = Arc::new(rustls_config(&cluster.root_cert_path())?);
        Ok(TlsServer { cluster, rustls })
    }

    /// The cluster's TCP settings for the tokio-postgres peers; the certificate is
    /// verified by the rustls configuration (`sslmode` here only asks for TLS).
    fn pg_config(&self) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host("localhost")
            .port(self.cluster.port())
            .user("postgres")
            .password(self.cluster.password())
            .dbname("postgres")
            .ssl_mode(SslMode::Require);
        pg
    }
}

fn rustls_config(root: &Path) -> Result<rustls::ClientConfig, BenchError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let tls_error = |e: &dyn std::fmt::Display| BenchError::Pool {
        pool: "TLS configuration",
        message: format!("{}: {e}", root.display()),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).map_err(|e| tls_error(&e))? {
        roots
            .add(cert.map_err(|e| tls_error(&e))?)
            .map_err(|e| tls_error(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// sqlx's options for the same server as `pg` (plain) or the TLS cluster.
fn sqlx_options(pg: &tokio_postgres::Config, tls: Option<&TlsServer>) -> PgConnectOptions {
    let mut options = PgConnectOptions::new_without_pgpass();
    if let Some(Host::Tcp(host)) = pg.get_hosts().first() {
        options = options.host(host);
    }
    if let Some(port) = pg.get_ports().first() {
        options = options.port(*port);
    }
    if let Some(user) = pg.get_user() {
        options = options.username(user);
    }
    if let Some(password) = pg.get_password() {
        options = options.password(&String::from_utf8_lossy(password));
    }
    if let Some(dbname) = pg.get_dbname() {
        options = options.database(dbname);
    }
    match tls {
        None => options.ssl_mode(PgSslMode::Disable),
        Some(server) => options
            .ssl_mode(PgSslMode::VerifyFull)
            .ssl_root_cert(server.cluster.root_cert_path()),
    }
}

fn deadpool<T: PgTls>(
    pg: tokio_postgres::Config,
    tls: T,
) -> Result<deadpool_postgres::Pool, BenchError> {
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(POOL_SIZE as usize)
        .build()
        .map_err(|e| pool_error(PgPoolKind::Deadpool, e))
}

/// The diagnostic row's manager: what deadpool-postgres's `Manager` does with
/// `RecyclingMethod::Fast` (connect with the given connector, spawn the driver; a
/// connection whose driver ended is not reused; no reset, no tracking), as a queuepool
/// [`Manager`](queuepool::Manager).
struct BareManager<T> {
    pg: tokio_postgres::Config,
    tls: T,
}

impl<T: PgTls> queuepool::Manager for BareManager<T> {
    type Connection = tokio_postgres::Client;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.pg.connect(self.tls.clone()).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn is_valid(
        &self,
        conn: &mut tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        conn.simple_query("").await.map(drop)
    }

    async fn reset(&self, _: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        Ok(())
    }

    fn needs_reset(&self, _: &tokio_postgres::Client) -> bool {
        false
    }

    fn health(&self, conn: &mut tokio_postgres::Client) -> queuepool::Health {
        if conn.is_closed() {
            queuepool::Health::Disconnected
        } else {
            queuepool::Health::Ok
        }
    }

    fn is_disconnect(&self, error: &tokio_postgres::Error) -> bool {
        error.is_closed()
    }
}

impl<T: PgTls> Select1 for queuepool::PooledConn<BareManager<T>> {
    async fn select1(&mut self) -> Result<(), String> {
        client_select1(self).await
    }
}

/// A queuepool pool over `manager` with the configuration of both queuepool rows.
fn queuepool_pool<M: queuepool::Manager>(
    rt: &tokio::runtime::Runtime,
    kind: PgPoolKind,
    manager: M,
) -> Result<queuepool::Pool<M>, BenchError> {
    let config = queuepool::PoolConfig::builder()
        .pool_size(POOL_SIZE)
        .max_overflow(0)
        .pool_timeout(CHECKOUT_LIMIT)
        .name("bench-pg")
        .build()
        .map_err(|e| pool_error(kind, e))?;
    rt.block_on(queuepool::Pool::new(manager, config))
        .map_err(|e| pool_error(kind, e))
}

fn bb8<T: PgTls>(
    rt: &tokio::runtime::Runtime,
    kind: PgPoolKind,
    pg: tokio_postgres::Config,
    tls: T,
) -> Result<Bb8Pool<T>, BenchError> {
    let manager = bb8_postgres::PostgresConnectionManager::new(pg, tls);
    let builder = bb8::Pool::builder()
        .max_size(POOL_SIZE)
        .connection_timeout(CHECKOUT_LIMIT)
        .test_on_check_out(kind == PgPoolKind::Bb8Default);
    rt.block_on(builder.build(manager))
        .map_err(|e| pool_error(kind, e))
}

/// One measurement: a fresh runtime and a fresh, full pool of `kind`.
fn measure(
    kind: PgPoolKind,
    server: &Server,
    warmup: Duration,
    secs: Duration,
) -> Result<PgRep, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let (pg, tls) = match server {
        Server::Plain(url) => (
            tokio_postgres::Config::from_str(url).map_err(|e| pool_error(kind, e))?,
            None,
        ),
        Server::Tls(t) => (t.pg_config(), Some(t)),
    };
    let rep = match kind {
        PgPoolKind::Queuepool => {
            let url = match server {
                Server::Plain(url) => url.clone(),
                Server::Tls(t) => t.cluster.url("verify-full"),
            };
            let manager =
                queuepool_postgres::PgManager::from_url(&url).map_err(|e| pool_error(kind, e))?;
            run(&rt, kind, queuepool_pool(&rt, kind, manager)?, warmup, secs)
        }
        PgPoolKind::QueuepoolBare => match tls {
            None => {
                let pool = queuepool_pool(&rt, kind, BareManager { pg, tls: NoTls })?;
                run(&rt, kind, pool, warmup, secs)
            }
            Some(t) => {
                let tls = MakeRustlsConnect::new((*t.rustls).clone());
                let pool = queuepool_pool(&rt, kind, BareManager { pg, tls })?;
                run(&rt, kind, pool, warmup, secs)
            }
        },
        PgPoolKind::Deadpool => match tls {
            None => run(&rt, kind, deadpool(pg, NoTls)?, warmup, secs),
            Some(t) => {
                let tls = MakeRustlsConnect::new((*t.rustls).clone());
                run(&rt, kind, deadpool(pg, tls)?, warmup, secs)
            }
        },
        PgPoolKind::Bb8NoTest | PgPoolKind::Bb8Default => match tls {
            None => run(&rt, kind, bb8(&rt, kind, pg, NoTls)?, warmup, secs),
            Some(t) => {
                let tls = MakeRustlsConnect::new((*t.rustls).clone());
                run(&rt, kind, bb8(&rt, kind, pg, tls)?, warmup, secs)
            }
        },
        PgPoolKind::SqlxNoTest | PgPoolKind::SqlxDefault => {
            let options = sqlx_options(&pg, tls);
            let pool = rt
                .block_on(
                    PgPoolOptions::new()
                        .max_connections(POOL_SIZE)
                        .acquire_timeout(CHECKOUT_LIMIT)
                        .test_before_acquire(kind == PgPoolKind::SqlxDefault)
                        .connect_with(options),
                )
                .map_err(|e| pool_error(kind, e))?;
            run(&rt, kind, pool, warmup, secs)
        }
    };
    rt.shutdown_timeout(Duration::from_secs(5));
    rep
}

/// One row: medians over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct PgRow {
    /// Scenario name.
    pub name: &'static str,
    /// Pool name.
    pub pool: &'static str,
    /// Median ops/s.
    pub ops_per_sec: f64,
    /// Median client CPU per operation, µs.
    pub cpu_us_per_op: f64,
    /// Median of the 99th percentile checkout wait, µs.
    pub p99_wait_us: f64,
    /// `ops_per_sec` / deadpool-postgres's.
    pub ops_vs_deadpool: Option<f64>,
    /// `cpu_us_per_op` / deadpool-postgres's.
    pub cpu_vs_deadpool: Option<f64>,
    /// Each repetition's ops/s over deadpool-postgres's in the same round (the two ran
    /// back to back): median, range and how many were >= 1.
    pub paired_ops_vs_deadpool: Option<Paired>,
    /// The same for the CPU per operation (`at_least_1` counts rounds where this pool
    /// used as much CPU per operation as deadpool-postgres or more).
    pub paired_cpu_vs_deadpool: Option<Paired>,
    /// Every repetition, in run order.
    pub reps: Vec<PgRep>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct PgReport {
    /// The code measured.
    pub code: crate::code::Code,
    /// One row per pool.
    pub scenarios: Vec<PgRow>,
    /// Repetitions per row.
    pub reps: usize,
    /// Measured seconds per repetition.
    pub secs: f64,
    /// Warm-up seconds before each repetition.
    pub warmup_secs: f64,
    /// Pool size and tasks.
    pub pool_size: u32,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Whether every pool ran over TLS (`--tls`, ephemeral cluster).
    pub tls: bool,
}

/// Runs the group.
pub fn run_group(a: &PgArgs) -> Result<(), BenchError> {
    // With `--tls` the cluster lives on its own runtime for the whole run (the
    // testkit's setup and teardown use it); the measurements get fresh ones.
    let cluster_rt;
    let server = if a.tls {
        cluster_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(BenchError::Runtime)?;
        let server = TlsServer::start(&cluster_rt)?;
        eprintln!(
            "TLS: ephemeral cluster on localhost:{} (sslmode=verify-full, SCRAM)",
            server.cluster.port()
        );
        Server::Tls(server)
    } else {
        Server::Plain(plain_url(&a.database_url)?)
    };
    let mut results: Vec<(PgPoolKind, Vec<PgRep>)> =
        a.pools.iter().map(|&k| (k, Vec::new())).collect();
    for rep in 0..a.reps {
        // Every other repetition runs the pools in reverse order, so that no pool
        // always follows the same one or always runs first, and a drift of the
        // machine's load during the run weighs on all pools alike (with a fixed order,
        // two runs that only swapped queuepool and deadpool-postgres moved the ratio
        // between them by up to 7 %).
        for i in run_order(results.len(), rep) {
            let (kind, reps) = &mut results[i];
            let r = measure(*kind, &server, a.warmup, a.secs)?;
            eprintln!(
                "{:<32} rep {}/{}: {:>9.0} ops/s  {:>6.1} µs CPU/op  p99 wait {:>9.1} µs",
                kind.name(),
                rep + 1,
                a.reps,
                r.ops_per_sec,
                r.cpu_us_per_op,
                r.p99_wait_us
            );
            reps.push(r);
        }
    }
    let series = |reps: &[PgRep], f: fn(&PgRep) -> f64| reps.iter().map(f).collect::<Vec<_>>();
    let med = |reps: &[PgRep], f: fn(&PgRep) -> f64| median(&mut series(reps, f));
    let base_reps = results
        .iter()
        .find(|(k, _)| *k == PgPoolKind::Deadpool)
        .map(|(_, r)| r.as_slice());
    let base = base_reps.map(|r| (med(r, |x| x.ops_per_sec), med(r, |x| x.cpu_us_per_op)));
    let rows: Vec<PgRow> = results
        .iter()
        .map(|(kind, reps)| {
            let ops = med(reps, |x| x.ops_per_sec);
            let cpu = med(reps, |x| x.cpu_us_per_op);
            let vs = |f: fn(&PgRep) -> f64| {
                let b = base_reps?;
                paired(&series(reps, f), &series(b, f))
            };
            PgRow {
                name: if a.tls { SCENARIO_TLS } else { SCENARIO },
                pool: kind.name(),
                ops_per_sec: ops,
                cpu_us_per_op: cpu,
                p99_wait_us: med(reps, |x| x.p99_wait_us),
                ops_vs_deadpool: base.map(|(o, _)| ops / o),
                cpu_vs_deadpool: base.map(|(_, c)| cpu / c),
                paired_ops_vs_deadpool: vs(|x| x.ops_per_sec),
                paired_cpu_vs_deadpool: vs(|x| x.cpu_us_per_op),
                reps: reps.clone(),
            }
        })
        .collect();
    let report = PgReport {
        code: crate::code::CODE,
        scenarios: rows,
        reps: a.reps,
        secs: a.secs.as_secs_f64(),
        warmup_secs: a.warmup.as_secs_f64(),
        pool_size: POOL_SIZE,
        tasks: TASKS,
        tls: a.tls,
    };
    drop(server);
    print!("{}", table(&report));
    if let Some(path) = &a.json {
        report::write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The order of the pools in repetition `rep`: forward, then backward, in turn.
fn run_order(pools: usize, rep: usize) -> Vec<usize> {
    if rep.is_multiple_of(2) {
        (0..pools).collect()
    } else {
        (0..pools).rev().collect()
    }
}

fn table(r: &PgReport) -> String {
    let mut out = format!(
        "{}\npg group: {} tasks, pool {}, SELECT 1 (simple protocol), {}; median of {} reps x {:.1} s (warm-up {:.1} s)\n",
        r.code,
        r.tasks,
        r.pool_size,
        if r.tls {
            "TLS (verify-full, ephemeral cluster)"
        } else {
            "plain TCP"
        },
        r.reps,
        r.secs,
        r.warmup_secs
    );
    out.push_str(
        "| pool | ops/s | CPU µs/op | p99 wait µs | ops vs deadpool | CPU vs deadpool | ops, per round | CPU, per round |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}×"));
    for row in &r.scenarios {
        out.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.0} | {} | {} | {} | {} |\n",
            row.pool,
            row.ops_per_sec,
            row.cpu_us_per_op,
            row.p99_wait_us,
            ratio(row.ops_vs_deadpool),
            ratio(row.cpu_vs_deadpool),
            per_round(row.paired_ops_vs_deadpool, row.pool),
            per_round(row.paired_cpu_vs_deadpool, row.pool),
        ));
    }
    out.push_str(
        "per round: each repetition against deadpool-postgres's of the same round (run next to it): \
         median, range, and in how many rounds the ratio was >= 1 (ops: as fast or faster; CPU: as much CPU per op or more)\n",
    );
    out
}

/// A table cell for per-round ratios: `0.99× (0.94-1.03) 2/5`.
fn per_round(p: Option<Paired>, pool: &str) -> String {
    match p {
        Some(_) if pool == PgPoolKind::Deadpool.name() => "-".to_owned(),
        Some(p) => format!(
            "{:.2}× ({:.2}-{:.2}) {}/{}",
            p.median, p.min, p.max, p.at_least_1, p.rounds
        ),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pool of the group, the diagnostic row included, opens its connections and
    /// runs the query against the local server (a short repetition each; the figures
    /// themselves are not asserted: this is a test, not a benchmark).
    #[test]
    fn every_pool_of_the_group_runs_the_query_on_the_local_server() {
        let server = Server::Plain(plain_url(crate::args::DEFAULT_DATABASE_URL).unwrap());
        for kind in PgPoolKind::ALL {
            let rep = measure(kind, &server, Duration::ZERO, Duration::from_millis(200))
                .unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            assert!(
                rep.ops_per_sec > 0.0,
                "{}: no operation completed",
                kind.name()
            );
        }
    }

    #[test]
    fn plain_url_adds_sslmode_disable_to_urls_and_key_value_strings() {
        assert_eq!(
            plain_url("postgres://postgres@127.0.0.1:5432/test").unwrap(),
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
        );
        assert_eq!(
            plain_url("postgresql://u@h/db?application_name=x").unwrap(),
            "postgresql://u@h/db?application_name=x&sslmode=disable"
        );
        assert_eq!(
            plain_url("host=127.0.0.1 user=postgres").unwrap(),
            "host=127.0.0.1 user=postgres sslmode=disable"
        );
        assert_eq!(
            plain_url("postgres://h/db?sslmode=disable").unwrap(),
            "postgres://h/db?sslmode=disable"
        );
    }

    #[test]
    fn plain_url_refuses_a_tls_sslmode_on_one_line() {
        for url in ["postgres://h/db?sslmode=require", "host=h sslmode=prefer"] {
            let err = plain_url(url).unwrap_err().to_string();
            assert!(err.contains("sslmode="), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn per_round_ratios_pair_each_repetition_with_the_baseline_s_of_its_round() {
        // Round 2 was slow for both pools: each round's ratio compares two measurements
        // taken under the same load; this pool was behind in every round.
        let mine = [95.0, 47.5, 99.0];
        let base = [100.0, 50.0, 100.0];
        let p = paired(&mine, &base).expect("rounds");
        assert!((p.median - 0.95).abs() < 1e-9, "{p:?}");
        assert!(
            (p.min - 0.95).abs() < 1e-9 && (p.max - 0.99).abs() < 1e-9,
            "{p:?}"
        );
        assert_eq!((p.at_least_1, p.rounds), (0, 3));
        let ahead = paired(&[101.0, 49.0], &[100.0, 50.0]).expect("rounds");
        assert_eq!((ahead.at_least_1, ahead.rounds), (1, 2));
        assert_eq!(paired(&[], &[]), None);
        assert_eq!(per_round(Some(p), "queuepool"), "0.95× (0.95-0.99) 0/3");
        assert_eq!(per_round(Some(p), PgPoolKind::Deadpool.name()), "-");
        assert_eq!(per_round(None, "queuepool"), "-");
    }

    #[test]
    fn repetitions_alternate_forward_and_backward() {
        assert_eq!(run_order(3, 0), [0, 1, 2]);
        assert_eq!(run_order(3, 1), [2, 1, 0]);
        assert_eq!(run_order(3, 2), [0, 1, 2]);
    }

    #[test]
    fn cpu_time_is_utime_plus_stime_after_the_command_name() {
        let stat = "1234 (a) b c) S 1 1 1 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 5";
        assert_eq!(parse_cpu(stat), Some(Duration::from_millis(2_870)));
        assert_eq!(parse_cpu("garbage"), None);
    }
}
