//! Connection strings: libpq URLs and key-value strings, with the TLS modes that
//! tokio-postgres does not parse itself (`verify-ca`, `verify-full`, `sslrootcert`).

use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::percent_decode_str;
// Errors name the closest known key instead of echoing what was given: a malformed
// connection string can put a piece of the password where a key is expected.
use queuepool::text::suggest;

use crate::error::PgError;

/// The `application_name` set on every connection unless the connection string sets one.
pub const DEFAULT_APPLICATION_NAME: &str = "queuepool";

/// libpq's `sslmode`.
///
/// | mode | encrypted | certificate chain checked | host name checked |
/// |---|---|---|---|
/// | `disable` | no | | |
/// | `prefer` (default) | if the server offers TLS | no | no |
/// | `require` | yes | no (yes with `sslrootcert`, as libpq) | no |
/// | `verify-ca` | yes | yes | no |
/// | `verify-full` | yes | yes | yes |
///
/// `allow` is accepted and treated as `prefer` (encrypt when the server offers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, without verification.
    Prefer,
    /// TLS or fail; no certificate verification (unless a root certificate is given).
    Require,
    /// TLS with a verified certificate chain; the host name is not checked.
    VerifyCa,
    /// TLS with a verified certificate chain issued for the host name connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = PgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                // The value is echoed only when it cannot be a stray secret.
                let shown =
                    suggest(other, SSL_MODES).map_or_else(String::new, |m| format!(" `{m}`"));
                let given = if SSL_MODES.iter().any(|m| m.eq_ignore_ascii_case(other)) {
                    format!(" `{other}`")
                } else {
                    String::new()
                };
                return Err(PgError::Config(format!(
                    "unknown sslmode{given} (expected disable, allow, prefer, require, verify-ca or verify-full){}",
                    if shown.is_empty() {
                        String::new()
                    } else {
                        format!("; did you mean{shown}?")
                    }
                )));
            }
        })
    }
}

/// libpq's `target_session_attrs` (PostgreSQL 14's set): which server of a multi-host
/// list a connection may settle on. Hosts that do not qualify are skipped (the
/// connection to them closed) and the next one is tried.
///
/// | value | accepts |
/// |---|---|
/// | `any` (default) | any server |
/// | `read-write` | new transactions are read-write by default: not a standby, and `default_transaction_read_only` off |
/// | `read-only` | the converse of `read-write` |
/// | `primary` | not in hot standby (`pg_is_in_recovery()` false) |
/// | `standby` | in hot standby |
/// | `prefer-standby` | a standby if one of the hosts is; else any server |
///
/// As libpq with PostgreSQL 14+ servers, the check costs no round trip: the server
/// reports `in_hot_standby` and `default_transaction_read_only` at startup. With older
/// servers (or a proxy that does not pass these on), `SHOW transaction_read_only` or
/// `SELECT pg_is_in_recovery()` is asked, as libpq does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server.
    #[default]
    Any,
    /// A server whose sessions are read-write by default.
    ReadWrite,
    /// A server whose sessions are read-only by default.
    ReadOnly,
    /// A server not in hot standby.
    Primary,
    /// A server in hot standby.
    Standby,
    /// A standby if any host is one, else any server.
    PreferStandby,
}

/// The `target_session_attrs` values, as written.
const TARGET_SESSION_ATTRS: &[&str] = &[
    "any",
    "read-write",
    "read-only",
    "primary",
    "standby",
    "prefer-standby",
];

impl TargetSessionAttrs {
    /// The value as written in a connection string.
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

impl std::fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = PgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            other => {
                // Not echoed (it may be a stray secret); a near miss is named.
                let hint = suggest(other, TARGET_SESSION_ATTRS)
                    .map_or_else(String::new, |m| format!("; did you mean `{m}`?"));
                return Err(PgError::Config(format!(
                    "unknown target_session_attrs (expected any, read-write, read-only, \
                     primary, standby or prefer-standby){hint}"
                )));
            }
        })
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCerts {
    /// The operating system's store (also `sslrootcert=system`).
    System,
    /// A PEM file (`sslrootcert=/path/root.crt`).
    File(PathBuf),
}

