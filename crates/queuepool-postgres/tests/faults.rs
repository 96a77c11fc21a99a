//! Failures injected with the testkit's fault proxy and by restarting a cluster.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestResult, bounded, eventually};
use queuepool::{Pool, PoolConfig, PoolError, PooledConn};
use queuepool_postgres::{PgError, PgManager};
use queuepool_testkit::{EphemeralCluster, FaultMode, FaultProxy, TestDb};
use tokio::sync::Mutex;

/// The address of the test server (host and port of DATABASE_URL).
fn server_addr(db: &TestDb) -> Result<SocketAddr, Box<dyn std::error::Error + Send + Sync>> {
    let m = db.manager()?;
    let host = match m.pg_config().get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = m.pg_config().get_ports().first().copied().unwrap_or(5432);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
        .next()
        .ok_or("server address did not resolve")?;
    Ok(addr)
}

/// The test database's URL pointing at the proxy instead.
fn via_proxy(db: &TestDb, proxy: &FaultProxy) -> Result<String, queuepool_testkit::TestkitError> {
    db.url_via("127.0.0.1", proxy.port())
}

#[derive(Debug, Default)]
struct Outcome {
    /// (when it finished, how long it took, ok?)
    requests: Vec<(Instant, Duration, bool)>,
    /// The slowest failure and its error.
    slowest: Option<(Duration, String)>,
}

