//! The request handlers, generic over the backend's [`Store`].
//!
//! Handlers with a body check the connection out only after the body is read and
//! validated: a slow client uploading a body does not hold a pooled connection, and an
//! invalid request never touches the database.
//!
//! The reads (`GET /health`, `GET /items`, `GET /items/{id}`) run their query through
//! `retry::read` (or `reads::read`), which runs it again on another connection while
//! its connection is lost (bounded); the writes run theirs once (a write whose
//! connection died may have committed).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use queuepool::Pool;
use queuepool_axum::{Db, DbRead, ReadAfter};
use serde::Serialize;
use utoipa::ToSchema;

use super::QUERY_GRACE;
use super::error::{AppError, ErrorBody};
use super::extract::{ItemBody, ItemId, PageQuery, QueryLimit};
use super::reads::{self, ReadsOf};
use super::retry::{self, Find, List, Ping, max_retries};
use crate::store::{Item, ItemIn, ListParams, Store};

/// The body of `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// Always `ok` (an unavailable database is a 503 with an error body).
    pub status: &'static str,
    /// `postgres`, `mysql` or `sqlite`.
    pub database: &'static str,
}

/// The result of a store query run under `tokio::time::timeout(limit + QUERY_GRACE)`:
/// a timeout, the backend's own (PostgreSQL) or the handler's (any backend), discards
/// the connection and is a 503 `query_timeout`; another error is reported to the pool
/// ([`Db::error`]).
pub(super) fn finish<M: Store, T>(
    outcome: Result<Result<T, M::Error>, tokio::time::error::Elapsed>,
    db: &mut Db<M>,
    limit: Duration,
) -> Result<T, AppError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) if M::is_query_timeout(&error) => {
            Db::invalidate(db);
            Err(AppError::QueryTimeout(limit))
        }
        Ok(Err(error)) => Err(Db::error(db, error).into()),
        Err(_) => {
            // The query was dropped part-way: its reply may still come on this stream.
            Db::invalidate(db);
            Err(AppError::QueryTimeout(limit))
        }
    }
}

/// `tokio::time::timeout` for a store query given `limit`.
pub(super) async fn bounded<F: std::future::Future>(
    limit: Duration,
    query: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(limit + QUERY_GRACE, query).await
}

fn not_found(id: i64) -> AppError {
    AppError::NotFound(format!("item {id} not found"))
}

/// Runs `SELECT 1` on a pooled connection.
#[utoipa::path(get, path = "/health", tag = "service",
    responses(
        (status = 200, description = "The database answered", body = HealthBody),
        (status = 500, description = "Any other database error (`internal_error`); details only in the log", body = ErrorBody),
        (status = 503, description = "Database unavailable (with `Retry-After`), pool exhausted (`pool_timeout`, with `Retry-After`), no answer within query_timeout or the request timeout, or shutting down", body = ErrorBody),
    ))]
pub async fn health<M: Store>(
    QueryLimit(limit): QueryLimit,
    State(pool): State<Pool<M>>,
    db: Db<M>,
) -> Result<Json<HealthBody>, AppError> {
    retry::read(&pool, db, Ping, limit).await?;
    Ok(Json(HealthBody {
        status: "ok",
        database: M::BACKEND.name(),
    }))
}

/// Lists items by id.
#[utoipa::path(get, path = "/items", tag = "items", params(ListParams,
        ("x-read-after" = Option<String>, Header, description = "The x-read-after value of this client's last write: the read then sees that write (with --read-url; ignored otherwise)")),
    responses(
        (status = 200, description = "One page of items", body = [Item]),
        (status = 422, description = "Invalid limit or offset, each listed in `fields`", body = ErrorBody),
        (status = 500, description = "Any other database error (`internal_error`); details only in the log", body = ErrorBody),
        (status = 503, description = "Database unavailable (with `Retry-After`), pool exhausted (`pool_timeout`, with `Retry-After`), no answer within query_timeout or the request timeout, or shutting down", body = ErrorBody),
    ))]
pub async fn list_items<M: Store>(
    PageQuery(page): PageQuery,
    QueryLimit(limit): QueryLimit,
    State(pool): State<Pool<M>>,
    ReadsOf(reads): ReadsOf<M>,
    ReadAfter(after): ReadAfter,
) -> Result<Json<Vec<Item>>, AppError> {
    let db = DbRead::checkout(&reads, after.as_deref()).await?;
    let items = reads::read(db, List(page), limit, max_retries(&pool)).await?;
    Ok(Json(items))
}

