//! Configuration of `queuepool serve`, from four layers in this order of precedence:
//! command-line flags, then environment variables, then the TOML file given with
//! `--config`, then the pool preset, then the built-in defaults.
//!
//! Every value is parsed by the same functions whatever its layer, so an error names
//! the key as the user wrote it (`--pool-size`, `POOL_SIZE` or `pool_size in
//! queuepool.toml`). Unknown keys in the file are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use queuepool::{ConfigError, Overflow, PoolConfig, Preset};
use serde::Deserialize;

use crate::error::CliError;
use crate::store::Backend;

/// Default `DATABASE_URL`: an SQLite file in the working directory, so that the
/// service runs with nothing installed.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://queuepool.db";
/// Default listen address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";
/// Default bound on the wait for running requests at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on one database query of a request. The service's queries take
/// milliseconds (primary-key lookups, one page of 100 rows); 10 s is far beyond any of
/// them yet ends a request caught on a silent network path well before an HTTP client
/// gives up (often 30 s), and matches the pool's default `connect_timeout`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The options of `queuepool serve`, as given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_long_help = PRECEDENCE_HELP, after_help = PRECEDENCE_HELP)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys: database_url, pool_preset,
    /// pool_size, max_overflow, pool_timeout, pool_recycle, pool_pre_ping, bind,
    /// echo_pool, shutdown_timeout, query_timeout); unknown keys are errors
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Database URL: postgres://user:pass@host:5432/db, mysql://user:pass@host:3306/db,
    /// sqlite://file.db, sqlite:///abs/file.db or sqlite::memory: [env: DATABASE_URL]
    /// [default: sqlite://queuepool.db]
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,

    /// Pool preset: dev (5/10/30 s), prod-low (10/20/30 s), high-load (20/20/60 s), as
    /// pool_size/max_overflow/pool_timeout [env: POOL_PRESET] [default: dev]
    #[arg(long, value_name = "NAME", visible_alias = "preset")]
    pub pool_preset: Option<String>,

    /// Connections kept open and reused [env: POOL_SIZE] [default: from the preset, 5]
    #[arg(long, value_name = "N")]
    pub pool_size: Option<String>,

    /// Extra connections above pool_size under load; -1 or "unlimited" for no limit
    /// [env: MAX_OVERFLOW] [default: from the preset, 10]
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_overflow: Option<String>,

    /// How long a request waits for a connection when all are in use, in seconds
    /// (or with a unit: 500ms, 30s, 2m) [env: POOL_TIMEOUT] [default: from the preset, 30]
    #[arg(long, value_name = "SECONDS")]
    pub pool_timeout: Option<String>,

    /// Maximum connection lifetime in seconds (or 30m, 1h); -1 or "off" keeps
    /// connections forever [env: POOL_RECYCLE] [default: 1800]
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    pub pool_recycle: Option<String>,

    /// Check a connection before lending it if it was idle for more than a second
    /// [env: POOL_PRE_PING] [default: true]
    #[arg(long, value_name = "BOOL")]
    pub pool_pre_ping: Option<String>,

    /// Address to listen on, IP:PORT [env: BIND] [default: 127.0.0.1:8000]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,

    /// Print the pool's log lines (checkouts, returns, connects, recycling), like
    /// SQLAlchemy's echo_pool="debug" [default: off]
    #[arg(long)]
    pub echo_pool: bool,

    /// At shutdown, how long running requests may take to finish, in seconds
    /// [env: SHUTDOWN_TIMEOUT] [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_timeout: Option<String>,

    /// Longest a database query of a request may take, in seconds (or 500ms, 1m): past
    /// it the request gets a 503 `query_timeout`, and the connection is discarded (on
    /// PostgreSQL a cancel request is sent). Bounds a query whose network path went
    /// silent [env: QUERY_TIMEOUT] [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub query_timeout: Option<String>,
}

const PRECEDENCE_HELP: &str = "\
Precedence: command-line flags > environment variables > --config TOML file > \
pool preset > built-in defaults. Example: POOL_PRESET=prod-low POOL_SIZE=15 gives \
pool_size 15 with the other prod-low values.";

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
}

