//! The service's extractors: the item body, the page query and the item id, each
//! checked field by field into [`AppError`] JSON responses (axum's own rejections are
//! plain text and quote Rust types), and [`QueryLimit`].

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;

use super::Timeouts;
use super::error::AppError;
use crate::store::{FieldError, ItemIn, NewItem, Page, parse_integer};

/// A validated item body (`POST /items`, `PUT /items/{id}`).
///
/// Checked in this order, each failure answered before the next check: the content
/// type (415), the size (413), JSON syntax (400 `invalid_json`), then every field at
/// once (422 `validation_error`). A number too large for a double (`1e400`) is a field
/// error of that field, not a syntax error.
#[derive(Debug)]
pub struct ItemBody(pub NewItem);

/// Whether the request says its body is JSON (`application/json`, or
/// `application/<anything>+json`, parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a body as one JSON value.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, AppError> {
    let invalid = |inner: serde_json::Error| AppError::Client {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_json",
        message: format!("the body is not valid JSON: {inner}"),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: Value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // serde_json calls an out-of-range number a syntax error; for the client it is
        // a value its field cannot hold.
        if inner.to_string().starts_with("number out of range") {
            let field = if path == "." { "body".to_owned() } else { path };
            return AppError::Validation(vec![FieldError::new(
                field,
                "must be a number within the range of a double (about ±1.8e308)",
            )]);
        }
        invalid(inner)
    })?;
    deserializer.end().map_err(invalid)?;
    Ok(value)
}

impl<S> FromRequest<S> for ItemBody
where
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        if !is_json(req.headers()) {
            return Err(AppError::Client {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                message: "expected a body with `Content-Type: application/json`".to_owned(),
            });
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        let value = parse_json(&bytes)?;
        ItemIn::from_json(&value)
            .map(ItemBody)
            .map_err(AppError::Validation)
    }
}

fn body_rejection(rejection: BytesRejection) -> AppError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::Client {
            status,
            code: "payload_too_large",
            message: format!(
                "the request body is larger than {} bytes",
                super::BODY_LIMIT_BYTES
            ),
        }
    } else {
        AppError::Client {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: "the request body could not be read".to_owned(),
        }
    }
}

/// The validated `limit` and `offset` of `GET /items`; every bad one is a 422.
#[derive(Debug, Clone, Copy)]
pub struct PageQuery(pub Page);

impl<S> FromRequestParts<S> for PageQuery
where
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        Page::from_query(parts.uri.query())
            .map(PageQuery)
            .map_err(AppError::Validation)
    }
}

/// The `{id}` of `/items/{id}`; anything but an integer is a 422 naming `id`.
#[derive(Debug, Clone, Copy)]
pub struct ItemId(pub i64);

impl<S> FromRequestParts<S> for ItemId
where
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        // A `String` segment always extracts on the routes that have `{id}`.
        let Path(segment) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| AppError::NotFound("no such route; see /docs".to_owned()))?;
        parse_integer(&segment)
            .map(ItemId)
            .map_err(|message| AppError::Validation(vec![FieldError::new("id", message)]))
    }
}

/// The `query_timeout` of this request, from the [`Timeouts`] the router's layer put in
/// the request's extensions (the default outside that layer).
#[derive(Debug, Clone, Copy)]
pub struct QueryLimit(pub Duration);

impl<S> FromRequestParts<S> for QueryLimit
where
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let timeouts = parts
            .extensions
            .get::<Timeouts>()
            .copied()
            .unwrap_or_default();
        Ok(QueryLimit(timeouts.query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<Value, AppError>) -> Vec<String> {
        match result {
            Err(AppError::Validation(fields)) => fields.into_iter().map(|f| f.field).collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn out_of_range_number_is_a_field_error_and_bad_syntax_is_invalid_json() {
        assert_eq!(
            field_of(parse_json(br#"{"name": "x", "price": 1e400}"#)),
            ["price"]
        );
        assert_eq!(field_of(parse_json(b"-1e999")), ["body"]);
        match parse_json(br#"{"name": "#) {
            Err(AppError::Client { code, message, .. }) => {
                assert_eq!(code, "invalid_json");
                assert!(message.contains("line 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json(b"{} x"),
            Err(AppError::Client {
                code: "invalid_json",
                ..
            })
        ));
        assert_eq!(parse_json(b" {\"a\": 1} ").unwrap()["a"], 1);
    }

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/jsonx", false),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_json(&headers), json, "{value}");
        }
    }
}
