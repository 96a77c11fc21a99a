//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the SQLite backend.
///
/// Each variant carries its whole cause in its message, with SQLite's extended result
/// code, and has no [`source`](std::error::Error::source) (rusqlite's own errors repeat
/// their cause in both); [`SqliteError::sqlite_error`] gives rusqlite's error back.
/// SQLite URLs carry no credentials, but a URL meant for another backend
/// (`postgres://user:pw@host/db`) can reach [`SqliteManager::from_url`](crate::SqliteManager::from_url):
/// [`SqliteError::InvalidUrl`] shows it with its userinfo and `password=` values
/// replaced by `***`, so nothing here prints a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The URL is not one of `sqlite://relative/path.db`, `sqlite:///abs/path.db` or
    /// `sqlite::memory:`.
    #[error("invalid SQLite URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given, with anything that may be a password replaced by `***`:
        /// everything between `scheme:` (or `scheme://`) and the last `@`, and the
        /// values of `password=` parameters.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The directory that should hold the database file does not exist. SQLite would
    /// only say "unable to open database file"; the pool does not create directories.
    #[error(
        "cannot open SQLite database `{}`: directory `{}` does not exist (create it first)",
        path.display(),
        dir.display()
    )]
    MissingDirectory {
        /// The database file.
        path: PathBuf,
        /// Its parent directory, which is missing.
        dir: PathBuf,
    },
    /// Opening or configuring a new connection failed.
    #[error("cannot open SQLite database `{target}`: {}", SqliteDisplay(.cause))]
    Open {
        /// The file path, or the in-memory database's URI.
        target: String,
        /// What SQLite said.
        cause: rusqlite::Error,
    },
    /// An error returned by SQLite while running an operation.
    #[error("{}", SqliteDisplay(.0))]
    Sqlite(rusqlite::Error),
    /// The connection is gone: an earlier [`interact`](crate::SqliteConnection::interact)
    /// on it was cancelled (its future dropped) or panicked while SQLite held it. The pool
    /// discards such a connection when it comes back.
    #[error(
        "the SQLite connection is no longer available: an earlier operation on it was \
         cancelled or panicked"
    )]
    ConnectionLost,
    /// The closure given to [`interact`](crate::SqliteConnection::interact) panicked; the
    /// connection it held is closed.
    #[error("SQLite operation panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// Tokio cancelled the blocking task (the runtime is shutting down).
    #[error("the blocking task running the SQLite operation was cancelled (runtime shutdown)")]
    Cancelled,
}

/// `url` with anything that may be a password replaced by `***`. Deliberately cruder
/// than a URL parser: drivers disagree on where userinfo ends (`postgres:///:pw@/`), so
/// everything between the scheme and the last `@` counts as userinfo.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = match url.rfind('@') {
        Some(at) => {
            let start = url
                .find("://")
                .map(|i| i + 3)
                .or_else(|| url.find(':').map(|i| i + 1))
                .filter(|&s| s <= at)
                .unwrap_or(0);
            format!("{}***{}", &url[..start], &url[at..])
        }
        None => url.to_owned(),
    };
    let mut from = 0;
    while let Some(found) = out[from..].to_ascii_lowercase().find("password=") {
        let value = from + found + "password=".len();
        let end = out[value..]
            .find(|c: char| c == '&' || c.is_whitespace())
            .map_or(out.len(), |e| value + e);
        out.replace_range(value..end, "***");
        from = value + 3;
    }
    out
}

impl SqliteError {
    /// rusqlite's error, if this is one (for its [`rusqlite::ErrorCode`]).
    pub fn sqlite_error(&self) -> Option<&rusqlite::Error> {
        match self {
            Self::Sqlite(e) | Self::Open { cause: e, .. } => Some(e),
            _ => None,
        }
    }

    /// SQLite's primary result code, if SQLite returned one (`DatabaseBusy`, ...).
    pub fn code(&self) -> Option<rusqlite::ErrorCode> {
        self.sqlite_error()
            .and_then(rusqlite::Error::sqlite_error_code)
    }
}

impl From<rusqlite::Error> for SqliteError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

/// rusqlite's message, followed by the extended result code when SQLite gave one.
struct SqliteDisplay<'a>(&'a rusqlite::Error);

impl std::fmt::Display for SqliteDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            rusqlite::Error::SqliteFailure(e, Some(message)) => {
                write!(f, "{message} (SQLite code {})", e.extended_code)
            }
            other => write!(f, "{other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_userinfo_up_to_the_last_at_and_password_parameters() {
        for (url, shown) in [
            ("postgres://u:pw@h/db", "postgres://***@h/db"),
            ("postgres:///:pw@/db", "postgres://***@/db"),
            ("postgres://?:pw@/?", "postgres://***@/?"),
            ("mysql://u:p@ss@h/db", "mysql://***@h/db"),
            ("sqlite:u:pw@h", "sqlite:***@h"),
            ("host=h password=pw user=u", "host=h password=*** user=u"),
            (
                "sqlite://a.db?PASSWORD=pw&x=1",
                "sqlite://a.db?PASSWORD=***&x=1",
            ),
            ("sqlite://a.db?mode=ro", "sqlite://a.db?mode=ro"),
            ("é@:pw", "***@:pw"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
