//! `bench --compare-pgbench`: PostgreSQL's own load generator on the same server,
//! connections and query, for a reference throughput.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::error::ToolsError;
use crate::target::Protocol;

/// What pgbench reported.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchResult {
    /// Transactions (here: queries) per second, without the initial connection time.
    pub tps: f64,
    /// Its mean latency in milliseconds, if printed.
    pub latency_avg_ms: Option<f64>,
    /// The command line, without the password.
    pub command: String,
}

/// `pgbench` on `PATH`, else the newest under `/usr/lib/postgresql/*/bin`.
pub fn find() -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("pgbench");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join("pgbench"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Splits the password off a `postgres://` URL, so it goes through `PGPASSWORD` and
/// not the process list.
fn split_password(url: &str) -> (String, Option<String>) {
    if let Ok(mut parsed) = url::Url::parse(url)
        && let Some(password) = parsed.password().map(str::to_owned)
    {
        let decoded = percent_decode(&password);
        let _ = parsed.set_password(None);
        return (parsed.to_string(), Some(decoded));
    }
    (url.to_owned(), None)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `tps = ...` and `latency average = ... ms` lines of pgbench's summary.
pub fn parse_output(stdout: &str) -> Option<(f64, Option<f64>)> {
    let mut tps = None;
    let mut latency = None;
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("tps = ") {
            tps = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    tps.map(|t| (t, latency))
}

/// Runs pgbench with `clients` connections and `threads` threads for `duration` on a
/// one-line script holding `sql`.
pub async fn run(
    binary: &std::path::Path,
    url: &str,
    sql: &str,
    protocol: Protocol,
    clients: u32,
    threads: u32,
    duration: Duration,
) -> Result<PgbenchResult, ToolsError> {
    let dir = tempfile::tempdir().map_err(|source| ToolsError::Io {
        what: "cannot create a temporary directory for",
        path: PathBuf::from("the pgbench script"),
        source,
    })?;
    let script = dir.path().join("query.sql");
    let text = format!("{};\n", sql.trim().trim_end_matches(';'));
    std::fs::write(&script, text).map_err(|source| ToolsError::Io {
        what: "cannot write",
        path: script.clone(),
        source,
    })?;
    let seconds = duration.as_secs_f64().ceil().max(1.0) as u64;
    let (conn, password) = split_password(url);
    let args: Vec<String> = vec![
        "-n".into(),
        "-M".into(),
        protocol.name().into(),
        "-f".into(),
        script.display().to_string(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        threads.min(clients).max(1).to_string(),
        "-T".into(),
        seconds.to_string(),
    ];
    let shown = format!(
        "{} {} {}",
        binary.display(),
        args.join(" "),
        crate::args::redact_url(&conn)
    );
    let mut command = tokio::process::Command::new(binary);
    command.args(&args).arg(&conn).kill_on_drop(true);
    if let Some(pw) = password {
        command.env("PGPASSWORD", pw);
    }
    let output = tokio::time::timeout(Duration::from_secs(seconds + 60), command.output())
        .await
        .map_err(|_| ToolsError::Pgbench(format!("no result after {} s", seconds + 60)))?
        .map_err(|e| ToolsError::Pgbench(format!("cannot run {}: {e}", binary.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(ToolsError::Pgbench(format!(
            "exit status {}: {}",
            output.status,
            crate::args::redact_url(last)
        )));
    }
    let (tps, latency_avg_ms) = parse_output(&stdout)
        .ok_or_else(|| ToolsError::Pgbench("no `tps = ` line in its output".into()))?;
    Ok(PgbenchResult {
        tps,
        latency_avg_ms,
        command: shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tps_and_latency_from_pgbench_15_output() {
        let out = "transaction type: query.sql\nscaling factor: 1\nquery mode: prepared\n\
                   number of clients: 8\nlatency average = 0.301 ms\n\
                   initial connection time = 12.345 ms\n\
                   tps = 26543.210987 (without initial connection time)\n";
        assert_eq!(parse_output(out), Some((26543.210987, Some(0.301))));
        assert_eq!(parse_output("nothing"), None);
    }

    #[test]
    fn password_goes_to_the_environment_not_the_arguments() {
        let (url, pw) = split_password("postgres://u:p%40ss@localhost:5/db?sslmode=require");
        assert_eq!(url, "postgres://u@localhost:5/db?sslmode=require");
        assert_eq!(pw.as_deref(), Some("p@ss"));
        let (kv, none) = split_password("host=h user=u");
        assert_eq!((kv.as_str(), none), ("host=h user=u", None));
    }
}
