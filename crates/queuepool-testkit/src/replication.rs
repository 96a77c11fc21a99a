//! [`ReplicaSet`]: an ephemeral primary with streaming standbys, each behind a
//! [`FaultProxy`].

use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use crate::cluster::{EphemeralCluster, blocking};
use crate::{FaultMode, FaultProxy, TestkitError};

/// How long setup steps (a standby starting to stream, catching up) may take.
const SETUP_LIMIT: Duration = Duration::from_secs(30);

/// A primary (node 0) and `n` streaming standbys (nodes 1..=n) made with
/// `pg_basebackup -R`, each an [`EphemeralCluster`] on its own random port, and each
/// behind its own [`FaultProxy`] (pass-through at first).
///
/// Clients go through the proxies ([`url`](Self::url), [`node_url`](Self::node_url));
/// replication does not (standbys stream from the primary over its Unix socket), so
/// [`blackhole`](Self::blackhole) cuts the clients off a node while it keeps
/// replicating: a network partition between the application and the database host.
///
/// Nodes are addressed by index. Roles change with [`promote`](Self::promote): ask
/// [`is_in_recovery`](Self::is_in_recovery) rather than assume node 0 is the primary.
/// Every wait is bounded (30 s for setup, the caller's limit otherwise). `Drop` stops
/// every server (`immediate`) and removes the directories.
///
/// ```no_run
/// # async fn t() -> Result<(), queuepool_testkit::TestkitError> {
/// use queuepool_testkit::ReplicaSet;
/// let set = ReplicaSet::new(1).await?;
/// let url = set.url(&[("target_session_attrs", "read-write")]); // both proxies
/// set.blackhole(0); // the primary goes silent for clients
/// set.promote(1).await?; // the standby takes over
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReplicaSet {
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    // Field order: the proxy closes before its server stops.
    proxy: FaultProxy,
    cluster: EphemeralCluster,
}

impl ReplicaSet {
    /// Starts a primary and `standbys` streaming standbys (about 1-3 s each), and
    /// waits until every standby streams.
    pub async fn new(standbys: usize) -> Result<ReplicaSet, TestkitError> {
        let primary = EphemeralCluster::new().await?;
        let mut nodes = vec![Node::new(primary).await?];
        for i in 1..=standbys {
            let name = node_name(i);
            let source = nodes[0].cluster.source();
            let standby =
                blocking(move || EphemeralCluster::new_standby_blocking(&source, &name)).await?;
            nodes.push(Node::new(standby).await?);
        }
        let set = ReplicaSet { nodes };
        for i in 1..=standbys {
            set.wait_streaming(i).await?;
        }
        Ok(set)
    }

