//! Connection strings: libpq URLs and key-value strings, with the TLS modes that
//! tokio-postgres does not parse itself (`verify-ca`, `verify-full`, `sslrootcert`).

use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::percent_decode_str;

use crate::error::{PgError, chain_text};

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
                return Err(PgError::Config(format!(
                    "unknown sslmode `{other}` (expected disable, allow, prefer, require, verify-ca or verify-full)"
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
}

/// Parses a `postgres://` / `postgresql://` URL or a libpq key-value string.
pub(crate) fn parse(input: &str) -> Result<Parsed, PgError> {
    let trimmed = input.trim();
    let is_url = trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://");
    let (rest, ours) = if is_url {
        split_url(trimmed)?
    } else {
        split_key_value(trimmed)?
    };

    let mut pg =
        tokio_postgres::Config::from_str(&rest).map_err(|e| PgError::Config(chain_text(&e)))?;

    let mut ssl_mode = SslMode::Prefer;
    let mut root_certs = RootCerts::System;
    let mut explicit_root = false;
    let mut explicit_mode = false;
    for (key, value) in ours {
        match key.as_str() {
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
    })
}

/// Keys this crate handles itself; everything else goes to tokio-postgres.
fn is_ours(key: &str) -> bool {
    matches!(
        key,
        "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "sslpassword"
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
                "expected `=` after `{key}` in the connection string"
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
                    "unterminated quoted value for `{key}` in the connection string"
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::{Host, TargetSessionAttrs};

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
            "host=a,b port=5432,5433 user=u password='it\\'s' dbname=d sslmode=verify-ca target_session_attrs=read-write",
        )
        .expect("valid");
        assert_eq!(
            p.pg.get_hosts(),
            &[Host::Tcp("a".into()), Host::Tcp("b".into())]
        );
        assert_eq!(p.pg.get_ports(), &[5432, 5433]);
        assert_eq!(p.pg.get_password(), Some(&b"it's"[..]));
        assert_eq!(
            p.pg.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        assert_eq!(p.ssl_mode, SslMode::VerifyCa);
        assert_eq!(p.root_certs, RootCerts::System);
    }

    #[test]
    fn default_ssl_mode_is_prefer_and_bad_modes_are_named() {
        assert_eq!(
            parse("postgres://u@h/d").expect("valid").ssl_mode,
            SslMode::Prefer
        );
        let err = parse("postgres://u@h/d?sslmode=verify").expect_err("invalid");
        assert!(
            err.to_string().contains("unknown sslmode `verify`"),
            "{err}"
        );
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
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(!err.to_string().contains("Hunter2pw"), "{err}");
            assert!(!format!("{err:?}").contains("Hunter2pw"), "{err:?}");
        }
        let ok = parse("postgres://u:Hunter2pw@h/d").expect("valid");
        assert!(!format!("{:?}", ok.pg).contains("Hunter2pw"));
    }
}
