//! `queuepool serve` with a multi-host `DATABASE_URL` while the primary goes silent
//! (blackholed by the testkit's proxy, not stopped) and the standby is promoted.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use queuepool_testkit::ReplicaSet;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The real binary, killed on drop.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Result<Server, Box<dyn std::error::Error + Send + Sync>> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_queuepool"));
        for (key, _) in std::env::vars() {
            if key.starts_with("POOL_") || key == "DATABASE_URL" || key == "QUERY_TIMEOUT" {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut server = Server {
            child,
            base: String::new(),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => server.base = format!("http://{addr}"),
            Err(_) => return Err(format!("server did not start:\n{}", server.log()).into()),
        }
        Ok(server)
    }

    fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One POST /items: when it ended, how long it took, the status, the id if created.
#[derive(Debug, Clone)]
struct Write {
    ended: Instant,
    took: Duration,
    status: u16,
    id: Option<i64>,
}

async fn writer(
    client: reqwest::Client,
    base: String,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Write>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let sent = client
            .post(format!("{base}/items"))
            .json(&serde_json::json!({"name": format!("w{n}"), "price": 1.0}))
            .send()
            .await;
        let (status, id) = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (status, body["id"].as_i64().filter(|_| status == 201))
            }
            Err(_) => (0, None),
        };
        let failed = id.is_none();
        log.lock().unwrap_or_else(|p| p.into_inner()).push(Write {
            ended: Instant::now(),
            took: started.elapsed(),
            status,
            id,
        });
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_fails_over_to_the_promoted_standby_when_the_primary_goes_silent() -> TestResult
{
    let set = ReplicaSet::new(1).await?;
    // No connect_timeout in the URL: the service shares its pool's connect_timeout
    // (10 s by default) between the two hosts, 5 s each.
    let url = set.url(&[("target_session_attrs", "read-write")]);
    let pool_timeout = Duration::from_secs(2);
    let connect_timeout = Duration::from_secs(10); // the pool's default
    let server = Server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("POOL_SIZE", "4"),
        ("MAX_OVERFLOW", "0"),
        ("POOL_TIMEOUT", "2"),
        ("QUERY_TIMEOUT", "1"),
    ])?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;

    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(writer(
                client.clone(),
                server.base.clone(),
                next.clone(),
                stop.clone(),
                log.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    set.blackhole(0);
    set.wait_caught_up(0, 1, Duration::from_secs(10)).await?;
    set.promote(1).await?;
    let promoted = Instant::now();
    tokio::time::sleep(connect_timeout + Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }

    let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut statuses = BTreeMap::new();
    for w in &log {
        *statuses.entry(w.status).or_insert(0usize) += 1;
    }
    let acked: Vec<i64> = log.iter().filter_map(|w| w.id).collect();
    let first_after = log
        .iter()
        .filter(|w| w.id.is_some() && w.ended > promoted)
        .map(|w| w.ended - promoted)
        .min();
    let max_took = log.iter().map(|w| w.took).max().unwrap_or_default();
    let stored: HashSet<i64> = set
        .cluster(1)
        .admin()
        .await?
        .query("SELECT id FROM items", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost = acked.iter().filter(|id| !stored.contains(id)).count();
    eprintln!(
        "failover (service): statuses {statuses:?}; first acknowledged write {first_after:?} \
         after the promotion; slowest request {max_took:?}; {} acknowledged, {lost} lost",
        acked.len()
    );

    let first_after = first_after
        .ok_or_else(|| format!("no write after the promotion; log:\n{}", server.log()))?;
    assert!(
        first_after <= connect_timeout + Duration::from_secs(2),
        "first acknowledged write {first_after:?} after the promotion"
    );
    // Tighter: a connect attempt in flight on the silent host when the standby is
    // promoted has to wait out that host's share (5 s); the next one goes straight to
    // the new primary (the silent host is tried last).
    assert!(
        first_after <= connect_timeout / 2 + Duration::from_secs(2),
        "first acknowledged write {first_after:?} after the promotion"
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert!(
        statuses.keys().all(|s| *s == 201 || *s == 503),
        "only 201 and 503: {statuses:?}\n{}",
        server.log()
    );
    assert!(
        max_took <= pool_timeout + connect_timeout,
        "slowest request {max_took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_starts_and_serves_when_the_first_host_is_silent() -> TestResult {
    let set = ReplicaSet::new(0).await?;
    let silent = queuepool_testkit::FaultProxy::start(set.proxy(0).addr()).await?;
    silent.set_mode(queuepool_testkit::FaultMode::Blackhole);
    // No connect_timeout in the URL: each host gets half of the pool's 10 s, so the
    // silent first host cannot use up the whole wait (the service would exit 1).
    let url = set.url(&[]).replacen(
        "@127.0.0.1:",
        &format!("@127.0.0.1:{},127.0.0.1:", silent.port()),
        1,
    );
    let started = Instant::now();
    let server = Server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("POOL_SIZE", "2"),
        ("MAX_OVERFLOW", "0"),
    ])?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(9), "startup took {took:?}");
    let created = reqwest::Client::new()
        .post(format!("{}/items", server.base))
        .json(&serde_json::json!({"name": "first", "price": 1.0}))
        .send()
        .await?;
    assert_eq!(created.status().as_u16(), 201, "{}", server.log());
    Ok(())
}
