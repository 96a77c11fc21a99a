//! How far behind a standby is, from what the router has seen: the pure part of the
//! routing decision (no I/O), tested under virtual time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::lsn::Lsn;

/// The primary's flushed WAL positions, each with the moment it was first seen.
///
/// A standby whose replay position is below a sample's position has not replayed what
/// the primary had written by then: its lag is at least the age of the oldest such
/// sample. This needs no clock shared with the servers (the times are the router's
/// own) and reads zero on an idle primary, where `now() -
/// pg_last_xact_replay_timestamp()` would grow without bound.
#[derive(Debug)]
pub(crate) struct History {
    samples: VecDeque<(Instant, Lsn)>,
    /// How long samples are kept: past it, any standby still behind them is out anyway.
    keep: Duration,
}

impl History {
    pub(crate) fn new(keep: Duration) -> History {
        History {
            samples: VecDeque::new(),
            keep,
        }
    }

    /// Records that the primary's flush position was `lsn` at `at`. A position below the
    /// last one means another server is the primary now (a failover): the history
    /// starts over from it.
    pub(crate) fn record(&mut self, at: Instant, lsn: Lsn) {
        match self.samples.back() {
            Some(&(_, last)) if last == lsn => {}
            Some(&(_, last)) if last > lsn => {
                self.samples.clear();
                self.samples.push_back((at, lsn));
            }
            _ => self.samples.push_back((at, lsn)),
        }
        // Keep the newest sample at or before the cutoff: the lag of a standby behind
        // it is then still known to be past `keep`.
        let cutoff = at.checked_sub(self.keep);
        while let Some(cutoff) = cutoff
            && self.samples.len() >= 2
            && self.samples[1].0 <= cutoff
        {
            self.samples.pop_front();
        }
    }

    /// How long a standby that has replayed up to `replay` has been behind at `now`:
    /// the age of the oldest position seen on the primary that it has not replayed;
    /// zero when it has everything the primary was seen to have.
    pub(crate) fn lag(&self, replay: Lsn, now: Instant) -> Duration {
        self.samples
            .iter()
            .find(|&&(_, lsn)| lsn > replay)
            .map_or(Duration::ZERO, |&(at, _)| now.saturating_duration_since(at))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.len()
    }
}

/// What the router knows of one standby, from its probes and rechecks.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostState {
    /// Answered its last probe.
    pub(crate) up: bool,
    /// `pg_is_in_recovery()` was true at the last probe.
    pub(crate) standby: bool,
    /// `pg_last_wal_replay_lsn()`; `None` until probed, and again after it was down
    /// (a restarted standby can come back at an older position).
    pub(crate) replay: Option<Lsn>,
}

impl HostState {
    /// A probe or recheck answered: `standby` and its replay position.
    pub(crate) fn seen(&mut self, standby: bool, replay: Option<Lsn>) {
        self.up = true;
        self.standby = standby;
        self.replay = match (self.replay, replay) {
            (Some(old), Some(new)) => Some(old.max(new)),
            (_, new) => new,
        };
    }

    /// A probe, checkout or query failed with a disconnect.
    pub(crate) fn down(&mut self) {
        self.up = false;
        self.replay = None;
    }
}

/// Whether one standby may serve a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Up, a standby, within the lag bound, and it has replayed the client's writes.
    Fresh,
    /// Up and within the lag bound, but it has not replayed the client's writes yet
    /// (as far as the last probe knows): worth a recheck.
    Behind(Lsn),
    /// No reads: down, not (or not yet known to be) a standby, or lagging.
    Out(Out),
}

/// Why a standby gets no reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Out {
    Down,
    NotStandby,
    Lagging(Duration),
}

