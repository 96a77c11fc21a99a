//! The router's state and decisions: which standbys qualify for a read, the recheck,
//! marking a standby down, recording probes, and the statistics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use queuepool::{Pool, PoolError, PooledConn};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::lag::{History, HostState, Out, Verdict, judge};
use super::{Lsn, ReadConn, Route, RoutingConfig, monitor};
use crate::error::PgError;
use crate::manager::{LOG_TARGET, PgManager};

/// One standby as the router sees it (see [`ReadWrite::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyStats {
    /// `host:port`.
    pub label: String,
    /// Reads served (rechecks that succeeded included).
    pub reads: u64,
    /// Rechecks: reads whose token was past the cached position, asked again here.
    pub rechecks: u64,
    /// Of those, how many found the standby caught up and read there.
    pub recheck_hits: u64,
    /// Answered its last probe.
    pub up: bool,
    /// In recovery at its last probe.
    pub standby: bool,
    /// `pg_last_wal_replay_lsn()` as last seen.
    pub replay_lsn: Option<Lsn>,
    /// Replay lag as the router measures it now (`None` when down or unknown).
    pub lag: Option<Duration>,
    /// Whether a read without a token could go there now.
    pub eligible: bool,
}

/// Where reads went (see [`ReadWrite::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoutingStats {
    /// Reads served by the primary.
    pub primary_reads: u64,
    /// Of those, reads carrying a token that no standby had replayed.
    pub primary_reads_for_freshness: u64,
    /// Reads that moved on after a standby could not be connected to or lost its
    /// connection.
    pub failovers: u64,
    /// Each standby, in the order given.
    pub standbys: Vec<StandbyStats>,
}

pub(super) struct Standby {
    pub(super) route: Route,
    pub(super) pool: Pool<PgManager>,
    pub(super) state: Mutex<HostState>,
    pub(super) reads: AtomicU64,
    pub(super) rechecks: AtomicU64,
    pub(super) recheck_hits: AtomicU64,
}

