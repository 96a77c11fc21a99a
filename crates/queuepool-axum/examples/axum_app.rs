//! The pool in your own axum app: a `Db` argument lends each request one pooled
//! PostgreSQL connection (the FastAPI tutorial's `get_db` dependency), returned when the
//! handler ends, panics or the client goes away. `/pool`, `/metrics` and `/dashboard`
//! come from this crate too.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p queuepool-axum --example axum_app
//! curl -X POST localhost:3000/notes -H 'content-type: application/json' -d '{"text":"hello"}'
//! curl localhost:3000/notes/1
//! curl localhost:3000/pool
//! ```
//!
//! `BIND` changes the address (default `127.0.0.1:3000`).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use queuepool::{Pool, PoolConfig, Preset};
use queuepool_axum::{Db, DbError, json_error, pool_routes};
use queuepool_postgres::PgManager;
use serde_json::{Value, json};

type Pg = PgManager;

/// `POST /notes {"text": ...}`: 201 with the new note.
async fn create_note(
    mut db: Db<Pg>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), DbError> {
    let text = body["text"].as_str().unwrap_or_default().to_owned();
    let row = db
        .query_one(
            "INSERT INTO notes (text) VALUES ($1) RETURNING id",
            &[&text],
        )
        .await
        // Tells the pool about a disconnect, and maps the error to a safe 5xx.
        .map_err(|e| Db::error(&mut db, e.into()))?;
    let id: i64 = row.get(0);
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "text": text }))))
}

/// `GET /notes/{id}`: the note, or 404.
async fn get_note(mut db: Db<Pg>, Path(id): Path<i64>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match db
        .query_opt("SELECT text FROM notes WHERE id = $1", &[&id])
        .await
    {
        Ok(Some(row)) => Json(json!({ "id": id, "text": row.get::<_, String>(0) })).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "not_found", format!("no note {id}")),
        Err(e) => Db::error(&mut db, e.into()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());

    // Opens pool_size connections now: fails fast if the database is down.
    let config = PoolConfig::builder()
        .preset(Preset::Dev)
        .name("notes")
        .build()?;
    let pool = Pool::new(PgManager::from_url(&url)?, config).await?;
    pool.get()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, text text NOT NULL)",
        )
        .await?;

    let app = Router::new()
        .route("/notes", post(create_note))
        .route("/notes/{id}", get(get_note))
        // GET /pool (status as JSON); no Prometheus handle here, so no /metrics.
        .merge(pool_routes::<Pg, Pool<Pg>>(None))
        .merge(queuepool_axum::dashboard::routes::<Pg, Pool<Pg>>())
        .with_state(pool.clone());

    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!(
        "listening on http://{} (try /pool and /dashboard)",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Waits up to 5 s for borrowed connections, then closes every connection.
    pool.close(std::time::Duration::from_secs(5)).await;
    Ok(())
}
