//! [`EphemeralCluster`]: a throwaway PostgreSQL server with SCRAM and TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tracing::warn;

use crate::TestkitError;
use crate::util::{chown_to_postgres, command_as_postgres, free_port, pg_bin_dir, run};

/// A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 at a random
/// port, with password (SCRAM-SHA-256) authentication for TCP, TLS enabled with a
/// self-signed certificate for the host name `localhost` (made by rcgen), and the user
/// `postgres` with a random password.
///
/// As root, `initdb`, `pg_ctl` and the server run as the `postgres` user (through
/// `runuser`), and the directory is given to that user. [`stop`](Self::stop) and
/// [`start`](Self::start) restart it (restart tests); `Drop` stops it and removes the
/// directory.
#[derive(Debug)]
pub struct EphemeralCluster {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    running: bool,
    /// Settings appended to the generated configuration, in order (`key = value`,
    /// value already quoted as the server expects).
    extra: Vec<(String, String)>,
}

impl EphemeralCluster {
    /// Creates and starts a cluster (about 1-3 s).
    pub async fn new() -> Result<EphemeralCluster, TestkitError> {
        tokio::task::spawn_blocking(Self::new_blocking)
            .await
            .map_err(|e| TestkitError::Db(format!("cluster setup task failed: {e}")))?
    }

