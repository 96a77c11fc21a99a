//! Configuration of `queuepool serve`, from four layers in this order of precedence:
//! command-line flags, then environment variables, then the TOML file given with
//! `--config`, then the pool preset, then the built-in defaults.
//!
//! clap reads the first two layers ([`ServeArgs`]: each flag declares its variable, and
//! its typed value parser checks the value), and tells which of the two a value came
//! from ([`clap::ArgMatches::value_source`]). [`ServeConfig::resolve`] then fills what
//! they left unset from the file, the preset and the defaults. A TOML value goes through
//! the same value parser as the flag, so `pool_timeout = "30s"` means what
//! `--pool-timeout 30s` means; an error names the key as the user wrote it
//! (`--pool-size`, `POOL_SIZE` or `pool_size in queuepool.toml`), and unknown keys in
//! the file are errors.
//!
//! The pool flags are [`queuepool_tools::args::PoolArgs`], the same struct `verify` and
//! `bench` flatten: one declaration of `POOL_SIZE` and its siblings for every command.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use queuepool::url::{Backend, check_url, redact_url};
use queuepool::{ConfigError, Overflow, PoolConfig, Preset};
use queuepool_tools::args::{self as parse, PoolArgs, Recycle};
use serde::Deserialize;

use crate::error::CliError;

/// Default `DATABASE_URL`: an SQLite file in the working directory, so that the
/// service runs with nothing installed.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://queuepool.db";
/// Default listen address.
pub const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8000);
/// Default bound on the wait for running requests at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on one database query of a request. The service's queries take
/// milliseconds (primary-key lookups, one page of 100 rows); 10 s is far beyond any of
/// them yet ends a request caught on a silent network path well before an HTTP client
/// gives up (often 30 s), and matches the pool's default `connect_timeout`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on a standby's replay lag, past which it gets no reads (with
/// `--read-url`).
pub const DEFAULT_MAX_REPLICA_LAG: Duration = Duration::from_secs(1);

/// The options of `queuepool serve`, as clap reads them from the command line and the
/// environment. `None` means "neither": the file, the preset or the default decides.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_long_help = PRECEDENCE_HELP, after_help = PRECEDENCE_HELP)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys: database_url, pool_preset,
    /// pool_size, max_overflow, pool_timeout, pool_recycle, pool_pre_ping, bind,
    /// echo_pool, shutdown_timeout, query_timeout, read_url, max_replica_lag); unknown
    /// keys are errors
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Database URL: postgres://user:pass@host:5432/db, mysql://user:pass@host:3306/db,
    /// sqlite://file.db, sqlite:///abs/file.db or sqlite::memory: (percent-encode `@`,
    /// `:` and `/` in a password) [default: sqlite://queuepool.db]
    // A plain string: clap's own error would quote a rejected value, and this one may
    // hold a password. `ServeConfig::resolve` checks it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// PostgreSQL standbys for the idempotent reads (GET /items, GET /items/{id}): one
    /// host or several (postgres://user:pass@replica1:5432,replica2:5432/db), one read
    /// pool per host, sized like the primary's. A read goes to a standby that has
    /// replayed the client's own writes (the x-read-after header of its last write's
    /// response), else to the primary [default: none, every query on DATABASE_URL]
    #[arg(
        long,
        env = "DATABASE_READ_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub read_url: Option<String>,

    /// With --read-url: a standby whose replay lag exceeds this gets no reads until it
    /// catches up, in seconds (or 500ms) [default: 1]
    #[arg(long, env = "MAX_REPLICA_LAG", value_name = "SECONDS",
          value_parser = parse::positive_duration)]
    pub max_replica_lag: Option<Duration>,

    /// The pool's sizes and checks.
    #[command(flatten)]
    pub pool: PoolArgs,

    /// Address to listen on: IP:PORT or HOST:PORT (localhost:8000) [default:
    /// 127.0.0.1:8000]
    #[arg(long, env = "BIND", value_name = "ADDR", value_parser = bind)]
    pub bind: Option<SocketAddr>,

    /// Print the pool's log lines (checkouts, returns, connects, recycling), like
    /// SQLAlchemy's echo_pool="debug" [default: off]
    #[arg(long)]
    pub echo_pool: bool,

    /// At shutdown, how long running requests may take to finish, in seconds
    /// [default: 10]
    #[arg(long, env = "SHUTDOWN_TIMEOUT", value_name = "SECONDS",
          value_parser = parse::duration)]
    pub shutdown_timeout: Option<Duration>,

    /// Longest a database query of a request may take, in seconds (or 500ms, 1m): past
    /// it the request gets a 503 `query_timeout`, and the connection is discarded (on
    /// PostgreSQL a cancel request is sent). Bounds a query whose network path went
    /// silent [default: 10]
    #[arg(long, env = "QUERY_TIMEOUT", value_name = "SECONDS",
          value_parser = parse::positive_duration)]
    pub query_timeout: Option<Duration>,

    /// Print the effective configuration, each value with where it came from, and exit
    /// without opening the database
    #[arg(long)]
    pub print_config: bool,
}

