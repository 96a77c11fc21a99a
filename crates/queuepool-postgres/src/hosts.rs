//! What a manager learned about each host of its connection string: when it was last
//! found silent or unreachable, and whether it is a primary or a standby.
//!
//! libpq tries the hosts of a multi-host string in order, every time. A pool connects
//! many times, and a host that went silent (partition, frozen machine) costs each
//! attempt a whole `connect_timeout` before the next host is tried. Like pgjdbc's
//! `hostRecheckSeconds`, what was learned within the recheck window reorders the list:
//! hosts known to match `target_session_attrs` (or unknown) first, known mismatches
//! next, hosts found down last. Nothing is skipped: a stale entry only changes the order.
//!
//! A host found silent also condemns the connections opened to it before: the pool's
//! synchronous [`health`](queuepool::Manager::health) check reports them broken, so
//! they are closed instead of lent (or pinged one by one, each ping waiting for its
//! timeout).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::TargetSessionAttrs;

/// How long what was learned about a host orders the host list (pgjdbc's
/// `hostRecheckSeconds` default).
pub(crate) const DEFAULT_HOST_RECHECK: Duration = Duration::from_secs(10);

/// What a server said about itself at startup (`in_hot_standby`,
/// `default_transaction_read_only`, reported by PostgreSQL 14+) or when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ServerRole {
    /// In hot standby (a standby in recovery): `pg_is_in_recovery()`.
    pub(crate) hot_standby: Option<bool>,
    /// New transactions are read-only by default (`transaction_read_only` at session
    /// start): a standby, or a primary with `default_transaction_read_only = on`.
    pub(crate) read_only: Option<bool>,
}

impl ServerRole {
    /// Whether a server with this role satisfies `target`; `None` when the role is not
    /// known well enough to say.
    pub(crate) fn matches(&self, target: TargetSessionAttrs) -> Option<bool> {
        match target {
            TargetSessionAttrs::Any => Some(true),
            TargetSessionAttrs::ReadWrite => self.read_only.map(|ro| !ro),
            TargetSessionAttrs::ReadOnly => self.read_only,
            TargetSessionAttrs::Primary => self.hot_standby.map(|s| !s),
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => self.hot_standby,
        }
    }
}

/// The hosts of one manager (shared by its clones).
#[derive(Debug)]
pub(crate) struct HostTracker {
    base: Instant,
    recheck: Duration,
    hosts: Mutex<HashMap<String, Arc<HostCell>>>,
}

/// One host (`host:port` as connected to).
#[derive(Debug)]
pub(crate) struct HostCell {
    label: String,
    base: Instant,
    /// When the host was last found silent or unreachable, in nanoseconds since `base`
    /// plus one; 0 never. Not cleared when the host answers again: connections opened
    /// before stay condemned (a blackholed stream may have lost bytes mid-message).
    down_at: AtomicU64,
    /// When the host last answered a connection attempt, same unit.
    up_at: AtomicU64,
    /// When a query on one of its connections last ran past its
    /// [`timeout`](crate::PgConnection::timeout), same unit: a host that may have gone
    /// silent. It only orders the list (tried last until it answers a connection
    /// again); its connections are not condemned (a slow query is no proof).
    suspect_at: AtomicU64,
    role: Mutex<Option<(ServerRole, Instant)>>,
}

/// Where a connection was opened, and when: kept by the connection for
/// [`Origin::host_went_down`].
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    cell: Arc<HostCell>,
    opened: u64,
}