    /// How many nodes (primary and standbys).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the set has no node (never: there is always a primary).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn node(&self, i: usize) -> Result<&Node, TestkitError> {
        self.nodes
            .get(i)
            .ok_or_else(|| TestkitError::Db(format!("no node {i} (the set has {})", self.len())))
    }

    /// Node `i`'s server. Panics if `i >= len()` (a bug in the test).
    pub fn cluster(&self, i: usize) -> &EphemeralCluster {
        &self.nodes[i].cluster
    }

    /// Node `i`'s server, to stop, kill, start or reconfigure it. Panics if
    /// `i >= len()`.
    pub fn cluster_mut(&mut self, i: usize) -> &mut EphemeralCluster {
        &mut self.nodes[i].cluster
    }

    /// The proxy in front of node `i`. Panics if `i >= len()`.
    pub fn proxy(&self, i: usize) -> &FaultProxy {
        &self.nodes[i].proxy
    }

    /// Makes node `i` silent for clients: its proxy accepts and never answers, and
    /// open connections stop forwarding ([`FaultMode::Blackhole`]). Panics if
    /// `i >= len()`.
    pub fn blackhole(&self, i: usize) {
        self.nodes[i].proxy.set_mode(FaultMode::Blackhole);
    }

    /// Node `i`'s proxy forwards again ([`FaultMode::PassThrough`]). Panics if
    /// `i >= len()`.
    pub fn heal(&self, i: usize) {
        self.nodes[i].proxy.set_mode(FaultMode::PassThrough);
    }

    /// A multi-host URL through every node's proxy, in node order:
    /// `postgres://postgres:<pw>@127.0.0.1:<p0>,127.0.0.1:<p1>/postgres?sslmode=disable`
    /// followed by `params` (`&[("target_session_attrs", "read-write")]`).
    pub fn url(&self, params: &[(&str, &str)]) -> String {
        let all: Vec<usize> = (0..self.len()).collect();
        self.url_of(&all, params)
    }

    /// Like [`url`](Self::url) over the listed nodes, in the order given. Panics on an
    /// index `>= len()`.
    pub fn url_of(&self, nodes: &[usize], params: &[(&str, &str)]) -> String {
        let hosts: Vec<String> = nodes
            .iter()
            .map(|&i| format!("127.0.0.1:{}", self.nodes[i].proxy.port()))
            .collect();
        let base = format!(
            "postgres://postgres:{}@{}/postgres?sslmode=disable",
            self.nodes[0].cluster.password(),
            hosts.join(",")
        );
        crate::with_params(&base, params)
    }

    /// A single-host URL to node `i` through its proxy, plaintext.
    pub fn node_url(&self, i: usize) -> String {
        self.url_of(&[i], &[])
    }

    /// Promotes node `i` (`pg_ctl promote -w`); returns once it accepts writes.
    pub async fn promote(&self, i: usize) -> Result<(), TestkitError> {
        self.node(i)?.cluster.promote().await
    }

    /// Sets `recovery_min_apply_delay` on standby `i` (commits are replayed `delay`
    /// after the primary made them) and reloads it; `Duration::ZERO` removes the delay.
    pub async fn set_apply_delay(&mut self, i: usize, delay: Duration) -> Result<(), TestkitError> {
        self.node(i)?;
        let value = format!("'{}ms'", delay.as_millis());
        self.nodes[i]
            .cluster
            .set_setting("recovery_min_apply_delay", &value)
            .await
    }

    /// Whether node `i` is a standby now (`pg_is_in_recovery()`, asked directly, not
    /// through the proxy).
    pub async fn is_in_recovery(&self, i: usize) -> Result<bool, TestkitError> {
        let value = scalar(&self.node(i)?.cluster, "SELECT pg_is_in_recovery()").await?;
        Ok(value == "t")
    }

    /// Waits (at most `limit`) until standby `standby` has replayed everything node
    /// `primary` had committed when the wait began (`pg_current_wal_insert_lsn()`
    /// against `pg_last_wal_replay_lsn()`), acknowledged asynchronous commits included.
    /// Under `recovery_min_apply_delay` this takes the delay.
    pub async fn wait_caught_up(
        &self,
        primary: usize,
        standby: usize,
        limit: Duration,
    ) -> Result<(), TestkitError> {
        // The insert position: with `synchronous_commit = off` (the clusters' setting) a
        // commit is acknowledged before its WAL is written, let alone sent.
        let lsn = scalar(
            &self.node(primary)?.cluster,
            "SELECT pg_current_wal_insert_lsn()",
        )
        .await?;
        let check = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)");
        let standby_node = &self.node(standby)?.cluster;
        let deadline = Instant::now() + limit;
        loop {
            if scalar(standby_node, &check).await? == "t" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::Timeout(format!(
                    "node {standby} did not replay {lsn} of node {primary} within {limit:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the primary (node 0) lists standby `i` as streaming.
    async fn wait_streaming(&self, i: usize) -> Result<(), TestkitError> {
        let check = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'",
            node_name(i)
        );
        let deadline = Instant::now() + SETUP_LIMIT;
        loop {
            if scalar(&self.nodes[0].cluster, &check).await? == "1" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::Timeout(format!(
                    "standby {} did not start streaming within {SETUP_LIMIT:?}",
                    node_name(i)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Node {
    async fn new(cluster: EphemeralCluster) -> Result<Node, TestkitError> {
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.port()));
        let proxy = FaultProxy::start(target).await?;
        Ok(Node { proxy, cluster })
    }
}

/// The `application_name` standby `i` streams under (`pg_stat_replication`).
fn node_name(i: usize) -> String {
    format!("node{i}")
}

/// The first column of the first row of `sql`, as text, run on `cluster` directly.
async fn scalar(cluster: &EphemeralCluster, sql: &str) -> Result<String, TestkitError> {
    let conn = cluster.admin().await?;
    let messages = conn.simple_query(sql).await?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .ok_or_else(|| TestkitError::Db(format!("no row from {sql}")))
}
