//! Scenario 11 (issue 13 §1): many instances on one small server, straight at it and
//! through PgBouncer in transaction mode.
//!
//! An ephemeral cluster with `max_connections = 50`; 4 `queuepool serve` instances
//! with the default preset (dev: 5 + 10 connections each, 60 in all: more than the
//! server takes); 400 HTTP clients, half reading (`GET /items/{id}`), half writing
//! (`POST /items`), spread evenly over the instances. Run once with the instances
//! connected to the server and once through a PgBouncer 1.18 in transaction mode,
//! sized as `queuepool tune --via-pgbouncer` sizes it. Meanwhile an observer samples
//! `pg_stat_activity` every 100 ms for the server connections in use, and PgBouncer's
//! `SHOW POOLS` for its waiting clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use queuepool_postgres::{PgConnection, PgManager};
use queuepool_testkit::{PgBouncer, PgBouncerConfig};
use rand::Rng;
use reqwest::Method;
use serde::Serialize;
use serde_json::json;
use tokio_postgres::SimpleQueryMessage;

use crate::Ctx;
use crate::error::ChaosError;
use crate::fixtures::Cluster;
use crate::load::{self, Outcome, Sample};
use crate::report::{Report, secs};
use crate::service::Service;

/// How the scenario runs.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// `queuepool serve` instances (default preset each).
    pub instances: usize,
    /// Concurrent HTTP clients in all, half readers, half writers.
    pub clients: usize,
    /// Length of the load of each phase.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// The server's `max_connections`.
    pub max_connections: u32,
    /// PgBouncer's `default_pool_size`: the server connections it may open.
    pub default_pool_size: usize,
    /// PgBouncer's `max_client_conn`.
    pub max_client_conn: usize,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Connections of the default preset (dev): `pool_size + max_overflow`.
pub const PRESET_CONNECTIONS: usize = 15;

impl Params {
    /// The form: 4 instances, 400 clients, 60 s per phase, `max_connections =
    /// 50`. PgBouncer gets 40 server connections, within the 42 that 50 - 3 reserved
    /// for superusers - 5 kept free for admin tools leave (the cap `queuepool tune
    /// --via-pgbouncer` applies), and 4 x 15 + 20 client connections.
    pub fn full() -> Params {
        Params {
            instances: 4,
            clients: 400,
            duration: Duration::from_secs(60),
            max_connections: 50,
            default_pool_size: 40,
            max_client_conn: 4 * PRESET_CONNECTIONS + 20,
        }
    }