/// The result of parsing a connection string.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) ssl_mode: SslMode,
    pub(crate) root_certs: RootCerts,
    /// `sslrootcert` was given explicitly (libpq then verifies the chain in `require`).
    pub(crate) explicit_root: bool,
    /// `target_session_attrs` (parsed here: tokio-postgres knows only three values).
    pub(crate) target: TargetSessionAttrs,
}

/// Parses a `postgres://` / `postgresql://` URL or a libpq key-value string.
pub(crate) fn parse(input: &str) -> Result<Parsed, PgError> {
    let trimmed = input.trim();
    let is_url = trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://");
    if !is_url {
        reject_foreign_url(trimmed)?;
    }
    let (rest, ours) = if is_url {
        split_url(trimmed)?
    } else {
        split_key_value(trimmed)?
    };

    let mut pg = tokio_postgres::Config::from_str(&rest).map_err(|e| driver_parse_error(&e))?;

    let mut ssl_mode = SslMode::Prefer;
    let mut root_certs = RootCerts::System;
    let mut explicit_root = false;
    let mut explicit_mode = false;
    let mut target = TargetSessionAttrs::Any;
    for (key, value) in ours {
        match key.as_str() {
            "target_session_attrs" => target = value.parse()?,
            "sslmode" => {
                ssl_mode = value.parse()?;
                explicit_mode = true;
            }
            "sslrootcert" => {
                explicit_root = true;
                root_certs = if value == "system" {
                    RootCerts::System
                } else {
                    RootCerts::File(PathBuf::from(value))
                };
            }
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(PgError::Config(format!(
                    "`{key}` (TLS client certificates) is not supported by queuepool-postgres"
                )));
            }
            _ => {}
        }
    }
    // libpq: `sslrootcert=system` implies verify-full and rejects weaker modes.
    if explicit_root && root_certs == RootCerts::System && ssl_mode != SslMode::VerifyFull {
        if explicit_mode {
            return Err(PgError::Config(
                "sslrootcert=system requires sslmode=verify-full (or no sslmode)".into(),
            ));
        }
        ssl_mode = SslMode::VerifyFull;
    }
    // libpq: verification needs a root to verify against. Without `sslrootcert`,
    // libpq reads ~/.postgresql/root.crt and fails when it is missing; it never falls
    // back to the system store (which would accept any publicly trusted certificate,
    // and under verify-ca for any name). The system store is opt-in: `system`.
    if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && !explicit_root {
        let mode = if ssl_mode == SslMode::VerifyCa {
            "verify-ca"
        } else {
            "verify-full"
        };
        return Err(PgError::Config(format!(
            "sslmode={mode} needs sslrootcert: the PEM file of the root certificate(s) to \
             trust (sslrootcert=/path/root.crt), or sslrootcert=system for the system's \
             trusted roots (which implies verify-full)"
        )));
    }

    pg.ssl_mode(match ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    if pg.get_application_name().is_none() {
        pg.application_name(DEFAULT_APPLICATION_NAME);
    }
    if pg.get_user().is_none() {
        return Err(PgError::Config(
            "no user name: set it in the URL (postgres://user@host/db) or with user=...".into(),
        ));
    }
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        pg.host("localhost");
    }
    Ok(Parsed {
        pg,
        ssl_mode,
        root_certs,
        explicit_root,
        target,
    })
}

