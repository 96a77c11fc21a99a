//! `queuepool serve`'s configuration layers through their public entry points:
//! `ServeConfig::resolve` (flag or environment origin given per key), clap's parsing of
//! `ServeArgs` (`ServeConfig::load` with real `ArgMatches`), the TOML file, the preset
//! and the defaults. Values from the process environment are tested through the binary
//! (tests/tools_cli.rs), since the tests cannot set variables of their own process.

use std::io::Write;

use std::time::Duration;

use clap::ArgMatches;
use queuepool::url::{Backend, redact_url};
use queuepool::{Overflow, Preset};
use queuepool_cli::CliError;
use queuepool_cli::config::*;

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
    queuepool_cli::error::chain(&load(args, from_env).unwrap_err())
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
    args.pool.pool_size = Some(queuepool_tools::args::PoolSize::Fixed(9));
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
        error.contains("'many' for '--pool-size <N|auto>': expected a whole number >= 0"),
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

#[test]
fn pool_size_auto_from_flag_or_file_takes_the_presets_bounds_or_its_own() {
    let f = file("pool_size = \"auto\"\npool_preset = \"prod-low\"\n");
    let c = load(&with_file(&f), &[]).unwrap();
    // prod-low: pool_size 10 + max_overflow 20.
    assert_eq!(c.pool.auto_size, Some((2, 30)));
    assert_eq!(c.pool.pool_size, 10);
    assert!(
        c.describe()[1].contains("pool_size=auto:2..30"),
        "{:?}",
        c.describe()
    );
    let (args, _) = parse(&["--pool-size", "auto:3..8"]).unwrap();
    let c = load(&args, &[]).unwrap();
    assert_eq!((c.pool.auto_size, c.pool.pool_size), (Some((3, 8)), 5));
    let (args, _) = parse(&["--pool-size", "7"]).unwrap();
    assert_eq!(load(&args, &[]).unwrap().pool.auto_size, None);
    let f = file("pool_size = \"auto:9..2\"\n");
    let e = error(&with_file(&f), &[]);
    assert!(
        e.contains("pool_size") && e.contains("auto:FLOOR..CEILING"),
        "{e}"
    );
    assert!(parse(&["--pool-size", "automatic"]).is_err());
}
