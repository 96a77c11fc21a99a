//! axum's `Json`, `Query` and `Path` extractors with their rejections turned into
//! [`AppError`] JSON responses (axum's own are plain text), and [`QueryLimit`].

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::convert::Infallible;
use std::time::Duration;

use super::Timeouts;
use super::error::AppError;

/// A JSON request body; a malformed one is a JSON 4xx ([`AppError`]).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}

/// A query string; an unparsable one is a 422 naming the parameter.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(QueryParams(value))
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
        let Path(id) = Path::<i64>::from_request_parts(parts, state).await?;
        Ok(ItemId(id))
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
