//! The adaptive limit behind `pool_size = auto`: a delay-based controller on the time a
//! connection is held (checkout → return), in the family of TCP Vegas, Netflix
//! concurrency-limits' Vegas/Gradient2 and brpc's auto concurrency limiter.
//!
//! The model is the database's: `C` connections busy, each held for `H` on average,
//! serve `X = C / H` checkouts a second (Little's law). Below the database's best
//! concurrency more connections raise `X` and leave `H` at its low-load value, the
//! *baseline* `B` (latency-bound: a farther database wants more connections); above it
//! `X` stays flat and `H` grows with `C` (the extra connections only queue inside the
//! database, where every query gets slower). So, once per window of returns:
//!
//! - `queue = C · (1 − B / H)` estimates how many of the `C` busy connections are
//!   queueing in the database (Vegas' `diff`);
//! - above `beta` the limit drops to `X · B + alpha` (the concurrency the measured
//!   throughput needs at baseline speed, plus a margin), at most halving it;
//! - below `alpha`, and only if checkouts waited for the limit in that window (the
//!   limit, not the application, bounds the load), it rises: doubling until queueing
//!   first shows (slow start, whose windows are a few round trips long: 2 mean held
//!   times and 2 returns per connection, so that 2 to 64 takes a fraction of a
//!   second), then by a quarter while `H` stays at the baseline, by one when queueing
//!   starts to show;
//! - between the two it holds still (the dead band is what keeps it from oscillating).
//!
//! What the designs' own issue trackers say goes wrong, and what this one does:
//! - *A stale baseline.* A minimum RTT that is never refreshed makes Vegas shrink
//!   forever after the path gets longer, and Gradient2's long-term average drifts up
//!   under sustained overload until the limit creeps to the ceiling. Here the baseline
//!   is the lowest window mean, re-measured two ways: when a decrease did not make
//!   connections faster (the latency is not ours: the baseline moved, take the new
//!   value at once), and, when no window has come near it for [`PROBE_INTERVAL`], by
//!   one short window at half the limit (brpc's and BBR's probe), whose mean becomes
//!   the new baseline. "Near" is inside the dead band's lower edge (`queue < alpha`)
//!   with at least 1.5 times the connections in use that the baseline was measured
//!   with: the held time is then flat over that range, and a probe would only make
//!   checkouts wait (a baseline measured at the limit itself proves nothing and is
//!   probed).
//! - *Growth when the application is the limit.* With no waiting checkouts the held time
//!   says nothing about more connections; the limit does not grow then (Netflix's
//!   "inflight below half the limit" guard).
//! - *Reacting to noise.* Decisions use window means of many returns, not single
//!   samples, and the dead band widens with the limit (`alpha = 3·log10(limit)`,
//!   `beta = 6·log10(limit)`, at least 1 and 2: Netflix's defaults).
//!
//! The controller is pure and deterministic: it reads no clock (the caller passes
//! `now`), spawns nothing and allocates nothing; the pool feeds it on return.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Every this long, one window runs at half the limit to measure the baseline again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// A window closes after at least this many returns, and [`SAMPLES_PER_CONN`] per
/// connection of the limit (half as many in a probe window)…
const MIN_SAMPLES: u32 = 24;
const SAMPLES_PER_CONN: u32 = 16;
/// …and at least this many mean held times (so a change of the limit has worked
/// through)…
const WINDOW_HELD_TIMES: f64 = 4.0;
/// …and at least this long…
const MIN_WINDOW: Duration = Duration::from_millis(10);
/// …or after this long, with at least [`MIN_SAMPLES_SLOW`] returns (slow traffic).
const MAX_WINDOW: Duration = Duration::from_secs(1);
const MIN_SAMPLES_SLOW: u32 = 4;

/// During slow start (until queueing first shows) a window is shorter: this many
/// returns, [`START_SAMPLES_PER_CONN`] per connection of the limit, and
/// [`START_HELD_TIMES`] mean held times, so that the doubling takes a few round trips
/// (as TCP's, once per round trip) rather than a few seconds: the clients waiting
/// behind a small limit are what the start costs.
const START_MIN_SAMPLES: u32 = 8;
const START_SAMPLES_PER_CONN: u32 = 2;
const START_HELD_TIMES: f64 = 2.0;

