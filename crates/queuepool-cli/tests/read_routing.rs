//! `queuepool serve` with reads on standbys, in-process, on an ephemeral primary and two
//! streaming standbys: each write returns an `x-read-after` token, a read carrying it
//! sees the write, and a standby killed mid-run costs no failed read.
//!
//! Run with `--nocapture` for the figures (docs/RELIABILITY.md quotes them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use queuepool::{Pool, PoolConfig};
use queuepool_axum::{READ_AFTER, Reads};
use queuepool_cli::serve::{Timeouts, open_pool, router_with_reads};
use queuepool_postgres::{PgManager, ReadWrite, RoutingConfig};
use queuepool_testkit::ReplicaSet;
use serde_json::json;
use tokio::sync::Mutex;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Three servers per test: one test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

struct Service {
    set: ReplicaSet,
    rw: ReadWrite,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

async fn start() -> Result<Service, Error> {
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
    let pool: Pool<PgManager> = open_pool(&set.node_url(0), config.clone()).await?;
    let standbys = PgManager::from_url(&set.url_of(&[1, 2], &[]))?.split_hosts();
    let rw =
        ReadWrite::with_standbys(pool.clone(), standbys, config, RoutingConfig::default()).await?;
    for i in 1..=2 {
        set.wait_caught_up(0, i, Duration::from_secs(10)).await?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rw.stats().standbys.iter().all(|s| s.eligible) {
        if std::time::Instant::now() > deadline {
            return Err(format!("standbys never eligible: {:?}", rw.stats()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = router_with_reads(pool, Reads::new(rw.clone()), None, Timeouts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Service {
        set,
        rw,
        url,
        server,
    })
}

#[derive(Debug, Default)]
struct Tally {
    writes: u64,
    /// Writes whose response had no token.
    untokened: u64,
    /// Read-backs with the token that did not find the item (404).
    misses: u64,
    /// Read-backs without the token that did not find it (what the token prevents).
    misses_without_token: u64,
    /// Requests answered other than 2xx/404, or not at all.
    failed: Vec<String>,
    reads: u64,
}

/// `writers` clients creating an item and reading it back at once (half of them with
/// the token, half without), and `readers` clients listing items, for `run`.
async fn load(url: &str, writers: usize, readers: usize, run: Duration) -> Tally {
    let client = reqwest::Client::new();
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (client, tally, stop, url) =
            (client.clone(), tally.clone(), stop.clone(), url.to_owned());
        let with_token = w % 2 == 0;
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let created = client
                    .post(format!("{url}/items"))
                    .json(&json!({"name": "rw", "price": 1.0}))
                    .send()
                    .await;
                let response = match created {
                    Ok(r) if r.status() == 201 => r,
                    Ok(r) => {
                        tally
                            .lock()
                            .unwrap()
                            .failed
                            .push(format!("POST: {}", r.status()));
                        continue;
                    }
                    Err(e) => {
                        tally.lock().unwrap().failed.push(format!("POST: {e}"));
                        continue;
                    }
                };
                let token = response.headers().get(READ_AFTER).cloned();
                let id = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_i64())
                    .unwrap_or(-1);
                let mut read = client.get(format!("{url}/items/{id}"));
                if with_token && let Some(token) = &token {
                    read = read.header(READ_AFTER, token);
                }
                let read = read.send().await;
                let mut t = tally.lock().unwrap();
                t.writes += 1;
                t.untokened += u64::from(token.is_none());
                match read {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) if r.status() == 404 && with_token => t.misses += 1,
                    Ok(r) if r.status() == 404 => t.misses_without_token += 1,
                    Ok(r) => t.failed.push(format!("GET /items/{id}: {}", r.status())),
                    Err(e) => t.failed.push(format!("GET /items/{id}: {e}")),
                }
            }
        });
    }
    for _ in 0..readers {
        let (client, tally, stop, url) =
            (client.clone(), tally.clone(), stop.clone(), url.to_owned());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let read = client.get(format!("{url}/items?limit=5")).send().await;
                let mut t = tally.lock().unwrap();
                match read {
                    Ok(r) if r.status() == 200 => t.reads += 1,
                    Ok(r) => t.failed.push(format!("GET /items: {}", r.status())),
                    Err(e) => t.failed.push(format!("GET /items: {e}")),
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

fn reads_by_host(rw: &ReadWrite) -> BTreeMap<String, u64> {
    let stats = rw.stats();
    let mut by = BTreeMap::from([("primary".to_owned(), stats.primary_reads)]);
    for s in stats.standbys {
        by.insert(s.label, s.reads);
    }
    by
}

async fn bounded<T>(limit_s: u64, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::time::timeout(Duration::from_secs(limit_s), f)
        .await
        .map_err(|_| format!("test did not finish within {limit_s} s"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_reads_with_the_token_see_the_write_even_next_to_a_delayed_standby()
-> Result<(), Error> {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let mut s = start().await?;
        s.set.set_apply_delay(2, Duration::from_millis(400)).await?;
        let t = load(&s.url, 4, 2, Duration::from_secs(4)).await;
        let by_host = reads_by_host(&s.rw);
        println!(
            "service, standby 2 with a 400 ms apply delay: {t:#?}\nreads by host: {by_host:#?}"
        );
        assert!(t.failed.is_empty(), "{:?}", t.failed);
        assert_eq!(t.untokened, 0, "every write returns a token");
        assert_eq!(
            t.misses, 0,
            "a read with its write's token missed the write"
        );
        // Without the token a read-back can land on the delayed standby and miss: the
        // test exercises what the token prevents.
        assert!(t.misses_without_token > 0, "{t:?}");
        let standby_reads = by_host.iter().filter(|(h, n)| *h != "primary" && **n > 0);
        assert_eq!(
            standby_reads.count(),
            2,
            "reads on both standbys: {by_host:?}"
        );

        let client = reqwest::Client::new();
        let bad = client
            .get(format!("{}/items/1", s.url))
            .header(READ_AFTER, "yesterday")
            .send()
            .await?;
        assert_eq!(bad.status(), 422);
        let body: serde_json::Value = bad.json().await?;
        assert_eq!(body["error"], "invalid_read_after");
        s.server.abort();
        s.rw.close(Duration::from_secs(1)).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_standby_killed_mid_run_fails_no_request() -> Result<(), Error> {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let mut s = start().await?;
        let runner = {
            let url = s.url.clone();
            tokio::spawn(async move { load(&url, 4, 4, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.set.cluster_mut(2).kill().await?;
        let t = runner.await?;
        let by_host = reads_by_host(&s.rw);
        println!("service, standby 2 killed at 1.5 s of 5 s: {t:#?}\nreads by host: {by_host:#?}");
        assert!(t.failed.is_empty(), "{:?}", t.failed);
        assert_eq!(t.misses, 0);
        assert!(t.reads > 100, "{t:?}");
        s.server.abort();
        s.rw.close(Duration::from_secs(1)).await;
        Ok(())
    })
    .await
}
