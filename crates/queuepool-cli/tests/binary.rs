//! The real `queuepool` binary: starts, serves, and on SIGTERM exits 0 with its pool
//! closed; bad configuration exits 2 naming the key; a down database exits 1 without
//! printing the password.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CONFIG_ENV: [&str; 11] = [
    "DATABASE_URL",
    "POOL_PRESET",
    "POOL_SIZE",
    "MAX_OVERFLOW",
    "POOL_TIMEOUT",
    "POOL_RECYCLE",
    "POOL_PRE_PING",
    "BIND",
    "SHUTDOWN_TIMEOUT",
    "RUST_LOG",
    "NO_COLOR",
];

fn command(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_queuepool"));
    for key in CONFIG_ENV {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied()).args(args);
    cmd
}

struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `queuepool serve --bind 127.0.0.1:0` and waits for its "listening on" line.
    fn start(env: &[(&str, &str)], extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = command(env, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn queuepool");
        let stderr = child.stderr.take().expect("stderr");
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
                lines.lock().expect("log").push(line);
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!(
                "server did not start:\n{}",
                log.lock().expect("log").join("\n")
            );
        };
        Server {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit after SIGTERM:\n{}", self.log());
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

#[tokio::test]
async fn binary_on_sqlite_serves_and_exits_0_on_sigterm() {
    let db = SqliteDb::new();
    let mut server = Server::start(&[("DATABASE_URL", &db.url)], &["--echo-pool"]);
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.expect("json");
    assert_eq!(body["database"], "sqlite");
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("queuepool_connections_created_total"),
        "{metrics}"
    );
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.log());
    let log = server.log();
    // Startup logged the effective config and the URL; --echo-pool showed the pool.
    assert!(
        log.contains("pool: preset=dev (default) pool_size=5"),
        "{log}"
    );
    assert!(log.contains("Connection checked out from pool"), "{log}");
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(log.contains("pool closed"), "{log}");
    assert!(db.dir.path().join("items.db").exists());
}

#[tokio::test]
async fn binary_on_postgres_exits_0_on_sigterm_with_no_connection_left() {
    let db = pg_db().await;
    let app_name = db.application_name().to_owned();
    let mut server = Server::start(&[("DATABASE_URL", db.url()), ("POOL_SIZE", "4")], &[]);
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let pool: serde_json::Value = reqwest::get(format!("{}/pool", server.base))
        .await
        .expect("pool")
        .json()
        .await
        .expect("json");
    assert_eq!(pool["pool_size"], 4);
    assert_eq!(db.count_connections(&app_name).await.expect("count"), 4);

    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = db.count_connections(&app_name).await.expect("count");
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections left:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    db.drop_database().await.expect("drop test database");
}

#[test]
fn bad_setting_exits_2_naming_the_key() {
    let output = command(&[("POOL_SIZE", "lots")], &["serve"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("POOL_SIZE"), "{stderr}");
}

#[test]
fn unreachable_database_exits_1_without_printing_the_password() {
    let output = command(
        &[(
            "DATABASE_URL",
            "postgres://app:s3cret@127.0.0.1:1/shop?connect_timeout=2",
        )],
        &["serve", "--bind", "127.0.0.1:0", "--pool-timeout", "2"],
    )
    .output()
    .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("could not start the connection pool"),
        "{stderr}"
    );
    assert!(stderr.contains("app:***@127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn unknown_key_in_the_config_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queuepool.toml");
    std::fs::write(&path, "pool_size = 5\npool_sise = 6\n").expect("write");
    let output = command(&[], &["serve", "--config", path.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pool_sise"), "{stderr}");
    assert!(stderr.contains("queuepool.toml"), "{stderr}");
}