/// The `sslmode` values libpq knows.
const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Every connection parameter this crate accepts (tokio-postgres' and ours).
const KNOWN_KEYS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// A URL of another scheme (`mysql://...`) would otherwise be read as a key-value
/// string whose first key is the whole URL, and named in the error.
fn reject_foreign_url(input: &str) -> Result<(), PgError> {
    let head = input
        .split(|c: char| c == '=' || c.is_whitespace())
        .next()
        .unwrap_or_default();
    let Some((scheme, _)) = head.split_once("://") else {
        return Ok(());
    };
    let plain = !scheme.is_empty()
        && scheme.len() <= 16
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    Err(PgError::Config(if plain {
        format!(
            "a `{scheme}://` URL is not a PostgreSQL connection string (expected \
             postgres://user:password@host:port/dbname or key=value pairs)"
        )
    } else {
        "this URL is not a PostgreSQL connection string (expected \
         postgres://user:password@host:port/dbname or key=value pairs)"
            .into()
    }))
}

/// tokio-postgres' parse errors, restated. Its `unknown option` error quotes the key,
/// which in a malformed string may be a piece of the password (`password=my secret`
/// makes `secret` a key), and its syntax errors quote a character of the input; only
/// messages made of the driver's own static text pass through.
fn driver_parse_error(err: &tokio_postgres::Error) -> PgError {
    let cause = std::error::Error::source(err).map(ToString::to_string);
    let cause = cause.as_deref().unwrap_or_default();
    let text = if let Some(key) = cause
        .strip_prefix("unknown option `")
        .and_then(|k| k.strip_suffix('`'))
    {
        match suggest(key, KNOWN_KEYS) {
            Some(known) => format!("unknown parameter (not shown); did you mean `{known}`?"),
            None => "unknown parameter (not shown, as it may be part of a password; a value \
                     with spaces must be quoted: password='...')"
                .to_owned(),
        }
    } else if cause.starts_with("invalid value for option `")
        || matches!(
            cause,
            "unexpected EOF"
                | "unterminated parameter"
                | "unterminated quoted connection parameter value"
        )
    {
        // Static text of the driver, naming at most the option.
        cause.to_owned()
    } else if cause.starts_with("unexpected character at byte") {
        "unexpected character in the connection string".to_owned()
    } else if cause.contains("utf-8") {
        "a percent-encoded part of the URL is not valid UTF-8".to_owned()
    } else {
        "the connection string is malformed (expected postgres://user:password@host:port/dbname \
         or key=value pairs)"
            .to_owned()
    };
    PgError::Config(text)
}

/// Keys this crate handles itself; everything else goes to tokio-postgres.
fn is_ours(key: &str) -> bool {
    matches!(
        key,
        "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "sslpassword" | "target_session_attrs"
    )
}

fn split_url(url: &str) -> Result<(String, Vec<(String, String)>), PgError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if is_ours(&key) {
            ours.push((key, decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, ours))
}

fn decode(s: &str) -> Result<String, PgError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| PgError::Config("a URL query parameter is not valid UTF-8".into()))
}