const PRECEDENCE_HELP: &str = "\
Precedence: command-line flags > environment variables > --config TOML file > \
pool preset > built-in defaults. Example: POOL_PRESET=prod-low POOL_SIZE=15 gives \
pool_size 15 with the other prod-low values.";

/// Value parser of `--bind` / `BIND`: `IP:PORT`, or `HOST:PORT` resolved now (the first
/// IPv4 address of the host, else its first address).
pub fn bind(raw: &str) -> Result<SocketAddr, String> {
    let value = raw.trim();
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected IP:PORT or HOST:PORT, like 127.0.0.1:8000, 0.0.0.0:8000 or \
                    localhost:8000";
    let addrs: Vec<SocketAddr> = match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => value
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
            .collect(),
        _ => return Err(expected.to_owned()),
    };
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| expected.to_owned())
}

/// The settings file given with `--config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    database_url: Option<String>,
    pool_preset: Option<String>,
    pool_size: Option<Scalar>,
    max_overflow: Option<Scalar>,
    pool_timeout: Option<Scalar>,
    pool_recycle: Option<Scalar>,
    pool_pre_ping: Option<Scalar>,
    bind: Option<String>,
    echo_pool: Option<bool>,
    shutdown_timeout: Option<Scalar>,
    query_timeout: Option<Scalar>,
    read_url: Option<String>,
    max_replica_lag: Option<Scalar>,
}

/// A TOML value given to a numeric or boolean key: parsed like the same key's flag, so
/// `pool_timeout = 30` and `pool_timeout = "30s"` both work.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

impl FileConfig {
    /// Reads and parses a settings file.
    pub fn load(path: &Path) -> Result<FileConfig, CliError> {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::ConfigFileRead {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| CliError::ConfigFileParse {
            path: path.to_owned(),
            source,
        })
    }
}

/// A database URL; its `Display` and `Debug` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL with its password, to give to the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", redact_url(&self.0))
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env,
    /// The `--config` file.
    File(PathBuf),
    /// The pool preset.
    Preset(Preset),
    /// The built-in default.
    Default,
}

impl Origin {
    /// The origin clap reports for the argument `id` of `matches` (flag or
    /// environment variable), for [`ServeConfig::resolve`].
    pub fn of(matches: &ArgMatches, id: &str) -> Origin {
        match matches.value_source(id) {
            Some(ValueSource::EnvVariable) => Origin::Env,
            Some(ValueSource::CommandLine) => Origin::Flag,
            _ => Origin::Default,
        }
    }

    /// The key as written in this layer: `--pool-size`, `POOL_SIZE`, `pool_size in
    /// FILE`, `pool_size (preset dev)` or `pool_size (default)`.
    fn label(&self, key: &str) -> String {
        match self {
            Origin::Flag => format!("--{}", key.replace('_', "-")),
            Origin::Env => env_name(key),
            Origin::File(path) => format!("{key} in {}", path.display()),
            Origin::Preset(p) => format!("{key} (preset {p})"),
            Origin::Default => format!("{key} (default)"),
        }
    }
}

/// The effective configuration of `queuepool serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the data lives.
    pub database_url: DatabaseUrl,
    /// Chosen by the URL's scheme.
    pub backend: Backend,
    /// The preset the pool sizes start from.
    pub preset: Preset,
    /// The validated pool configuration.
    pub pool: PoolConfig,
    /// Listen address.
    pub bind: SocketAddr,
    /// Show the pool's debug log lines.
    pub echo_pool: bool,
    /// Bound on the wait for running requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Bound on each database query of a request (503 `query_timeout` past it).
    pub query_timeout: Duration,
    /// PostgreSQL standbys for the reads (`--read-url`), if any.
    pub read_url: Option<DatabaseUrl>,
    /// A standby lagging more gets no reads (`--max-replica-lag`).
    pub max_replica_lag: Duration,
    /// Print the configuration and exit (`--print-config`).
    pub print_config: bool,
    /// Where each setting came from, by key name.
    pub origins: BTreeMap<&'static str, Origin>,
}

