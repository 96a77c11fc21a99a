//! [`AppError`]: every error of the service mapped to a status code in one place.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use queuepool_axum::{DbError, json_error};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::FieldError;

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code: `not_found`, `validation_error`, `invalid_json`,
    /// `unsupported_media_type`, `payload_too_large`, `pool_timeout`,
    /// `database_unavailable`, `query_timeout`, `request_timeout`, `shutting_down`,
    /// `internal_error`.
    pub error: String,
    /// Human-readable, safe to show.
    pub message: String,
    /// For `validation_error`: each invalid field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
}

/// An error of a request handler.
#[derive(Debug)]
pub enum AppError {
    /// Pool or database error: 503 or 500 (see [`DbError`]).
    Db(DbError),
    /// 404: no such item or route.
    NotFound(String),
    /// 422: these fields are invalid; nothing was written.
    Validation(Vec<FieldError>),
    /// 503 `query_timeout`: a database query ran past `query_timeout` (a silent network
    /// path, a frozen server, a lock); its connection was discarded.
    QueryTimeout(Duration),
    /// 503 `request_timeout`: the whole request ran past its backstop bound
    /// ([`Timeouts::request`](super::Timeouts::request)).
    RequestTimeout(Duration),
    /// Another client error (bad JSON, wrong content type, body too large).
    Client {
        /// 4xx status.
        status: StatusCode,
        /// Machine-readable code.
        code: &'static str,
        /// Safe message.
        message: String,
    },
}

impl From<DbError> for AppError {
    fn from(error: DbError) -> Self {
        AppError::Db(error)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Db(error) => error.into_response(),
            AppError::QueryTimeout(limit) => {
                tracing::warn!(
                    "a database query ran past query_timeout ({:.1} s); its connection is \
                     discarded",
                    limit.as_secs_f64()
                );
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "query_timeout",
                    format!(
                        "the database did not answer within {:.1} s (query_timeout); try again",
                        limit.as_secs_f64()
                    ),
                )
            }
            AppError::RequestTimeout(limit) => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "the request did not complete within {:.1} s; try again",
                    limit.as_secs_f64()
                ),
            ),
            AppError::NotFound(message) => json_error(StatusCode::NOT_FOUND, "not_found", message),
            AppError::Validation(fields) => {
                let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
                let body = ErrorBody {
                    error: "validation_error".to_owned(),
                    message: format!("invalid {}", names.join(", ")),
                    fields: Some(fields),
                };
                (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
            }
            AppError::Client {
                status,
                code,
                message,
            } => json_error(status, code, message),
        }
    }
}