async fn load(pool: Pool<PgManager>, stop: Arc<AtomicBool>, out: Arc<Mutex<Outcome>>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let error = match pool.get().await {
            Ok(mut conn) => match conn.simple_query("SELECT 1").await {
                Ok(_) => None,
                Err(e) => {
                    let e = PgError::from(e);
                    PooledConn::report_error(&mut conn, &e);
                    Some(format!("query: {e}"))
                }
            },
            Err(e) => Some(format!(
                "checkout: {e}: {:?}",
                std::error::Error::source(&e).map(|s| s.to_string())
            )),
        };
        let took = started.elapsed();
        let ok = error.is_none();
        let mut out = out.lock().await;
        out.requests.push((Instant::now(), took, ok));
        if let Some(e) = error
            && out.slowest.as_ref().is_none_or(|s| s.0 < took)
        {
            out.slowest = Some((took, e));
        }
        drop(out);
        if !ok {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs 6 load tasks, calls `outage` (which must bring the server back and return the
/// instant it did), and checks the outage rules.
async fn restart_under_load<F, Fut>(pool: Pool<PgManager>, outage: F) -> TestResult
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Instant, Box<dyn std::error::Error + Send + Sync>>>,
{
    let pool_timeout = pool.config().pool_timeout;
    let connect_timeout = pool.config().connect_timeout;
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Outcome::default()));
    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(load(pool.clone(), stop.clone(), out.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = outage().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }

    let out = out.lock().await;
    let failed: Vec<_> = out.requests.iter().filter(|r| !r.2).collect();
    assert!(!failed.is_empty(), "the outage was visible to requests");
    let slowest_failure = failed.iter().map(|r| r.1).max().unwrap_or_default();
    eprintln!(
        "{} requests, {} failed, slowest failure {:?}",
        out.requests.len(),
        failed.len(),
        out.slowest
    );
    // Refused or reset connections fail at once; a connect that hangs (a postmaster
    // in its shutdown checkpoint no longer accepts) is cut by connect_timeout, so no
    // request outlives the documented bound pool_timeout + connect_timeout.
    assert!(
        slowest_failure < pool_timeout + connect_timeout,
        "a failing request took {slowest_failure:?}"
    );
    let mut latencies: Vec<Duration> = failed.iter().map(|r| r.1).collect();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(
        median < Duration::from_millis(250),
        "failures are fast: median {median:?}"
    );
    let first_ok_after = out
        .requests
        .iter()
        .filter(|r| r.2 && r.0 > back)
        .map(|r| r.0 - back)
        .min()
        .ok_or("no request succeeded after the server came back")?;
    eprintln!("first success {first_ok_after:?} after the server came back");
    assert!(
        first_ok_after < Duration::from_secs(1),
        "recovered {first_ok_after:?} after the server came back"
    );
    // Returned connections are reset in a task before they count as idle again.
    let settled = eventually(Duration::from_secs(2), || async {
        let s = pool.status();
        Ok((s.checked_out, s.waiting, s.connecting) == (0, 0, 0))
    })
    .await?;
    assert!(settled, "no leaked slot: {}", pool.status());
    let conn = pool.get().await?;
    conn.simple_query("SELECT 1").await?;
    drop(conn);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reset_and_refusal_under_load_fail_fast_and_recover() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let proxy = Arc::new(FaultProxy::start(server_addr(&db)?).await?);
        let config = PoolConfig::builder()
            .pool_size(4)
            .max_overflow(2)
            .pool_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let pool = Pool::new(PgManager::from_url(&via_proxy(&db, &proxy)?)?, config).await?;
        let p = proxy.clone();
        restart_under_load(pool, || async move {
            // The server "restarts": every connection is reset and new ones are refused.
            p.set_mode(FaultMode::RefuseNew);
            p.reset_all();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            p.set_mode(FaultMode::PassThrough);
            Ok(Instant::now())
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_restart_under_load_fails_fast_and_recovers() -> TestResult {
    bounded(60, async {
        let cluster = Arc::new(Mutex::new(EphemeralCluster::new().await?));
        let url = cluster.lock().await.url("require");
        let config = PoolConfig::builder()
            .pool_size(4)
            .max_overflow(2)
            .pool_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let pool = Pool::new(PgManager::from_url(&url)?, config).await?;
        let c = cluster.clone();
        restart_under_load(pool, || async move {
            let mut cluster = c.lock().await;
            cluster.stop().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.start().await?;
            Ok(Instant::now())
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_server_bounds_checkout_by_connect_timeout_and_query_by_timeout() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let proxy = FaultProxy::start(server_addr(&db)?).await?;
        let url = via_proxy(&db, &proxy)?;

        // A connection that was fine, then the path goes silent mid-session.
        let config = PoolConfig::builder()
            .pool_size(1)
            .max_overflow(1)
            .pool_timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_millis(800))
            .build()?;
        let pool = Pool::new(PgManager::from_url(&url)?, config).await?;
        let conn = pool.get().await?;
        proxy.set_mode(FaultMode::Blackhole);
        let started = Instant::now();
        let err = conn
            .timeout(Duration::from_millis(500), conn.simple_query("SELECT 1"))
            .await
            .err()
            .ok_or("a blackholed query must not succeed")?;
        let took = started.elapsed();
        assert!(matches!(err, PgError::Timeout(_)), "{err:?}");
        assert!(took < Duration::from_millis(900), "query bounded: {took:?}");
        assert!(conn.is_broken());
        drop(conn); // discarded, not returned
        let pooled = eventually(Duration::from_secs(2), || async {
            let s = pool.status();
            Ok(s.checked_out == 0 && s.idle == 0)
        })
        .await?;
        assert!(
            pooled,
            "the broken connection was discarded: {}",
            pool.status()
        );

        // New connections into the blackhole: checkout bounded by connect_timeout.
        let started = Instant::now();
        let err = pool
            .get()
            .await
            .err()
            .ok_or("checkout into a blackhole must fail")?;
        let took = started.elapsed();
        assert!(matches!(err, PoolError::ConnectTimeout(_)), "{err:?}");
        assert!(
            took < Duration::from_millis(1500),
            "checkout bounded: {took:?}"
        );

        // The pool's own ping is bounded too (manager ping_timeout).
        proxy.set_mode(FaultMode::PassThrough);
        let manager = PgManager::from_url(&url)?.ping_timeout(Duration::from_millis(300));
        let mut direct = manager.connect_one().await?;
        proxy.set_mode(FaultMode::Blackhole);
        let started = Instant::now();
        let err = queuepool::Manager::is_valid(&manager, &mut direct)
            .await
            .err()
            .ok_or("ping must fail")?;
        assert!(matches!(err, PgError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(800));
        assert_eq!(
            queuepool::Manager::health(&manager, &mut direct),
            queuepool::Health::Broken
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_slows_queries_but_they_succeed() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let proxy = FaultProxy::start(server_addr(&db)?).await?;
        let conn = PgManager::from_url(&via_proxy(&db, &proxy)?)?
            .connect_one()
            .await?;
        proxy.set_mode(FaultMode::Latency(Duration::from_millis(100)));
        let started = Instant::now();
        conn.simple_query("SELECT 1").await?;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200),
            "one delay each way: {took:?}"
        );
        assert!(took < Duration::from_secs(2));
        Ok(())
    })
    .await
}