/// Fills each setting from the first layer that has it, recording where it came from.
struct Layers<'a> {
    /// Flag or environment variable, for a value clap found.
    cli_origin: &'a dyn Fn(&'static str) -> Origin,
    file_path: PathBuf,
    origins: BTreeMap<&'static str, Origin>,
}

impl Layers<'_> {
    /// The value clap found for `key`, else the file's parsed with `parser`; `None`
    /// leaves the key to the preset or the default.
    fn pick<T, F: fmt::Display>(
        &mut self,
        key: &'static str,
        cli: Option<T>,
        file: Option<F>,
        parser: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, CliError> {
        if let Some(value) = cli {
            self.origins.insert(key, (self.cli_origin)(key));
            return Ok(Some(value));
        }
        let Some(raw) = file else { return Ok(None) };
        let origin = Origin::File(self.file_path.clone());
        let raw = raw.to_string();
        let value = parser(&raw).map_err(|message| CliError::Config {
            key: origin.label(key),
            message: format!("invalid value {raw:?}: {message}"),
        })?;
        self.origins.insert(key, origin);
        Ok(Some(value))
    }

    /// The key as written where its value came from.
    fn label(&self, key: &str) -> String {
        self.origins
            .get(key)
            .map_or_else(|| key.to_owned(), |o| o.label(key))
    }

    fn default<T>(&mut self, key: &'static str, value: T) -> T {
        self.origins.insert(key, Origin::Default);
        value
    }
}

/// The environment variable of a key: its name in capitals, but `DATABASE_READ_URL`
/// for `read_url` (beside `DATABASE_URL`).
fn env_name(key: &str) -> String {
    match key {
        "read_url" => "DATABASE_READ_URL".to_owned(),
        other => other.to_ascii_uppercase(),
    }
}

fn text(raw: &str) -> Result<String, String> {
    Ok(raw.to_owned())
}

/// `--read-url` / `DATABASE_READ_URL` / `read_url`: a PostgreSQL URL, beside a
/// PostgreSQL `DATABASE_URL`.
fn read_url(
    layers: &mut Layers<'_>,
    args: &ServeArgs,
    file: &FileConfig,
    backend: Backend,
) -> Result<Option<DatabaseUrl>, CliError> {
    let cli = args.read_url.clone().filter(|u| !u.trim().is_empty());
    let Some(url) = layers.pick("read_url", cli, file.read_url.clone(), text)? else {
        return Ok(None);
    };
    let key = layers.label("read_url");
    let kind = check_url(&url).map_err(|e| CliError::Config {
        key: key.clone(),
        message: e.to_string(),
    })?;
    if kind != Backend::Postgres || backend != Backend::Postgres {
        return Err(CliError::Config {
            key,
            message: format!(
                "reads on standbys need PostgreSQL: the read URL and DATABASE_URL must both \
                 be postgres:// URLs (the read URL is {kind}, DATABASE_URL is {backend})"
            ),
        });
    }
    Ok(Some(DatabaseUrl(url)))
}

impl ServeConfig {
    /// Resolves the configuration of `queuepool serve` from what clap parsed (the
    /// `serve` subcommand's `matches` tell flags from environment variables), the
    /// `--config` file, the preset and the defaults.
    pub fn load(args: &ServeArgs, matches: &ArgMatches) -> Result<ServeConfig, CliError> {
        ServeConfig::resolve(args, &|id| Origin::of(matches, id))
    }