    fn new_blocking() -> Result<EphemeralCluster, TestkitError> {
        let mut cluster = EphemeralCluster::prepare(None)?;
        let root = cluster.dir.path().to_owned();
        let data = root.join("data");
        let mut initdb = command_as_postgres(&cluster.bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", root.join("pwfile").display()));
        run(initdb, "initdb")?;

        // Local connections are trusted, replication included: standbys made by
        // `ReplicaSet` stream from the primary over its Unix socket.
        let hba = "local all all trust\n\
                   local replication all trust\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        write(&data.join("pg_hba.conf"), hba)?;
        chown_to_postgres(&data.join("pg_hba.conf"))?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R` over the primary's Unix
    /// socket, as the `postgres` user), started on a port of its own. It shares the
    /// primary's password and certificate, and follows the newest timeline.
    pub(crate) fn new_standby_blocking(
        primary: &PrimarySource,
        name: &str,
    ) -> Result<EphemeralCluster, TestkitError> {
        let basebackup = primary.bin.join("pg_basebackup");
        if !basebackup.exists() {
            return Err(TestkitError::Missing(
                basebackup.display().to_string(),
                "install the PostgreSQL server package (Debian: apt-get install postgresql) \
                 or set PG_BIN"
                    .into(),
            ));
        }
        let mut cluster = EphemeralCluster::prepare(Some(primary))?;
        let data = cluster.dir.path().join("data");
        let mut c = command_as_postgres(&basebackup);
        c.arg("-D")
            .arg(&data)
            .arg("-h")
            .arg(&primary.root)
            .args(["-p", &primary.port.to_string(), "-U", "postgres"])
            .args(["-X", "stream", "-c", "fast", "--no-sync", "-R"]);
        run(c, "pg_basebackup")?;
        // `-R` wrote standby.signal and a primary_conninfo; ours (with a name, so the
        // primary's pg_stat_replication shows which standby is which) replaces it with
        // the rest of postgresql.auto.conf.
        cluster.extra = vec![
            (
                "primary_conninfo".into(),
                format!(
                    "'host={} port={} user=postgres application_name={name}'",
                    primary.root.display(),
                    primary.port
                ),
            ),
            ("recovery_target_timeline".into(), "'latest'".into()),
        ];
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    /// A temporary directory owned by `postgres` holding the password file and the TLS
    /// certificate (the primary's, for a standby), no data directory yet.
    /// What a standby needs to know of this server (owned, for a blocking task).
    pub(crate) fn source(&self) -> PrimarySource {
        PrimarySource {
            bin: self.bin.clone(),
            root: self.dir.path().to_owned(),
            port: self.port,
            password: self.password.clone(),
        }
    }

    fn prepare(primary: Option<&PrimarySource>) -> Result<EphemeralCluster, TestkitError> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("queuepool-pg-")
            .tempdir()
            .map_err(TestkitError::io("creating the cluster directory"))?;
        let password = match primary {
            Some(p) => p.password.clone(),
            None => format!("pw{:016x}", rand::random::<u64>()),
        };
        let root = dir.path();
        write(&root.join("pwfile"), &password)?;
        let (cert, key) = match primary {
            Some(p) => (
                read(&p.root.join("server.crt"))?,
                read(&p.root.join("server.key"))?,
            ),
            None => {
                let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                    .map_err(|e| TestkitError::Cert(e.to_string()))?;
                (cert.cert.pem(), cert.signing_key.serialize_pem())
            }
        };
        write(&root.join("server.crt"), &cert)?;
        write(&root.join("server.key"), &key)?;
        set_mode(&root.join("server.key"), 0o600)?;
        set_mode(root, 0o700)?;
        chown_to_postgres(root)?;
        Ok(EphemeralCluster {
            dir,
            bin,
            port: 0,
            password,
            running: false,
            extra: Vec::new(),
        })
    }

    /// A port can be taken between probing and binding: tries a few.
    fn start_on_free_port(&mut self) -> Result<(), TestkitError> {
        let mut last = None;
        for _ in 0..3 {
            self.port = free_port()?;
            self.write_conf()?;
            match self.start_blocking() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::Timeout("cluster start".into())))
    }

    fn write_conf(&self) -> Result<(), TestkitError> {
        let root = self.dir.path();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{root}'\n\
             ssl = on\n\
             ssl_cert_file = '{root}/server.crt'\n\
             ssl_key_file = '{root}/server.key'\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 100\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             wal_receiver_status_interval = 1s\n",
            port = self.port,
            root = root.display(),
        );
        let mut conf = conf;
        for (key, value) in &self.extra {
            conf.push_str(&format!("{key} = {value}\n"));
        }
        let path = root.join("data").join("postgresql.auto.conf");
        write(&path, &conf)?;
        chown_to_postgres(&path)
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of the user `postgres`.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The server's certificate (PEM), to use as `sslrootcert`.
    pub fn root_cert_path(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://postgres:<password>@localhost:<port>/postgres?sslmode=<mode>&sslrootcert=<cert>`.
    pub fn url(&self, sslmode: &str) -> String {
        self.url_for("localhost", self.port, sslmode)
    }

    /// Like [`url`](Self::url) with another host and port (a proxy in front, or
    /// `127.0.0.1` to test host name verification).
    pub fn url_for(&self, host: &str, port: u16, sslmode: &str) -> String {
        format!(
            "postgres://postgres:{}@{host}:{port}/postgres?sslmode={sslmode}&sslrootcert={}",
            self.password,
            self.root_cert_path().display()
        )
    }

    /// Whether the server is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are terminated with 57P01).
    pub async fn stop(&mut self) -> Result<(), TestkitError> {
        let (bin, data) = (self.bin.clone(), self.dir.path().join("data"));
        blocking(move || pg_ctl_stop(&bin, &data, "fast")).await?;
        self.running = false;
        Ok(())
    }

    /// Starts the server again on the same port.
    pub async fn start(&mut self) -> Result<(), TestkitError> {
        let (bin, root) = (self.bin.clone(), self.dir.path().to_owned());
        blocking(move || pg_ctl_start(&bin, &root)).await?;
        self.running = true;
        Ok(())
    }

    /// Sets a server setting (`value` as it would appear in postgresql.conf, quoted
    /// where the server wants quotes: `set_setting("recovery_min_apply_delay",
    /// "'500ms'")`), written to the configuration and applied with `pg_ctl reload`
    /// when the server runs. Settings that need a restart apply at the next
    /// [`start`](Self::start).
    pub async fn set_setting(&mut self, key: &str, value: &str) -> Result<(), TestkitError> {
        match self.extra.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.extra.push((key.to_owned(), value.to_owned())),
        }
        self.write_conf()?;
        if self.running {
            let (bin, data) = (self.bin.clone(), self.dir.path().join("data"));
            blocking(move || {
                let mut c = command_as_postgres(&bin.join("pg_ctl"));
                c.arg("-D").arg(&data).arg("reload");
                run(c, "pg_ctl reload").map(drop)
            })
            .await?;
        }
        Ok(())
    }

    /// Promotes a standby to primary (`pg_ctl promote -w`: returns once it accepts
    /// writes, at most 30 s).
    pub async fn promote(&self) -> Result<(), TestkitError> {
        let (bin, data) = (self.bin.clone(), self.dir.path().join("data"));
        blocking(move || {
            let mut c = command_as_postgres(&bin.join("pg_ctl"));
            c.arg("-D").arg(&data).args(["-w", "-t", "30", "promote"]);
            run(c, "pg_ctl promote").map(drop)
        })
        .await
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no shutdown
    /// checkpoint, every session cut at once). [`start`](Self::start) brings it back
    /// (with crash recovery).
    pub async fn kill(&mut self) -> Result<(), TestkitError> {
        let (bin, data) = (self.bin.clone(), self.dir.path().join("data"));
        blocking(move || pg_ctl_stop(&bin, &data, "immediate")).await?;
        self.running = false;
        Ok(())
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/postgres?sslmode=disable`: the
    /// server itself, plaintext (no name to verify).
    pub fn plain_url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
            self.password, self.port
        )
    }

    /// A connection straight to the server (not through any proxy), with the
    /// `application_name` `queuepool_testkit_admin`, for setup and checks.
    pub async fn admin(&self) -> Result<queuepool_postgres::PgConnection, TestkitError> {
        let manager = queuepool_postgres::PgManager::from_url(&self.plain_url())?
            .with_application_name("queuepool_testkit_admin");
        Ok(manager.connect_one().await?)
    }

    fn start_blocking(&mut self) -> Result<(), TestkitError> {
        pg_ctl_start(&self.bin, self.dir.path())?;
        self.running = true;
        Ok(())
    }
}

/// Runs blocking work (a `pg_ctl` call) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TestkitError> + Send + 'static,
) -> Result<T, TestkitError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TestkitError::Db(format!("blocking task failed: {e}")))?
}

/// The primary's side of `pg_basebackup`: binaries, socket directory (the cluster's
/// root, also holding its certificate), port and password.
#[derive(Debug, Clone)]
pub(crate) struct PrimarySource {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    password: String,
}

fn pg_ctl_start(bin: &Path, root: &Path) -> Result<(), TestkitError> {
    let mut c = command_as_postgres(&bin.join("pg_ctl"));
    c.arg("-D")
        .arg(root.join("data"))
        .arg("-l")
        .arg(root.join("server.log"))
        .args(["-w", "-t", "30", "start"]);
    run(c, "pg_ctl start").map(drop).map_err(|e| {
        let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
        TestkitError::Command {
            program: "pg_ctl start".into(),
            output: format!("{e}; server log: {}", log.trim()),
        }
    })
}

fn pg_ctl_stop(bin: &Path, data: &Path, mode: &str) -> Result<(), TestkitError> {
    let mut c = command_as_postgres(&bin.join("pg_ctl"));
    c.arg("-D")
        .arg(data)
        .args(["-m", mode, "-w", "-t", "30", "stop"]);
    run(c, "pg_ctl stop").map(drop)
}

impl Drop for EphemeralCluster {
    fn drop(&mut self) {
        if self.running
            && let Err(e) = pg_ctl_stop(&self.bin, &self.dir.path().join("data"), "immediate")
        {
            warn!(error = %e, "could not stop the ephemeral cluster");
        }
        // Give a moment for the postmaster to release the directory before removal.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(path: &Path) -> Result<String, TestkitError> {
    std::fs::read_to_string(path).map_err(TestkitError::io(format!("reading {}", path.display())))
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(TestkitError::io(format!("writing {}", path.display())))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), TestkitError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(TestkitError::io(format!("chmod {}", path.display())))
}
