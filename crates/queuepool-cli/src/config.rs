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
use crate::telemetry::LogFormat;

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

    /// At start, keep trying to reach the database for this long (seconds, or 500ms,
    /// 2m) instead of exiting at once when it is down [default: 0, exit at once]
    #[arg(long, env = "WAIT_FOR_DB", value_name = "SECONDS", value_parser = parse::duration)]
    pub wait_for_db: Option<Duration>,

    /// How log lines are written: `text` (one line per event) or `json` (one JSON
    /// object per line, for log collectors)
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

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
    /// How long to keep trying to reach the database at start (`--wait-for-db`).
    pub wait_for_db: Duration,
    /// How log lines are written (`--log-format`, `LOG_FORMAT`).
    pub log_format: LogFormat,
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
        let pool_size = layers.pick(
            "pool_size",
            p.pool_size,
            file.pool_size.clone(),
            parse::pool_size,
        )?;
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
        // After max_overflow: `auto`'s default ceiling is pool_size + max_overflow.
        if let Some(size) = pool_size {
            builder = size.apply(builder);
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
            wait_for_db: args.wait_for_db.unwrap_or_default(),
            log_format: args.log_format,
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
        let size = match p.auto_size {
            Some((floor, ceiling)) => {
                format!("auto:{floor}..{ceiling} (kept open {})", p.pool_size)
            }
            None => p.pool_size.to_string(),
        };
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
                size,
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