    /// For tests: the same with 5 s per phase.
    pub fn short() -> Params {
        Params {
            duration: Duration::from_secs(5),
            ..Params::full()
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// Requests sent.
    pub requests: usize,
    /// Requests answered 2xx.
    pub ok: usize,
    /// Requests not answered 2xx (any status, transport error or hang).
    pub failed_requests: usize,
    /// Failed requests by kind (`503 database_unavailable`, ...), most frequent first.
    pub failure_kinds: Vec<(String, usize)>,
    /// Log lines of the instances that mention a prepared statement error
    /// (`prepared statement "s0" does not exist`, SQLSTATE 26000 or 42P05).
    pub prepared_statement_errors: usize,
    /// Log lines of the instances that mention the server refusing a connection for
    /// its limit (`too many clients`, `remaining connection slots`, SQLSTATE 53300).
    pub too_many_clients_errors: usize,
    /// The first log line of each kind counted above (prepared statement, too many
    /// clients), to see what was matched.
    pub examples: Vec<String>,
    /// Most client backends seen at once in `pg_stat_activity` (the observer's own
    /// excluded), sampled every 100 ms.
    pub server_connections_peak: usize,
    /// The server's `max_connections`.
    pub server_max_connections: u32,
    /// The server's `superuser_reserved_connections`.
    pub superuser_reserved_connections: u32,
    /// Successful requests per second.
    pub ops_per_sec: f64,
    /// Median latency of all requests, ms.
    pub p50_ms: f64,
    /// 99th percentile latency of all requests, ms.
    pub p99_ms: f64,
    /// Slowest request, ms.
    pub max_ms: f64,
    /// Most clients waiting in PgBouncer for a server connection (`SHOW POOLS`
    /// `cl_waiting`), through PgBouncer only.
    pub pgbouncer_clients_waiting_peak: Option<usize>,
    /// Most client connections PgBouncer held (`cl_active + cl_waiting`).
    pub pgbouncer_client_connections_peak: Option<usize>,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// The parameters.
    pub params: Params,
    /// Straight at the server.
    pub direct: Phase,
    /// Through PgBouncer.
    pub pgbouncer: Phase,
}

/// Runs the scenario: the direct phase, then the PgBouncer phase.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "pgbouncer";
    ctx.phase(
        NAME,
        format!(
            "ephemeral cluster with max_connections = {}",
            p.max_connections
        ),
    );
    let mut db = Cluster::start().await?;
    db.cluster
        .set_setting("max_connections", &p.max_connections.to_string())
        .await?;
    db.cluster.stop().await?;
    db.cluster.start().await?;
    let obs = db.observer().await?;
    let max = setting(&obs, "max_connections").await?;
    let reserved = setting(&obs, "superuser_reserved_connections").await?;
    if max != p.max_connections {
        return Err(ChaosError::Unexpected(format!(
            "max_connections is {max} after the restart, not {}",
            p.max_connections
        )));
    }
    drop(obs);

    ctx.phase(NAME, "direct: 4 instances straight at the server");
    let mut direct = phase(ctx, &db, &db.url(), None, p).await?;
    direct.server_max_connections = max;
    direct.superuser_reserved_connections = reserved;

    let mut config = PgBouncerConfig::new("127.0.0.1", db.cluster.port());
    config.default_pool_size = p.default_pool_size;
    config.max_client_conn = p.max_client_conn;
    config.server_password = Some(db.cluster.password().to_owned());
    let bouncer = PgBouncer::start_with(&config).await?;
    ctx.phase(
        NAME,
        format!(
            "pgbouncer: 4 instances through PgBouncer on port {} (transaction mode, \
             default_pool_size {}, max_client_conn {})",
            bouncer.port(),
            p.default_pool_size,
            p.max_client_conn
        ),
    );
    let url = bouncer.url("postgres", &db.app);
    let mut through = phase(ctx, &db, &url, Some(&bouncer), p).await?;
    through.server_max_connections = max;
    through.superuser_reserved_connections = reserved;
    Ok(Figures {
        params: p.clone(),
        direct,
        pgbouncer: through,
    })
}

async fn setting(conn: &PgConnection, name: &str) -> Result<u32, ChaosError> {
    let rows = conn
        .simple_query(&format!("SHOW {name}"))
        .await
        .map_err(queuepool_postgres::PgError::from)?;
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .ok_or_else(|| ChaosError::Unexpected(format!("SHOW {name} gave no number")))
}

/// Client backends on the server other than the observer itself.
async fn server_connections(obs: &PgConnection) -> Result<usize, ChaosError> {
    let rows = obs
        .simple_query(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .await
        .map_err(queuepool_postgres::PgError::from)?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .unwrap_or(0))
}

/// `cl_active + cl_waiting` and `cl_waiting` of PgBouncer's pools other than its
/// admin console.
async fn bouncer_clients(admin: &PgConnection) -> Result<(usize, usize), ChaosError> {
    let rows = admin
        .simple_query("SHOW POOLS")
        .await
        .map_err(queuepool_postgres::PgError::from)?;
    let (mut clients, mut waiting) = (0, 0);
    for m in &rows {
        if let SimpleQueryMessage::Row(r) = m {
            if r.try_get("database").ok().flatten() == Some("pgbouncer") {
                continue;
            }
            let n = |col: &str| -> usize {
                r.try_get(col)
                    .ok()
                    .flatten()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            clients += n("cl_active") + n("cl_waiting");
            waiting += n("cl_waiting");
        }
    }
    Ok((clients, waiting))
}

#[derive(Debug, Default)]
struct Peaks {
    server: usize,
    bouncer_clients: usize,
    bouncer_waiting: usize,
}

/// Samples the server (and PgBouncer) every 100 ms until `stop`.
async fn sample(
    obs: PgConnection,
    admin: Option<PgConnection>,
    stop: Arc<AtomicBool>,
) -> Result<Peaks, ChaosError> {
    let mut peaks = Peaks::default();
    while !stop.load(Ordering::Relaxed) {
        peaks.server = peaks.server.max(server_connections(&obs).await?);
        if let Some(admin) = &admin {
            let (clients, waiting) = bouncer_clients(admin).await?;
            peaks.bouncer_clients = peaks.bouncer_clients.max(clients);
            peaks.bouncer_waiting = peaks.bouncer_waiting.max(waiting);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(peaks)
}

fn item(name: &str) -> serde_json::Value {
    json!({"name": name, "description": "pgbouncer scenario", "price": 1.5})
}

/// One phase: the instances on `url`, the load, the figures; the instances stopped.
async fn phase(
    ctx: &Ctx,
    db: &Cluster,
    url: &str,
    bouncer: Option<&PgBouncer>,
    p: &Params,
) -> Result<Phase, ChaosError> {
    let label = if bouncer.is_some() {
        "pgbouncer"
    } else {
        "direct"
    };
    // One after the other: each migrates (CREATE TABLE IF NOT EXISTS) at start.
    let mut services = Vec::new();
    for _ in 0..p.instances {
        services
            .push(Service::start(&ctx.serve_bin, &[("DATABASE_URL", url.to_owned())], &[]).await?);
    }
    let bases: Vec<String> = services.iter().map(Service::base_url).collect();
    let client = load::client(p.clients, Duration::from_secs(60))?;
    let mut ids = Vec::new();
    for i in 0..20 {
        let base = &bases[i % bases.len()];
        let name = format!("seed-{i}");
        let (o, j) = load::send(
            &client,
            Method::POST,
            &format!("{base}/items"),
            Some(&item(&name)),
        )
        .await;
        match (o, j.as_ref().and_then(|j| j["id"].as_i64())) {
            (Outcome::Ok(201), Some(id)) => ids.push(id),
            (o, _) => {
                return Err(ChaosError::Unexpected(format!(
                    "{label}: seeding an item failed before the load: {}",
                    o.label()
                )));
            }
        }
    }
    let ids = Arc::new(ids);

    let stop = Arc::new(AtomicBool::new(false));
    let admin = match bouncer {
        Some(b) => Some(PgManager::from_url(&b.admin_url())?.connect_one().await?),
        None => None,
    };
    let sampler = tokio::spawn(sample(db.observer().await?, admin, stop.clone()));
    ctx.phase(
        "pgbouncer",
        format!(
            "{label}: {} clients (half GET /items/{{id}}, half POST /items) for {}",
            p.clients,
            secs(p.duration)
        ),
    );
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..p.clients {
        let base = bases[i % bases.len()].clone();
        let reader = (i / bases.len()).is_multiple_of(2);
        let (client, ids, duration) = (client.clone(), ids.clone(), p.duration);
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut n = 0u64;
            while t0.elapsed() < duration {
                let sent = t0.elapsed();
                let started = Instant::now();
                let (outcome, _) = if reader {
                    let id = ids[rand::rng().random_range(0..ids.len())];
                    load::send(&client, Method::GET, &format!("{base}/items/{id}"), None).await
                } else {
                    n += 1;
                    let name = format!("c{i}-{n}");
                    load::send(
                        &client,
                        Method::POST,
                        &format!("{base}/items"),
                        Some(&item(&name)),
                    )
                    .await
                };
                let failed = !outcome.is_ok();
                samples.push(Sample {
                    sent,
                    took: started.elapsed(),
                    outcome,
                });
                if failed {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let done = done.map_err(|e| ChaosError::Unexpected(format!("load task: {e}")))?;
        samples.extend(done);
    }
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peaks = sampler
        .await
        .map_err(|e| ChaosError::Unexpected(format!("sampler task: {e}")))??;

    let mut logs = Vec::new();
    for s in services {
        logs.extend(s.logs());
        let _ = s.stop(Duration::from_secs(15)).await?;
    }
    let tally = load::tally(&samples);
    let mut took: Vec<Duration> = samples.iter().map(|s| s.took).collect();
    took.sort_unstable();
    let q = |f: f64| -> f64 {
        if took.is_empty() {
            return 0.0;
        }
        let i = ((took.len() as f64 * f).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1000.0
    };
    Ok(Phase {
        requests: tally.total,
        ok: tally.ok,
        failed_requests: tally.failed(),
        failure_kinds: tally.kinds,
        prepared_statement_errors: count_lines(&logs, PREPARED),
        too_many_clients_errors: count_lines(&logs, TOO_MANY),
        examples: [PREPARED, TOO_MANY]
            .iter()
            .filter_map(|needles| first_line(&logs, needles))
            .map(|l| l.chars().take(300).collect())
            .collect(),
        server_connections_peak: peaks.server,
        server_max_connections: 0,
        superuser_reserved_connections: 0,
        ops_per_sec: tally.ok as f64 / elapsed.as_secs_f64(),
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        max_ms: q(1.0),
        pgbouncer_clients_waiting_peak: bouncer.map(|_| peaks.bouncer_waiting),
        pgbouncer_client_connections_peak: bouncer.map(|_| peaks.bouncer_clients),
    })
}

/// What a prepared statement error looks like in a log line.
pub const PREPARED: &[&str] = &["prepared statement", "SQLSTATE 26000", "SQLSTATE 42P05"];
/// What the server's connection limit looks like in a log line.
pub const TOO_MANY: &[&str] = &[
    "too many clients",
    "remaining connection slots",
    "SQLSTATE 53300",
];

fn matches(line: &str, needles: &[&str]) -> bool {
    let line = line.to_ascii_lowercase();
    needles
        .iter()
        .any(|n| line.contains(&n.to_ascii_lowercase()))
}

/// Lines that contain any of `needles` (case-insensitive).
pub fn count_lines(lines: &[String], needles: &[&str]) -> usize {
    lines.iter().filter(|l| matches(l, needles)).count()
}

fn first_line<'a>(lines: &'a [String], needles: &[&str]) -> Option<&'a String> {
    lines.iter().find(|l| matches(l, needles))
}

impl Figures {
    /// `{"pgbouncer": {...}, "direct": {...}, "params": {...}}`.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "pgbouncer": self.pgbouncer,
            "direct": self.direct,
            "params": self.params,
        })
    }

    /// Through PgBouncer: what must hold.
    pub fn pgbouncer_limit(&self) -> usize {
        self.pgbouncer.server_max_connections as usize
    }

    /// The figures as a table: one row per figure, direct beside PgBouncer.
    pub fn report(&self) -> Report {
        let p = &self.params;
        let (d, b) = (&self.direct, &self.pgbouncer);
        let mut r = Report::new(
            "11. Many instances behind PgBouncer (transaction mode)",
            format!(
                "Ephemeral cluster with max_connections = {}; {} `queuepool serve` instances \
                 (default preset, {} connections each); {} HTTP clients (half `GET /items/{{id}}`, \
                 half `POST /items`) for {} per phase; once straight at the server, once \
                 through PgBouncer 1.18 (pool_mode = transaction, default_pool_size = {}, \
                 max_client_conn = {}). Values are direct / PgBouncer; targets apply to PgBouncer.",
                p.max_connections,
                p.instances,
                PRESET_CONNECTIONS,
                p.clients,
                secs(p.duration),
                p.default_pool_size,
                p.max_client_conn
            ),
        );
        let both = |a: String, b: String| format!("{a} / {b}");
        r.info(
            "requests",
            both(d.requests.to_string(), b.requests.to_string()),
        )
        .info(
            "ops/s (2xx)",
            both(
                format!("{:.0}", d.ops_per_sec),
                format!("{:.0}", b.ops_per_sec),
            ),
        )
        .info(
            "p50 / p99 latency",
            both(
                format!("{:.1} / {:.1} ms", d.p50_ms, d.p99_ms),
                format!("{:.1} / {:.1} ms", b.p50_ms, b.p99_ms),
            ),
        )
        .check(
            "failed requests",
            both(d.failed_requests.to_string(), b.failed_requests.to_string()),
            "0 through PgBouncer",
            b.failed_requests == 0,
        )
        .check(
            "prepared statement errors (log lines)",
            both(
                d.prepared_statement_errors.to_string(),
                b.prepared_statement_errors.to_string(),
            ),
            "0 through PgBouncer",
            b.prepared_statement_errors == 0,
        )
        .check(
            "too many clients errors (log lines)",
            both(
                d.too_many_clients_errors.to_string(),
                b.too_many_clients_errors.to_string(),
            ),
            "0 through PgBouncer",
            b.too_many_clients_errors == 0,
        )
        .check(
            "server connections at peak (pg_stat_activity)",
            both(
                d.server_connections_peak.to_string(),
                b.server_connections_peak.to_string(),
            ),
            format!("<= {} through PgBouncer", self.pgbouncer_limit()),
            b.server_connections_peak <= self.pgbouncer_limit(),
        )
        .info(
            "server max_connections (superuser reserved)",
            format!(
                "{} ({})",
                b.server_max_connections, b.superuser_reserved_connections
            ),
        );
        if let (Some(clients), Some(waiting)) = (
            b.pgbouncer_client_connections_peak,
            b.pgbouncer_clients_waiting_peak,
        ) {
            r.info(
                "PgBouncer client connections / waiting at peak (SHOW POOLS)",
                format!("{clients} / {waiting}"),
            );
        }
        for (kind, n) in &d.failure_kinds {
            r.note(format!("direct: {n} x {kind}"));
        }
        for (kind, n) in &b.failure_kinds {
            r.note(format!("pgbouncer: {n} x {kind}"));
        }
        for (label, phase) in [("direct", d), ("pgbouncer", b)] {
            for line in &phase.examples {
                r.note(format!("{label}, a matched log line: {line}"));
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_classified_by_sqlstate_or_text() {
        let lines: Vec<String> = [
            "WARN queuepool: Connection attempt failed error=FATAL: sorry, too many clients already (SQLSTATE 53300)",
            "WARN queuepool_axum: code=database_unavailable FATAL: remaining connection slots are reserved for non-replication superuser connections",
            "ERROR queuepool_axum: db error: ERROR: prepared statement \"s3\" does not exist (SQLSTATE 26000)",
            "INFO listening on http://127.0.0.1:1 took 26000 us, port 53300",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(count_lines(&lines, TOO_MANY), 2);
        assert_eq!(count_lines(&lines, PREPARED), 1);
        assert_eq!(first_line(&lines, PREPARED), Some(&lines[2]));
    }
}
