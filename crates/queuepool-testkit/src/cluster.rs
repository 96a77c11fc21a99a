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
}

impl EphemeralCluster {
    /// Creates and starts a cluster (about 1-3 s).
    pub async fn new() -> Result<EphemeralCluster, TestkitError> {
        tokio::task::spawn_blocking(Self::new_blocking)
            .await
            .map_err(|e| TestkitError::Db(format!("cluster setup task failed: {e}")))?
    }

    fn new_blocking() -> Result<EphemeralCluster, TestkitError> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("queuepool-pg-")
            .tempdir()
            .map_err(TestkitError::io("creating the cluster directory"))?;
        let password: String = format!("pw{:016x}", rand::random::<u64>());
        let root = dir.path();
        write(&root.join("pwfile"), &password)?;

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .map_err(|e| TestkitError::Cert(e.to_string()))?;
        write(&root.join("server.crt"), &cert.cert.pem())?;
        write(&root.join("server.key"), &cert.signing_key.serialize_pem())?;
        set_mode(&root.join("server.key"), 0o600)?;
        set_mode(root, 0o700)?;
        chown_to_postgres(root)?;

        let data = root.join("data");
        let mut initdb = command_as_postgres(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", root.join("pwfile").display()));
        run(initdb, "initdb")?;

        let mut cluster = EphemeralCluster {
            dir,
            bin,
            port: 0,
            password,
            running: false,
        };
        let hba = "local all all trust\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        write(&data.join("pg_hba.conf"), hba)?;
        chown_to_postgres(&data.join("pg_hba.conf"))?;

        // A port can be taken between probing and binding: try a few.
        let mut last = None;
        for _ in 0..3 {
            cluster.port = free_port()?;
            cluster.write_conf()?;
            match cluster.start_blocking() {
                Ok(()) => return Ok(cluster),
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
             full_page_writes = off\n",
            port = self.port,
            root = root.display(),
        );
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
        tokio::task::spawn_blocking(move || pg_ctl_stop(&bin, &data, "fast"))
            .await
            .map_err(|e| TestkitError::Db(format!("pg_ctl task failed: {e}")))??;
        self.running = false;
        Ok(())
    }

    /// Starts the server again on the same port.
    pub async fn start(&mut self) -> Result<(), TestkitError> {
        let (bin, root) = (self.bin.clone(), self.dir.path().to_owned());
        tokio::task::spawn_blocking(move || pg_ctl_start(&bin, &root))
            .await
            .map_err(|e| TestkitError::Db(format!("pg_ctl task failed: {e}")))??;
        self.running = true;
        Ok(())
    }

    fn start_blocking(&mut self) -> Result<(), TestkitError> {
        pg_ctl_start(&self.bin, self.dir.path())?;
        self.running = true;
        Ok(())
    }
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

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(TestkitError::io(format!("writing {}", path.display())))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), TestkitError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(TestkitError::io(format!("chmod {}", path.display())))
}
