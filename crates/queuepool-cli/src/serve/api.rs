//! The OpenAPI document served at `/openapi.json` and rendered by Swagger UI at `/docs`.

use utoipa::OpenApi;

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
            JSON) and `GET /metrics` (Prometheus text)."
    ),
    paths(
        handlers::health,
        handlers::list_items,
        handlers::create_item,
        handlers::get_item,
        handlers::update_item,
        handlers::delete_item,
    ),
    components(schemas(Item, ItemIn, ErrorBody, FieldError, HealthBody)),
    tags(
        (name = "items", description = "CRUD on the items table"),
        (name = "service", description = "Health"),
    )
)]
pub struct ApiDoc;
