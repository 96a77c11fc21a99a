//! Database URLs as the service and the tools read them, before a backend crate parses
//! them: which backend a URL selects ([`Backend::from_url`]), whether its userinfo is
//! ambiguous ([`check_url`]), and how to show it without its password
//! ([`redact_url`]). The pool itself never looks at a URL; these live here so that the
//! service, the tools and the reliability suite share one reading.

use std::fmt;

/// The database a URL selects, by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `postgres://`, `postgresql://` or a libpq `key=value` string.
    Postgres,
    /// `mysql://` or `mariadb://`.
    MySql,
    /// `sqlite://path`, `sqlite:///abs/path` or `sqlite::memory:`.
    Sqlite,
}

impl Backend {
    /// The backend a database URL selects, or `None` for an unknown scheme.
    ///
    /// ```
    /// use queuepool::url::Backend;
    /// assert_eq!(Backend::from_url("postgresql://db/shop"), Some(Backend::Postgres));
    /// assert_eq!(Backend::from_url("host=db dbname=shop"), Some(Backend::Postgres));
    /// assert_eq!(Backend::from_url("MariaDB://db/shop"), Some(Backend::MySql));
    /// assert_eq!(Backend::from_url("sqlite::memory:"), Some(Backend::Sqlite));
    /// assert_eq!(Backend::from_url("redis://db/0"), None);
    /// ```
    pub fn from_url(url: &str) -> Option<Backend> {
        let lower = url.trim_start().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            Some(Backend::MySql)
        } else if lower.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if !lower.contains("://") && lower.contains('=') {
            // libpq's key-value form: `host=db user=app dbname=shop`.
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// Lower-case name, as in logs, reports and `/health`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
            Backend::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why [`check_url`] refuses a URL. The messages never quote the URL: any part of it
/// may be a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The scheme is not one of a backend's.
    #[error(
        "unsupported database URL{}: expected postgres://, postgresql://, mysql://, mariadb:// \
         or sqlite://",
        scheme.as_ref().map(|s| format!(" scheme {s:?}")).unwrap_or_default()
    )]
    UnsupportedScheme {
        /// The scheme, when it is plainly one (letters, digits, `+-.`, at most 16).
        scheme: Option<String>,
    },
    /// More than one `@` before the host: the drivers disagree on where the password
    /// ends (tokio-postgres at the first `@`, the url crate at the last), so the one
    /// would connect to a host made of the password's tail and name it in its error.
    #[error(
        "the database URL has more than one `@` before the host (not shown): percent-encode \
         `@` in the user name or password as %40"
    )]
    AmbiguousUserinfo,
}

/// The backend of `url`, refusing a URL that the service or the tools would read
/// differently from the driver: an unknown scheme, or more than one `@` in the
/// authority (`postgres://user:p@ss@host/db`; write `p%40ss`).
///
/// ```
/// use queuepool::url::{Backend, UrlError, check_url};
/// assert_eq!(check_url("postgres://u:p%40ss@h/db"), Ok(Backend::Postgres));
/// assert_eq!(check_url("postgres://u:p@ss@h/db"), Err(UrlError::AmbiguousUserinfo));
/// ```
pub fn check_url(url: &str) -> Result<Backend, UrlError> {
    let Some(backend) = Backend::from_url(url) else {
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.trim())
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 16
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            })
            .map(str::to_owned);
        return Err(UrlError::UnsupportedScheme { scheme });
    };
    if let (Backend::Postgres | Backend::MySql, Some((_, rest))) = (backend, url.split_once("://"))
    {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if rest[..authority_end].matches('@').count() > 1 {
            return Err(UrlError::AmbiguousUserinfo);
        }
    }
    Ok(backend)
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
///
/// ```
/// use queuepool::url::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db/shop"), "postgres://app:***@db/shop");
/// assert_eq!(redact_url("host=db password=s3cret"), "host=db password=***");
/// ```
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
    let decoded = percent_encoding::percent_decode_str(&key.replace('+', " "))
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    decoded.contains("password") || key.to_ascii_lowercase().contains("password")
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn passwords_are_redacted_in_userinfo_query_and_key_value_strings() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/shop?sslmode=require",
                "postgres://app:***@db:5432/shop?sslmode=require",
            ),
            (
                "postgres://db/shop?user=app&password=s3cret",
                "postgres://db/shop?user=app&password=***",
            ),
            (
                "postgres://db/shop?user=app&pass%77ord=s3cret",
                "postgres://db/shop?user=app&pass%77ord=***",
            ),
            (
                "mysql://root@127.0.0.1:3306/test",
                "mysql://root@127.0.0.1:3306/test",
            ),
            (
                "host=db user=app password=s3cret dbname=shop",
                "host=db user=app password=*** dbname=shop",
            ),
            (
                "host=db password = 'se cret\\'x' dbname=shop",
                "host=db password ='***' dbname=shop",
            ),
            (
                "host=db password=se\\ cret dbname=shop",
                "host=db password=*** dbname=shop",
            ),
            ("sqlite://queuepool.db", "sqlite://queuepool.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn check_url_refuses_two_at_signs_before_the_host_without_quoting_the_url() {
        let url = "postgres://postgres:S3c:ret@PW@127.0.0.1:5432/db";
        let error = check_url(url).unwrap_err();
        assert_eq!(error, UrlError::AmbiguousUserinfo);
        let message = error.to_string();
        for piece in ["S3c", "ret", "PW", "127.0.0.1"] {
            assert!(!message.contains(piece), "{message}");
        }
        assert!(message.contains("%40"), "{message}");
        assert_eq!(
            check_url("mysql://u:a@b@h/db"),
            Err(UrlError::AmbiguousUserinfo)
        );
        // One `@` in the authority, others in the query or path: one reading.
        for ok in [
            "postgres://postgres:S3c:ret%40PW@127.0.0.1:5432/db",
            "postgres://u:s3cret@h/d?application_name=a@b",
            "host=db password=a@b@c",
            "sqlite://a@b@c.db",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn check_url_names_a_plain_scheme_only() {
        assert_eq!(
            check_url("redis://u:s3cret@h/0"),
            Err(UrlError::UnsupportedScheme {
                scheme: Some("redis".into())
            })
        );
        let message = check_url("s3cret pw://x").unwrap_err().to_string();
        assert!(!message.contains("s3cret"), "{message}");
        assert_eq!(
            check_url("nonsense"),
            Err(UrlError::UnsupportedScheme { scheme: None })
        );
    }
}