/// Creates an item.
#[utoipa::path(post, path = "/items", tag = "items", request_body = ItemIn,
    responses(
        (status = 201, description = "Created; `Location` is its URL", body = Item,
            headers(("Location" = String, description = "/items/{id}"),
                ("x-read-after" = String, description = "Read-your-writes token (with --read-url): send it back on reads"))),
        (status = 400, description = "The body is not valid JSON (`invalid_json`)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "No `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid fields (or a non-integer `id`), each listed in `fields`; nothing was written", body = ErrorBody),
        (status = 500, description = "Any other database error (`internal_error`); details only in the log", body = ErrorBody),
        (status = 503, description = "Database unavailable (with `Retry-After`), pool exhausted (`pool_timeout`, with `Retry-After`), no answer within query_timeout or the request timeout, or shutting down", body = ErrorBody),
    ))]
pub async fn create_item<M: Store>(
    QueryLimit(limit): QueryLimit,
    State(pool): State<Pool<M>>,
    ReadsOf(reads): ReadsOf<M>,
    ItemBody(new): ItemBody,
) -> Result<Response, AppError> {
    let mut db = Db::checkout(&pool).await?;
    let item = finish(
        bounded(limit, M::insert(&mut db, new, limit)).await,
        &mut db,
        limit,
    )?;
    let location = format!("/items/{}", item.id);
    let response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(item),
    )
        .into_response();
    Ok(reads::with_token(&reads, &mut db, limit, response).await)
}

/// Reads one item.
#[utoipa::path(get, path = "/items/{id}", tag = "items",
    params(("id" = i64, Path, description = "Item id"),
        ("x-read-after" = Option<String>, Header, description = "The x-read-after value of this client's last write: the read then sees that write (with --read-url; ignored otherwise)")),
    responses(
        (status = 200, description = "The item", body = Item),
        (status = 404, description = "No such item", body = ErrorBody),
        (status = 422, description = "`id` is not a whole number", body = ErrorBody),
        (status = 500, description = "Any other database error (`internal_error`); details only in the log", body = ErrorBody),
        (status = 503, description = "Database unavailable (with `Retry-After`), pool exhausted (`pool_timeout`, with `Retry-After`), no answer within query_timeout or the request timeout, or shutting down", body = ErrorBody),
    ))]
pub async fn get_item<M: Store>(
    ItemId(id): ItemId,
    QueryLimit(limit): QueryLimit,
    State(pool): State<Pool<M>>,
    ReadsOf(reads): ReadsOf<M>,
    ReadAfter(after): ReadAfter,
) -> Result<Json<Item>, AppError> {
    let db = DbRead::checkout(&reads, after.as_deref()).await?;
    let item = reads::read(db, Find(id), limit, max_retries(&pool)).await?;
    item.map(Json).ok_or_else(|| not_found(id))
}

/// Replaces an item's name, description and price.
#[utoipa::path(put, path = "/items/{id}", tag = "items", request_body = ItemIn,
    params(("id" = i64, Path, description = "Item id")),
    responses(
        (status = 200, description = "The updated item", body = Item,
            headers(("x-read-after" = String, description = "Read-your-writes token (with --read-url): send it back on reads"))),
        (status = 404, description = "No such item", body = ErrorBody),
        (status = 400, description = "The body is not valid JSON (`invalid_json`)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "No `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid fields (or a non-integer `id`), each listed in `fields`; nothing was written", body = ErrorBody),
        (status = 500, description = "Any other database error (`internal_error`); details only in the log", body = ErrorBody),
        (status = 503, description = "Database unavailable (with `Retry-After`), pool exhausted (`pool_timeout`, with `Retry-After`), no answer within query_timeout or the request timeout, or shutting down", body = ErrorBody),
    ))]
pub async fn update_item<M: Store>(
    ItemId(id): ItemId,
    QueryLimit(limit): QueryLimit,
    State(pool): State<Pool<M>>,
    ReadsOf(reads): ReadsOf<M>,
    ItemBody(new): ItemBody,
) -> Result<Response, AppError> {
    let mut db = Db::checkout(&pool).await?;
    let item = finish(
        bounded(limit, M::update(&mut db, id, new, limit)).await,
        &mut db,
        limit,
    )?;
    let item = item.ok_or_else(|| not_found(id))?;
    Ok(reads::with_token(&reads, &mut db, limit, Json(item).into_response()).await)
}

/// Deletes an item.
#[utoipa::path(delete, path = "/items/{id}", tag = "items",
    params(("id" = i64, Path, description = "Item id")),
    responses(
        (status = 204, description = "Deleted", headers(("x-read-after" = String, description = "Read-your-writes token (with --read-url): send it back on reads"))),
        (status = 404, description = "No such item", body = ErrorBody),
        (status = 422, description = "`id` is not a whole number", body = ErrorBody),
        (status = 500, description = "Any other database error (`internal_error`); details only in the log", body = ErrorBody),
        (status = 503, description = "Database unavailable (with `Retry-After`), pool exhausted (`pool_timeout`, with `Retry-After`), no answer within query_timeout or the request timeout, or shutting down", body = ErrorBody),
    ))]
pub async fn delete_item<M: Store>(
    ItemId(id): ItemId,
    QueryLimit(limit): QueryLimit,
    ReadsOf(reads): ReadsOf<M>,
    mut db: Db<M>,
) -> Result<Response, AppError> {
    let deleted = finish(
        bounded(limit, M::delete(&mut db, id, limit)).await,
        &mut db,
        limit,
    )?;
    if !deleted {
        return Err(not_found(id));
    }
    Ok(reads::with_token(
        &reads,
        &mut db,
        limit,
        StatusCode::NO_CONTENT.into_response(),
    )
    .await)
}

/// Any other path: a JSON 404.
pub async fn fallback() -> AppError {
    AppError::NotFound("no such route; see /docs".to_owned())
}

/// A known path with another method: a JSON 405.
pub async fn method_not_allowed() -> AppError {
    AppError::Client {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "method not allowed on this route; see /docs".to_owned(),
    }
}
