//! `GET /dashboard`: a live page of the pool, served from the binary (no CDN).
//!
//! The page polls `GET /dashboard/samples?after=<seq>`, a history kept on the server:
//! a sampler task reads [`Pool::status`] four times a second and [`Pool::stats`] once a
//! second, and keeps ten minutes of one-second samples (idle, in use and waiting, with
//! the peak of in use and waiting within the second so that short bursts show,
//! checkouts per second, timeouts, the mean wait within the second and the pool's wait
//! p99, and with `pool_size = auto` the adaptive limit, drawn as a line on the
//! connections chart). The sampler starts with the first request to the dashboard and stops when the
//! router is dropped. Charts are drawn by the page's own script on `<canvas>`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{FromRef, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use queuepool::{Manager, Overflow, Pool};
use serde::{Deserialize, Serialize};

const HTML: &str = include_str!("../assets/dashboard.html");
const JS: &str = include_str!("../assets/dashboard.js");
const CSS: &str = include_str!("../assets/dashboard.css");

/// Samples kept: ten minutes at one a second.
pub const HISTORY: usize = 600;
/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Status readings per sample (for the peaks).
const SUBSAMPLES: u32 = 4;

/// One second of the pool's life, as the page charts it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Increasing number of the sample.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// Idle connections at the end of the second.
    pub idle: usize,
    /// Connections lent out at the end of the second.
    pub in_use: usize,
    /// Most connections lent out at any reading within the second.
    pub in_use_peak: usize,
    /// Checkouts waiting at the end of the second.
    pub waiting: usize,
    /// Most checkouts waiting at any reading within the second.
    pub waiting_peak: usize,
    /// Connection attempts in flight.
    pub connecting: usize,
    /// Connections above pool_size (negative while below it).
    pub overflow: i64,
    /// Successful checkouts per second over the interval.
    pub checkouts_per_s: f64,
    /// Checkouts that timed out within the interval.
    pub timeouts: u64,
    /// Timeouts since the pool started.
    pub timeouts_total: u64,
    /// Mean wait of the checkouts within the interval, ms.
    pub wait_mean_ms: f64,
    /// The pool's wait p99 since it started (bucket upper bound), ms.
    pub wait_p99_ms: f64,
    /// Connections opened since the pool started.
    pub connections_created: u64,
    /// `pool_size = auto`: the adaptive limit at the end of the second (null for a
    /// fixed pool, whose limit is `pool_size + max_overflow`).
    pub limit: Option<usize>,
}

/// The server-side history behind the page.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    started: AtomicBool,
}

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = match self.samples.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if samples.len() == HISTORY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Samples with `seq > after`.
    pub fn after(&self, after: Option<u64>) -> Vec<Sample> {
        let samples = match self.samples.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        samples
            .iter()
            .filter(|s| after.is_none_or(|a| s.seq > a))
            .cloned()
            .collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Reads the pool every `INTERVAL / SUBSAMPLES` until `history` is dropped.
async fn sample<M: Manager>(history: Weak<History>, pool: Pool<M>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut previous = pool.stats();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(INTERVAL / SUBSAMPLES);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let auto = pool.config().auto_size.is_some();
    loop {
        let (mut in_use_peak, mut waiting_peak) = (0, 0);
        for _ in 0..SUBSAMPLES {
            tick.tick().await;
            let status = pool.status();
            in_use_peak = in_use_peak.max(status.checked_out);
            waiting_peak = waiting_peak.max(status.waiting);
        }
        let Some(history) = history.upgrade() else {
            return;
        };
        let status = pool.status();
        let stats = pool.stats();
        let now = tokio::time::Instant::now();
        let secs = now.duration_since(last).as_secs_f64().max(0.001);
        last = now;
        let waits = stats.wait.count.saturating_sub(previous.wait.count);
        let wait_sum_ms = ms(stats.wait.mean) * stats.wait.count as f64
            - ms(previous.wait.mean) * previous.wait.count as f64;
        seq += 1;
        history.push(Sample {
            seq,
            t_ms: now_ms(),
            idle: status.idle,
            in_use: status.checked_out,
            in_use_peak: in_use_peak.max(status.checked_out),
            waiting: status.waiting,
            waiting_peak: waiting_peak.max(status.waiting),
            connecting: status.connecting,
            overflow: status.overflow,
            checkouts_per_s: stats.checkouts.saturating_sub(previous.checkouts) as f64 / secs,
            timeouts: stats.timeouts.saturating_sub(previous.timeouts),
            timeouts_total: stats.timeouts,
            wait_mean_ms: if waits > 0 {
                (wait_sum_ms / waits as f64).max(0.0)
            } else {
                0.0
            },
            wait_p99_ms: ms(stats.wait.p99),
            connections_created: stats.connections_created,
            limit: auto.then_some(status.limit),
        });
        previous = stats;
    }
}

#[derive(Debug, Deserialize)]
struct After {
    after: Option<u64>,
}

fn start<M: Manager>(history: &Arc<History>, pool: &Pool<M>) {
    if !history.started.swap(true, Ordering::AcqRel) {
        tokio::spawn(sample(Arc::downgrade(history), pool.clone()));
    }
}

/// The dashboard's routes: `GET /dashboard` (the page), `/dashboard/dashboard.js`,
/// `/dashboard/dashboard.css` and `/dashboard/samples` (JSON). Merge them into an app
/// whose state gives a `Pool<M>` through [`FromRef`], like `queuepool_axum::pool_routes`.
pub fn routes<M, S>() -> Router<S>
where
    M: Manager,
    Pool<M>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    let history = Arc::new(History::default());
    let page_history = history.clone();
    let samples_history = history;
    Router::new()
        .route(
            "/dashboard",
            get(move |State(pool): State<Pool<M>>| {
                start(&page_history, &pool);
                async move { asset("text/html; charset=utf-8", HTML) }
            }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/dashboard/samples",
            get(move |State(pool): State<Pool<M>>, Query(q): Query<After>| {
                start(&samples_history, &pool);
                let history = samples_history.clone();
                async move { samples_json(&history, &pool, q.after) }
            }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> axum::response::Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn samples_json<M: Manager>(
    history: &History,
    pool: &Pool<M>,
    after: Option<u64>,
) -> axum::response::Response {
    let config = pool.config();
    let max = match config.max_overflow {
        Overflow::Limited(_) => Some(config.max_connections()),
        _ => None,
    };
    let auto = pool.stats().auto_size.map(|a| {
        serde_json::json!({
            "limit": a.limit,
            "floor": a.floor,
            "ceiling": a.ceiling,
            "reason": a.reason.name(),
        })
    });
    (
        [(header::CACHE_CONTROL, "no-cache")],
        axum::Json(serde_json::json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "history": HISTORY,
            "pool": {
                "name": config.name,
                "pool_size": config.pool_size,
                "max_connections": max,
                "pool_timeout_s": config.pool_timeout.as_secs_f64(),
                "status": pool.status().to_string(),
                "auto_size": auto,
            },
            "samples": history.after(after),
        })),
    )
        .into_response()
}
