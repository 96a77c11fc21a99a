//! [`ReadWrite`] on an ephemeral primary and two streaming standbys (testkit's
//! `ReplicaSet`): every writer reads its row back at once, readers without a token read
//! all the time, and the tests count what each read saw and where it went.
//!
//! Run with `--nocapture` to see the figures (docs/RELIABILITY.md quotes them).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestResult, bounded, eventually};
use queuepool::{Pool, PoolConfig};
use queuepool_postgres::{Lsn, PgError, PgManager, ReadWrite, Route, RoutingConfig};
use queuepool_testkit::ReplicaSet;
use tokio::sync::Mutex;
use tokio_postgres::types::Type;

/// The replica sets are heavy (three servers each): one test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

const QUERY_LIMIT: Duration = Duration::from_secs(5);

/// A primary and two standbys, `synchronous_commit = on` on the primary (the server's
/// default; the testkit turns it off for speed), a table, and a [`ReadWrite`] whose
/// standbys both get reads.
async fn setup(
    routing: RoutingConfig,
) -> Result<(ReplicaSet, ReadWrite), Box<dyn std::error::Error + Send + Sync>> {
    let mut set = ReplicaSet::new(2).await?;
    set.cluster_mut(0)
        .set_setting("synchronous_commit", "on")
        .await?;
    let config = PoolConfig::builder()
        .pool_size(4)
        .max_overflow(4)
        .pool_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let primary = Pool::new(PgManager::from_url(&set.node_url(0))?, config.clone()).await?;
    primary
        .get()
        .await?
        .batch_execute("CREATE TABLE rr (id BIGSERIAL PRIMARY KEY, writer INT NOT NULL)")
        .await?;
    let standbys = PgManager::from_url(&set.url_of(&[1, 2], &[]))?.split_hosts();
    let rw = ReadWrite::with_standbys(primary, standbys, config, routing).await?;
    for i in 1..=2 {
        set.wait_caught_up(0, i, Duration::from_secs(10)).await?;
    }
    let ready = eventually(Duration::from_secs(10), || {
        let rw = rw.clone();
        async move { Ok(rw.stats().standbys.iter().all(|s| s.eligible)) }
    })
    .await?;
    if !ready {
        return Err(format!("standbys never became eligible: {:?}", rw.stats()).into());
    }
    Ok((set, rw))
}

/// Runs a read of one `i64` (`SELECT count(*) ...`), retried on another server when
/// its connection is lost, as a service would: returns the value and the route.
async fn read_count(
    rw: &ReadWrite,
    after: Option<Lsn>,
    id: Option<i64>,
) -> Result<(i64, Route), String> {
    let mut avoid: Option<Route> = None;
    for _ in 0..3 {
        let mut conn = rw
            .read_avoiding(after, avoid.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let rows = match id {
            Some(id) => {
                let params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)] =
                    &[(&id, Type::INT8)];
                let query = conn.query_typed("SELECT count(*) FROM rr WHERE id = $1", params);
                conn.timeout(QUERY_LIMIT, query).await
            }
            None => {
                let query = conn.query_typed("SELECT count(*) FROM rr", &[]);
                conn.timeout(QUERY_LIMIT, query).await
            }
        };
        match rows {
            Ok(rows) => {
                let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(-1);
                return Ok((n, conn.route().clone()));
            }
            Err(e) => {
                if rw.failed(&mut conn, &e) {
                    avoid = Some(conn.route().clone());
                    continue;
                }
                return Err(e.to_string());
            }
        }
    }
    Err("three reads in a row lost their connection".into())
}

/// Inserts a row on the primary and returns its id and the write's token.
async fn write_row(rw: &ReadWrite, writer: i32) -> Result<(i64, Lsn), PgError> {
    let conn = rw
        .write()
        .await
        .map_err(|e| PgError::Client(e.to_string()))?;
    let params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)] = &[(&writer, Type::INT4)];
    let query = conn.query_typed("INSERT INTO rr (writer) VALUES ($1) RETURNING id", params);
    let rows = conn.timeout(QUERY_LIMIT, query).await?;
    let id: i64 = rows
        .first()
        .map(|r| r.get(0))
        .ok_or_else(|| PgError::Client("no id".into()))?;
    Ok((id, ReadWrite::token(&conn).await?))
}

#[derive(Debug, Default)]
struct Tally {
    writes: u64,
    failed_writes: u64,
    /// Reads of a writer's own row, right after the write, with its token.
    readbacks: u64,
    /// Of those, how many did not see the row.
    misses: Vec<String>,
    /// Reads (of either kind) that failed.
    failed_reads: Vec<String>,
    /// Read-backs by route.
    readback_routes: BTreeMap<String, u64>,
    /// Token-less reads by route.
    plain_routes: BTreeMap<String, u64>,
}

