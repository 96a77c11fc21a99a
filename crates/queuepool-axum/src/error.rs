//! [`DbError`]: pool and driver errors turned into HTTP responses in one place.

use std::error::Error as StdError;
use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use queuepool::PoolError;

/// A boxed driver error.
type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The `Retry-After` value, in seconds, sent with a pool timeout and an unavailable
/// database.
///
/// The pool was saturated for a whole `pool_timeout`, or the database refused or lost
/// the connection; one second lets a burst drain or a restart finish without making a
/// well-behaved client wait as long as the timeout itself.
pub const RETRY_AFTER_SECS: u32 = 1;

/// A database error as the HTTP layer sees it.
///
/// [`IntoResponse`] maps it to a status code and a JSON body
/// `{"error": "<code>", "message": "<safe text>"}`:
///
/// | error | status | `error` code |
/// |---|---|---|
/// | pool limit reached for `pool_timeout` | 503 + `Retry-After` | `pool_timeout` |
/// | database unreachable, connection lost | 503 + `Retry-After` | `database_unavailable` |
/// | pool closed (shutting down) | 503 | `shutting_down` |
/// | any other driver error | 500 | `internal_error` |
///
/// The client never sees the driver's message (it can hold SQL, table names or a
/// server address); the full error chain is logged through `tracing` instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The pool could not lend a connection.
    #[error("could not check out a database connection")]
    Pool(#[source] PoolError),
    /// A query failed because the connection or the server is gone.
    #[error("the database connection was lost")]
    Disconnected(#[source] BoxError),
    /// A query failed for another reason (constraint, syntax, type...).
    #[error("database query failed")]
    Query(#[source] BoxError),
    /// The request's `x-read-after` header is not a read-your-writes token
    /// ([`DbRead`](crate::DbRead)).
    #[error("the x-read-after header is not a read-your-writes token")]
    InvalidReadAfter,
}

impl From<PoolError> for DbError {
    fn from(error: PoolError) -> Self {
        DbError::Pool(error)
    }
}

impl DbError {
    /// Classifies a driver error: `disconnect` (from
    /// [`Manager::is_disconnect`](queuepool::Manager::is_disconnect)) gives a 503, anything
    /// else a 500. Prefer [`Db::error`](crate::Db::error), which also tells the pool.
    pub fn driver<E>(error: E, disconnect: bool) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        if disconnect {
            DbError::Disconnected(Box::new(error))
        } else {
            DbError::Query(Box::new(error))
        }
    }

    /// The status code this error maps to.
    pub fn status(&self) -> StatusCode {
        match self {
            DbError::Query(_) => StatusCode::INTERNAL_SERVER_ERROR,
            DbError::InvalidReadAfter => StatusCode::UNPROCESSABLE_ENTITY,
            DbError::Pool(_) | DbError::Disconnected(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable, machine-readable `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            DbError::Pool(e) if e.is_timeout() => "pool_timeout",
            DbError::Pool(e) if e.is_closed() => "shutting_down",
            DbError::Pool(_) | DbError::Disconnected(_) => "database_unavailable",
            DbError::Query(_) => "internal_error",
            DbError::InvalidReadAfter => "invalid_read_after",
        }
    }

    fn client_message(&self) -> &'static str {
        match self.code() {
            "pool_timeout" => {
                "All database connections are busy and none became free in time; retry later."
            }
            "shutting_down" => "The service is shutting down; retry later.",
            "database_unavailable" => "The database is unavailable; retry later.",
            "invalid_read_after" => {
                "The x-read-after header is not a token this service issued: send back the \
                 x-read-after value of your last write's response, or no header."
            }
            _ => "Internal error while talking to the database.",
        }
    }
}

/// The error and every `source()` below it, joined by `: `, for the logs.
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let _ = write!(text, ": {cause}");
        next = cause.source();
    }
    text
}

/// A JSON error response `{"error": code, "message": message}` with `status`.
///
/// The shape every error of a queuepool service uses; handlers' own errors (404, 422)
/// use it too so that clients parse one format.
pub fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": code, "message": message.into() });
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        let status = self.status();
        let details = chain(&self);
        // An unavailable database or a saturated pool is an operational condition
        // (warn); a failed query is a bug or a data problem (error).
        if matches!(self, DbError::Query(_)) {
            tracing::error!(target: "queuepool_axum", code = self.code(), "{details}");
        } else if matches!(self, DbError::InvalidReadAfter) {
            // The client's mistake, not the service's condition.
            tracing::debug!(target: "queuepool_axum", code = self.code(), "{details}");
        } else {
            tracing::warn!(target: "queuepool_axum", code = self.code(), "{details}");
        }
        let mut response = json_error(status, self.code(), self.client_message());
        if matches!(self.code(), "pool_timeout" | "database_unavailable") {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error("syntax error at or near \"SELEC\" in SELEC password FROM users")]
    struct SqlError;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn closed_pool_is_503_shutting_down_without_retry_after() {
        let response = DbError::from(PoolError::Closed).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(body(response).await["error"], "shutting_down");
    }

    #[tokio::test]
    async fn connect_timeout_is_503_database_unavailable() {
        let response =
            DbError::from(PoolError::ConnectTimeout(Duration::from_secs(10))).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body(response).await["error"], "database_unavailable");
    }

    #[tokio::test]
    async fn query_error_is_500_and_hides_the_sql() {
        let response = DbError::driver(SqlError, false).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let json = body(response).await;
        assert_eq!(json["error"], "internal_error");
        let text = json.to_string();
        assert!(!text.contains("SELEC"), "{text}");
        assert!(!text.contains("password"), "{text}");
    }

    #[tokio::test]
    async fn disconnect_error_is_503_with_retry_after() {
        let response = DbError::driver(SqlError, true).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body(response).await["error"], "database_unavailable");
    }

    #[test]
    fn chain_joins_sources_once() {
        let error = DbError::driver(SqlError, false);
        assert_eq!(
            chain(&error),
            "database query failed: syntax error at or near \"SELEC\" in SELEC password FROM users"
        );
    }
}
