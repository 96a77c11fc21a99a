//! HTTP load against the service: `concurrency` clients sending requests in a loop for
//! a bounded time, each answer recorded with when it started and how long it took.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};

use crate::error::ChaosError;

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Ok(u16),
    /// A non-2xx answer with a JSON body `{"error": code, ...}`.
    JsonError {
        /// The status code.
        status: u16,
        /// The `error` field.
        code: String,
    },
    /// A non-2xx answer without a JSON error body.
    BareError(u16),
    /// The connection failed or was closed without an answer.
    Transport(String),
    /// No answer within the client's limit: a hang.
    Hang,
}

impl Outcome {
    /// Whether it is a 2xx answer.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// Whether it is a 503 with a JSON error body.
    pub fn is_503_json(&self) -> bool {
        matches!(self, Outcome::JsonError { status: 503, .. })
    }

    /// A short label: `200`, `503 database_unavailable`, `500 (no JSON)`, `hang`...
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok(s) => s.to_string(),
            Outcome::JsonError { status, code } => format!("{status} {code}"),
            Outcome::BareError(s) => format!("{s} (no JSON body)"),
            Outcome::Transport(e) => format!("transport error: {e}"),
            Outcome::Hang => "hang".into(),
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, since the start of the run.
    pub sent: Duration,
    /// How long until the answer (or the failure).
    pub took: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl Sample {
    /// When it ended, since the start of the run.
    pub fn ended(&self) -> Duration {
        self.sent + self.took
    }
}

/// A client for 127.0.0.1 only: no proxy from the environment, `limit` per request,
/// enough idle connections for `concurrency` workers.
pub fn client(concurrency: usize, limit: Duration) -> Result<Client, ChaosError> {
    Ok(Client::builder()
        .no_proxy()
        .timeout(limit)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .build()?)
}

/// Sends one request and classifies the answer.
pub async fn send(
    client: &Client,
    method: Method,
    url: &str,
    body: Option<&serde_json::Value>,
) -> (Outcome, Option<serde_json::Value>) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return (Outcome::Hang, None),
        Err(e) => return (Outcome::Transport(short_error(&e)), None),
    };
    let status = resp.status();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => return (Outcome::Hang, None),
        Err(e) => return (Outcome::Transport(short_error(&e)), None),
    };
    let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    (classify(status, json.as_ref()), json)
}

fn classify(status: StatusCode, json: Option<&serde_json::Value>) -> Outcome {
    if status.is_success() {
        return Outcome::Ok(status.as_u16());
    }
    match json.and_then(|j| j["error"].as_str()) {
        Some(code) => Outcome::JsonError {
            status: status.as_u16(),
            code: code.to_owned(),
        },
        None => Outcome::BareError(status.as_u16()),
    }
}

fn short_error(e: &reqwest::Error) -> String {
    let text = crate::error::chain(e);
    text.chars().take(160).collect()
}

/// `concurrency` workers sending `GET base + path` until `duration` has passed since
/// `t0` or `stop` is set. After a failed request a worker pauses 5 ms (no busy loop
/// while the database is down).
pub async fn run_get(
    client: Client,
    url: String,
    concurrency: usize,
    t0: Instant,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let url = Arc::new(url);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            while t0.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                let sent = t0.elapsed();
                let started = Instant::now();
                let (outcome, _) = send(&client, Method::GET, &url, None).await;
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
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(samples) = done {
            all.extend(samples);
        }
    }
    all.sort_by_key(|s| s.sent);
    all
}

/// Counts of a run, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Every request.
    pub total: usize,
    /// 2xx.
    pub ok: usize,
    /// 503 with a JSON body.
    pub failed_503_json: usize,
    /// Any other failure (500, no JSON body, transport error, hang).
    pub failed_other: usize,
    /// Hangs (no answer within the client's limit).
    pub hangs: usize,
    /// Each distinct failure label with its count, most frequent first.
    pub kinds: Vec<(String, usize)>,
}

impl Tally {
    /// Failed requests.
    pub fn failed(&self) -> usize {
        self.failed_503_json + self.failed_other
    }
}

