//! `queuepool verify`, `bench`, `tune` and `status` as a user runs them: the real
//! binary, its exit status, stdout and stderr.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use queuepool_cli::serve::router;

/// The variables every command reads.
const CONFIG_ENV: [&str; 8] = [
    "DATABASE_URL",
    "POOL_PRESET",
    "POOL_SIZE",
    "MAX_OVERFLOW",
    "POOL_TIMEOUT",
    "POOL_RECYCLE",
    "POOL_PRE_PING",
    "RUST_LOG",
];

fn queuepool(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_queuepool"));
    for key in CONFIG_ENV {
        cmd.env_remove(key);
    }
    cmd.args(args);
    cmd
}

fn run(args: &[&str]) -> Output {
    queuepool(args).output().expect("run queuepool")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The run failed with `code` and exactly one `error: ` line on stderr, its last line.
fn assert_one_error_line(out: &Output, code: i32, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    assert!(errors[0].contains(needle), "{needle} not in {stderr}");
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn bad_arguments_give_one_line_and_a_non_zero_exit() {
    let sqlite = "sqlite::memory:";
    let cases: [(&[&str], i32, &str); 8] = [
        (
            &["verify", "--database-url", sqlite, "--pool-size", "-3"],
            2,
            "invalid value '-3' for '--pool-size <N|auto>': expected a whole number >= 0",
        ),
        (
            &["verify", "--database-url", sqlite, "--preset", "huge"],
            2,
            "unknown pool preset \"huge\"",
        ),
        (
            &["bench", "--database-url", sqlite, "--concurrency", "8,-1"],
            2,
            "--concurrency",
        ),
        (
            &["bench", "--database-url", sqlite, "--duration", "0"],
            2,
            "--duration",
        ),
        (
            &["tune", "--database-url", sqlite, "--instances", "0"],
            2,
            "--instances",
        ),
        (
            &["tune", "--database-url", "redis://x", "--target-p99", "5"],
            2,
            "unsupported database URL",
        ),
        (&["status", "--url", "ftp://127.0.0.1"], 2, "--url"),
        (
            &["bench", "--database-url", sqlite, "--protocol", "binary"],
            2,
            "--protocol",
        ),
    ];
    for (args, code, needle) in cases {
        assert_one_error_line(&run(args), code, needle);
    }
}

#[test]
fn verify_bench_and_tune_read_the_pool_variables_serve_reads() {
    let db = SqliteDb::new();
    let env = [
        ("POOL_PRESET", "prod-low"),
        ("POOL_SIZE", "3"),
        ("MAX_OVERFLOW", "1"),
        ("POOL_TIMEOUT", "300ms"),
    ];
    let verify = queuepool(&[
        "verify",
        "--database-url",
        &db.url,
        "--overflow-idle",
        "300ms",
        "--json",
    ])
    .envs(env)
    .output()
    .expect("run");
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("JSON on stdout");
    assert_eq!(report["pool_size"], 3, "{}", text(&verify.stderr));
    assert_eq!(report["max_overflow"], 1);
    assert_eq!(report["pool_timeout_s"], 0.3);
    assert_eq!(report["passed"], true);
    // The same variables, read by serve.
    let serve = queuepool(&["serve", "--print-config"])
        .envs(env)
        .output()
        .expect("run");
    let lines = text(&serve.stdout);
    assert_eq!(serve.status.code(), Some(0), "{}", text(&serve.stderr));
    assert!(
        lines.contains(
            "preset=prod-low (POOL_PRESET) pool_size=3 (POOL_SIZE) max_overflow=1 (MAX_OVERFLOW) \
             pool_timeout=0.3s (POOL_TIMEOUT)"
        ),
        "{lines}"
    );
    // tune measures its own sizes and shows the configured pool beside them.
    let tune = queuepool(&[
        "tune",
        "--database-url",
        &db.url,
        "--sizes",
        "1,2",
        "--concurrency",
        "2",
        "--duration",
        "200ms",
    ])
    .envs(env)
    .output()
    .expect("run");
    let out = text(&tune.stdout);
    assert!(
        out.contains("now:   pool_size 3, max_overflow 1, pool_timeout 0.3 s"),
        "{out}{}",
        text(&tune.stderr)
    );
    // A flag still beats its variable.
    let flagged = queuepool(&["serve", "--print-config", "--pool-size", "4"])
        .envs(env)
        .output()
        .expect("run");
    assert!(text(&flagged.stdout).contains("pool_size=4 (--pool-size)"));
}

#[test]
fn a_bad_variable_is_named_by_every_command_and_an_empty_one_is_unset() {
    let sqlite = "sqlite::memory:";
    for args in [
        &["verify", "--database-url", sqlite][..],
        &["bench", "--database-url", sqlite],
        &["serve", "--print-config"],
    ] {
        let out = queuepool(args)
            .env("MAX_OVERFLOW", "oops")
            .output()
            .expect("run");
        assert_one_error_line(
            &out,
            2,
            "environment variable MAX_OVERFLOW (for --max-overflow): invalid value \"oops\"",
        );
    }
    let out = queuepool(&["serve", "--print-config"])
        .env("POOL_SIZE", "")
        .env("BIND", "localhost:8125")
        .output()
        .expect("run");
    let lines = text(&out.stdout);
    assert!(lines.contains("pool_size=5 (preset dev)"), "{lines}");
    assert!(lines.contains("bind=127.0.0.1:8125 (BIND)"), "{lines}");
}

#[test]
fn an_unencoded_at_in_the_password_is_refused_by_serve_and_verify_without_showing_it() {
    let url = "postgres://postgres:S3c:ret@PW@127.0.0.1:5432/db";
    for args in [&["serve"][..], &["verify"]] {
        let out = queuepool(args)
            .env("DATABASE_URL", url)
            .output()
            .expect("run");
        assert_one_error_line(&out, 2, "percent-encode `@`");
        let all = text(&out.stderr) + &text(&out.stdout);
        for piece in ["S3c", "ret@", "PW"] {
            assert!(!all.contains(piece), "{args:?} shows {piece}: {all}");
        }
    }
}

#[test]
fn unreachable_databases_and_services_fail_with_one_line() {
    let port = closed_port();
    let pg = format!("postgres://app:s3cret@127.0.0.1:{port}/db?sslmode=disable");
    for sub in ["verify", "bench", "tune"] {
        let out = run(&[sub, "--database-url", &pg]);
        assert_one_error_line(&out, 1, &format!("127.0.0.1:{port}"));
        assert!(
            !text(&out.stderr).contains("s3cret"),
            "password printed by {sub}"
        );
    }
    let out = run(&["status", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_one_error_line(&out, 1, "cannot reach");
}

#[test]
fn verify_on_sqlite_passes_and_prints_a_table() {
    let db = SqliteDb::new();
    let out = run(&[
        "verify",
        "--database-url",
        &db.url,
        "--pool-size",
        "2",
        "--max-overflow",
        "2",
        "--pool-timeout",
        "300ms",
        "--overflow-idle",
        "300ms",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("step") && stdout.contains("expected") && stdout.contains("observed"));
    assert!(
        stdout.contains("checkout #5 fails with the pool timeout"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("PASS: all 12 checks passed"),
        "{stdout}"
    );
    // Progress went to stderr.
    assert!(
        text(&out.stderr).contains("verify [3/5] burst"),
        "{}",
        text(&out.stderr)
    );

    let json = run(&[
        "verify",
        "--database-url",
        &db.url,
        "--pool-size",
        "1",
        "--max-overflow",
        "1",
        "--pool-timeout",
        "200ms",
        "--overflow-idle",
        "200ms",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!(report["passed"], true);
    assert_eq!(report["pool_size"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_1_with_a_failed_row_when_connections_are_killed() {
    let db = pg_db().await;
    let app = db.unique_application_name();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_queuepool"))
        .args([
            "verify",
            "--database-url",
            db.url(),
            "--pool-size",
            "2",
            "--max-overflow",
            "2",
        ])
        .args([
            "--pool-timeout",
            "500ms",
            "--overflow-idle",
            "500ms",
            "--application-name",
            &app,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn queuepool");
    let wait = child.wait_with_output();
    tokio::pin!(wait);
    let mut killed = 0;
    let out = loop {
        tokio::select! {
            out = &mut wait => break out.expect("queuepool output"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                killed += db.terminate_all(&app).await.unwrap_or(0);
            }
        }
    };
    let stdout = text(&out.stdout);
    assert!(killed > 0);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // Which step catches it depends on when the killer strikes; every failed row says
    // what the server or the pool showed instead of the expected figure.
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("FAIL"))
        .collect();
    assert!(
        failed
            .iter()
            .any(|l| l.contains("pg_stat_activity") || l.contains("connections opened")),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL: "), "{stdout}");
    db.drop_database().await.unwrap();
}

#[test]
fn bench_and_tune_on_sqlite_print_tables_and_write_files() {
    let db = SqliteDb::new();
    let json = db.dir.path().join("out.json");
    let svg = db.dir.path().join("out.svg");
    let out = run(&[
        "bench",
        "--database-url",
        &db.url,
        "--concurrency",
        "1,2",
        "--duration",
        "300ms",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("queries/s") && stdout.contains("pooled / unpooled"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 4);
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    let out = run(&[
        "tune",
        "--database-url",
        &db.url,
        "--sizes",
        "1,2",
        "--concurrency",
        "2",
        "--duration",
        "300ms",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for needle in [
        "recommended: pool_size",
        "Little's law",
        "env:   POOL_SIZE=",
        "TOML:  pool_size = ",
    ] {
        assert!(stdout.contains(needle), "{needle} in {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_a_running_service() {
    let db = SqliteDb::new();
    let pool = db.pool(config(3, 1, Duration::from_secs(1))).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(pool.clone(), None);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let _held = pool.get().await.unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_queuepool"))
        .args(["status", "--url", &format!("http://{addr}")])
        .output()
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("pool test: Pool size: 3  Connections in pool: 2 Current Overflow: 0 Current Checked out connections: 1"), "{stdout}");
    assert!(stdout.contains("in use 1"), "{stdout}");

    // --watch refreshes until interrupted.
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_queuepool"))
        .args([
            "status",
            "--url",
            &format!("http://{addr}"),
            "--watch",
            "--interval",
            "200ms",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    watch.start_kill().unwrap();
    let out = watch.wait_with_output().await.unwrap();
    let refreshes = text(&out.stdout).matches("Pool size: 3").count();
    assert!(refreshes >= 3, "{}", text(&out.stdout));
}
