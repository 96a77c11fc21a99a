//! Scenario 7: write safety. Concurrent POST / PUT / DELETE against the service while the
//! database restarts; afterwards every answered write is in the database and no failed
//! write is, and no item is half-written.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::Method;
use serde_json::json;

use crate::Ctx;
use crate::error::ChaosError;
use crate::fixtures::Cluster;
use crate::load::{self, Outcome};
use crate::report::{Report, secs};
use crate::service::Service;

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Concurrent writers (each owns its items, so the expected final state is known).
    pub writers: usize,
    /// Length of the load.
    pub duration: Duration,
    /// When the database is stopped.
    pub stop_at: Duration,
    /// How long it stays down.
    pub outage: Duration,
}

impl Params {
    /// The form: 20 s, 5 s outage, 32 writers.
    pub fn full() -> Params {
        Params {
            writers: 32,
            duration: Duration::from_secs(20),
            stop_at: Duration::from_millis(7500),
            outage: Duration::from_secs(5),
        }
    }

    /// For tests: 6 s, 1.5 s outage, 16 writers.
    pub fn short() -> Params {
        Params {
            writers: 16,
            duration: Duration::from_secs(6),
            stop_at: Duration::from_secs(2),
            outage: Duration::from_millis(1500),
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Writes answered 201 / 200 / 204.
    pub ok: [usize; 3],
    /// Writes that failed (POST, PUT, DELETE).
    pub failed: [usize; 3],
    /// Failures that were not a 503 with a JSON body.
    pub failed_other: Vec<String>,
    /// 201 items missing from the database (not deleted by a 204).
    pub lost_creates: usize,
    /// Failed POSTs whose item is in the database.
    pub phantom_creates: usize,
    /// Items whose last 200 PUT is not what the database holds.
    pub lost_updates: usize,
    /// Items holding the value of a failed PUT.
    pub phantom_updates: usize,
    /// Items whose name, description and price are of different writes.
    pub half_written: usize,
    /// Items deleted with a 204 that are still there.
    pub lost_deletes: usize,
    /// Items whose failed DELETE removed them anyway.
    pub phantom_deletes: usize,
    /// Rows in the table that no writer created.
    pub strangers: usize,
    /// How the database downtime went.
    pub downtime: Duration,
    /// The parameters.
    pub params: Option<Params>,
}

#[derive(Debug, Default)]
struct Item {
    id: i64,
    version: u32,
    failed_versions: Vec<u32>,
    deleted: bool,
    failed_delete: bool,
}

#[derive(Debug, Default)]
struct Log {
    created: Vec<(String, Item)>,
    failed_creates: Vec<String>,
    ok: [usize; 3],
    failed: [usize; 3],
    other: Vec<String>,
}

fn body(name: &str, v: u32) -> serde_json::Value {
    json!({"name": format!("{name}-v{v}"), "description": format!("v{v}"), "price": f64::from(v)})
}

async fn writer(w: usize, base: String, t0: Instant, duration: Duration) -> Log {
    let mut log = Log::default();
    let Ok(client) = load::client(1, Duration::from_secs(15)) else {
        return log;
    };
    let mut n = 0;
    while t0.elapsed() < duration {
        let live: Vec<usize> = (0..log.created.len())
            .filter(|&i| !log.created[i].1.deleted)
            .collect();
        let roll: f64 = rand::rng().random();
        let failed = if live.is_empty() || roll < 0.4 {
            n += 1;
            let name = format!("w{w}-n{n}");
            let (o, j) = load::send(
                &client,
                Method::POST,
                &format!("{base}/items"),
                Some(&body(&name, 0)),
            )
            .await;
            if let (Outcome::Ok(201), Some(id)) = (&o, j.as_ref().and_then(|j| j["id"].as_i64())) {
                log.ok[0] += 1;
                log.created.push((
                    name,
                    Item {
                        id,
                        ..Item::default()
                    },
                ));
                None
            } else {
                log.failed[0] += 1;
                log.failed_creates.push(name);
                Some(o)
            }
        } else {
            let i = live[rand::rng().random_range(0..live.len())];
            let (name, item) = &mut log.created[i];
            let url = format!("{base}/items/{}", item.id);
            if roll < 0.8 {
                let v = item
                    .version
                    .max(item.failed_versions.iter().copied().max().unwrap_or(0))
                    + 1;
                let (o, _) = load::send(&client, Method::PUT, &url, Some(&body(name, v))).await;
                if o == Outcome::Ok(200) {
                    log.ok[1] += 1;
                    item.version = v;
                    item.failed_versions.clear();
                    None
                } else {
                    log.failed[1] += 1;
                    item.failed_versions.push(v);
                    Some(o)
                }
            } else {
                let (o, _) = load::send(&client, Method::DELETE, &url, None).await;
                if o == Outcome::Ok(204) {
                    log.ok[2] += 1;
                    item.deleted = true;
                    None
                } else {
                    log.failed[2] += 1;
                    item.failed_delete = true;
                    Some(o)
                }
            }
        };
        if let Some(o) = failed {
            if !o.is_503_json() {
                log.other.push(o.label());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    log
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "writes";
    ctx.phase(NAME, "starting an ephemeral PostgreSQL cluster");
    let mut db = Cluster::start().await?;
    let env = [
        ("DATABASE_URL", db.url()),
        ("POOL_SIZE", "5".to_owned()),
        ("MAX_OVERFLOW", "5".to_owned()),
        ("POOL_TIMEOUT", "2".to_owned()),
    ];
    let service = Service::start(&ctx.serve_bin, &env, &[]).await?;
    let base = service.base_url();
    ctx.phase(
        NAME,
        format!("{} writers for {}", p.writers, secs(p.duration)),
    );
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..p.writers {
        tasks.spawn(writer(w, base.clone(), t0, p.duration));
    }
    tokio::time::sleep(p.stop_at).await;
    ctx.phase(NAME, "stopping the database");
    let down = Instant::now();
    db.cluster.stop().await?;
    tokio::time::sleep(p.outage).await;
    db.cluster.start().await?;
    let downtime = down.elapsed();
    ctx.phase(NAME, "database back");
    let mut logs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        logs.push(r.map_err(|e| ChaosError::Unexpected(format!("writer task: {e}")))?);
    }
    let _ = service.stop(Duration::from_secs(15)).await?;

    let obs = db.observer().await?;
    let rows = obs
        .query("SELECT id, name, description, price FROM items", &[])
        .await
        .map_err(queuepool_postgres::PgError::from)?;
    let mut by_id: HashMap<i64, (String, Option<String>, f64)> = HashMap::new();
    for r in &rows {
        by_id.insert(r.get(0), (r.get(1), r.get(2), r.get(3)));
    }
    let mut names: HashMap<String, i64> = HashMap::new();
    for (id, (name, _, _)) in &by_id {
        let base_name = name.rsplit_once("-v").map_or(name.as_str(), |(b, _)| b);
        names.insert(base_name.to_owned(), *id);
    }
    let mut f = Figures {
        downtime,
        params: Some(p.clone()),
        ..Figures::default()
    };
    let mut known = 0;
    for log in &logs {
        for i in 0..3 {
            f.ok[i] += log.ok[i];
            f.failed[i] += log.failed[i];
        }
        f.failed_other.extend(log.other.iter().cloned());
        f.phantom_creates += log
            .failed_creates
            .iter()
            .filter(|n| names.contains_key(*n))
            .count();
        for (name, item) in &log.created {
            match by_id.get(&item.id) {
                None if item.deleted => {}
                None if item.failed_delete => f.phantom_deletes += 1,
                None => f.lost_creates += 1,
                Some(_) if item.deleted => {
                    known += 1;
                    f.lost_deletes += 1;
                }
                Some((db_name, desc, price)) => {
                    known += 1;
                    let v_name = db_name
                        .rsplit_once("-v")
                        .and_then(|(_, v)| v.parse::<u32>().ok());
                    let v_desc = desc
                        .as_deref()
                        .and_then(|d| d.strip_prefix('v'))
                        .and_then(|v| v.parse::<u32>().ok());
                    let v_price = Some(*price as u32);
                    if !db_name.starts_with(&format!("{name}-v"))
                        || v_name != v_desc
                        || v_name != v_price
                    {
                        f.half_written += 1;
                    } else if v_name != Some(item.version) {
                        if v_name.is_some_and(|v| item.failed_versions.contains(&v)) {
                            f.phantom_updates += 1;
                        } else {
                            f.lost_updates += 1;
                        }
                    }
                }
            }
        }
    }
    f.strangers = by_id.len().saturating_sub(known + f.phantom_creates);
    Ok(f)
}

impl Figures {
    /// Every write answered as done is in the database, and nothing else is.
    pub fn consistent(&self) -> bool {
        self.lost_creates
            + self.phantom_creates
            + self.lost_updates
            + self.phantom_updates
            + self.half_written
            + self.lost_deletes
            + self.phantom_deletes
            + self.strangers
            == 0
    }

    /// The figures as a table.
    pub fn report(&self) -> Report {
        let p = self.params.clone().unwrap_or_else(Params::short);
        let mut r = Report::new(
            "7. Write safety during a restart",
            format!(
                "`queuepool serve` (ephemeral cluster, POOL_SIZE=5 MAX_OVERFLOW=5 POOL_TIMEOUT=2 s); {} writers, each owning its items, \
                 send POST (40 %), PUT (40 %) and DELETE (20 %) for {}; the database is stopped at {} for {}. Afterwards the table is \
                 compared with what each writer was told.",
                p.writers,
                secs(p.duration),
                secs(p.stop_at),
                secs(p.outage)
            ),
        );
        let zero = |r: &mut Report, label: &str, n: usize| {
            r.check(label, n, "0", n == 0);
        };
        r.info(
            "POST 201 / PUT 200 / DELETE 204",
            format!("{} / {} / {}", self.ok[0], self.ok[1], self.ok[2]),
        )
        .info(
            "failed POST / PUT / DELETE",
            format!(
                "{} / {} / {}",
                self.failed[0], self.failed[1], self.failed[2]
            ),
        )
        .check(
            "failures other than 503 JSON",
            self.failed_other.len(),
            "0",
            self.failed_other.is_empty(),
        )
        .info("database down for", secs(self.downtime));
        zero(&mut r, "201 items missing", self.lost_creates);
        zero(&mut r, "failed POSTs present", self.phantom_creates);
        zero(&mut r, "200 PUTs not in the database", self.lost_updates);
        zero(&mut r, "failed PUTs visible", self.phantom_updates);
        zero(
            &mut r,
            "half-written items (fields of different writes)",
            self.half_written,
        );
        zero(&mut r, "204 DELETEs still present", self.lost_deletes);
        zero(&mut r, "failed DELETEs that deleted", self.phantom_deletes);
        zero(&mut r, "rows nobody wrote", self.strangers);
        for o in self.failed_other.iter().take(5) {
            r.note(o.clone());
        }
        r
    }
}