    /// Resolves the configuration from `args` as clap would fill them, `cli_origin`
    /// telling for each set field (by key name: `pool_size`) whether it came from a
    /// flag or an environment variable. The entry point for callers that build
    /// [`ServeArgs`] themselves (tests, the reliability suite).
    pub fn resolve(
        args: &ServeArgs,
        cli_origin: &dyn Fn(&'static str) -> Origin,
    ) -> Result<ServeConfig, CliError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let mut layers = Layers {
            cli_origin,
            file_path: args.config.clone().unwrap_or_default(),
            origins: BTreeMap::new(),
        };
        let cli_url = args.database_url.clone().filter(|u| !u.trim().is_empty());
        let url = match layers.pick("database_url", cli_url, file.database_url.clone(), text)? {
            Some(url) => url,
            None => layers.default("database_url", DEFAULT_DATABASE_URL.to_owned()),
        };
        let backend = check_url(&url).map_err(|e| CliError::Config {
            key: layers.label("database_url"),
            message: e.to_string(),
        })?;

        let read_url = read_url(&mut layers, args, &file, backend)?;
        let max_replica_lag = match layers.pick(
            "max_replica_lag",
            args.max_replica_lag,
            file.max_replica_lag.clone(),
            parse::positive_duration,
        )? {
            Some(t) => t,
            None => layers.default("max_replica_lag", DEFAULT_MAX_REPLICA_LAG),
        };

        let p = &args.pool;
        let preset = match layers.pick(
            "pool_preset",
            p.pool_preset,
            file.pool_preset.clone(),
            parse::preset,
        )? {
            Some(preset) => preset,
            None => layers.default("pool_preset", Preset::Dev),
        };
        let mut builder = PoolConfig::builder().name("serve").preset(preset);
        for key in ["pool_size", "max_overflow", "pool_timeout", "pool_recycle"] {
            layers.origins.insert(key, Origin::Preset(preset));
        }
        layers.origins.insert("pool_pre_ping", Origin::Default);
        if let Some(n) = layers.pick(
            "pool_size",
            p.pool_size,
            file.pool_size.clone(),
            parse::count,
        )? {
            builder = builder.pool_size(n);
        }
        match layers.pick(
            "max_overflow",
            p.max_overflow,
            file.max_overflow.clone(),
            parse::overflow,
        )? {
            Some(Overflow::Limited(n)) => builder = builder.max_overflow(n),
            Some(Overflow::Unlimited) => builder = builder.unlimited_overflow(),
            None => {}
        }
        if let Some(t) = layers.pick(
            "pool_timeout",
            p.pool_timeout,
            file.pool_timeout.clone(),
            parse::duration,
        )? {
            builder = builder.pool_timeout(t);
        }
        if let Some(Recycle(r)) = layers.pick(
            "pool_recycle",
            p.pool_recycle,
            file.pool_recycle.clone(),
            parse::recycle,
        )? {
            builder = builder.pool_recycle(r);
        }
        if let Some(ping) = layers.pick(
            "pool_pre_ping",
            p.pool_pre_ping,
            file.pool_pre_ping.clone(),
            parse::boolean,
        )? {
            builder = builder.pre_ping(ping);
        }
        let pool = builder.build().map_err(|error| CliError::Config {
            key: match &error {
                ConfigError::Invalid { field, .. } => layers.label(field),
                _ => "pool".to_owned(),
            },
            message: error.to_string(),
        })?;

        let bind = match layers.pick("bind", args.bind, file.bind.clone(), bind)? {
            Some(addr) => addr,
            None => layers.default("bind", DEFAULT_BIND),
        };
        let echo_pool = if args.echo_pool {
            layers.origins.insert("echo_pool", Origin::Flag);
            true
        } else {
            match layers.pick("echo_pool", None, file.echo_pool, parse::boolean)? {
                Some(echo) => echo,
                None => layers.default("echo_pool", false),
            }
        };
        let shutdown_timeout = match layers.pick(
            "shutdown_timeout",
            args.shutdown_timeout,
            file.shutdown_timeout.clone(),
            parse::duration,
        )? {
            Some(t) => t,
            None => layers.default("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT),
        };
        let query_timeout = match layers.pick(
            "query_timeout",
            args.query_timeout,
            file.query_timeout.clone(),
            parse::positive_duration,
        )? {
            Some(t) => t,
            None => layers.default("query_timeout", DEFAULT_QUERY_TIMEOUT),
        };
        Ok(ServeConfig {
            database_url: DatabaseUrl(url),
            backend,
            preset,
            pool,
            bind,
            echo_pool,
            shutdown_timeout,
            query_timeout,
            read_url,
            max_replica_lag,
            print_config: args.print_config,
            origins: layers.origins,
        })
    }

    /// The request bounds of the service: each query, and the whole request.
    pub fn timeouts(&self) -> crate::serve::Timeouts {
        crate::serve::Timeouts::new(self.query_timeout, &self.pool)
    }

    fn origin(&self, name: &str) -> String {
        match self.origins.get(name) {
            Some(Origin::Flag) => format!("--{}", name.replace('_', "-")),
            Some(Origin::Env) => env_name(name),
            Some(Origin::File(path)) => format!("{}", path.display()),
            Some(Origin::Preset(p)) => format!("preset {p}"),
            Some(Origin::Default) | None => "default".to_owned(),
        }
    }

    /// The effective configuration, one line per group, password redacted, each value
    /// with where it came from: what startup logs.
    pub fn describe(&self) -> Vec<String> {
        let p = &self.pool;
        let recycle = p
            .pool_recycle
            .map_or_else(|| "off".to_owned(), |d| format!("{}s", d.as_secs_f64()));
        let mut lines = vec![
            format!(
                "database: {} backend={} ({})",
                self.database_url,
                self.backend,
                self.origin("database_url")
            ),
            format!(
                "pool: preset={} ({}) pool_size={} ({}) max_overflow={} ({}) pool_timeout={}s ({}) \
                 pool_recycle={} ({}) pre_ping={} ({})",
                self.preset,
                self.origin("pool_preset"),
                p.pool_size,
                self.origin("pool_size"),
                p.max_overflow,
                self.origin("max_overflow"),
                p.pool_timeout.as_secs_f64(),
                self.origin("pool_timeout"),
                recycle,
                self.origin("pool_recycle"),
                p.pre_ping,
                self.origin("pool_pre_ping"),
            ),
            format!(
                "server: bind={} ({}) shutdown_timeout={}s ({}) query_timeout={}s ({}) \
                 request_timeout={}s (derived) echo_pool={} ({})",
                self.bind,
                self.origin("bind"),
                self.shutdown_timeout.as_secs_f64(),
                self.origin("shutdown_timeout"),
                self.query_timeout.as_secs_f64(),
                self.origin("query_timeout"),
                self.timeouts().request.as_secs_f64(),
                self.echo_pool,
                self.origin("echo_pool"),
            ),
        ];
        if let Some(read_url) = &self.read_url {
            lines.push(format!(
                "reads: {read_url} ({}) max_replica_lag={}s ({})",
                self.origin("read_url"),
                self.max_replica_lag.as_secs_f64(),
                self.origin("max_replica_lag"),
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// Resolves `args` as if the keys in `from_env` came from environment variables
    /// and the other set fields from flags.
    fn load(args: &ServeArgs, from_env: &[&str]) -> Result<ServeConfig, CliError> {
        let env: Vec<String> = from_env.iter().map(|k| (*k).to_owned()).collect();
        ServeConfig::resolve(args, &move |key| {
            if env.iter().any(|k| k == key) {
                Origin::Env
            } else {
                Origin::Flag
            }
        })
    }

    fn error(args: &ServeArgs, from_env: &[&str]) -> String {
        crate::error::chain(&load(args, from_env).unwrap_err())
    }

    fn with_file(f: &tempfile::NamedTempFile) -> ServeArgs {
        ServeArgs {
            config: Some(f.path().to_owned()),
            ..ServeArgs::default()
        }
    }

    /// What clap makes of `serve ARGS` (the process environment is not read: these
    /// arguments have their `env` removed).
    fn parse(argv: &[&str]) -> Result<(ServeArgs, ArgMatches), clap::Error> {
        use clap::{Args, FromArgMatches};
        let command =
            ServeArgs::augment_args(clap::Command::new("serve")).mut_args(|a| a.env(None::<&str>));
        let matches =
            command.try_get_matches_from(std::iter::once("serve").chain(argv.iter().copied()))?;
        Ok((ServeArgs::from_arg_matches(&matches)?, matches))
    }

    #[test]
    fn defaults_are_sqlite_dev_preset_and_localhost_8000() {
        let c = load(&ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.database_url.expose(), "sqlite://queuepool.db");
        assert_eq!(c.backend, Backend::Sqlite);
        assert_eq!(c.preset, Preset::Dev);
        assert_eq!(c.pool.pool_size, 5);
        assert_eq!(c.pool.max_overflow, Overflow::Limited(10));
        assert_eq!(c.pool.pool_timeout, Duration::from_secs(30));
        assert_eq!(c.pool.pool_recycle, Some(Duration::from_secs(1800)));
        assert!(c.pool.pre_ping);
        assert_eq!(c.bind, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert!(!c.echo_pool);
        assert!(
            c.origins
                .values()
                .all(|o| matches!(o, Origin::Default | Origin::Preset(Preset::Dev)))
        );
    }

    #[test]
    fn flags_and_env_beat_file_beat_preset() {
        let f = file("pool_size = 7\npool_preset = \"prod-low\"\n");
        let mut args = with_file(&f);
        args.pool.pool_size = Some(9);
        let c = load(&args, &[]).unwrap();
        assert_eq!(
            (c.pool.pool_size, &c.origins["pool_size"]),
            (9, &Origin::Flag)
        );
        let c = load(&args, &["pool_size"]).unwrap();
        assert_eq!(
            (c.pool.pool_size, &c.origins["pool_size"]),
            (9, &Origin::Env)
        );
        args.pool.pool_size = None;
        let c = load(&args, &[]).unwrap();
        assert_eq!(c.pool.pool_size, 7);
        assert_eq!(c.origins["pool_size"], Origin::File(f.path().to_owned()));
        // The file's preset gives the values the file does not set.
        assert_eq!(c.preset, Preset::ProdLow);
        assert_eq!(c.pool.max_overflow, Overflow::Limited(20));
        assert_eq!(c.origins["max_overflow"], Origin::Preset(Preset::ProdLow));
        args.config = None;
        assert_eq!(load(&args, &[]).unwrap().pool.pool_size, 5);
    }

    #[test]
    fn explicit_values_override_the_preset_whatever_their_layer() {
        let f = file("max_overflow = 3\n");
        let mut args = with_file(&f);
        args.pool.pool_preset = Some(Preset::HighLoad);
        let c = load(&args, &["pool_preset"]).unwrap();
        assert_eq!(c.pool.pool_size, 20);
        assert_eq!(c.pool.max_overflow, Overflow::Limited(3));
        assert_eq!(c.pool.pool_timeout, Duration::from_secs(60));
        assert_eq!(c.origins["pool_size"], Origin::Preset(Preset::HighLoad));
        assert!(
            c.describe()[1].contains("preset=high-load (POOL_PRESET)"),
            "{:?}",
            c.describe()
        );
    }

    #[test]
    fn clap_reads_every_flag_with_its_typed_parser_and_tags_it_as_a_flag() {
        let (args, matches) = parse(&[
            "--database-url",
            "postgres://app:pw@db:5432/shop",
            "--preset",
            "prod-low",
            "--pool-size",
            "12",
            "--max-overflow",
            "-1",
            "--pool-timeout",
            "500ms",
            "--pool-recycle",
            "off",
            "--pool-pre-ping",
            "false",
            "--bind",
            "0.0.0.0:9000",
            "--shutdown-timeout",
            "2m",
            "--query-timeout",
            "3s",
        ])
        .unwrap();
        let c = ServeConfig::load(&args, &matches).unwrap();
        assert_eq!(c.backend, Backend::Postgres);
        assert_eq!(c.preset, Preset::ProdLow);
        assert_eq!(c.pool.pool_size, 12);
        assert_eq!(c.pool.max_overflow, Overflow::Unlimited);
        assert_eq!(c.pool.pool_timeout, Duration::from_millis(500));
        assert_eq!(c.pool.pool_recycle, None);
        assert!(!c.pool.pre_ping);
        assert_eq!(c.bind, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(120));
        assert_eq!(c.query_timeout, Duration::from_secs(3));
        for key in [
            "database_url",
            "pool_preset",
            "pool_size",
            "max_overflow",
            "pool_timeout",
            "pool_recycle",
            "pool_pre_ping",
            "bind",
            "shutdown_timeout",
            "query_timeout",
        ] {
            assert_eq!(c.origins[key], Origin::Flag, "{key}");
        }
        let error = parse(&["--pool-size", "many"]).unwrap_err().to_string();
        assert!(
            error.contains("'many' for '--pool-size <N>': expected a whole number >= 0"),
            "{error}"
        );
        assert!(parse(&["--query-timeout", "0"]).is_err());
    }

    #[test]
    fn bind_takes_a_host_name() {
        assert_eq!(
            bind("localhost:8125"),
            Ok("127.0.0.1:8125".parse().unwrap())
        );
        assert_eq!(bind(" [::1]:80 "), Ok("[::1]:80".parse().unwrap()));
        for bad in ["localhost", ":80", "127.0.0.1:99999", "8000"] {
            assert!(
                bind(bad)
                    .unwrap_err()
                    .contains("expected IP:PORT or HOST:PORT"),
                "{bad}"
            );
        }
    }

    #[test]
    fn file_accepts_numbers_and_strings_and_rejects_unknown_keys() {
        let f = file(
            "pool_timeout = 2.5\npool_recycle = \"1h\"\necho_pool = true\nbind = \"localhost:0\"\npool_pre_ping = \"off\"\n",
        );
        let c = load(&with_file(&f), &[]).unwrap();
        assert_eq!(c.pool.pool_timeout, Duration::from_millis(2500));
        assert_eq!(c.pool.pool_recycle, Some(Duration::from_secs(3600)));
        assert!(!c.pool.pre_ping);
        assert!(c.echo_pool);
        assert_eq!(c.bind, "127.0.0.1:0".parse().unwrap());

        let f = file("pool_sise = 5\n");
        let message = error(&with_file(&f), &[]);
        assert!(message.contains("pool_sise"), "{message}");
        assert!(message.contains("invalid config file"), "{message}");
    }

    #[test]
    fn query_timeout_defaults_to_10_s_and_comes_from_every_layer() {
        let c = load(&ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.query_timeout, DEFAULT_QUERY_TIMEOUT);
        assert_eq!(c.timeouts().query, DEFAULT_QUERY_TIMEOUT);
        // pool_timeout 30 s + connect_timeout 10 s + query_timeout 10 s + 1.25 s.
        assert_eq!(c.timeouts().request, Duration::from_millis(51_250));
        assert!(
            c.describe()[2].contains("query_timeout=10s (default) request_timeout=51.25s"),
            "{:?}",
            c.describe()
        );
        let f = file("query_timeout = 3\n");
        let mut args = with_file(&f);
        assert_eq!(
            load(&args, &[]).unwrap().query_timeout,
            Duration::from_secs(3)
        );
        args.query_timeout = Some(Duration::from_millis(500));
        let c = load(&args, &["query_timeout"]).unwrap();
        assert_eq!(c.query_timeout, Duration::from_millis(500));
        assert!(
            c.describe()[2].contains("query_timeout=0.5s (QUERY_TIMEOUT)"),
            "{:?}",
            c.describe()
        );
        let f = file("query_timeout = 0\n");
        let message = error(&with_file(&f), &[]);
        assert!(message.starts_with("query_timeout in "), "{message}");
        assert!(message.contains("above zero"), "{message}");
    }

    #[test]
    fn bad_values_name_the_key_as_written() {
        let f = file("pool_recycle = \"weekly\"\n");
        let message = error(&with_file(&f), &[]);
        assert!(message.starts_with("pool_recycle in "), "{message}");
        assert!(message.contains("\"weekly\""), "{message}");
        let f = file("pool_preset = \"huge\"\n");
        assert!(error(&with_file(&f), &[]).starts_with("pool_preset in "));
        // Range checks of the pool builder are traced back to the key that set them.
        let mut args = ServeArgs::default();
        args.pool.pool_timeout = Some(Duration::ZERO);
        let message = error(&args, &["pool_timeout"]);
        assert!(message.starts_with("POOL_TIMEOUT: "), "{message}");
        assert!(error(&args, &[]).starts_with("--pool-timeout: "));
        let f = file("pool_timeout = 0\n");
        assert!(error(&with_file(&f), &[]).starts_with("pool_timeout in "));
    }

    #[test]
    fn unsupported_url_names_the_key_and_not_the_password() {
        let args = ServeArgs {
            database_url: Some("redis://u:s3cret@h/0".into()),
            ..ServeArgs::default()
        };
        let message = error(&args, &["database_url"]);
        assert!(message.starts_with("DATABASE_URL: "), "{message}");
        assert!(message.contains("\"redis\""), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn an_unencoded_at_in_the_password_is_refused_without_quoting_the_url() {
        let url = "postgres://postgres:S3c:ret@PW@127.0.0.1:5432/db";
        let args = ServeArgs {
            database_url: Some(url.into()),
            ..ServeArgs::default()
        };
        let message = error(&args, &["database_url"]);
        assert!(message.starts_with("DATABASE_URL: "), "{message}");
        assert!(message.contains("%40"), "{message}");
        for piece in ["S3c", "ret", "PW"] {
            assert!(!message.contains(piece), "{message}");
        }
        let f = file(&format!("database_url = {url:?}\n"));
        let message = error(&with_file(&f), &[]);
        assert!(message.starts_with("database_url in "), "{message}");
        assert!(!message.contains("PW"), "{message}");
        // Encoded, the driver and the redaction read the same password.
        let args = ServeArgs {
            database_url: Some("postgres://postgres:S3c:ret%40PW@127.0.0.1:5432/db".into()),
            ..ServeArgs::default()
        };
        let c = load(&args, &[]).unwrap();
        let m = queuepool_postgres::PgManager::from_url(c.database_url.expose()).unwrap();
        assert_eq!(m.pg_config().get_password(), Some(&b"S3c:ret@PW"[..]));
        assert_eq!(
            c.database_url.to_string(),
            "postgres://postgres:***@127.0.0.1:5432/db"
        );
    }

    #[test]
    fn passwords_are_redacted_in_debug_and_the_startup_lines() {
        let args = ServeArgs {
            database_url: Some("postgres://app:s3cret@db/shop".into()),
            ..ServeArgs::default()
        };
        let c = load(&args, &["database_url"]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let lines = c.describe().join("\n");
        assert!(!lines.contains("s3cret"), "{lines}");
        assert!(lines.contains("postgres://app:***@db/shop"), "{lines}");
        assert!(lines.contains("(DATABASE_URL)"), "{lines}");
    }

    #[test]
    fn read_url_is_off_by_default_needs_postgres_on_both_sides_and_is_redacted() {
        let c = load(&ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.read_url, None);
        assert_eq!(c.max_replica_lag, Duration::from_secs(1));
        assert_eq!(c.describe().len(), 3);

        let args = ServeArgs {
            database_url: Some("postgres://app:s3cret@primary/shop".into()),
            read_url: Some("postgres://app:r3ad@replica1:5432,replica2:5432/shop".into()),
            max_replica_lag: Some(Duration::from_millis(500)),
            ..ServeArgs::default()
        };
        let c = load(&args, &["read_url"]).unwrap();
        let read = c.read_url.as_ref().unwrap();
        assert!(read.expose().contains("r3ad"));
        assert!(!format!("{c:?}").contains("r3ad"));
        let lines = c.describe().join("\n");
        assert!(!lines.contains("r3ad"), "{lines}");
        assert!(
            lines.contains("(DATABASE_READ_URL) max_replica_lag=0.5s (--max-replica-lag)"),
            "{lines}"
        );

        let sqlite_primary = ServeArgs {
            read_url: Some("postgres://app:r3ad@replica1/shop".into()),
            ..ServeArgs::default()
        };
        let message = error(&sqlite_primary, &[]);
        assert!(message.starts_with("--read-url: "), "{message}");
        assert!(message.contains("need PostgreSQL"), "{message}");
        let mysql_reads = ServeArgs {
            database_url: Some("postgres://app@primary/shop".into()),
            read_url: Some("mysql://root:r3ad@replica/test".into()),
            ..ServeArgs::default()
        };
        let message = error(&mysql_reads, &["read_url"]);
        assert!(message.starts_with("DATABASE_READ_URL: "), "{message}");
        assert!(!message.contains("r3ad"), "{message}");

        let f = file(
            "database_url = \"postgres://app@p/shop\"\nread_url = \"postgres://app@r/shop\"\nmax_replica_lag = \"250ms\"\n",
        );
        let c = load(&with_file(&f), &[]).unwrap();
        assert_eq!(c.max_replica_lag, Duration::from_millis(250));
        assert!(c.read_url.is_some());
    }

    #[test]
    fn redact_url_agrees_with_the_password_the_driver_would_use() {
        for url in [
            "postgres:///:s3cret@/db",
            "postgres://?:s3cret@/?",
            "postgresql://u:s3cret@h:5/d?password=s3cret",
            "postgres://h/d?password=s3cret&user=u",
            "host=h user=u password=s3cret",
            "host=h user=u password='s3cret'",
            "host=h user=u password = s3cret",
        ] {
            let m = queuepool_postgres::PgManager::from_url(url).expect(url);
            assert_eq!(m.pg_config().get_password(), Some(&b"s3cret"[..]), "{url}");
            let shown = redact_url(url);
            assert!(!shown.contains("s3cret"), "{url} is shown as {shown}");
        }
    }
}
