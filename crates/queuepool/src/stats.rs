//! What the pool reports: [`Status`] (SQLAlchemy's status line), [`Stats`] (counters and
//! time histograms) and the `metrics` handles behind the Prometheus names.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{Counter, Gauge};

use crate::autosize::{LimitChange, LimitReason};

/// A snapshot of the pool's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The configured `pool_size`.
    pub pool_size: u32,
    /// Idle connections ready to lend.
    pub idle: usize,
    /// Connections lent out (including checkouts opening their connection).
    pub checked_out: usize,
    /// Open connections above `pool_size`; negative while the pool holds fewer than
    /// `pool_size` (as in SQLAlchemy).
    pub overflow: i64,
    /// Connection attempts in flight.
    pub connecting: usize,
    /// Checkouts waiting for a connection.
    pub waiting: usize,
    /// How many connections may be lent at once: `pool_size + max_overflow`, or with
    /// `pool_size = auto` the adaptive limit now (a probe window lends half of it
    /// for a moment; see [`crate::autosize`]).
    pub limit: usize,
}

impl fmt::Display for Status {
    /// SQLAlchemy's `QueuePool.status()`, word for word.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pool size: {}  Connections in pool: {} Current Overflow: {} Current Checked out connections: {}",
            self.pool_size, self.idle, self.overflow, self.checked_out
        )
    }
}

/// Counters since the pool was built, and time histograms.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Successful checkouts.
    pub checkouts: u64,
    /// Checkouts that failed with a timeout.
    pub timeouts: u64,
    /// Connections opened.
    pub connections_created: u64,
    /// Failed connection attempts.
    pub connect_errors: u64,
    /// Connections closed because they exceeded `pool_recycle`.
    pub recycled: u64,
    /// Connections closed because they were broken, failed a ping or reset, or were
    /// invalidated after a disconnect.
    pub invalidated: u64,
    /// Connections closed for any reason.
    pub closed: u64,
    /// Times a disconnect invalidated every idle connection.
    pub pool_invalidations: u64,
    /// Connections held past `leak_threshold`.
    pub leaks: u64,
    /// Panics of the manager that the pool contained (the connection concerned was
    /// discarded).
    pub manager_panics: u64,
    /// Time checkouts waited.
    pub wait: HistogramSummary,
    /// Time connections were held by borrowers.
    pub usage: HistogramSummary,
    /// `pool_size = auto`: the adaptive limit and why it last moved.
    pub auto_size: Option<AutoSizeStats>,
}

/// The adaptive limit of a `pool_size = auto` pool.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AutoSizeStats {
    /// The limit now.
    pub limit: usize,
    /// Its floor.
    pub floor: usize,
    /// Its ceiling.
    pub ceiling: usize,
    /// Why it last moved ([`LimitReason::Initial`] if it never did).
    pub reason: LimitReason,
    /// Its last move, with the measurements behind it.
    pub last_change: Option<LimitChange>,
    /// Held time at low load, once measured.
    pub baseline: Option<Duration>,
    /// Moves since the pool was built.
    pub changes: u64,
}

/// Summary of a time histogram. Percentiles are upper bounds of power-of-two
/// microsecond buckets (within a factor of two), `max` is exact.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct HistogramSummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median (bucket upper bound).
    pub p50: Duration,
    /// 99th percentile (bucket upper bound).
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

const BUCKETS: usize = 40;

/// A histogram of durations in power-of-two microsecond buckets. It lives under the
/// pool's lock, which the checkout and return paths hold anyway: recording costs a few
/// plain adds and no shared atomics bouncing between cores.
#[derive(Debug, Clone)]
#[repr(C)] // sum and max on the same cache line as the low buckets
pub(crate) struct Histogram {
    sum_us: u64,
    max_us: u64,
    buckets: [u64; BUCKETS],
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            buckets: [0; BUCKETS],
            sum_us: 0,
            max_us: 0,
        }
    }

    /// `d` in whole microseconds, and its bucket: values below 2^i µs fall in bucket i.
    fn place(d: Duration) -> (u64, usize) {
        // In u64, without `as_micros`' u128 (this runs on every return).
        let us = d
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(d.subsec_micros()));
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        (us, bucket.min(BUCKETS - 1))
    }

    #[inline]
    pub(crate) fn record(&mut self, d: Duration) {
        let (us, bucket) = Self::place(d);
        self.buckets[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Takes back one duration recorded by [`Histogram::record`] (the maximum stays).
    pub(crate) fn unrecord(&mut self, d: Duration) {
        let (us, bucket) = Self::place(d);
        let count = &mut self.buckets[bucket];
        *count = count.saturating_sub(1);
        self.sum_us = self.sum_us.saturating_sub(us);
    }

    /// Adds every duration recorded in `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Records `n` zero durations.
    pub(crate) fn record_zeros(&mut self, n: u64) {
        self.buckets[0] += n;
    }

    /// How many durations are recorded.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub(crate) fn summary(&self) -> HistogramSummary {
        let counts = &self.buckets;
        let count = self.count();
        if count == 0 {
            return HistogramSummary::default();
        }
        let max = Duration::from_micros(self.max_us);
        let quantile = |q: f64| {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // Bucket i holds values below 2^i µs.
                    let upper = if i == 0 { 0 } else { (1u64 << i) - 1 };
                    return Duration::from_micros(upper).min(max);
                }
            }
            max
        };
        HistogramSummary {
            count,
            mean: Duration::from_micros(self.sum_us / count),
            p50: quantile(0.50),
            p99: quantile(0.99),
            max,
        }
    }
}

/// What the loans recorded, added up from the pool's histograms when read
/// (`Inner::stats`).
#[derive(Debug)]
pub(crate) struct LoanStats {
    pub(crate) usage: Histogram,
    /// Every checkout's wait: its count is the number of checkouts.
    pub(crate) wait: Histogram,
}