/// The verdict on a standby in `state` for a read that must see `after`.
pub(crate) fn judge(
    state: &HostState,
    history: &History,
    after: Option<Lsn>,
    max_lag: Duration,
    now: Instant,
) -> Verdict {
    if !state.up {
        return Verdict::Out(Out::Down);
    }
    let Some(replay) = state.replay.filter(|_| state.standby) else {
        return Verdict::Out(Out::NotStandby);
    };
    let lag = history.lag(replay, now);
    if lag > max_lag {
        return Verdict::Out(Out::Lagging(lag));
    }
    match after {
        Some(after) if after > replay => Verdict::Behind(replay),
        _ => Verdict::Fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn standby_at(lsn: u64) -> HostState {
        let mut s = HostState::default();
        s.seen(true, Some(Lsn(lsn)));
        s
    }

    #[tokio::test(start_paused = true)]
    async fn caught_up_standby_has_no_lag_even_on_an_idle_primary() {
        let mut h = History::new(Duration::from_secs(3));
        h.record(Instant::now(), Lsn(100));
        tokio::time::advance(Duration::from_secs(60)).await;
        h.record(Instant::now(), Lsn(100));
        assert_eq!(h.lag(Lsn(100), Instant::now()), Duration::ZERO);
        assert_eq!(h.lag(Lsn(200), Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn lag_is_the_age_of_the_oldest_position_not_replayed() {
        let mut h = History::new(Duration::from_secs(3));
        let t0 = Instant::now();
        h.record(t0, Lsn(100));
        tokio::time::advance(100 * MS).await;
        h.record(Instant::now(), Lsn(200));
        tokio::time::advance(100 * MS).await;
        h.record(Instant::now(), Lsn(300));
        tokio::time::advance(50 * MS).await;
        let now = Instant::now();
        assert_eq!(h.lag(Lsn(300), now), Duration::ZERO);
        assert_eq!(h.lag(Lsn(250), now), 50 * MS);
        assert_eq!(h.lag(Lsn(200), now), 50 * MS);
        assert_eq!(h.lag(Lsn(150), now), 150 * MS);
        assert_eq!(h.lag(Lsn(50), now), 250 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_are_pruned_but_a_standby_behind_them_stays_out() {
        let keep = Duration::from_secs(3);
        let mut h = History::new(keep);
        h.record(Instant::now(), Lsn(100));
        for i in 1..=100u64 {
            tokio::time::advance(100 * MS).await;
            h.record(Instant::now(), Lsn(100 + i));
        }
        // 10 s of samples, every 100 ms: about 3 s of them are kept.
        assert!(h.len() <= 32, "{}", h.len());
        // A standby stuck at the first position: still at least `keep` behind.
        assert!(h.lag(Lsn(100), Instant::now()) >= keep);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_primary_position_starts_the_history_over() {
        let mut h = History::new(Duration::from_secs(3));
        h.record(Instant::now(), Lsn(1000));
        tokio::time::advance(Duration::from_secs(2)).await;
        // Failover: the new primary is where the standby was.
        h.record(Instant::now(), Lsn(900));
        assert_eq!(h.lag(Lsn(900), Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn verdict_follows_state_lag_and_the_clients_position() {
        let max_lag = Duration::from_secs(1);
        let mut h = History::new(Duration::from_secs(3));
        h.record(Instant::now(), Lsn(100));
        tokio::time::advance(200 * MS).await;
        h.record(Instant::now(), Lsn(200));
        tokio::time::advance(200 * MS).await;
        let now = Instant::now();

        let fresh = standby_at(200);
        assert_eq!(judge(&fresh, &h, None, max_lag, now), Verdict::Fresh);
        assert_eq!(
            judge(&fresh, &h, Some(Lsn(200)), max_lag, now),
            Verdict::Fresh
        );
        assert_eq!(
            judge(&fresh, &h, Some(Lsn(201)), max_lag, now),
            Verdict::Behind(Lsn(200))
        );

        let mut down = standby_at(200);
        down.down();
        assert_eq!(
            judge(&down, &h, None, max_lag, now),
            Verdict::Out(Out::Down)
        );

        let mut primary = HostState::default();
        primary.seen(false, Some(Lsn(200)));
        assert_eq!(
            judge(&primary, &h, None, max_lag, now),
            Verdict::Out(Out::NotStandby)
        );
        let unknown = HostState {
            up: true,
            standby: true,
            replay: None,
        };
        assert_eq!(
            judge(&unknown, &h, None, max_lag, now),
            Verdict::Out(Out::NotStandby)
        );

        // Behind the first sample (400 ms ago): within 1 s, then out once it is older.
        let slow = standby_at(50);
        assert_eq!(judge(&slow, &h, None, max_lag, now), Verdict::Fresh);
        tokio::time::advance(700 * MS).await;
        assert_eq!(
            judge(&slow, &h, None, max_lag, Instant::now()),
            Verdict::Out(Out::Lagging(1100 * MS))
        );
    }

    #[test]
    fn a_standby_that_went_down_forgets_its_position() {
        let mut s = standby_at(500);
        s.down();
        s.seen(true, Some(Lsn(400)));
        assert_eq!(s.replay, Some(Lsn(400)));
        // While up, positions only grow (a probe that started earlier may answer later).
        s.seen(true, Some(Lsn(300)));
        assert_eq!(s.replay, Some(Lsn(400)));
    }
}