pub(crate) struct Shared {
    pub(super) primary: Pool<PgManager>,
    pub(super) primary_route: Route,
    pub(super) standbys: Vec<Standby>,
    pub(super) config: RoutingConfig,
    pub(super) history: Mutex<History>,
    pub(super) next: AtomicUsize,
    pub(super) primary_reads: AtomicU64,
    pub(super) fresh_fallbacks: AtomicU64,
    pub(super) failovers: AtomicU64,
    pub(super) closed: AtomicBool,
    /// Wakes the probe tasks to end (at `close`, or when the last clone is dropped).
    pub(super) stop: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.notify_waiters();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The state is plain data updated in one statement: a panic cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Standbys that qualify for a read after `after`, least busy first (ties in
    /// turn), and the one to recheck if none does: the furthest along among those
    /// within the lag bound.
    pub(super) fn candidates(
        &self,
        after: Option<Lsn>,
        avoid: Option<usize>,
    ) -> (Vec<usize>, Option<usize>) {
        let now = Instant::now();
        let n = self.standbys.len();
        if n == 0 {
            return (Vec::new(), None);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let history = lock(&self.history);
        let mut fresh = Vec::new();
        let mut behind: Option<(usize, (Lsn, usize))> = None;
        for (i, s) in self.standbys.iter().enumerate() {
            if avoid == Some(i) {
                continue;
            }
            let state = lock(&s.state);
            match judge(&state, &history, after, self.config.max_lag, now) {
                Verdict::Fresh => {
                    let status = s.pool.status();
                    let busy = status.checked_out + status.waiting;
                    fresh.push((busy, (i + n - start) % n, i));
                }
                Verdict::Behind(replay) => {
                    // The furthest along; among equals, in turn.
                    let rank = (replay, n - (i + n - start) % n);
                    if behind.is_none_or(|(_, best)| rank > best) {
                        behind = Some((i, rank));
                    }
                }
                Verdict::Out(_) => {}
            }
        }
        fresh.sort_unstable();
        (
            fresh.into_iter().map(|(_, _, i)| i).collect(),
            behind.map(|(i, _)| i),
        )
    }

    pub(super) fn lend_standby(&self, i: usize, conn: PooledConn<PgManager>) -> ReadConn {
        let s = &self.standbys[i];
        s.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("queuepool_reads_total", "target" => s.route.label.to_string())
            .increment(1);
        ReadConn {
            conn,
            route: s.route.clone(),
        }
    }

    /// Asks standby `i` for its replay position on the connection the read would use;
    /// the read stays there if it has replayed `after`.
    pub(super) async fn recheck(&self, i: usize, after: Lsn) -> Option<ReadConn> {
        let s = &self.standbys[i];
        s.rechecks.fetch_add(1, Ordering::Relaxed);
        let mut conn = match s.pool.get().await {
            Ok(conn) => conn,
            Err(e) => {
                if e.is_connect() {
                    self.checkout_failed(i, &e);
                }
                return None;
            }
        };
        let probe = monitor::replay_position(&conn, self.config.probe_timeout).await;
        match probe {
            Ok((standby, replay)) => {
                lock(&s.state).seen(standby, replay);
                if standby && replay.is_some_and(|r| r >= after) {
                    s.recheck_hits.fetch_add(1, Ordering::Relaxed);
                    return Some(self.lend_standby(i, conn));
                }
                None
            }
            Err(e) => {
                if PooledConn::report_error(&mut conn, &e) {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    self.mark_down(i, &e.to_string());
                }
                None
            }
        }
    }

    pub(super) fn checkout_failed(&self, i: usize, error: &PoolError) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
        self.mark_down(i, &error_chain(error));
    }

    pub(super) fn mark_down(&self, i: usize, why: &str) {
        let s = &self.standbys[i];
        let was_up = {
            let mut state = lock(&s.state);
            let was = state.up;
            state.down();
            was
        };
        if was_up {
            warn!(target: LOG_TARGET, standby = %s.route, "standby gets no reads until it answers again: {why}");
        }
    }

    /// Records a probe's answer for standby `i`, logging when it starts or stops
    /// getting reads.
    pub(crate) fn probed(&self, i: usize, answer: Result<(bool, Option<Lsn>), PgError>) {
        let s = &self.standbys[i];
        let now = Instant::now();
        let (standby, replay) = match answer {
            Ok(answer) => answer,
            Err(e) => return self.mark_down(i, &e.to_string()),
        };
        let before = self.verdict_now(i, now);
        let was_standby = lock(&s.state).standby;
        lock(&s.state).seen(standby, replay);
        let after = self.verdict_now(i, now);
        match (before, after) {
            (Verdict::Out(Out::Lagging(_)), Verdict::Out(Out::Lagging(_))) => {}
            (_, Verdict::Out(Out::Lagging(lag))) => {
                warn!(target: LOG_TARGET, standby = %s.route, lag_ms = lag.as_millis() as u64,
                    max_lag_ms = self.config.max_lag.as_millis() as u64,
                    "standby lags behind the primary; it gets no reads until it catches up");
            }
            (_, Verdict::Out(Out::NotStandby))
                if !standby && (was_standby || before == Verdict::Out(Out::Down)) =>
            {
                warn!(target: LOG_TARGET, standby = %s.route,
                    "read host is not in recovery (pg_is_in_recovery() = false): not a standby, it gets no reads");
            }
            (Verdict::Out(_), Verdict::Fresh) => {
                info!(target: LOG_TARGET, standby = %s.route, "standby gets reads");
            }
            _ => debug!(target: LOG_TARGET, standby = %s.route, verdict = ?after, "standby probed"),
        }
    }

    fn verdict_now(&self, i: usize, now: Instant) -> Verdict {
        let history = lock(&self.history);
        let state = lock(&self.standbys[i].state);
        judge(&state, &history, None, self.config.max_lag, now)
    }

    pub(crate) fn primary_flushed(&self, lsn: Lsn) {
        lock(&self.history).record(Instant::now(), lsn);
    }

    pub(super) fn stats(&self) -> RoutingStats {
        let shared = self;
        let now = Instant::now();
        let history = lock(&shared.history);
        let standbys = shared
            .standbys
            .iter()
            .map(|s| {
                let state = lock(&s.state).clone();
                let verdict = judge(&state, &history, None, shared.config.max_lag, now);
                let lag = state
                    .replay
                    .filter(|_| state.up && state.standby)
                    .map(|replay| history.lag(replay, now));
                StandbyStats {
                    label: s.route.label.to_string(),
                    reads: s.reads.load(Ordering::Relaxed),
                    rechecks: s.rechecks.load(Ordering::Relaxed),
                    recheck_hits: s.recheck_hits.load(Ordering::Relaxed),
                    up: state.up,
                    standby: state.standby,
                    replay_lsn: state.replay,
                    lag,
                    eligible: verdict == Verdict::Fresh,
                }
            })
            .collect();
        RoutingStats {
            primary_reads: shared.primary_reads.load(Ordering::Relaxed),
            primary_reads_for_freshness: shared.fresh_fallbacks.load(Ordering::Relaxed),
            failovers: shared.failovers.load(Ordering::Relaxed),
            standbys,
        }
    }
}

/// The error and its sources, for a log line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    crate::error::chain_text(error)
}