/// A window whose held time is near the baseline, with at least this many times the
/// connections in use of the windows that measured it, postpones the next probe.
const PROBE_SKIP_IN_USE: f64 = 1.5;

/// A probe that finds a baseline this much lower than the one it replaces is followed
/// by another after the next window.
const PROBE_AGAIN: f64 = 0.75;

/// Why the limit last moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitReason {
    /// It has not moved since the pool was built.
    Initial,
    /// Checkouts waited while connections were held about as long as at low load:
    /// more connections serve more (the database is farther than it is busy).
    Headroom,
    /// Connections were held longer than at low load as concurrency rose: the database
    /// queues, fewer connections serve as much.
    Queueing,
}

impl LimitReason {
    /// A short name: `initial`, `headroom`, `queueing`.
    pub fn name(self) -> &'static str {
        match self {
            LimitReason::Initial => "initial",
            LimitReason::Headroom => "headroom",
            LimitReason::Queueing => "queueing",
        }
    }
}

impl fmt::Display for LimitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One move of the limit, with the measurements that caused it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LimitChange {
    /// The limit before.
    pub from: usize,
    /// The limit after.
    pub to: usize,
    /// Why.
    pub reason: LimitReason,
    /// Mean held time (checkout → return) in the window that decided.
    pub held: Duration,
    /// Held time at low load, as last measured.
    pub baseline: Duration,
    /// Mean number of connections held in that window.
    pub in_use: f64,
}

impl fmt::Display for LimitChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "limit {} -> {} ({}): held {:.2} ms against a baseline of {:.2} ms with {:.1} in use",
            self.from,
            self.to,
            self.reason,
            ms(self.held),
            ms(self.baseline),
            self.in_use
        )
    }
}

/// Returns gathered since the window opened.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    n: u32,
    held_sum: f64,
    in_use_sum: f64,
    queued: bool,
}

impl Window {
    fn new(start: Instant) -> Self {
        Window {
            start,
            n: 0,
            held_sum: 0.0,
            in_use_sum: 0.0,
            queued: false,
        }
    }
}

/// The adaptive limit: feed it every return with [`on_return`](Self::on_return), lend at
/// most [`effective_limit`](Self::effective_limit) connections at once.
#[derive(Debug, Clone)]
pub struct AutoSize {
    floor: usize,
    ceiling: usize,
    limit: usize,
    /// The limit to go back to when the running probe window closes.
    probing: Option<usize>,
    /// Returns of connections lent before this instant (under an older limit) are
    /// not counted.
    settle_from: Instant,
    /// Held time at low load, in seconds.
    baseline: Option<f64>,
    /// The fewest connections in use (window mean) among the windows that set the
    /// baseline.
    baseline_in_use: f64,
    /// When the next probe window starts.
    next_probe: Instant,
    /// Queueing has shown since the start: growth is by a quarter, no longer doubling.
    congested: bool,
    /// `(in use, held)` of the window that decided the last decrease.
    decreased_from: Option<(f64, f64)>,
    window: Window,
    last: Option<LimitChange>,
}

impl AutoSize {
    /// A controller between `floor` and `ceiling` (a floor of 0 counts as 1, a ceiling
    /// below the floor as the floor), starting at `initial` (clamped).
    pub fn new(floor: usize, ceiling: usize, initial: usize, now: Instant) -> Self {
        let floor = floor.max(1);
        let ceiling = ceiling.max(floor);
        AutoSize {
            floor,
            ceiling,
            limit: initial.clamp(floor, ceiling),
            probing: None,
            settle_from: now,
            baseline: None,
            baseline_in_use: 0.0,
            next_probe: now + PROBE_INTERVAL,
            congested: false,
            decreased_from: None,
            window: Window::new(now),
            last: None,
        }
    }

