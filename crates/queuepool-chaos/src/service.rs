//! [`Service`]: the real `queuepool serve` binary, started as a child process on a free
//! port of 127.0.0.1, with its log lines captured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::error::ChaosError;

/// Where the `queuepool` binary is: `$QUEUEPOOL_BIN` if set, else built now with
/// `cargo build -p queuepool-cli --bin queuepool` (`--release` if asked) and located
/// from cargo's own report of the executable.
pub fn find_or_build_serve_bin(release: bool) -> Result<PathBuf, ChaosError> {
    if let Some(bin) = std::env::var_os("QUEUEPOOL_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "queuepool-cli",
        "--bin",
        "queuepool",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .map_err(ChaosError::io("running cargo build -p queuepool-cli"))?;
    if !out.status.success() {
        return Err(ChaosError::Service(format!(
            "cargo build -p queuepool-cli failed with {}",
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .find(|p| p.file_name().is_some_and(|n| n == "queuepool"))
        .ok_or_else(|| ChaosError::Service("cargo did not report the queuepool executable".into()))
}

/// A running `queuepool serve`. Killed on drop if not stopped.
#[derive(Debug)]
pub struct Service {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

/// How a [`Service`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Whether it had to be killed after SIGTERM did not stop it in time.
    pub killed: bool,
}

impl Service {
    /// Starts `bin serve --bind 127.0.0.1:0 <args>` with `env` added to the environment
    /// (`RUST_LOG` defaults to `info`), and waits until it logs its address.
    pub async fn start(
        bin: &Path,
        env: &[(&str, String)],
        args: &[&str],
    ) -> Result<Service, ChaosError> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("POOL_SIZE")
            .env_remove("MAX_OVERFLOW")
            .env_remove("POOL_TIMEOUT")
            .env_remove("POOL_PRESET")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(ChaosError::io(format!("starting {}", bin.display())))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(collect(out, logs.clone(), addr_tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(collect(err, logs.clone(), addr_tx));
        }
        let wait = Duration::from_secs(30);
        let addr = tokio::time::timeout(wait, addr_rx.recv()).await;
        match addr {
            Ok(Some(addr)) => Ok(Service { child, addr, logs }),
            _ => {
                let _ = child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let text = lines(&logs).join("\n");
                Err(ChaosError::Service(format!(
                    "queuepool serve did not start ({status:?}); its output:\n{text}"
                )))
            }
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Every line written to stdout and stderr so far.
    pub fn logs(&self) -> Vec<String> {
        lines(&self.logs)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; kills it after that.
    pub async fn stop(mut self, grace: Duration) -> Result<Exit, ChaosError> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                let status = status.map_err(ChaosError::io("waiting for queuepool serve"))?;
                Ok(Exit {
                    code: status.code(),
                    killed: false,
                })
            }
            Err(_) => {
                let _ = self.child.kill().await;
                Ok(Exit {
                    code: None,
                    killed: true,
                })
            }
        }
    }
}

fn lines(logs: &Mutex<Vec<String>>) -> Vec<String> {
    logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    logs: Arc<Mutex<Vec<String>>>,
    addr_tx: tokio::sync::mpsc::UnboundedSender<SocketAddr>,
) {
    let mut reader = BufReader::new(stream).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        if let Some(addr) = listening_addr(&line) {
            let _ = addr_tx.send(addr);
        }
        logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

/// The address in `listening on http://127.0.0.1:PORT (...)`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_gives_the_address() {
        let line = "2026-01-01T00:00:00Z  INFO queuepool_cli::serve: listening on http://127.0.0.1:41234 (API docs: http://127.0.0.1:41234/docs, pool: ...)";
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(listening_addr("INFO pool ready"), None);
    }
}
