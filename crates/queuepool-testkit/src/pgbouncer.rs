//! [`PgBouncer`]: a PgBouncer in transaction mode in front of a test server, configured
//! by [`PgBouncerConfig`].

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::TestkitError;
use crate::util::{chown_to_postgres, free_port, spawnable_as_postgres};

/// How a test [`PgBouncer`] is configured: where it forwards, and the sizes of its
/// two sides (server connections per database/user pair, client connections in all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBouncerConfig {
    /// The server's host.
    pub target_host: String,
    /// The server's port.
    pub target_port: u16,
    /// `default_pool_size`: server connections per database/user pair.
    pub default_pool_size: usize,
    /// `max_client_conn`: client connections PgBouncer accepts in all.
    pub max_client_conn: usize,
    /// `reserve_pool_size`: extra server connections for a pool whose clients waited
    /// `reserve_pool_timeout` (5 s).
    pub reserve_pool_size: usize,
    /// `query_wait_timeout` in seconds: how long a client may wait for a server
    /// connection before PgBouncer disconnects it (PgBouncer's default: 120).
    pub query_wait_timeout_s: u64,
    /// The password PgBouncer logs in to the server with (the user's entry in its
    /// `auth_file`), for a server with password authentication such as an
    /// [`EphemeralCluster`](crate::EphemeralCluster). Clients need none (`auth_type =
    /// trust`).
    pub server_password: Option<String>,
}

impl PgBouncerConfig {
    /// Forwards to `target_host:target_port`; 20 server connections per pool (the
    /// default of PgBouncer), 500 clients, no reserve pool, 120 s client wait.
    pub fn new(target_host: &str, target_port: u16) -> PgBouncerConfig {
        PgBouncerConfig {
            target_host: target_host.to_owned(),
            target_port,
            default_pool_size: 20,
            max_client_conn: 500,
            reserve_pool_size: 0,
            query_wait_timeout_s: 120,
            server_password: None,
        }
    }

    /// The `pgbouncer.ini` for this configuration, with its files in `root`.
    fn ini(&self, root: &std::path::Path, port: u16) -> String {
        format!(
            "[databases]\n\
             * = host={host} port={target_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {root}/userlist.txt\n\
             admin_users = postgres\n\
             pool_mode = transaction\n\
             default_pool_size = {pool}\n\
             reserve_pool_size = {reserve}\n\
             max_client_conn = {clients}\n\
             query_wait_timeout = {wait}\n\
             server_reset_query =\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {root}/pgbouncer.log\n\
             pidfile = {root}/pgbouncer.pid\n",
            host = self.target_host,
            target_port = self.target_port,
            pool = self.default_pool_size,
            reserve = self.reserve_pool_size,
            clients = self.max_client_conn,
            wait = self.query_wait_timeout_s,
            root = root.display(),
        )
    }
}

/// A PgBouncer (Debian package `pgbouncer`) started for one test: `pool_mode =
/// transaction`, listening on 127.0.0.1 at a free port, `auth_type = trust` for the
/// user `postgres` (also its admin user: the console is the database `pgbouncer`),
/// forwarding every database to the target server. Its ini, user list, pid and log
/// files live in a temporary directory. As root it runs as the `postgres` user
/// (PgBouncer refuses to run as root), as a direct child so that it is killed on drop.
#[derive(Debug)]
pub struct PgBouncer {
    dir: TempDir,
    port: u16,
    child: Child,
}

impl PgBouncer {
    /// Starts PgBouncer with `default_pool_size` server connections per database/user,
    /// in front of a server that trusts `postgres`.
    pub async fn start(
        target_host: &str,
        target_port: u16,
        default_pool_size: usize,
    ) -> Result<PgBouncer, TestkitError> {
        let mut config = PgBouncerConfig::new(target_host, target_port);
        config.default_pool_size = default_pool_size;
        PgBouncer::start_with(&config).await
    }

    /// Starts PgBouncer with `config`.
    pub async fn start_with(config: &PgBouncerConfig) -> Result<PgBouncer, TestkitError> {
        let bin = find_pgbouncer()?;
        let dir = tempfile::Builder::new()
            .prefix("queuepool-pgbouncer-")
            .tempdir()
            .map_err(TestkitError::io("creating the pgbouncer directory"))?;
        let root = dir.path().to_owned();
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            write(&root.join("pgbouncer.ini"), &config.ini(&root, port))?;
            // With `auth_type = trust` the password is not asked of clients; PgBouncer
            // logs in to the server with it (SCRAM from the plain text).
            let password = config.server_password.as_deref().unwrap_or_default();
            write(
                &root.join("userlist.txt"),
                &format!("\"postgres\" \"{password}\"\n"),
            )?;
            chown_to_postgres(&root)?;
            let mut cmd = spawnable_as_postgres(&bin)?;
            cmd.arg(root.join("pgbouncer.ini"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd
                .spawn()
                .map_err(TestkitError::io("starting pgbouncer"))?;
            match wait_listening(port, &mut child).await {
                Ok(()) => return Ok(PgBouncer { dir, port, child }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log =
                        std::fs::read_to_string(root.join("pgbouncer.log")).unwrap_or_default();
                    last = Some(TestkitError::Command {
                        program: "pgbouncer".into(),
                        output: format!("{e}; log: {}", log.trim()),
                    });
                }
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::Timeout("pgbouncer start".into())))
    }

    /// The port PgBouncer listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL through PgBouncer to `dbname` as `postgres`, plaintext.
    pub fn url(&self, dbname: &str, application_name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable&application_name={application_name}",
            self.port
        )
    }

    /// A URL of PgBouncer's admin console (the database `pgbouncer`, user `postgres`):
    /// `SHOW POOLS`, `SHOW CLIENTS`, `SHOW SERVERS`... over the simple query protocol.
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/pgbouncer?sslmode=disable",
            self.port
        )
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // The child is pgbouncer itself (no `runuser` in between): this ends it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_pgbouncer() -> Result<PathBuf, TestkitError> {
    for p in [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ] {
        if std::path::Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(TestkitError::Missing(
        "pgbouncer".into(),
        "install it (Debian: apt-get install -y pgbouncer)".into(),
    ))
}

async fn wait_listening(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("pgbouncer exited: {status}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("pgbouncer did not listen within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(TestkitError::io(format!("writing {}", path.display())))
}