/// `writers` tasks writing a row and reading it back at once, and `readers` tasks
/// reading without a token, for `run`.
async fn load(rw: &ReadWrite, writers: i32, readers: usize, run: Duration) -> Tally {
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let (rw, tally, stop) = (rw.clone(), tally.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (id, token) = match write_row(&rw, writer).await {
                    Ok(w) => w,
                    Err(e) => {
                        let mut t = tally.lock().unwrap();
                        t.failed_writes += 1;
                        t.failed_reads.push(format!("write: {e}"));
                        continue;
                    }
                };
                let read = read_count(&rw, Some(token), Some(id)).await;
                let mut t = tally.lock().unwrap();
                t.writes += 1;
                match read {
                    Ok((n, route)) => {
                        t.readbacks += 1;
                        *t.readback_routes
                            .entry(route.label().to_owned())
                            .or_default() += 1;
                        if n != 1 {
                            t.misses
                                .push(format!("row {id} (token {token}) not seen on {route}"));
                        }
                    }
                    Err(e) => t.failed_reads.push(e),
                }
            }
        });
    }
    for _ in 0..readers {
        let (rw, tally, stop) = (rw.clone(), tally.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let read = read_count(&rw, None, None).await;
                let mut t = tally.lock().unwrap();
                match read {
                    Ok((_, route)) => {
                        *t.plain_routes.entry(route.label().to_owned()).or_default() += 1;
                    }
                    Err(e) => t.failed_reads.push(e),
                }
            }
        });
    }
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(tally)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default()
}

