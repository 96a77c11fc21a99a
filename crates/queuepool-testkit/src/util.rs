//! Small helpers: free ports, unique names, running commands as `postgres`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::TestkitError;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, TestkitError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(TestkitError::io("binding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(TestkitError::io("reading the free port"))?
        .port();
    Ok(port)
}

/// A name unique across parallel tests and processes: `prefix_<pid>_<n>_<random>`,
/// lowercase, safe as a database or application name.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    format!("{prefix}_{}_{n}_{r:08x}", std::process::id())
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective uid).
pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `program args..`, through `runuser -u postgres --` when running as root (initdb,
/// postgres and pgbouncer refuse to run as root).
pub(crate) fn command_as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A command that runs `program` itself as the `postgres` user when running as root
/// (the uid/gid are set on the child, no `runuser` in between), so that killing the
/// child kills the program: for long-running servers owned by a test.
pub(crate) fn spawnable_as_postgres(program: &Path) -> Result<Command, TestkitError> {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    if is_root() {
        let id = |flag: &str| -> Result<u32, TestkitError> {
            let mut cmd = Command::new("id");
            cmd.args([flag, "postgres"]);
            let out = run(cmd, "id")?;
            out.trim().parse().map_err(|_| TestkitError::Command {
                program: "id".into(),
                output: format!("unexpected output {out:?}"),
            })
        };
        c.gid(id("-g")?).uid(id("-u")?);
    }
    Ok(c)
}

/// Runs a command to completion; an error carries its output.
pub(crate) fn run(mut cmd: Command, program: &str) -> Result<String, TestkitError> {
    let out = cmd
        .output()
        .map_err(TestkitError::io(format!("running {program}")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(TestkitError::Command {
            program: program.to_owned(),
            output: format!("{}: {}", out.status, text.trim()),
        })
    }
}

/// Gives a directory (recursively) to the `postgres` user when running as root.
pub(crate) fn chown_to_postgres(path: &Path) -> Result<(), TestkitError> {
    if !is_root() {
        return Ok(());
    }
    let mut c = Command::new("chown");
    c.args(["-R", "postgres:postgres"]).arg(path);
    run(c, "chown").map(drop)
}

/// The PostgreSQL server binaries: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<v>/bin` (15 preferred when present), else `pg_config --bindir`.
pub fn pg_bin_dir() -> Result<PathBuf, TestkitError> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let preferred = Path::new("/usr/lib/postgresql/15/bin");
    if preferred.join("initdb").exists() {
        return Ok(preferred.to_owned());
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        versions.sort();
        if let Some(dir) = versions.pop() {
            return Ok(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err(TestkitError::Missing(
        "initdb".into(),
        "install postgresql (Debian: apt-get install postgresql) or set PG_BIN".into(),
    ))
}
