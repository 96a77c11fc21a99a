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

const CONFIG_ENV: [&str; 13] = [
    "DATABASE_URL",
    "POOL_PRESET",
    "POOL_SIZE",
    "MAX_OVERFLOW",
    "POOL_TIMEOUT",
    "POOL_RECYCLE",
    "POOL_PRE_PING",
    "BIND",
    "SHUTDOWN_TIMEOUT",
    "LOG_FORMAT",
    "WAIT_FOR_DB",
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
    /// The thread reading stderr: ends at EOF, once the process and its pipe are gone.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts `queuepool serve --bind 127.0.0.1:0` and waits for its "listening on" line.
    fn start(env: &[(&str, &str)], extra: &[&str]) -> Server {
        Server::start_with(env, extra, false)
    }

    /// [`Server::start`]; with `close_stderr`, the reading end of its stderr (and its
    /// stdout) is closed right after the "listening on" line, as `queuepool serve 2>&1
    /// | head -1` does.
    fn start_with(env: &[(&str, &str)], extra: &[&str], close_stderr: bool) -> Server {
        let mut args = vec!["serve", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = command(env, &args)
            .stdout(if close_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn queuepool");
        drop(child.stdout.take());
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                    if close_stderr {
                        return; // drops the reader: the server's stderr is now a broken pipe
                    }
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
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(20))
    }

    /// Waits at most `bound` for the exit status.
    fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Every line the process wrote is in the log once the reader saw EOF.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit within {bound:?}:\n{}", self.log());
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
    // Described, histograms (they add up across instances), and the HTTP requests by
    // route and status.
    for line in [
        "# HELP queuepool_acquire_seconds ",
        "# TYPE queuepool_acquire_seconds histogram",
        "# HELP queuepool_connections_created_total ",
        "# TYPE http_request_duration_seconds histogram",
        "http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1",
        "http_request_duration_seconds_bucket{method=\"GET\",route=\"/health\",status=\"200\",le=\"+Inf\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(!metrics.contains("quantile="), "{metrics}");
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
    // The startup line names every page; the access log has one line per request.
    assert!(log.contains("/dashboard"), "{log}");
    let access = log
        .lines()
        .find(|l| l.contains("method=GET path=/health}") && l.contains("finished processing"))
        .unwrap_or_else(|| panic!("no access log line for /health:\n{log}"));
    assert!(access.contains(" INFO "), "{access}");
    assert!(access.contains("status=200"), "{access}");
    assert!(access.contains("latency="), "{access}");
    // The summary is true: every connection opened was closed.
    let summary = log
        .lines()
        .find(|l| l.contains("pool closed"))
        .expect("summary");
    let numbers: Vec<u64> = summary
        .rsplit('(')
        .next()
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        numbers.len() == 2 && numbers[0] == numbers[1] && numbers[0] > 0,
        "{summary}"
    );
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
    // A second start finds the table: nothing in the log says so.
    let mut again = Server::start(&[("DATABASE_URL", db.url())], &[]);
    assert!(again.terminate().success(), "{}", again.log());
    let log = again.log();
    assert!(log.contains("pool closed"), "{log}");
    assert!(!log.contains("already exists"), "{log}");
    drop(again);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_db_starts_the_service_once_the_database_accepts_connections() {
    use queuepool_testkit::{FaultMode, FaultProxy};

    let db = pg_db().await;
    let port = db.manager().unwrap().pg_config().get_ports()[0];
    let proxy = Arc::new(
        FaultProxy::start(([127, 0, 0, 1], port).into())
            .await
            .unwrap(),
    );
    proxy.set_mode(FaultMode::RefuseNew);
    let url = db.url_via("127.0.0.1", proxy.port()).unwrap();
    // Without the flag, a database that refuses connections ends the start at once.
    let output = command(
        &[("DATABASE_URL", &url)],
        &["serve", "--bind", "127.0.0.1:0"],
    )
    .output()
    .expect("run queuepool");
    assert_eq!(output.status.code(), Some(1));
    // With it, the service waits and starts once the database answers.
    let opener = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            proxy.set_mode(FaultMode::PassThrough);
        })
    };
    let started = Instant::now();
    let mut server = Server::start(&[("DATABASE_URL", &url), ("WAIT_FOR_DB", "30")], &[]);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "started before the database answered"
    );
    opener.await.unwrap();
    assert!(
        server.log().contains("database not reachable yet"),
        "{}",
        server.log()
    );
    let reply = reqwest::get(format!("{}/health", server.base))
        .await
        .expect("health");
    assert_eq!(reply.status(), 200);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn log_format_json_writes_every_line_as_a_json_object_with_the_access_log() {
    let db = SqliteDb::new();
    let mut server = Server::start(
        &[("DATABASE_URL", &db.url), ("LOG_FORMAT", "json")],
        &["--echo-pool"],
    );
    let reply = reqwest::get(format!("{}/health", server.base))
        .await
        .expect("health");
    assert_eq!(reply.status(), 200);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 3, "{log}");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(
            value.get("level").is_some() && value.get("fields").is_some(),
            "{line}"
        );
    }
    // The access log line of the request, and a pool line from --echo-pool.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/health") && l.contains("200")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.contains("queuepool::pool")), "{log}");
}

#[tokio::test]
async fn closed_stderr_and_stdout_never_stop_the_service_even_with_echo_pool() {
    let db = SqliteDb::new();
    let mut server = Server::start_with(&[("DATABASE_URL", &db.url)], &["--echo-pool"], true);
    let client = reqwest::Client::new();
    // Every request logs (access log, pool lines) into the broken pipe.
    for n in 0..20 {
        let reply = client
            .post(format!("{}/items", server.base))
            .json(&serde_json::json!({"name": format!("n{n}"), "price": 1}))
            .send()
            .await
            .expect("answered with stderr closed");
        assert_eq!(reply.status(), 201);
        let health = client
            .get(format!("{}/health", server.base))
            .send()
            .await
            .expect("answered with stderr closed");
        assert_eq!(health.status(), 200);
    }
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once_while_shutdown_waits_for_a_request() {
    use tokio::io::AsyncWriteExt;

    let db = SqliteDb::new();
    let mut server = Server::start(&[("DATABASE_URL", &db.url)], &["--shutdown-timeout", "60"]);
    // A request whose body never finishes arriving: graceful shutdown waits for it.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stuck = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stuck
        .write_all(
            b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"name\"",
        )
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("shutting down") {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "graceful shutdown did not wait for the running request:\n{}",
        server.log()
    );
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(143), "{}", server.log());
    assert!(server.log().contains("exiting now"), "{}", server.log());
    drop(stuck);
}