    /// The current limit (what `status()` shows).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many connections may be lent now: the limit, or half of it during a probe
    /// window (never below the floor).
    pub fn effective_limit(&self) -> usize {
        match self.probing {
            Some(_) => (self.limit / 2).max(self.floor),
            None => self.limit,
        }
    }

    /// The floor and the ceiling.
    pub fn bounds(&self) -> (usize, usize) {
        (self.floor, self.ceiling)
    }

    /// Why the limit last moved.
    pub fn reason(&self) -> LimitReason {
        self.last.map_or(LimitReason::Initial, |c| c.reason)
    }

    /// The last move of the limit, if it ever moved.
    pub fn last_change(&self) -> Option<LimitChange> {
        self.last
    }

    /// The low-load held time, once measured.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(Duration::from_secs_f64)
    }

    /// Records a connection returned at `now` after being held for `held`, while
    /// `in_use` connections were lent (this one included); `queued` says whether
    /// checkouts were waiting for the limit at that moment. Returns the change of the
    /// limit this return decided, if any.
    pub fn on_return(
        &mut self,
        held: Duration,
        in_use: usize,
        queued: bool,
        now: Instant,
    ) -> Option<LimitChange> {
        if now
            .checked_sub(held)
            .is_none_or(|lent| lent < self.settle_from)
        {
            // Lent under the previous limit: it says nothing about this one.
            return None;
        }
        let (min, per_conn, held_times) = match self.probing {
            Some(_) => (MIN_SAMPLES, SAMPLES_PER_CONN / 2, WINDOW_HELD_TIMES),
            None if !self.congested => {
                (START_MIN_SAMPLES, START_SAMPLES_PER_CONN, START_HELD_TIMES)
            }
            None => (MIN_SAMPLES, SAMPLES_PER_CONN, WINDOW_HELD_TIMES),
        };
        let wanted = min.max(per_conn.saturating_mul(self.effective_limit() as u32));
        let w = &mut self.window;
        w.n += 1;
        w.held_sum += held.as_secs_f64();
        w.in_use_sum += in_use as f64;
        w.queued |= queued;
        let elapsed = now.saturating_duration_since(w.start);
        let mean = w.held_sum / f64::from(w.n);
        let full =
            w.n >= wanted && elapsed >= MIN_WINDOW && elapsed.as_secs_f64() >= held_times * mean;
        let slow = elapsed >= MAX_WINDOW && w.n >= MIN_SAMPLES_SLOW;
        if !(full || slow) {
            return None;
        }
        let window = std::mem::replace(w, Window::new(now));
        self.decide(window, now)
    }

    fn decide(&mut self, w: Window, now: Instant) -> Option<LimitChange> {
        let held = w.held_sum / f64::from(w.n);
        let in_use = w.in_use_sum / f64::from(w.n);
        if held <= 0.0 {
            return None;
        }

        if let Some(restore) = self.probing.take() {
            // The probe window measured held time at half the limit: the new baseline.
            // If that is much lower than the baseline it replaces, the old one was
            // measured above the knee and the true one may be lower still: probe again
            // after the next window.
            let again = self.baseline.is_some_and(|old| held < PROBE_AGAIN * old);
            self.baseline = Some(held);
            self.baseline_in_use = in_use;
            self.next_probe = if again { now } else { now + PROBE_INTERVAL };
            self.limit = restore;
            self.settle_from = now;
            return None;
        }

        let decreased_from = self.decreased_from.take();
        let baseline = match self.baseline {
            // Halfway down: one lucky window does not set it alone.
            Some(b) if held < b => {
                self.baseline_in_use = self.baseline_in_use.min(in_use);
                (b + held) / 2.0
            }
            // A decrease that left connections as slow as before: the latency is not
            // ours (the database or the path to it got slower). Measure anew.
            Some(_)
                if decreased_from.is_some_and(|(c0, h0)| in_use < 0.85 * c0 && held > 0.9 * h0) =>
            {
                self.baseline_in_use = in_use;
                held
            }
            Some(b) => b,
            None => {
                self.baseline_in_use = in_use;
                held
            }
        };
        self.baseline = Some(baseline);

        let limit = self.limit as f64;
        let log = limit.log10();
        let alpha = (3.0 * log).max(1.0);
        let beta = (6.0 * log).max(2.0);
        let queue = in_use * (1.0 - baseline / held);
        if queue < alpha
            && in_use >= PROBE_SKIP_IN_USE * self.baseline_in_use
            && self.next_probe > now
        {
            // Connections are held about as long as when the baseline was measured at
            // well below this concurrency: the held time is flat over that range, the
            // baseline is current, and a probe would only make checkouts wait. (A
            // baseline measured at this concurrency may be one above the knee: that
            // one is probed.)
            self.next_probe = now + PROBE_INTERVAL;
        }
        let (to, reason) = if queue > beta {
            // The concurrency the measured throughput (in_use / held, Little's law)
            // needs at baseline speed, plus the margin; never more than halving at once.
            let target = (in_use * baseline / held + alpha).ceil();
            let target = target.max((limit / 2.0).ceil()).min(limit - 1.0);
            (target as usize, LimitReason::Queueing)
        } else if queue < alpha && w.queued {
            let step = if queue < alpha / 2.0 && !self.congested {
                // Slow start (as TCP's): double until the first sign of queueing.
                self.limit
            } else if queue < alpha / 2.0 {
                (self.limit / 4).max(1)
            } else {
                1
            };
            (self.limit + step, LimitReason::Headroom)
        } else {
            (self.limit, LimitReason::Initial)
        };
        let to = to.clamp(self.floor, self.ceiling);

        let mut change = None;
        if to != self.limit {
            let c = LimitChange {
                from: self.limit,
                to,
                reason,
                held: Duration::from_secs_f64(held),
                baseline: Duration::from_secs_f64(baseline),
                in_use,
            };
            if to < self.limit {
                self.decreased_from = Some((in_use, held));
            }
            if reason == LimitReason::Queueing || step_was_small(self.limit, to) {
                self.congested = true;
            }
            self.limit = to;
            self.settle_from = now;
            self.last = Some(c);
            change = Some(c);
        }
        if now >= self.next_probe {
            self.probing = Some(self.limit);
            self.settle_from = now;
        }
        change
    }
}

