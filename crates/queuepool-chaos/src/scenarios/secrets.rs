//! Scenario 9: secrets. With a password in `DATABASE_URL`, the password must not appear
//! in any log line at debug level, any error, `/pool`, `/metrics`, `--help` or a panic
//! message.

use std::time::Duration;

use queuepool::{Pool, PoolConfig};
use queuepool_postgres::PgManager;
use reqwest::Method;
use serde_json::json;

use crate::Ctx;
use crate::capture::Capture;
use crate::error::ChaosError;
use crate::fixtures::Cluster;
use crate::load;
use crate::report::Report;
use crate::service::Service;

/// What was measured: for each place looked at, how much text was read and whether
/// the password was found in it.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// (place, lines or bytes read, occurrences of the password).
    pub places: Vec<(String, usize, usize)>,
}

fn count(text: &str, secret: &str) -> usize {
    text.matches(secret).count()
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<Figures, ChaosError> {
    const NAME: &str = "secrets";
    let mut f = Figures::default();
    let mut db = Cluster::start().await?;
    let secret = db.cluster.password().to_owned();
    let url = db.url();
    ctx.phase(
        NAME,
        "service at debug level with the password in DATABASE_URL",
    );
    let env = [
        ("DATABASE_URL", url.clone()),
        ("RUST_LOG", "debug".to_owned()),
        ("POOL_SIZE", "2".to_owned()),
    ];
    let service = Service::start(&ctx.serve_bin, &env, &["--echo-pool"]).await?;
    let base = service.base_url();
    let client = load::client(4, Duration::from_secs(15))?;
    let mut bodies = String::new();
    let item = json!({"name": "n", "price": 1});
    let requests: Vec<(Method, &str, Option<&serde_json::Value>)> = vec![
        (Method::GET, "/health", None),
        (Method::POST, "/items", Some(&item)),
        (Method::GET, "/items/1", None),
        (Method::GET, "/items/abc", None),
        (Method::GET, "/nope", None),
        (Method::GET, "/openapi.json", None),
    ];
    for (m, path, body) in &requests {
        let (_, j) = load::send(&client, m.clone(), &format!("{base}{path}"), *body).await;
        bodies.push_str(&j.map(|j| j.to_string()).unwrap_or_default());
    }
    // Errors while the database is down, and after it is back.
    db.cluster.stop().await?;
    for path in ["/health", "/items/1", "/items"] {
        let (_, j) = load::send(&client, Method::GET, &format!("{base}{path}"), None).await;
        bodies.push_str(&j.map(|j| j.to_string()).unwrap_or_default());
    }
    db.cluster.start().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, j) = load::send(&client, Method::GET, &format!("{base}/health"), None).await;
    bodies.push_str(&j.map(|j| j.to_string()).unwrap_or_default());
    f.places.push((
        "HTTP bodies (items, 404, 422, 503 while the database was down)".into(),
        bodies.len(),
        count(&bodies, &secret),
    ));
    for path in ["/pool", "/metrics"] {
        let text = client
            .get(format!("{base}{path}"))
            .send()
            .await?
            .text()
            .await?;
        f.places
            .push((format!("GET {path}"), text.len(), count(&text, &secret)));
    }
    let first_logs = service.logs().join("\n");
    let _ = service.stop(Duration::from_secs(15)).await;
    f.places.push((
        "service log of the first run".into(),
        first_logs.lines().count(),
        count(&first_logs, &secret),
    ));

    // A second run keeps its handle to read the logs after shutdown.
    let service = Service::start(&ctx.serve_bin, &env, &["--echo-pool"]).await?;
    let b = service.base_url();
    let _ = load::send(&client, Method::GET, &format!("{b}/health"), None).await;
    db.cluster.stop().await?;
    let _ = load::send(&client, Method::GET, &format!("{b}/health"), None).await;
    db.cluster.start().await?;
    let logs = service.logs();
    let debug_lines = logs.iter().filter(|l| l.contains("DEBUG")).count();
    let text = logs.join("\n");
    f.places.push((
        format!("service log at debug level ({debug_lines} DEBUG lines)"),
        logs.len(),
        count(&text, &secret),
    ));
    let _ = service.stop(Duration::from_secs(15)).await;

    ctx.phase(NAME, "startup errors, --help");
    let wrong = url.replace(&secret, &format!("{secret}x"));
    let bad = tokio::process::Command::new(&ctx.serve_bin)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", &wrong)
        .env("RUST_LOG", "debug")
        .output()
        .await
        .map_err(ChaosError::io(
            "running queuepool serve with a wrong password",
        ))?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    f.places.push((
        format!(
            "startup with a wrong password (exit {:?})",
            bad.status.code()
        ),
        out.lines().count(),
        count(&out, &secret),
    ));
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["serve", "--pool-size", "lots"],
    ] {
        let o = tokio::process::Command::new(&ctx.serve_bin)
            .args(&args)
            .env("DATABASE_URL", &url)
            .output()
            .await
            .map_err(ChaosError::io("running queuepool --help"))?;
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        f.places.push((
            format!("`queuepool {}`", args.join(" ")),
            out.lines().count(),
            count(&out, &secret),
        ));
    }

    ctx.phase(NAME, "library: debug events, errors, Debug, panic messages");
    let capture = Capture::start();
    let manager = PgManager::from_url(&url)?;
    let mut lib = format!("{manager:?}\n");
    let pool = Pool::new(
        manager,
        PoolConfig::builder()
            .pool_size(1)
            .name("chaos-secrets")
            .build()?,
    )
    .await?;
    if let Ok(conn) = pool.get().await {
        let _ = conn.simple_query("SELECT 1").await;
    }
    lib.push_str(&format!("{pool:?}\n"));
    pool.close(Duration::from_secs(1)).await;
    let bad_pool = Pool::new(
        PgManager::from_url(&wrong)?,
        PoolConfig::builder().pool_size(1).build()?,
    )
    .await;
    if let Err(e) = &bad_pool {
        lib.push_str(&format!("{e}\n{e:?}\n{}\n", crate::error::chain(e)));
    }
    let bad_result = bad_pool.map(drop);
    // The panic is on purpose: keep the default hook from printing it (its message is
    // the payload read below).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bad_result.unwrap()));
    std::panic::set_hook(hook);
    let panic_message = caught
        .err()
        .and_then(|p| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let serve_args = queuepool_cli::config::ServeArgs {
        database_url: Some(url.clone()),
        ..Default::default()
    };
    let cfg_debug = queuepool_cli::config::ServeConfig::resolve(&serve_args, &|_| {
        queuepool_cli::config::Origin::Env
    })
    .map(|c| format!("{c:?} {}", c.database_url))
    .unwrap_or_else(|e| e.to_string());
    let events = capture.events();
    let ev_text: String = events.iter().map(|e| e.line() + "\n").collect();
    f.places.push((
        format!(
            "library tracing events at every level ({} events)",
            events.len()
        ),
        events.len(),
        count(&ev_text, &secret),
    ));
    f.places.push((
        "library Debug of manager and pool, connect error Display/Debug/chain".into(),
        lib.len(),
        count(&lib, &secret),
    ));
    f.places.push((
        "panic message of `.unwrap()` on the connect error".into(),
        panic_message.len(),
        count(&panic_message, &secret),
    ));
    f.places.push((
        "ServeConfig Debug and Display of DATABASE_URL".into(),
        cfg_debug.len(),
        count(&cfg_debug, &secret),
    ));
    Ok(f)
}

impl Figures {
    /// Occurrences of the password in everything read.
    pub fn leaks(&self) -> usize {
        self.places.iter().map(|p| p.2).sum()
    }

    /// The figures as a table.
    pub fn report(&self) -> Report {
        let mut r = Report::new(
            "9. Secrets",
            "An ephemeral cluster with a random SCRAM password, given in `DATABASE_URL`; `queuepool serve` with `RUST_LOG=debug --echo-pool`, \
             requests of every kind (including 503s while the database is stopped), a startup with a wrong password, `--help`, a bad flag; \
             the library with a capturing tracing subscriber at every level, `Debug` of manager and pool, the connect error and the panic \
             message of `.unwrap()` on it. Every text is searched for the password.",
        );
        for (place, size, n) in &self.places {
            r.check(
                format!("{place}: {size} lines/bytes read"),
                format!("{n} occurrences"),
                "0",
                *n == 0,
            );
        }
        r
    }
}
