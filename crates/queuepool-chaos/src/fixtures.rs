//! Databases for the scenarios, and what the suite reads from them and from `/pool`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use queuepool_postgres::{PgConnection, PgManager};
use queuepool_testkit::{EphemeralCluster, TestDb, unique_name};

use crate::error::ChaosError;

/// An ephemeral cluster (it can be stopped and started) with a unique
/// `application_name` for the connections of the service under test.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster.
    pub cluster: EphemeralCluster,
    /// The `application_name` of the pool under test.
    pub app: String,
}

impl Cluster {
    /// Starts a cluster.
    pub async fn start() -> Result<Cluster, ChaosError> {
        Ok(Cluster {
            cluster: EphemeralCluster::new().await?,
            app: unique_name("qp_chaos"),
        })
    }

    /// The URL for the service: password authentication, no TLS (the suite measures
    /// the pool, not the handshake), the unique `application_name`.
    pub fn url(&self) -> String {
        format!(
            "{}&application_name={}",
            self.cluster
                .url_for("127.0.0.1", self.cluster.port(), "disable"),
            self.app
        )
    }

    /// The same URL pointing at `host:port` (a proxy).
    pub fn url_via(&self, port: u16) -> String {
        format!(
            "{}&application_name={}",
            self.cluster.url_for("127.0.0.1", port, "disable"),
            self.app
        )
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.cluster.port()))
    }

    /// A connection that is not the pool's, to look at the server.
    pub async fn observer(&self) -> Result<PgConnection, ChaosError> {
        let m = PgManager::from_url(&self.url())?
            .with_application_name(&format!("{}_observer", self.app));
        Ok(m.connect_one().await?)
    }

    /// Connections of the pool under test open on the server.
    pub async fn count_connections(&self) -> Result<usize, ChaosError> {
        let obs = self.observer().await?;
        let rows = obs
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&self.app],
            )
            .await
            .map_err(queuepool_postgres::PgError::from)?;
        let n: i64 = rows.first().map_or(0, |r| r.get(0));
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// The address of the shared test server of `db`.
pub fn server_addr(db: &TestDb) -> Result<SocketAddr, ChaosError> {
    let m = db.manager()?;
    let host = match m.pg_config().get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = m.pg_config().get_ports().first().copied().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(ChaosError::io("resolving the test server"))?
        .next()
        .ok_or_else(|| ChaosError::Unexpected("the test server address did not resolve".into()))
}

/// Polls `probe` every 100 ms until it returns `want` or `limit` passes; returns the
/// last value seen.
pub async fn settle<T, F, Fut>(limit: Duration, want: T, mut probe: F) -> Result<T, ChaosError>
where
    T: PartialEq + Copy,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ChaosError>>,
{
    let until = Instant::now() + limit;
    loop {
        let v = probe().await?;
        if v == want || Instant::now() >= until {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /pool` of the service.
pub async fn pool_json(
    client: &reqwest::Client,
    base: &str,
) -> Result<serde_json::Value, ChaosError> {
    Ok(client
        .get(format!("{base}/pool"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The occupancy read from `/pool`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolView {
    /// Idle connections.
    pub idle: i64,
    /// Checked out.
    pub checked_out: i64,
    /// Waiting checkouts.
    pub waiting: i64,
    /// Connection attempts in flight.
    pub connecting: i64,
    /// Connections opened since the start.
    pub created: i64,
}

impl PoolView {
    /// Reads the fields of a `/pool` document.
    pub fn from_json(v: &serde_json::Value) -> PoolView {
        let n = |x: &serde_json::Value| x.as_i64().unwrap_or(-1);
        PoolView {
            idle: n(&v["idle"]),
            checked_out: n(&v["checked_out"]),
            waiting: n(&v["waiting"]),
            connecting: n(&v["connecting"]),
            created: n(&v["stats"]["connections_created"]),
        }
    }
}