/// Whether a rise from `from` to `to` was the one-step kind (queueing began to show).
fn step_was_small(from: usize, to: usize) -> bool {
    to == from + 1 && from >= 4
}

/// Parses the bounds of `auto:FLOOR..CEILING` (the part after `auto:`), as every
/// configuration surface writes them: `2..40`. `None` unless `1 <= floor <= ceiling
/// <= 10000`.
pub fn parse_bounds(raw: &str) -> Option<(u32, u32)> {
    let (lo, hi) = raw.trim().split_once("..")?;
    let lo: u32 = lo.trim().parse().ok()?;
    let hi: u32 = hi.trim().parse().ok()?;
    (lo >= 1 && lo <= hi && hi <= crate::MAX_POOL_SIZE).then_some((lo, hi))
}

/// Log lines about the limit: at most one a second, the others counted.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The controller as the pool keeps it, under the pool's lock: plus the count of moves
/// and the rate limit of their log line.
#[derive(Debug)]
pub(crate) struct Governor {
    pub(crate) ctl: AutoSize,
    pub(crate) changes: u64,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl Governor {
    pub(crate) fn new(ctl: AutoSize) -> Self {
        Governor {
            ctl,
            changes: 0,
            last_log: None,
            suppressed: 0,
        }
    }

    /// Counts a move; returns it with the number of moves not logged since the last
    /// line, if this one is to be logged.
    pub(crate) fn note(&mut self, change: LimitChange, now: Instant) -> Option<(LimitChange, u64)> {
        self.changes += 1;
        if self
            .last_log
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last_log = Some(now);
        Some((change, std::mem::take(&mut self.suppressed)))
    }
}

#[cfg(test)]
mod tests;
