//! Scenario 10 (on demand only): a long mixed load with periodic faults; the service's
//! RSS and open file descriptors must stay flat after the warm-up.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use queuepool_testkit::TestDb;

use crate::Ctx;
use crate::error::ChaosError;
use crate::load;
use crate::report::{Report, secs};
use crate::service::Service;

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Length of the soak.
    pub duration: Duration,
    /// Samples before this are the warm-up.
    pub warmup: Duration,
    /// Time between two rounds of `pg_terminate_backend`.
    pub fault_every: Duration,
    /// Concurrent clients.
    pub concurrency: usize,
}

impl Params {
    /// The form: 10 minutes.
    pub fn full() -> Params {
        Params {
            duration: Duration::from_secs(600),
            warmup: Duration::from_secs(60),
            fault_every: Duration::from_secs(30),
            concurrency: 16,
        }
    }
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The parameters.
    pub params: Params,
    /// (time, RSS in KiB, open fds) every 5 s.
    pub samples: Vec<(Duration, u64, usize)>,
    /// Requests by outcome.
    pub tally: load::Tally,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "soak";
    let db = TestDb::create().await?;
    let env = [
        ("DATABASE_URL", db.url().to_owned()),
        ("POOL_SIZE", "5".to_owned()),
    ];
    let service = Service::start(&ctx.serve_bin, &env, &[]).await?;
    let pid = service
        .pid()
        .ok_or_else(|| ChaosError::Service("no pid".into()))?;
    let base = service.base_url();
    let client = load::client(p.concurrency, Duration::from_secs(45))?;
    // Items to read.
    for i in 0..20 {
        let body = serde_json::json!({"name": format!("soak-{i}"), "price": 1.0});
        let _ = load::send(
            &client,
            reqwest::Method::POST,
            &format!("{base}/items"),
            Some(&body),
        )
        .await;
    }
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let half = p.concurrency / 2;
    let reads = tokio::spawn(load::run_get(
        client.clone(),
        format!("{base}/items?limit=20"),
        half,
        t0,
        p.duration,
        stop.clone(),
    ));
    let health = tokio::spawn(load::run_get(
        client.clone(),
        format!("{base}/health"),
        p.concurrency - half,
        t0,
        p.duration,
        stop,
    ));
    let mut samples = Vec::new();
    let mut next_fault = p.fault_every;
    while t0.elapsed() < p.duration {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = (t0.elapsed(), rss_kib(pid).unwrap_or(0), fds(pid));
        ctx.phase(NAME, format!("{}: RSS {} KiB, {} fds", secs(s.0), s.1, s.2));
        samples.push(s);
        if t0.elapsed() >= next_fault {
            let n = db.terminate_all(db.application_name()).await?;
            ctx.phase(NAME, format!("terminated {n} backends"));
            next_fault += p.fault_every;
        }
    }
    let mut all = reads
        .await
        .map_err(|e| ChaosError::Unexpected(e.to_string()))?;
    all.extend(
        health
            .await
            .map_err(|e| ChaosError::Unexpected(e.to_string()))?,
    );
    let _ = service.stop(Duration::from_secs(15)).await?;
    Ok(Figures {
        params: p.clone(),
        samples,
        tally: load::tally(&all),
    })
}

impl Figures {
    /// (RSS growth in %, fd growth) from the first sample after the warm-up to the last.
    pub fn growth(&self) -> (f64, i64) {
        let after: Vec<_> = self
            .samples
            .iter()
            .filter(|s| s.0 >= self.params.warmup)
            .collect();
        match (after.first(), after.last()) {
            (Some(a), Some(b)) if a.1 > 0 => (
                (b.1 as f64 - a.1 as f64) * 100.0 / a.1 as f64,
                b.2 as i64 - a.2 as i64,
            ),
            _ => (0.0, 0),
        }
    }

    /// The figures as a table.
    pub fn report(&self) -> Report {
        let p = &self.params;
        let (rss, fd) = self.growth();
        let mut r = Report::new(
            "10. Soak",
            format!(
                "`queuepool serve` on the shared server, {} clients (`GET /items?limit=20` and `GET /health`) for {}; every {} every backend \
                 is terminated. RSS and open fds of the service every 5 s; growth measured after {} of warm-up.",
                p.concurrency,
                secs(p.duration),
                secs(p.fault_every),
                secs(p.warmup)
            ),
        );
        r.info(
            "requests / ok",
            format!("{} / {}", self.tally.total, self.tally.ok),
        )
        .check(
            "failed without a JSON 503",
            self.tally.failed_other,
            "0",
            self.tally.failed_other == 0,
        )
        .check(
            "RSS growth after warm-up",
            format!("{rss:.1} %"),
            "< 10 %",
            rss < 10.0,
        )
        .check("fd growth after warm-up", fd, "<= 0", fd <= 0);
        if let (Some(a), Some(b)) = (self.samples.first(), self.samples.last()) {
            r.info("RSS first / last sample", format!("{} / {} KiB", a.1, b.1));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_ignores_the_warm_up() {
        let f = Figures {
            params: Params::full(),
            samples: vec![
                (Duration::from_secs(5), 1000, 10),
                (Duration::from_secs(60), 2000, 20),
                (Duration::from_secs(600), 2100, 19),
            ],
            tally: load::Tally::default(),
        };
        let (rss, fd) = f.growth();
        assert!((rss - 5.0).abs() < 1e-9, "{rss}");
        assert_eq!(fd, -1);
    }
}
