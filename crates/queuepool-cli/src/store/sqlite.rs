//! The items table on SQLite. Every statement runs on tokio's blocking pool through
//! [`SqliteConnection::interact`], with rusqlite's per-connection statement cache.
//! `query_timeout` is enforced by the handlers (see [`Store`]): an abandoned
//! `interact` loses its connection, which the pool then replaces.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use queuepool_sqlite::rusqlite::{self, OptionalExtension, params};
use queuepool_sqlite::{SqliteConnection, SqliteError, SqliteManager};

use super::{Backend, Item, NewItem, Page, Store};

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description TEXT,
    price REAL NOT NULL CHECK (price >= 0),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)";

const COLUMNS: &str = "id, name, description, price, created_at";

/// RFC 3339 in UTC with microseconds: sorts as text, parses back exactly.
fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn item(row: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let created: String = row.get(4)?;
    let created_at = DateTime::parse_from_rfc3339(&created)
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
        })?
        .with_timezone(&Utc);
    Ok(Item {
        id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        price: row.get(3)?,
        created_at,
    })
}

impl Store for SqliteManager {
    const BACKEND: Backend = Backend::Sqlite;

    fn open(url: &str) -> Result<Self, SqliteError> {
        SqliteManager::from_url(url)
    }

    async fn migrate(conn: &mut SqliteConnection) -> Result<(), SqliteError> {
        conn.interact(|c| c.execute_batch(CREATE_TABLE)).await
    }

    async fn ping(conn: &mut SqliteConnection, _limit: Duration) -> Result<(), SqliteError> {
        conn.interact(|c| {
            c.prepare_cached("SELECT 1")?
                .query_row([], |row| row.get::<_, i64>(0))
                .map(drop)
        })
        .await
    }

    async fn list(
        conn: &mut SqliteConnection,
        page: Page,
        _limit: Duration,
    ) -> Result<Vec<Item>, SqliteError> {
        conn.interact(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM items ORDER BY id LIMIT ?1 OFFSET ?2"
            ))?;
            let rows = stmt.query_map(params![page.limit, page.offset], item)?;
            rows.collect()
        })
        .await
    }

    async fn find(
        conn: &mut SqliteConnection,
        id: i64,
        _limit: Duration,
    ) -> Result<Option<Item>, SqliteError> {
        conn.interact(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM items WHERE id = ?1"))?
                .query_row(params![id], item)
                .optional()
        })
        .await
    }

    async fn insert(
        conn: &mut SqliteConnection,
        new: NewItem,
        _limit: Duration,
    ) -> Result<Item, SqliteError> {
        conn.interact(move |c| {
            c.prepare_cached(
                "INSERT INTO items (name, description, price, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                new.name,
                new.description,
                new.price,
                timestamp(&new.created_at)
            ])?;
            Ok(Item {
                id: c.last_insert_rowid(),
                name: new.name,
                description: new.description,
                price: new.price,
                created_at: new.created_at,
            })
        })
        .await
    }

    async fn update(
        conn: &mut SqliteConnection,
        id: i64,
        new: NewItem,
        _limit: Duration,
    ) -> Result<Option<Item>, SqliteError> {
        conn.interact(move |c| {
            c.prepare_cached(&format!(
                "UPDATE items SET name = ?1, description = ?2, price = ?3 WHERE id = ?4 \
                 RETURNING {COLUMNS}"
            ))?
            .query_row(params![new.name, new.description, new.price, id], item)
            .optional()
        })
        .await
    }

    async fn delete(
        conn: &mut SqliteConnection,
        id: i64,
        _limit: Duration,
    ) -> Result<bool, SqliteError> {
        conn.interact(move |c| {
            let deleted = c
                .prepare_cached("DELETE FROM items WHERE id = ?1")?
                .execute(params![id])?;
            Ok(deleted > 0)
        })
        .await
    }
}