/// A TOML value given to a numeric or boolean key: parsed like the same key's
/// environment variable, so `pool_timeout = 30` and `pool_timeout = "30s"` both work.
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

/// The URL with any password replaced by `***`: the userinfo password of a URL, a
/// `password` query parameter, or the `password=` of a libpq key-value string.
///
/// Deliberately conservative rather than a URL parser: drivers disagree on where the
/// userinfo ends. tokio-postgres takes everything up to the *first* `@` (so in
/// `postgres:///:pw@/db` or `postgres://?:pw@/` it reads `:pw` as the password), the
/// url crate (mysql_async) the *last* `@` before the path. Everything between `://` and
/// the later of those two is userinfo; it is shown as `user:***` only when it is a plain
/// `user:password` (no `@`, `/`, `?` or `#`, so every parser agrees), else as `***`.
pub fn redact_url(url: &str) -> String {
    let Some(sep) = url.find("://") else {
        return redact_key_value(url);
    };
    let head = &url[..sep + 3];
    let rest = &url[sep + 3..];
    let first_at = rest.find('@');
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let last_at_in_authority = rest[..authority_end].rfind('@');
    let (userinfo, after) = match first_at.max(last_at_in_authority) {
        Some(at) => {
            let info = &rest[..at];
            let shown = match info.split_once(':') {
                _ if info.contains(['@', '/', '?', '#']) => "***".to_owned(),
                Some((user, _)) => format!("{user}:***"),
                None => info.to_owned(),
            };
            (shown + "@", &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let after = match after.split_once('?') {
        Some((base, query)) => format!("{base}?{}", redact_query(query)),
        None => after.to_owned(),
    };
    format!("{head}{userinfo}{after}")
}

/// `k=v&...` with the value of every key that decodes to something containing
/// `password` replaced by `***` (values end at `&`, as every driver reads them).
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_password_key(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_password_key(key: &str) -> bool {
    let decoded = url::form_urlencoded::parse(format!("{key}=").as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default();
    decoded.to_ascii_lowercase().contains("password")
        || key.to_ascii_lowercase().contains("password")
}

/// libpq `key=value` strings: values may be single-quoted with `\'` escapes, and a
/// backslash escapes the next character of an unquoted value too (`pass\ word`).
fn redact_key_value(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while let Some(eq) = rest.find('=') {
        let key = &rest[..eq];
        out.push_str(key);
        out.push('=');
        let value_and_more = rest[eq + 1..].trim_start();
        let (value_len, quoted) = if let Some(inner) = value_and_more.strip_prefix('\'') {
            let mut escaped = false;
            let mut end = inner.len();
            for (i, c) in inner.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            ((end + 2).min(value_and_more.len()), true)
        } else {
            let mut escaped = false;
            let mut end = value_and_more.len();
            for (i, c) in value_and_more.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    c if c.is_whitespace() && !escaped => {
                        end = i;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            (end, false)
        };
        let value = &value_and_more[..value_len];
        // The key is the last word before `=`: `junk password=x` still hides `x`.
        let secret = key
            .split_whitespace()
            .next_back()
            .is_some_and(|k| k.to_ascii_lowercase().contains("password"));
        if secret {
            out.push_str(if quoted { "'***'" } else { "***" });
        } else {
            out.push_str(value);
        }
        rest = &value_and_more[value_len..];
    }
    out.push_str(rest);
    out
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

/// One setting: its names in each layer.
#[derive(Debug, Clone, Copy)]
struct Key {
    /// The TOML key and the pool option name.
    name: &'static str,
    /// The environment variable, if the setting has one.
    env: Option<&'static str>,
}

impl Key {
    fn label(self, origin: &Origin) -> String {
        match origin {
            Origin::Flag => format!("--{}", self.name.replace('_', "-")),
            Origin::Env => self.env.unwrap_or(self.name).to_owned(),
            Origin::File(path) => format!("{} in {}", self.name, path.display()),
            Origin::Preset(p) => format!("{} (preset {p})", self.name),
            Origin::Default => format!("{} (default)", self.name),
        }
    }
}

const DATABASE_URL: Key = Key {
    name: "database_url",
    env: Some("DATABASE_URL"),
};
const POOL_PRESET: Key = Key {
    name: "pool_preset",
    env: Some("POOL_PRESET"),
};
const POOL_SIZE: Key = Key {
    name: "pool_size",
    env: Some("POOL_SIZE"),
};
const MAX_OVERFLOW: Key = Key {
    name: "max_overflow",
    env: Some("MAX_OVERFLOW"),
};
const POOL_TIMEOUT: Key = Key {
    name: "pool_timeout",
    env: Some("POOL_TIMEOUT"),
};
const POOL_RECYCLE: Key = Key {
    name: "pool_recycle",
    env: Some("POOL_RECYCLE"),
};
const POOL_PRE_PING: Key = Key {
    name: "pool_pre_ping",
    env: Some("POOL_PRE_PING"),
};
const BIND: Key = Key {
    name: "bind",
    env: Some("BIND"),
};
const ECHO_POOL: Key = Key {
    name: "echo_pool",
    env: None,
};
const SHUTDOWN_TIMEOUT: Key = Key {
    name: "shutdown_timeout",
    env: Some("SHUTDOWN_TIMEOUT"),
};
const QUERY_TIMEOUT: Key = Key {
    name: "query_timeout",
    env: Some("QUERY_TIMEOUT"),
};

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
    /// Where each setting came from, by key name.
    pub origins: BTreeMap<&'static str, Origin>,
}

/// Picks the first value present among the layers.
struct Layers<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file_path: Option<PathBuf>,
    origins: BTreeMap<&'static str, Origin>,
}

impl Layers<'_> {
    fn pick(
        &mut self,
        key: Key,
        flag: Option<&String>,
        file: Option<String>,
    ) -> Option<(String, String)> {
        let env = key
            .env
            .and_then(|name| (self.env)(name))
            .filter(|value| !value.is_empty());
        let file_origin = || Origin::File(self.file_path.clone().unwrap_or_default());
        let (value, origin) = if let Some(v) = flag {
            (v.clone(), Origin::Flag)
        } else if let Some(v) = env {
            (v, Origin::Env)
        } else if let Some(v) = file {
            (v, file_origin())
        } else {
            return None;
        };
        let label = key.label(&origin);
        self.origins.insert(key.name, origin);
        Some((value, label))
    }
}

fn invalid(label: &str, value: &str, expected: &str) -> CliError {
    CliError::Config {
        key: label.to_owned(),
        message: format!("invalid value {value:?}: expected {expected}"),
    }
}

fn parse_count(label: &str, raw: &str) -> Result<u32, CliError> {
    raw.trim()
        .parse::<u32>()
        .map_err(|_| invalid(label, raw, "a whole number >= 0"))
}

fn parse_overflow(label: &str, raw: &str) -> Result<Overflow, CliError> {
    let value = raw.trim();
    if value == "-1" || value.eq_ignore_ascii_case("unlimited") {
        return Ok(Overflow::Unlimited);
    }
    value
        .parse::<u32>()
        .map(Overflow::Limited)
        .map_err(|_| invalid(label, raw, "a whole number >= 0, or -1 / unlimited"))
}

/// Seconds (`30`, `0.5`) or a number with a unit (`500ms`, `30s`, `2m`, `1h`).
fn parse_duration(label: &str, raw: &str) -> Result<Duration, CliError> {
    let value = raw.trim();
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let seconds = number.trim().parse::<f64>().map(|n| n * scale);
    match seconds {
        Ok(s) if (0.0..=366.0 * 86400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(invalid(
            label,
            raw,
            "a duration: seconds (30, 0.5) or with a unit (500ms, 30s, 2m, 1h)",
        )),
    }
}

fn parse_recycle(label: &str, raw: &str) -> Result<Option<Duration>, CliError> {
    let value = raw.trim().to_ascii_lowercase();
    if matches!(value.as_str(), "-1" | "off" | "none" | "never") {
        return Ok(None);
    }
    parse_duration(label, raw)
        .map(Some)
        .map_err(|_| invalid(label, raw, "a duration (1800, 30m, 1h) or -1 / off"))
}

fn parse_bool(label: &str, raw: &str) -> Result<bool, CliError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(label, raw, "true or false")),
    }
}

impl ServeConfig {
    /// Resolves the configuration from the flags, the environment (through `env`, so
    /// tests need not touch the process environment) and the `--config` file.
    pub fn load(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServeConfig, CliError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let text = |s: &Option<Scalar>| s.as_ref().map(ToString::to_string);
        let mut layers = Layers {
            env,
            file_path: args.config.clone(),
            origins: BTreeMap::new(),
        };
        let (url, url_label) = layers
            .pick(
                DATABASE_URL,
                args.database_url.as_ref(),
                file.database_url.clone(),
            )
            .unwrap_or_else(|| {
                layers.origins.insert(DATABASE_URL.name, Origin::Default);
                (DEFAULT_DATABASE_URL.to_owned(), "database_url".to_owned())
            });
        let backend = Backend::from_url(&url).ok_or_else(|| {
            // Only the scheme: the rest may hold a password.
            let scheme = url
                .split("://")
                .next()
                .filter(|_| url.contains("://"))
                .unwrap_or("");
            CliError::Config {
                key: url_label.clone(),
                message: format!(
                    "unsupported database URL{}: expected postgres://, postgresql://, \
                     mysql://, mariadb:// or sqlite://",
                    if scheme.is_empty() {
                        String::new()
                    } else {
                        format!(" scheme {scheme:?}")
                    }
                ),
            }
        })?;

        let mut builder = PoolConfig::builder().name("serve");
        let preset = match layers.pick(
            POOL_PRESET,
            args.pool_preset.as_ref(),
            file.pool_preset.clone(),
        ) {
            Some((raw, label)) => {
                raw.trim()
                    .parse::<Preset>()
                    .map_err(|e: ConfigError| CliError::Config {
                        key: label,
                        message: e.to_string(),
                    })?
            }
            None => {
                layers.origins.insert(POOL_PRESET.name, Origin::Default);
                Preset::Dev
            }
        };
        builder = builder.preset(preset);
        for key in [POOL_SIZE, MAX_OVERFLOW, POOL_TIMEOUT, POOL_RECYCLE] {
            layers.origins.insert(key.name, Origin::Preset(preset));
        }
        layers.origins.insert(POOL_PRE_PING.name, Origin::Default);

        if let Some((raw, label)) =
            layers.pick(POOL_SIZE, args.pool_size.as_ref(), text(&file.pool_size))
        {
            builder = builder.pool_size(parse_count(&label, &raw)?);
        }
        if let Some((raw, label)) = layers.pick(
            MAX_OVERFLOW,
            args.max_overflow.as_ref(),
            text(&file.max_overflow),
        ) {
            builder = match parse_overflow(&label, &raw)? {
                Overflow::Limited(n) => builder.max_overflow(n),
                _ => builder.unlimited_overflow(),
            };
        }
        if let Some((raw, label)) = layers.pick(
            POOL_TIMEOUT,
            args.pool_timeout.as_ref(),
            text(&file.pool_timeout),
        ) {
            builder = builder.pool_timeout(parse_duration(&label, &raw)?);
        }
        if let Some((raw, label)) = layers.pick(
            POOL_RECYCLE,
            args.pool_recycle.as_ref(),
            text(&file.pool_recycle),
        ) {
            builder = builder.pool_recycle(parse_recycle(&label, &raw)?);
        }
        if let Some((raw, label)) = layers.pick(
            POOL_PRE_PING,
            args.pool_pre_ping.as_ref(),
            text(&file.pool_pre_ping),
        ) {
            builder = builder.pre_ping(parse_bool(&label, &raw)?);
        }
        let pool = builder.build().map_err(|error| {
            let key = match &error {
                ConfigError::Invalid { field, .. } => [
                    POOL_SIZE,
                    MAX_OVERFLOW,
                    POOL_TIMEOUT,
                    POOL_RECYCLE,
                    POOL_PRE_PING,
                ]
                .into_iter()
                .find(|k| k.name == *field || k.name == format!("pool_{field}"))
                .and_then(|k| layers.origins.get(k.name).map(|o| k.label(o)))
                .unwrap_or_else(|| (*field).to_owned()),
                _ => "pool".to_owned(),
            };
            CliError::Config {
                key,
                message: error.to_string(),
            }
        })?;

        let bind = match layers.pick(BIND, args.bind.as_ref(), file.bind.clone()) {
            Some((raw, label)) => raw.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(&label, &raw, "IP:PORT, like 127.0.0.1:8000 or 0.0.0.0:8000")
            })?,
            None => {
                layers.origins.insert(BIND.name, Origin::Default);
                DEFAULT_BIND
                    .parse()
                    .map_err(|_| invalid("bind", DEFAULT_BIND, "IP:PORT"))?
            }
        };
        let echo_pool = if args.echo_pool {
            layers.origins.insert(ECHO_POOL.name, Origin::Flag);
            true
        } else if let Some(echo) = file.echo_pool {
            layers.origins.insert(
                ECHO_POOL.name,
                Origin::File(args.config.clone().unwrap_or_default()),
            );
            echo
        } else {
            layers.origins.insert(ECHO_POOL.name, Origin::Default);
            false
        };
        let shutdown_timeout = match layers.pick(
            SHUTDOWN_TIMEOUT,
            args.shutdown_timeout.as_ref(),
            text(&file.shutdown_timeout),
        ) {
            Some((raw, label)) => parse_duration(&label, &raw)?,
            None => {
                layers
                    .origins
                    .insert(SHUTDOWN_TIMEOUT.name, Origin::Default);
                DEFAULT_SHUTDOWN_TIMEOUT
            }
        };
        let query_timeout = match layers.pick(
            QUERY_TIMEOUT,
            args.query_timeout.as_ref(),
            text(&file.query_timeout),
        ) {
            Some((raw, label)) => {
                let limit = parse_duration(&label, &raw)?;
                if limit.is_zero() {
                    return Err(invalid(&label, &raw, "a duration greater than zero"));
                }
                limit
            }
            None => {
                layers.origins.insert(QUERY_TIMEOUT.name, Origin::Default);
                DEFAULT_QUERY_TIMEOUT
            }
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
            Some(Origin::Env) => name.to_ascii_uppercase(),
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
        vec![
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
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |key| map.get(key).cloned()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load(args: &ServeArgs, pairs: &[(&str, &str)]) -> Result<ServeConfig, CliError> {
        ServeConfig::load(args, &env(pairs))
    }

    fn error(args: &ServeArgs, pairs: &[(&str, &str)]) -> String {
        crate::error::chain(&load(args, pairs).unwrap_err())
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
        assert_eq!(c.bind, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert!(!c.echo_pool);
    }

    #[test]
    fn flags_beat_env_beat_file_beat_preset() {
        let f = file("pool_size = 7\npool_preset = \"prod-low\"\n");
        let mut args = ServeArgs {
            config: Some(f.path().to_owned()),
            pool_size: Some("9".into()),
            ..ServeArgs::default()
        };
        let both = [("POOL_SIZE", "8")];
        assert_eq!(load(&args, &both).unwrap().pool.pool_size, 9);
        assert_eq!(
            load(&args, &both).unwrap().origins["pool_size"],
            Origin::Flag
        );
        args.pool_size = None;
        assert_eq!(load(&args, &both).unwrap().pool.pool_size, 8);
        assert_eq!(
            load(&args, &both).unwrap().origins["pool_size"],
            Origin::Env
        );
        let c = load(&args, &[]).unwrap();
        assert_eq!(c.pool.pool_size, 7);
        // The file's preset gives the values the file does not set.
        assert_eq!(c.preset, Preset::ProdLow);
        assert_eq!(c.pool.max_overflow, Overflow::Limited(20));
        args.config = None;
        assert_eq!(load(&args, &[]).unwrap().pool.pool_size, 5);
        // An empty variable counts as unset.
        assert_eq!(load(&args, &[("POOL_SIZE", "")]).unwrap().pool.pool_size, 5);
    }

    #[test]
    fn explicit_values_override_the_preset_whatever_their_layer() {
        let f = file("max_overflow = 3\n");
        let args = ServeArgs {
            config: Some(f.path().to_owned()),
            ..ServeArgs::default()
        };
        let c = load(&args, &[("POOL_PRESET", "high-load")]).unwrap();
        assert_eq!(c.pool.pool_size, 20);
        assert_eq!(c.pool.max_overflow, Overflow::Limited(3));
        assert_eq!(c.pool.pool_timeout, Duration::from_secs(60));
        assert_eq!(c.origins["pool_size"], Origin::Preset(Preset::HighLoad));
    }

    #[test]
    fn every_env_variable_is_read() {
        let c = load(
            &ServeArgs::default(),
            &[
                ("DATABASE_URL", "postgres://app:pw@db:5432/shop"),
                ("POOL_PRESET", "prod-low"),
                ("POOL_SIZE", "12"),
                ("MAX_OVERFLOW", "-1"),
                ("POOL_TIMEOUT", "500ms"),
                ("POOL_RECYCLE", "off"),
                ("POOL_PRE_PING", "false"),
                ("BIND", "0.0.0.0:9000"),
                ("SHUTDOWN_TIMEOUT", "2m"),
            ],
        )
        .unwrap();
        assert_eq!(c.backend, Backend::Postgres);
        assert_eq!(c.preset, Preset::ProdLow);
        assert_eq!(c.pool.pool_size, 12);
        assert_eq!(c.pool.max_overflow, Overflow::Unlimited);
        assert_eq!(c.pool.pool_timeout, Duration::from_millis(500));
        assert_eq!(c.pool.pool_recycle, None);
        assert!(!c.pool.pre_ping);
        assert_eq!(c.bind, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(120));
    }

    #[test]
    fn file_accepts_numbers_and_strings_and_rejects_unknown_keys() {
        let f = file(
            "pool_timeout = 2.5\npool_recycle = \"1h\"\necho_pool = true\nbind = \"127.0.0.1:0\"\n",
        );
        let args = ServeArgs {
            config: Some(f.path().to_owned()),
            ..ServeArgs::default()
        };
        let c = load(&args, &[]).unwrap();
        assert_eq!(c.pool.pool_timeout, Duration::from_millis(2500));
        assert_eq!(c.pool.pool_recycle, Some(Duration::from_secs(3600)));
        assert!(c.echo_pool);

        let f = file("pool_sise = 5\n");
        let args = ServeArgs {
            config: Some(f.path().to_owned()),
            ..ServeArgs::default()
        };
        let message = error(&args, &[]);
        assert!(message.contains("pool_sise"), "{message}");
        assert!(message.contains("invalid config file"), "{message}");
    }

    #[test]
    fn query_timeout_defaults_to_10_s_is_read_from_every_layer_and_must_be_positive() {
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
        let from_file = ServeArgs {
            config: Some(f.path().to_owned()),
            ..ServeArgs::default()
        };
        assert_eq!(
            load(&from_file, &[]).unwrap().query_timeout,
            Duration::from_secs(3)
        );
        let c = load(&from_file, &[("QUERY_TIMEOUT", "500ms")]).unwrap();
        assert_eq!(c.query_timeout, Duration::from_millis(500));
        assert_eq!(c.origins["query_timeout"], Origin::Env);
        let flag = ServeArgs {
            query_timeout: Some("2s".into()),
            ..from_file
        };
        let c = load(&flag, &[("QUERY_TIMEOUT", "500ms")]).unwrap();
        assert_eq!(c.query_timeout, Duration::from_secs(2));

        let message = error(&ServeArgs::default(), &[("QUERY_TIMEOUT", "0")]);
        assert!(message.starts_with("QUERY_TIMEOUT: "), "{message}");
        assert!(message.contains("greater than zero"), "{message}");
        let message = error(&ServeArgs::default(), &[("QUERY_TIMEOUT", "soon")]);
        assert!(message.starts_with("QUERY_TIMEOUT: "), "{message}");
    }

    #[test]
    fn bad_values_name_the_key_as_written() {
        let message = error(&ServeArgs::default(), &[("POOL_SIZE", "many")]);
        assert!(message.starts_with("POOL_SIZE: "), "{message}");
        let args = ServeArgs {
            pool_timeout: Some("soon".into()),
            ..ServeArgs::default()
        };
        assert!(error(&args, &[]).starts_with("--pool-timeout: "));
        let f = file("pool_recycle = \"weekly\"\n");
        let args = ServeArgs {
            config: Some(f.path().to_owned()),
            ..ServeArgs::default()
        };
        let message = error(&args, &[]);
        assert!(message.starts_with("pool_recycle in "), "{message}");
        assert!(error(&ServeArgs::default(), &[("BIND", "localhost")]).starts_with("BIND: "));
        assert!(
            error(&ServeArgs::default(), &[("POOL_PRESET", "huge")]).starts_with("POOL_PRESET: ")
        );
        // Range checks of the pool builder are traced back to the key that set them.
        let message = error(&ServeArgs::default(), &[("POOL_TIMEOUT", "0")]);
        assert!(message.starts_with("POOL_TIMEOUT: "), "{message}");
    }

    #[test]
    fn unsupported_url_names_the_key_and_not_the_password() {
        let message = error(
            &ServeArgs::default(),
            &[("DATABASE_URL", "redis://u:s3cret@h/0")],
        );
        assert!(message.starts_with("DATABASE_URL: "), "{message}");
        assert!(message.contains("\"redis\""), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn redact_url_hides_the_userinfo_wherever_a_driver_ends_it() {
        for (url, shown) in [
            // tokio-postgres reads `:s3cret` as the password: userinfo ends at the
            // first `@`, even after what the url crate calls a path or a query.
            ("postgres:///:s3cret@/db", "postgres://***@/db"),
            ("postgres://?:s3cret@/?", "postgres://***@/?"),
            ("postgres://#:s3cret@h/d", "postgres://***@h/d"),
            // The url crate (mysql_async) reads up to the last `@` of the authority.
            ("mysql://u:p@s3cret@h/db", "mysql://***@h/db"),
            (
                "postgres://u:s3cret@h/d?application_name=a@b",
                "postgres://u:***@h/d?application_name=a@b",
            ),
            ("postgres://app@db/shop", "postgres://app@db/shop"),
            ("postgres://db/shop", "postgres://db/shop"),
            ("postgres://:s3cret@/", "postgres://:***@/"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
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

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/shop?sslmode=require"),
            "postgres://app:***@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/shop?user=app&password=s3cret"),
            "postgres://db/shop?user=app&password=***"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1:3306/test"),
            "mysql://root@127.0.0.1:3306/test"
        );
        assert_eq!(
            redact_url("host=db user=app password=s3cret dbname=shop"),
            "host=db user=app password=*** dbname=shop"
        );
        assert_eq!(
            redact_url("host=db password = 'se cret\\'x' dbname=shop"),
            "host=db password ='***' dbname=shop"
        );
        assert_eq!(redact_url("sqlite://queuepool.db"), "sqlite://queuepool.db");
        assert_eq!(
            redact_url("postgres://db/shop?user=app&pass%77ord=s3cret"),
            "postgres://db/shop?user=app&pass%77ord=***"
        );
        assert_eq!(
            redact_url("host=db password=se\\ cret dbname=shop"),
            "host=db password=*** dbname=shop"
        );
        let c = load(
            &ServeArgs::default(),
            &[("DATABASE_URL", "postgres://app:s3cret@db/shop")],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let lines = c.describe().join("\n");
        assert!(!lines.contains("s3cret"), "{lines}");
        assert!(lines.contains("postgres://app:***@db/shop"), "{lines}");
        assert!(lines.contains("(DATABASE_URL)"), "{lines}");
    }
}