fn standby_label(rw: &ReadWrite, i: usize) -> String {
    rw.stats().standbys[i].label.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_own_write_see_it_and_reads_spread_over_both_standbys() -> TestResult {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let (_set, rw) = setup(RoutingConfig::default()).await?;
        let started = Instant::now();
        let t = load(&rw, 4, 4, Duration::from_secs(4)).await;
        println!(
            "mixed load, 4 writers reading back at once + 4 readers, {:?}: {t:#?}",
            started.elapsed()
        );
        println!("router: {:#?}", rw.stats());
        assert!(
            t.misses.is_empty(),
            "reads that missed their own write: {:?}",
            t.misses
        );
        assert!(t.failed_reads.is_empty(), "failed: {:?}", t.failed_reads);
        assert!(
            t.readbacks > 100,
            "too few read-backs to mean anything: {t:?}"
        );
        for i in 0..2 {
            let label = standby_label(&rw, i);
            let n = t.plain_routes.get(&label).copied().unwrap_or(0);
            assert!(n > 50, "standby {label} got {n} reads: {t:?}");
        }
        // A read with no token never needs the primary while a standby qualifies.
        assert_eq!(t.plain_routes.get("primary"), None, "{t:?}");
        rw.close(Duration::from_secs(2)).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_killed_mid_run_costs_no_failed_read() -> TestResult {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let (mut set, rw) = setup(RoutingConfig::default()).await?;
        let killed = standby_label(&rw, 1);
        let runner = {
            let rw = rw.clone();
            tokio::spawn(async move { load(&rw, 4, 4, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        set.cluster_mut(2).kill().await?;
        let killed_at = Instant::now();
        // The probes notice within a refresh interval; let in-flight reads settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rw.stats();
        let t = runner.await?;
        let after = rw.stats();
        println!("standby {killed} killed at 1.5 s of 5 s: {t:#?}");
        println!("router after: {after:#?}");
        assert!(t.failed_reads.is_empty(), "failed: {:?}", t.failed_reads);
        assert!(t.misses.is_empty(), "missed: {:?}", t.misses);
        assert_eq!(t.failed_writes, 0);
        assert!(!after.standbys[1].up, "{after:?}");
        assert_eq!(
            after.standbys[1].reads, before.standbys[1].reads,
            "reads went to the dead standby more than 0.5 s after it was killed"
        );
        assert!(
            after.standbys[0].reads > before.standbys[0].reads,
            "{after:?}"
        );
        assert!(killed_at.elapsed() > Duration::from_secs(3));
        rw.close(Duration::from_secs(2)).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_standby_gets_no_read_that_would_be_stale() -> TestResult {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let (mut set, rw) = setup(RoutingConfig::default()).await?;
        // Within the 1 s lag bound: the standby keeps getting token-less reads, so only
        // the token keeps the read-backs off it.
        set.set_apply_delay(2, Duration::from_millis(400)).await?;
        let delayed = standby_label(&rw, 1);
        let t = load(&rw, 4, 4, Duration::from_secs(4)).await;
        println!("standby {delayed} with recovery_min_apply_delay = 400ms: {t:#?}");
        println!("router: {:#?}", rw.stats());
        assert!(t.misses.is_empty(), "stale reads: {:?}", t.misses);
        assert!(t.failed_reads.is_empty(), "failed: {:?}", t.failed_reads);
        let plain = t.plain_routes.get(&delayed).copied().unwrap_or(0);
        assert!(
            plain > 50,
            "the delayed standby got {plain} token-less reads: {t:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_lagging_past_the_bound_gets_no_reads_until_it_catches_up() -> TestResult {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let (mut set, rw) = setup(RoutingConfig::default()).await?;
        set.set_apply_delay(2, Duration::from_secs(3)).await?;
        let lagging = standby_label(&rw, 1);
        // Writes make the delay a lag; past 1 s the standby is out.
        let warmup = load(&rw, 2, 0, Duration::from_millis(2000)).await;
        assert!(warmup.misses.is_empty(), "{:?}", warmup.misses);
        let before = rw.stats();
        assert!(!before.standbys[1].eligible, "still eligible: {before:?}");
        let t = load(&rw, 2, 4, Duration::from_secs(2)).await;
        let after = rw.stats();
        println!("standby {lagging} 3 s behind: {t:#?}");
        println!("router: {after:#?}");
        assert!(t.misses.is_empty(), "stale reads: {:?}", t.misses);
        assert_eq!(
            t.plain_routes.get(&lagging),
            None,
            "the lagging standby got reads: {t:?}"
        );
        assert!(
            after.standbys[1]
                .lag
                .is_some_and(|l| l > Duration::from_secs(1)),
            "{after:?}"
        );
        // Delay removed, writes stopped: it catches up and gets reads again.
        set.set_apply_delay(2, Duration::ZERO).await?;
        let back = eventually(Duration::from_secs(10), || {
            let rw = rw.clone();
            async move { Ok(rw.stats().standbys[1].eligible) }
        })
        .await?;
        assert!(back, "never caught up: {:?}", rw.stats());
        Ok(())
    })
    .await
}

/// Polls `fut` at most `polls` times, yielding to the runtime between polls, and drops
/// it if it has not finished by then.
async fn poll_then_drop<F: std::future::Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(out) = polled {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_dropped_at_any_await_lend_nothing_and_leave_the_pools_usable() -> TestResult {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let (_set, rw) = setup(RoutingConfig::default()).await?;
        // A token no standby has: every read goes through the recheck on a standby's
        // connection, then to the primary. Dropped after 1 to 300 polls (a yield to the
        // runtime between polls), the futures stop at the checkouts, the recheck's query
        // and the primary's checkout. (Polls, not a time limit: tokio's timer rounds
        // sub-millisecond limits up to a millisecond, in which a quiet machine finishes
        // almost every read; here about half of them finish.)
        let ahead = Lsn(u64::MAX >> 1);
        let mut finished = 0;
        for i in 0..300usize {
            if let Some(read) = poll_then_drop(rw.read(Some(ahead)), 1 + (i * 7) % 300).await {
                let conn = read?;
                assert!(conn.route().is_primary(), "{:?}", conn.route());
                finished += 1;
            }
        }
        let idle = eventually(Duration::from_secs(5), || {
            let rw = rw.clone();
            async move {
                let lent = rw.primary().status().checked_out
                    + rw.standby_pools()
                        .map(|p| p.status().checked_out)
                        .sum::<usize>();
                Ok(lent == 0)
            }
        })
        .await?;
        assert!(idle, "connections still lent after the dropped reads");
        let stats = rw.stats();
        println!("{finished} of 300 reads finished; router: {stats:?}");
        assert!(
            finished < 285,
            "too few reads were dropped to test anything"
        );
        // Rechecks take turns between standbys at the same position.
        assert!(stats.standbys.iter().all(|s| s.rechecks > 0), "{stats:?}");
        assert_eq!(stats.primary_reads, stats.primary_reads_for_freshness);
        // Every pool still serves.
        let (n, route) = read_count(&rw, None, None).await?;
        assert!(n >= 0 && !route.is_primary(), "{route:?}");
        for pool in rw.standby_pools() {
            let conn = pool.get().await?;
            conn.simple_query("SELECT 1").await?;
        }
        Ok(())
    })
    .await
}
