//! The OpenAPI document served at `/openapi.json` and rendered by Swagger UI at `/docs`.

use utoipa::{OpenApi, ToSchema};

use super::error::ErrorBody;
use super::handlers::{self, HealthBody};
use crate::store::{FieldError, Item, ItemIn};

/// The service's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "queuepool items service",
        description = "The tutorial's FastAPI items service in Rust, on a queuepool \
            connection pool. Also served, outside this document: `GET /pool` (pool status \
            JSON), `GET /metrics` (Prometheus text) and `GET /dashboard` (live charts)."
    ),
    paths(
        handlers::health,
        health_live,
        health_ready,
        handlers::list_items,
        handlers::create_item,
        handlers::get_item,
        handlers::update_item,
        handlers::delete_item,
    ),
    components(schemas(Item, ItemIn, ErrorBody, FieldError, HealthBody, LiveBody, ReadyBody)),
    tags(
        (name = "items", description = "CRUD on the items table"),
        (name = "service", description = "Health"),
    )
)]
pub struct ApiDoc;

/// The body of `GET /health/live`.
#[derive(ToSchema)]
#[allow(dead_code)] // Schema only: the route is `queuepool_axum::live`.
pub struct LiveBody {
    /// Always `alive`.
    status: String,
}

/// The body of `GET /health/ready`.
#[derive(ToSchema)]
#[allow(dead_code)] // Schema only: the route is `queuepool_axum::ready`.
pub struct ReadyBody {
    /// Always `ready` (not ready is a 503 with an error body).
    status: String,
    /// The pool's status line.
    pool: String,
}

/// Liveness: the process answers; the database is not consulted.
#[utoipa::path(get, path = "/health/live", tag = "service",
    responses((status = 200, description = "The process is up", body = LiveBody)))]
#[allow(dead_code)] // Documentation only: served by `queuepool_axum::health_routes`.
fn health_live() {}

/// Readiness: the pool lends a connection within 0.9 s.
#[utoipa::path(get, path = "/health/ready", tag = "service",
    responses(
        (status = 200, description = "The pool lent a connection", body = ReadyBody),
        (status = 503, description = "No connection within 0.9 s (`not_ready`), database unavailable, pool exhausted (`pool_timeout`), or shutting down; take the instance out of rotation", body = ErrorBody),
    ))]
#[allow(dead_code)] // Documentation only: served by `queuepool_axum::health_routes`.
fn health_ready() {}