/// Counts `samples` by outcome.
pub fn tally(samples: &[Sample]) -> Tally {
    let mut t = Tally {
        total: samples.len(),
        ..Tally::default()
    };
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for s in samples {
        match &s.outcome {
            Outcome::Ok(_) => t.ok += 1,
            o if o.is_503_json() => t.failed_503_json += 1,
            o => {
                t.failed_other += 1;
                if *o == Outcome::Hang {
                    t.hangs += 1;
                }
            }
        }
        if !s.outcome.is_ok() {
            *kinds.entry(s.outcome.label()).or_default() += 1;
        }
    }
    t.kinds = kinds.into_iter().collect();
    t.kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    t
}

/// The slowest failed request.
pub fn slowest_failure(samples: &[Sample]) -> Option<Duration> {
    samples
        .iter()
        .filter(|s| !s.outcome.is_ok())
        .map(|s| s.took)
        .max()
}

/// Successful requests per second among those that ended in `[from, to)`.
pub fn ok_rate(samples: &[Sample], from: Duration, to: Duration) -> f64 {
    if to <= from {
        return 0.0;
    }
    let n = samples
        .iter()
        .filter(|s| s.outcome.is_ok() && s.ended() >= from && s.ended() < to)
        .count();
    n as f64 / (to - from).as_secs_f64()
}

/// The first success that was sent at or after `back`, as a delay after `back`.
pub fn first_success_after(samples: &[Sample], back: Duration) -> Option<Duration> {
    samples
        .iter()
        .filter(|s| s.outcome.is_ok() && s.sent >= back)
        .map(|s| s.ended() - back)
        .min()
}

/// The start of the first `window` after `back` (stepping 50 ms) whose success rate is
/// at least `fraction` of `baseline`, as a delay after `back`; `None` if none before
/// `end`.
pub fn full_rate_after(
    samples: &[Sample],
    back: Duration,
    end: Duration,
    baseline: f64,
    fraction: f64,
    window: Duration,
) -> Option<Duration> {
    let step = Duration::from_millis(50);
    let mut t = back;
    while t + window <= end {
        if ok_rate(samples, t, t + window) >= baseline * fraction {
            return Some(t - back);
        }
        t += step;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sent_ms: u64, took_ms: u64, outcome: Outcome) -> Sample {
        Sample {
            sent: Duration::from_millis(sent_ms),
            took: Duration::from_millis(took_ms),
            outcome,
        }
    }

    #[test]
    fn tally_separates_json_503_from_other_failures() {
        let samples = [
            s(0, 1, Outcome::Ok(200)),
            s(
                1,
                2,
                Outcome::JsonError {
                    status: 503,
                    code: "database_unavailable".into(),
                },
            ),
            s(2, 3, Outcome::BareError(500)),
            s(3, 9, Outcome::Hang),
        ];
        let t = tally(&samples);
        assert_eq!(
            (t.total, t.ok, t.failed_503_json, t.failed_other, t.hangs),
            (4, 1, 1, 2, 1)
        );
        assert_eq!(slowest_failure(&samples), Some(Duration::from_millis(9)));
    }

    #[test]
    fn recovery_is_measured_from_the_database_being_back() {
        let mut samples = vec![s(
            1000,
            5,
            Outcome::JsonError {
                status: 503,
                code: "x".into(),
            },
        )];
        // 10 successes per 100 ms from 1300 ms on.
        for i in 0..100 {
            samples.push(s(1300 + i * 10, 1, Outcome::Ok(200)));
        }
        let back = Duration::from_millis(1000);
        assert_eq!(
            first_success_after(&samples, back),
            Some(Duration::from_millis(301))
        );
        let full = full_rate_after(
            &samples,
            back,
            Duration::from_millis(2300),
            100.0,
            0.8,
            Duration::from_millis(200),
        );
        // The first 200 ms window with >= 80 req/s starts at 1150 ms (it holds 1301..1341).
        assert!(
            full.is_some_and(|d| d <= Duration::from_millis(300)),
            "{full:?}"
        );
    }
}
