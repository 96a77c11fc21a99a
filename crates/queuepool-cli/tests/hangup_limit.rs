//! Issue 10 §2 through the service: `queuepool serve` with `POOL_SIZE=2
//! MAX_OVERFLOW=0` on PostgreSQL, requests that update a row another session holds
//! locked, each client hanging up after 0.3 s (as load balancers and impatient users
//! do). The pool's backends in `pg_stat_activity`, sampled every 50 ms, never exceed
//! `pool_size + max_overflow`, and none is left once the service exited on SIGTERM,
//! though the lock is still held then.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::pg_db;
use queuepool_testkit::TestDb;
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const LIMIT: usize = 2;
const HANG_UP: Duration = Duration::from_millis(300);

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
            if key.starts_with("POOL_")
                || key == "DATABASE_URL"
                || key == "MAX_OVERFLOW"
                || key == "QUERY_TIMEOUT"
            {
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
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.to_owned());
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

    /// SIGTERM, then the exit status (bounded).
    fn terminate(
        &mut self,
    ) -> Result<std::process::ExitStatus, Box<dyn std::error::Error + Send + Sync>> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err("kill -TERM failed".into());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("no exit within 30 s of SIGTERM:\n{}", self.log()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pool's backends (by its `application_name`) every 50 ms until `stop`: the
/// highest count seen.
fn sample(
    db: Arc<TestDb>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<usize, String>> {
    tokio::spawn(async move {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            let n = db
                .count_connections(db.application_name())
                .await
                .map_err(|e| e.to_string())?;
            max = max.max(n);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(max)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_on_locked_updates_never_take_the_server_past_the_pool_limit()
-> TestResult {
    let db = Arc::new(pg_db().await);
    let mut server = Server::start(&[
        ("DATABASE_URL", db.url()),
        ("POOL_SIZE", "2"),
        ("MAX_OVERFLOW", "0"),
    ])?;
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{}/items", server.base))
        .json(&json!({"name": "locked", "price": 1.0}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_i64().ok_or("no id")?;

    // Another session holds the row: every update waits on its lock.
    let locker = db.observer().await?;
    locker.batch_execute("BEGIN").await?;
    locker
        .execute("SELECT 1 FROM items WHERE id = $1 FOR UPDATE", &[&id])
        .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(db.clone(), stop.clone());
    let impatient = reqwest::Client::builder().timeout(HANG_UP).build()?;
    let mut hung_up = 0;
    for wave in 0..4 {
        let requests: Vec<_> = (0..6)
            .map(|i| {
                let request = impatient
                    .put(format!("{}/items/{id}", server.base))
                    .json(&json!({"name": format!("w{wave}-{i}"), "price": 2.0}));
                tokio::spawn(request.send())
            })
            .collect();
        for r in requests {
            match r.await? {
                Err(e) if e.is_timeout() => hung_up += 1,
                other => {
                    return Err(format!("the update did not wait on the lock: {other:?}").into());
                }
            }
        }
    }
    assert_eq!(hung_up, 24, "every client hung up");
    // The abandoned updates are cancelled and their connections settled or replaced;
    // keep sampling while that happens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let serving = client
        .get(format!("{}/items/{id}", server.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    assert_eq!(serving.status(), 200, "the service still answers");

    // SIGTERM with the lock still held: nothing of the pool may stay behind.
    let status = server.terminate()?;
    assert!(status.success(), "{status:?}\n{}", server.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = loop {
        let n = db.count_connections(db.application_name()).await?;
        if n == 0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let max = sampler.await??;
    locker.batch_execute("ROLLBACK").await?;
    assert!(
        max <= LIMIT,
        "{max} backends of a pool limited to {LIMIT} ({left} left after exit):\n{}",
        server.log()
    );
    assert_eq!(
        left,
        0,
        "backends of the service left after it exited (at most {max} while it ran):\n{}",
        server.log()
    );
    assert!(max >= 1, "the sampler saw the pool");
    drop(server);
    if let Ok(db) = Arc::try_unwrap(db) {
        db.drop_database().await?;
    }
    Ok(())
}