impl HostTracker {
    pub(crate) fn new(recheck: Duration) -> Self {
        HostTracker {
            base: Instant::now(),
            recheck,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The cell of `label`, created on first use.
    pub(crate) fn cell(&self, label: &str) -> Arc<HostCell> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(label.to_owned())
            .or_insert_with(|| {
                Arc::new(HostCell {
                    label: label.to_owned(),
                    base: self.base,
                    down_at: AtomicU64::new(0),
                    up_at: AtomicU64::new(0),
                    suspect_at: AtomicU64::new(0),
                    role: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Where `label` goes in the connection order for `target`: 0 (known to match, or
    /// nothing recent known), 1 (known recently not to match), 2 (found down recently).
    pub(crate) fn rank(&self, label: &str, target: TargetSessionAttrs) -> u8 {
        let cell = {
            let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            match hosts.get(label) {
                Some(c) => c.clone(),
                None => return 0,
            }
        };
        let now = Instant::now();
        if let Some(down) = cell.down_since()
            && now.saturating_duration_since(down) < self.recheck
        {
            return 2;
        }
        let role = *cell.role.lock().unwrap_or_else(|p| p.into_inner());
        match role {
            Some((role, at))
                if now.saturating_duration_since(at) < self.recheck
                    && role.matches(target) == Some(false) =>
            {
                1
            }
            _ => 0,
        }
    }
}

impl HostCell {
    fn nanos_now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// When the host was last found down or suspect, unless it answered since.
    fn down_since(&self) -> Option<Instant> {
        let down = self
            .down_at
            .load(Ordering::Acquire)
            .max(self.suspect_at.load(Ordering::Acquire));
        if down == 0 || self.up_at.load(Ordering::Acquire) >= down {
            return None;
        }
        Some(self.base + Duration::from_nanos(down - 1))
    }

    /// The host did not answer (timeout) or refused: try it last for a while, and
    /// condemn the connections opened to it before now.
    pub(crate) fn mark_down(&self) {
        tracing::debug!(target: crate::manager::LOG_TARGET, host = %self.label, "host marked down");
        self.down_at.store(self.nanos_now(), Ordering::Release);
    }

    /// A query on a connection to this host got no answer in time.
    pub(crate) fn mark_suspect(&self) {
        self.suspect_at.store(self.nanos_now(), Ordering::Release);
    }

    /// The host answered and said what it is.
    pub(crate) fn mark_up(&self, role: ServerRole) {
        self.up_at.store(self.nanos_now(), Ordering::Release);
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = Some((role, Instant::now()));
    }

    /// A connection opened to this host now.
    pub(crate) fn origin(self: &Arc<Self>) -> Origin {
        Origin {
            cell: self.clone(),
            opened: self.nanos_now(),
        }
    }
}

impl Origin {
    /// `host:port` (or the socket path) the connection went to.
    pub(crate) fn label(&self) -> &str {
        &self.cell.label
    }

    /// Whether the host was found silent or unreachable after this connection was
    /// opened: one atomic load, for the pool's synchronous health check.
    pub(crate) fn host_went_down(&self) -> bool {
        self.cell.down_at.load(Ordering::Acquire) > self.opened
    }

    /// Marks the host down (a ping on this connection got no answer in time).
    pub(crate) fn mark_host_down(&self) {
        self.cell.mark_down();
    }

    /// Marks the host suspect (a query on this connection ran past its timeout).
    pub(crate) fn mark_host_suspect(&self) {
        self.cell.mark_suspect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDBY: ServerRole = ServerRole {
        hot_standby: Some(true),
        read_only: Some(true),
    };
    const PRIMARY: ServerRole = ServerRole {
        hot_standby: Some(false),
        read_only: Some(false),
    };

    #[test]
    fn roles_match_targets_as_libpq_defines_them() {
        use TargetSessionAttrs::*;
        let read_only_primary = ServerRole {
            hot_standby: Some(false),
            read_only: Some(true),
        };
        for (role, target, expected) in [
            (PRIMARY, Any, Some(true)),
            (STANDBY, Any, Some(true)),
            (PRIMARY, ReadWrite, Some(true)),
            (STANDBY, ReadWrite, Some(false)),
            (PRIMARY, ReadOnly, Some(false)),
            (STANDBY, ReadOnly, Some(true)),
            (PRIMARY, Primary, Some(true)),
            (STANDBY, Primary, Some(false)),
            (PRIMARY, Standby, Some(false)),
            (STANDBY, Standby, Some(true)),
            (STANDBY, PreferStandby, Some(true)),
            (PRIMARY, PreferStandby, Some(false)),
            // default_transaction_read_only on a primary: read-only, yet a primary.
            (read_only_primary, ReadWrite, Some(false)),
            (read_only_primary, ReadOnly, Some(true)),
            (read_only_primary, Primary, Some(true)),
            (read_only_primary, Standby, Some(false)),
            (ServerRole::default(), ReadWrite, None),
            (ServerRole::default(), Standby, None),
        ] {
            assert_eq!(role.matches(target), expected, "{role:?} {target:?}");
        }
    }

    #[test]
    fn down_hosts_go_last_and_known_mismatches_before_them() {
        let t = HostTracker::new(Duration::from_secs(60));
        assert_eq!(t.rank("a:1", TargetSessionAttrs::ReadWrite), 0);
        t.cell("a:1").mark_down();
        t.cell("b:2").mark_up(STANDBY);
        t.cell("c:3").mark_up(PRIMARY);
        assert_eq!(t.rank("a:1", TargetSessionAttrs::ReadWrite), 2);
        assert_eq!(t.rank("b:2", TargetSessionAttrs::ReadWrite), 1);
        assert_eq!(t.rank("c:3", TargetSessionAttrs::ReadWrite), 0);
        assert_eq!(t.rank("b:2", TargetSessionAttrs::Any), 0);
        // Answering again clears the mark.
        t.cell("a:1").mark_up(PRIMARY);
        assert_eq!(t.rank("a:1", TargetSessionAttrs::ReadWrite), 0);
    }

    #[test]
    fn a_suspect_host_goes_last_until_it_answers_but_keeps_its_connections() {
        let t = HostTracker::new(Duration::from_secs(60));
        let cell = t.cell("a:1");
        cell.mark_up(PRIMARY);
        let conn = cell.origin();
        std::thread::sleep(Duration::from_millis(1));
        cell.mark_suspect();
        assert_eq!(t.rank("a:1", TargetSessionAttrs::ReadWrite), 2);
        assert!(
            !conn.host_went_down(),
            "a slow query condemns no connection"
        );
        std::thread::sleep(Duration::from_millis(1));
        cell.mark_up(PRIMARY);
        assert_eq!(t.rank("a:1", TargetSessionAttrs::ReadWrite), 0);
    }

    #[test]
    fn what_was_learned_expires_after_the_recheck_window() {
        let t = HostTracker::new(Duration::ZERO);
        t.cell("a:1").mark_down();
        t.cell("b:2").mark_up(STANDBY);
        assert_eq!(t.rank("a:1", TargetSessionAttrs::ReadWrite), 0);
        assert_eq!(t.rank("b:2", TargetSessionAttrs::ReadWrite), 0);
    }

    #[test]
    fn only_connections_opened_before_the_host_went_down_are_condemned() {
        let t = HostTracker::new(Duration::from_secs(60));
        let cell = t.cell("a:1");
        let before = cell.origin();
        assert!(!before.host_went_down());
        std::thread::sleep(Duration::from_millis(1));
        cell.mark_down();
        assert!(before.host_went_down());
        std::thread::sleep(Duration::from_millis(1));
        let after = cell.origin();
        assert!(!after.host_went_down());
        // The host answering again puts it back in front, but does not revive the
        // connection opened before it went silent.
        std::thread::sleep(Duration::from_millis(1));
        cell.mark_up(PRIMARY);
        assert_eq!(t.rank("a:1", TargetSessionAttrs::Any), 0);
        assert!(before.host_went_down());
        assert!(!after.host_went_down());
    }
}