/// The pool's rarer events: atomics, counted without the lock.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) timeouts: AtomicU64,
    pub(crate) created: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) recycled: AtomicU64,
    pub(crate) invalidated: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) pool_invalidations: AtomicU64,
    pub(crate) leaks: AtomicU64,
    pub(crate) manager_panics: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Self {
        let z = || AtomicU64::new(0);
        Counters {
            timeouts: z(),
            created: z(),
            connect_errors: z(),
            recycled: z(),
            invalidated: z(),
            closed: z(),
            pool_invalidations: z(),
            leaks: z(),
            manager_panics: z(),
        }
    }

    pub(crate) fn snapshot(&self, loans: &LoanStats) -> Stats {
        Stats {
            checkouts: loans.wait.count(),
            timeouts: self.timeouts.load(Relaxed),
            connections_created: self.created.load(Relaxed),
            connect_errors: self.connect_errors.load(Relaxed),
            recycled: self.recycled.load(Relaxed),
            invalidated: self.invalidated.load(Relaxed),
            closed: self.closed.load(Relaxed),
            pool_invalidations: self.pool_invalidations.load(Relaxed),
            leaks: self.leaks.load(Relaxed),
            manager_panics: self.manager_panics.load(Relaxed),
            wait: loans.wait.summary(),
            usage: loans.usage.summary(),
            auto_size: None,
        }
    }
}

/// Why a connection was closed: the `reason` label of
/// `queuepool_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Past `pool_recycle`.
    Recycled,
    /// Broken, failed ping or reset, or invalidated after a disconnect.
    Invalidated,
    /// Overflow connection no longer needed.
    Overflow,
    /// The pool was closed, or the connection detached/discarded on shutdown.
    PoolClosed,
}

impl CloseReason {
    const ALL: [CloseReason; 4] = [
        CloseReason::Recycled,
        CloseReason::Invalidated,
        CloseReason::Overflow,
        CloseReason::PoolClosed,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseReason::Recycled => "recycled",
            CloseReason::Invalidated => "invalidated",
            CloseReason::Overflow => "overflow",
            CloseReason::PoolClosed => "pool_closed",
        }
    }
}

/// Handles registered once when the pool is built, so the hot path does no key lookup.
/// Install the `metrics` recorder before building the pool.
pub(crate) struct MetricHandles {
    pub(crate) idle: Gauge,
    pub(crate) in_use: Gauge,
    pub(crate) pending: Gauge,
    /// `queuepool_limit`: connections that may be lent at once.
    pub(crate) limit: Gauge,
    pub(crate) acquire: metrics::Histogram,
    pub(crate) usage: metrics::Histogram,
    pub(crate) connect: metrics::Histogram,
    pub(crate) timeouts: Counter,
    pub(crate) created: Counter,
    closed: [Counter; 4],
}

impl MetricHandles {
    pub(crate) fn new(pool: &str) -> Self {
        let pool = pool.to_owned();
        let state = |s: &'static str| metrics::gauge!("queuepool_connections", "pool" => pool.clone(), "state" => s);
        MetricHandles {
            idle: state("idle"),
            in_use: state("in_use"),
            pending: state("pending"),
            limit: metrics::gauge!("queuepool_limit", "pool" => pool.clone()),
            acquire: metrics::histogram!("queuepool_acquire_seconds", "pool" => pool.clone()),
            usage: metrics::histogram!("queuepool_usage_seconds", "pool" => pool.clone()),
            connect: metrics::histogram!("queuepool_connect_seconds", "pool" => pool.clone()),
            timeouts: metrics::counter!("queuepool_timeouts_total", "pool" => pool.clone()),
            created: metrics::counter!("queuepool_connections_created_total", "pool" => pool.clone()),
            closed: CloseReason::ALL.map(|r| {
                metrics::counter!("queuepool_connections_closed_total", "pool" => pool.clone(), "reason" => r.label())
            }),
        }
    }

    pub(crate) fn closed(&self, reason: CloseReason) -> &Counter {
        &self.closed[reason as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_prints_sqlalchemys_line() {
        let s = Status {
            pool_size: 5,
            idle: 0,
            checked_out: 15,
            overflow: 10,
            connecting: 0,
            waiting: 3,
            limit: 15,
        };
        assert_eq!(
            s.to_string(),
            "Pool size: 5  Connections in pool: 0 Current Overflow: 10 Current Checked out connections: 15"
        );
    }

    #[test]
    fn histogram_percentiles_are_bucket_bounds() {
        let mut h = Histogram::new();
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(5));
        h.record(Duration::from_millis(9));
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Duration::from_micros(127));
        assert_eq!(s.p99, Duration::from_micros(8191));
        assert_eq!(s.max, Duration::from_millis(9));
        assert_eq!(Histogram::new().summary().count, 0);
    }

    #[test]
    fn a_duration_is_placed_by_its_whole_microseconds_and_saturates() {
        // Sub-microsecond parts are dropped, seconds and the subsecond part both count.
        assert_eq!(Histogram::place(Duration::from_nanos(999)), (0, 0));
        assert_eq!(Histogram::place(Duration::from_nanos(1_999)), (1, 1));
        assert_eq!(Histogram::place(Duration::new(2, 1_500)), (2_000_001, 21));
        // A duration whose microseconds overflow u64 saturates into the last bucket.
        assert_eq!(Histogram::place(Duration::MAX), (u64::MAX, BUCKETS - 1));
        assert_eq!(
            Histogram::place(Duration::from_secs(u64::MAX / 1_000_000 + 1)),
            (u64::MAX, BUCKETS - 1)
        );
    }
}
