//! The probes: one task per server, each on a connection of its own (outside the
//! pools, so a saturated pool does not delay them and they do not take its slots).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use queuepool::Manager;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_postgres::SimpleQueryMessage;
use tracing::debug;

use super::Shared;
use super::lsn::Lsn;
use crate::connection::PgConnection;
use crate::error::PgError;
use crate::manager::{LOG_TARGET, PgManager};

/// Which server a probe task watches.
#[derive(Debug, Clone, Copy)]
enum Watch {
    Primary,
    Standby(usize),
}

/// What a probe found.
enum Answer {
    /// The primary's flush position.
    Flushed(Option<Lsn>),
    /// A standby's `pg_is_in_recovery()` and replay position.
    Replay(bool, Option<Lsn>),
}

/// Starts the probe tasks of `shared`: the primary's flush position and each standby's
/// replay position, every `refresh_interval`.
pub(super) fn spawn(shared: &Arc<Shared>) {
    let mut watches = vec![(Watch::Primary, shared.primary.manager().clone())];
    for (i, s) in shared.standbys.iter().enumerate() {
        watches.push((Watch::Standby(i), s.pool.manager().clone()));
    }
    for (watch, manager) in watches {
        tokio::spawn(watch_server(
            Arc::downgrade(shared),
            watch,
            manager,
            shared.stop.clone(),
        ));
    }
}

async fn watch_server(weak: Weak<Shared>, watch: Watch, manager: PgManager, stop: Arc<Notify>) {
    let (every, limit) = match weak.upgrade() {
        Some(s) => (s.config.refresh_interval, s.config.probe_timeout),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn: Option<PgConnection> = None;
    loop {
        let stopped = stop.notified();
        match weak.upgrade() {
            Some(s) if !s.closed.load(Ordering::Acquire) => {}
            _ => break,
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped => break,
        }
        let answer = probe(&mut conn, &manager, watch, limit).await;
        let Some(shared) = weak.upgrade() else { break };
        match (watch, answer) {
            (Watch::Primary, Ok(Answer::Flushed(Some(lsn)))) => shared.primary_flushed(lsn),
            (Watch::Primary, Err(e)) => {
                debug!(target: LOG_TARGET, error = %e, "primary position probe failed");
            }
            (Watch::Standby(i), Ok(Answer::Replay(standby, replay))) => {
                shared.probed(i, Ok((standby, replay)));
            }
            (Watch::Standby(i), Err(e)) => shared.probed(i, Err(e)),
            _ => {}
        }
    }
    if let Some(conn) = conn {
        manager.close(conn).await;
    }
}

/// Runs `watch`'s query on the probe connection, opening it first if needed, all
/// within `limit`; a failure drops the connection (the next probe opens a new one).
async fn probe(
    conn: &mut Option<PgConnection>,
    manager: &PgManager,
    watch: Watch,
    limit: Duration,
) -> Result<Answer, PgError> {
    let open = match conn.take() {
        Some(c) if !c.is_closed() && !c.is_broken() => c,
        _ => match tokio::time::timeout(limit, manager.connect_one()).await {
            Ok(result) => result?,
            Err(_) => return Err(PgError::Timeout(limit)),
        },
    };
    let answer = match watch {
        Watch::Primary => {
            let query = one_text(&open, "SELECT pg_current_wal_flush_lsn()::text");
            match tokio::time::timeout(limit, query).await {
                Ok(text) => text
                    .and_then(|t| parse_lsn(t.as_deref()))
                    .map(Answer::Flushed),
                Err(_) => Err(PgError::Timeout(limit)),
            }
        }
        Watch::Standby(_) => replay_position(&open, limit)
            .await
            .map(|(standby, replay)| Answer::Replay(standby, replay)),
    };
    if answer.is_ok() {
        *conn = Some(open);
    } else {
        manager.close(open).await;
    }
    answer
}

/// `pg_is_in_recovery()` and `pg_last_wal_replay_lsn()` (NULL on a server that never
/// was in recovery), one round trip bounded by `limit`. Tracked: the connection (a
/// standby's pooled one, lent on afterwards by a recheck) goes back to its pool
/// without a round trip.
pub(super) async fn replay_position(
    conn: &PgConnection,
    limit: Duration,
) -> Result<(bool, Option<Lsn>), PgError> {
    let messages = conn
        .timeout(
            limit,
            conn.simple_query("SELECT pg_is_in_recovery()::text, pg_last_wal_replay_lsn()::text"),
        )
        .await?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| PgError::Client("replay position query returned no row".into()))?;
    let standby = row.get(0) == Some("true");
    Ok((standby, parse_lsn(row.get(1))?))
}

/// The first column of the first row of `sql` (simple protocol), `None` for NULL.
/// Tracked, like [`replay_position`]: [`ReadWrite::token`](super::ReadWrite::token)
/// runs it on the borrower's connection.
pub(super) async fn one_text(conn: &PgConnection, sql: &str) -> Result<Option<String>, PgError> {
    let messages = conn.simple_query(sql).await?;
    Ok(messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    }))
}

fn parse_lsn(text: Option<&str>) -> Result<Option<Lsn>, PgError> {
    text.map(str::parse).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracked::Pending;

    /// The shared test server (DATABASE_URL, else the local one).
    fn manager() -> PgManager {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| {
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into()
            });
        PgManager::from_url(&url).expect("DATABASE_URL parses")
    }

    /// A probe round and the token query use the tracked path: the connection is left
    /// with nothing to settle, so a pooled one (a recheck's, a token's) goes back
    /// without the empty query an untracked return costs.
    #[tokio::test]
    async fn a_monitor_round_leaves_its_connection_tracked() {
        let manager = manager();
        let limit = Duration::from_secs(5);
        let mut conn = None;
        let flushed = probe(&mut conn, &manager, Watch::Primary, limit)
            .await
            .expect("the primary probe answers");
        assert!(matches!(flushed, Answer::Flushed(Some(_))));
        let first = conn.as_ref().expect("the probe keeps its connection");
        assert_eq!(first.pending(), Pending::Nothing, "after the primary probe");
        assert!(first.was_used(), "the probe did run its query on it");

        // The standby query on a primary: not in recovery, no replay position.
        let replay = probe(&mut conn, &manager, Watch::Standby(0), limit)
            .await
            .expect("the standby probe answers");
        assert!(matches!(replay, Answer::Replay(false, None)));
        let open = conn.take().expect("the probe keeps its connection");
        assert_eq!(open.pending(), Pending::Nothing, "after the standby probe");

        // What `ReadWrite::token` runs on a borrower's connection.
        let text = one_text(&open, "SELECT 'tracked'").await.expect("query");
        assert_eq!(text.as_deref(), Some("tracked"));
        assert_eq!(open.pending(), Pending::Nothing, "after one_text");
        manager.close(open).await;
    }
}