/// Splits `key = value` pairs as libpq does: values may be single-quoted, and a
/// backslash escapes the next character. The pairs we do not handle are re-emitted
/// quoted, so tokio-postgres sees exactly the same values.
fn split_key_value(s: &str) -> Result<(String, Vec<(String, String)>), PgError> {
    let mut chars = s.chars().peekable();
    let mut rest = String::new();
    let mut ours = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(PgError::Config(format!(
                "expected `=` after {} in the connection string (a value with spaces must be \
                 quoted: password='...')",
                key_for_error(&key)
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(PgError::Config(format!(
                    "unterminated quoted value for {} in the connection string",
                    key_for_error(&key)
                )));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if is_ours(&key) {
            ours.push((key, value));
        } else {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&key);
            rest.push_str("='");
            for c in value.chars() {
                if c == '\'' || c == '\\' {
                    rest.push('\\');
                }
                rest.push(c);
            }
            rest.push('\'');
        }
    }
    Ok((rest, ours))
}

/// A key as errors show it: its name if it is a known parameter, else a word that does
/// not repeat it (it may be a piece of a password).
fn key_for_error(key: &str) -> String {
    if KNOWN_KEYS.contains(&key) {
        format!("`{key}`")
    } else {
        "a key (not shown)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::Host;

    #[test]
    fn url_with_verify_full_and_root_cert() {
        let p = parse(
            "postgresql://app:s3cr%40t@db.example:6432/shop?sslmode=verify-full&sslrootcert=%2Ftmp%2Froot.crt&connect_timeout=3",
        )
        .expect("valid url");
        assert_eq!(p.ssl_mode, SslMode::VerifyFull);
        assert_eq!(p.root_certs, RootCerts::File("/tmp/root.crt".into()));
        assert_eq!(p.pg.get_user(), Some("app"));
        assert_eq!(p.pg.get_password(), Some(&b"s3cr@t"[..]));
        assert_eq!(p.pg.get_dbname(), Some("shop"));
        assert_eq!(p.pg.get_ports(), &[6432]);
        assert_eq!(
            p.pg.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(
            p.pg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn application_name_defaults_to_queuepool_unless_set() {
        let p = parse("postgres://u@h/db").expect("valid");
        assert_eq!(p.pg.get_application_name(), Some(DEFAULT_APPLICATION_NAME));
        let p = parse("postgres://u@h/db?application_name=billing").expect("valid");
        assert_eq!(p.pg.get_application_name(), Some("billing"));
        let p = parse("host=h user=u application_name='my app'").expect("valid");
        assert_eq!(p.pg.get_application_name(), Some("my app"));
    }

    #[test]
    fn key_value_multi_host_with_read_write_target() {
        let p = parse(
            "host=a,b port=5432,5433 user=u password='it\\'s' dbname=d sslmode=verify-ca sslrootcert=/tmp/root.crt target_session_attrs=read-write",
        )
        .expect("valid");
        assert_eq!(
            p.pg.get_hosts(),
            &[Host::Tcp("a".into()), Host::Tcp("b".into())]
        );
        assert_eq!(p.pg.get_ports(), &[5432, 5433]);
        assert_eq!(p.pg.get_password(), Some(&b"it's"[..]));
        assert_eq!(p.target, TargetSessionAttrs::ReadWrite);
        assert_eq!(p.ssl_mode, SslMode::VerifyCa);
        assert_eq!(p.root_certs, RootCerts::File("/tmp/root.crt".into()));
    }

    #[test]
    fn every_libpq_target_session_attrs_value_parses_in_both_forms() {
        for value in TARGET_SESSION_ATTRS {
            let url = parse(&format!("postgres://u@a,b/d?target_session_attrs={value}"))
                .expect("valid url");
            assert_eq!(url.target.as_str(), *value);
            let kv = parse(&format!("host=a,b user=u target_session_attrs={value}"))
                .expect("valid key-value");
            assert_eq!(kv.target.as_str(), *value);
        }
        assert_eq!(
            parse("postgres://u@h/d").expect("valid").target,
            TargetSessionAttrs::Any
        );
        let err = parse("postgres://u@h/d?target_session_attrs=prefer-stanby").expect_err("bad");
        assert!(
            err.to_string().contains("did you mean `prefer-standby`?"),
            "{err}"
        );
        let err = parse("host=h user=u target_session_attrs=Hunter2pw").expect_err("bad");
        assert!(!err.to_string().contains("Hunter2pw"), "{err}");
    }

    #[test]
    fn default_ssl_mode_is_prefer_and_bad_modes_are_named() {
        assert_eq!(
            parse("postgres://u@h/d").expect("valid").ssl_mode,
            SslMode::Prefer
        );
        // An unknown value is not echoed (it may be a stray secret); a near miss is named.
        let err = parse("postgres://u@h/d?sslmode=verify").expect_err("invalid");
        assert!(err.to_string().contains("unknown sslmode ("), "{err}");
        let err = parse("postgres://u@h/d?sslmode=verify-fll").expect_err("invalid");
        assert!(
            err.to_string().contains("did you mean `verify-full`?"),
            "{err}"
        );
    }

    #[test]
    fn verify_modes_need_sslrootcert_and_never_fall_back_to_the_system_store() {
        for mode in ["verify-ca", "verify-full"] {
            let Err(err) = parse(&format!("postgres://u:p@127.0.0.1:5433/d?sslmode={mode}")) else {
                panic!("sslmode={mode} without sslrootcert was accepted");
            };
            let text = err.to_string();
            assert!(
                text.contains(&format!("sslmode={mode} needs sslrootcert"))
                    && text.contains("sslrootcert=system"),
                "{text}"
            );
            let p = parse(&format!(
                "postgres://u@h/d?sslmode={mode}&sslrootcert=/r.crt"
            ))
            .expect("valid");
            assert_eq!(p.root_certs, RootCerts::File("/r.crt".into()));
        }
        assert!(parse("postgres://u@h/d?sslmode=verify-ca&sslrootcert=system").is_err());
        assert!(parse("postgres://u@h/d?sslmode=require").is_ok());
    }

    #[test]
    fn sslrootcert_system_implies_verify_full() {
        let p = parse("postgres://u@h/d?sslrootcert=system").expect("valid");
        assert_eq!(p.ssl_mode, SslMode::VerifyFull);
        assert!(parse("postgres://u@h/d?sslrootcert=system&sslmode=disable").is_err());
        assert!(parse("postgres://u@h/d?sslrootcert=system&sslmode=require").is_err());
    }

    #[test]
    fn errors_never_contain_the_password() {
        for bad in [
            "postgres://u:Hunter2pw@h:notaport/d",
            "postgres://u:Hunter2pw@h/d?nosuchoption=1",
            "host=h user=u password=Hunter2pw port=x",
            "host=h user=u password='Hunter2pw",
            "postgres://u:Hunter2pw@h/d?sslmode=maybe",
            // Another backend's URL is not read as a key-value string quoting itself.
            "mysql://:Hunter2pw@/",
            "mariadb://u:Hunter2pw@h/d",
            "://u:Hunter2pw@h/d?a=b",
            "sqlite://u:Hunter2pw@h/d",
            // A malformed key-value string puts a piece of the password in a key.
            "host=h user=u password=my Hunter2pw",
            "host=h user=u password=x Hunter2pw=1",
            "host=h user=u password=x 'Hunter2pw",
            "host=h user=u sslmode=Hunter2pw",
            "postgres://u@h/d?Hunter2pw=1",
            "postgres://u@h/d?Hunter2pw",
            "postgres://u:Hunter2pw@h/d?port=Hunter2pw",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(!err.to_string().contains("Hunter2pw"), "{err}");
            assert!(!format!("{err:?}").contains("Hunter2pw"), "{err:?}");
        }
        let ok = parse("postgres://u:Hunter2pw@h/d").expect("valid");
        assert!(!format!("{:?}", ok.pg).contains("Hunter2pw"));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let text = |s: &str| parse(s).expect_err(s).to_string();
        let e = text("mysql://:pw@/");
        assert!(
            e.contains("a `mysql://` URL is not a PostgreSQL connection string"),
            "{e}"
        );
        let e = text("postgres://u@h/d?conect_timeout=3");
        assert!(e.contains("did you mean `connect_timeout`?"), "{e}");
        let e = text("postgres://u@h/d?port=x");
        assert!(e.contains("invalid value for option `port`"), "{e}");
        let e = text("host=h user=u sslmode=requir");
        assert!(e.contains("did you mean `require`?"), "{e}");
        let e = text("host=h user=u password=two words");
        assert!(e.contains("must be quoted"), "{e}");
        assert!(!e.contains("words"), "{e}");
    }

    #[test]
    fn a_valid_string_still_parses_after_the_foreign_url_check() {
        let ok = parse("host=h user=u password=Hunter2pw").expect("valid");
        assert!(!format!("{:?}", ok.pg).contains("Hunter2pw"));
    }
}
