//! The items table on MySQL / MariaDB. Statements go through mysql_async's
//! per-connection prepared statement cache. mysql_async has no client-side query
//! timeout: `query_timeout` is enforced by the handlers (see [`Store`]), which drop the
//! query and discard its connection.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use mysql_async::Value;
use mysql_async::prelude::Queryable;
use queuepool_mysql::{MySqlConnection, MySqlError, MySqlManager};

use super::{Backend, Item, NewItem, Page, Store};

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS items (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(200) NOT NULL CHECK (CHAR_LENGTH(name) >= 1),
    description TEXT NULL,
    price DOUBLE NOT NULL CHECK (price >= 0),
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) CHARACTER SET utf8mb4";

const COLUMNS: &str = "id, name, description, price, created_at";

type Row = (i64, String, Option<String>, f64, Value);

/// `DATETIME(6)` holds no time zone: the service stores UTC.
fn to_value(t: &DateTime<Utc>) -> Value {
    Value::Date(
        u16::try_from(t.year()).unwrap_or(0),
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        t.timestamp_subsec_micros(),
    )
}

fn from_value(value: &Value) -> Result<DateTime<Utc>, MySqlError> {
    if let Value::Date(y, mo, d, h, mi, s, us) = *value {
        let naive = NaiveDate::from_ymd_opt(i32::from(y), u32::from(mo), u32::from(d))
            .and_then(|date| date.and_hms_micro_opt(u32::from(h), u32::from(mi), u32::from(s), us));
        if let Some(naive) = naive {
            return Ok(naive.and_utc());
        }
    }
    Err(MySqlError::from(mysql_async::Error::Other(
        format!("created_at is not a valid DATETIME: {value:?}").into(),
    )))
}

fn item((id, name, description, price, created): Row) -> Result<Item, MySqlError> {
    Ok(Item {
        id,
        name,
        description,
        price,
        created_at: from_value(&created)?,
    })
}

impl Store for MySqlManager {
    const BACKEND: Backend = Backend::MySql;

    fn open(url: &str) -> Result<Self, MySqlError> {
        MySqlManager::from_url(url)
    }

    async fn migrate(conn: &mut MySqlConnection) -> Result<(), MySqlError> {
        conn.query_drop(CREATE_TABLE).await?;
        Ok(())
    }

    async fn ping(conn: &mut MySqlConnection, _limit: Duration) -> Result<(), MySqlError> {
        conn.query_drop("SELECT 1").await?;
        Ok(())
    }

    async fn list(
        conn: &mut MySqlConnection,
        page: Page,
        _limit: Duration,
    ) -> Result<Vec<Item>, MySqlError> {
        let sql = format!("SELECT {COLUMNS} FROM items ORDER BY id LIMIT ? OFFSET ?");
        let rows: Vec<Row> = conn.exec(sql, (page.limit, page.offset)).await?;
        rows.into_iter().map(item).collect()
    }

    async fn find(
        conn: &mut MySqlConnection,
        id: i64,
        _limit: Duration,
    ) -> Result<Option<Item>, MySqlError> {
        let sql = format!("SELECT {COLUMNS} FROM items WHERE id = ?");
        let row: Option<Row> = conn.exec_first(sql, (id,)).await?;
        row.map(item).transpose()
    }

    async fn insert(
        conn: &mut MySqlConnection,
        new: NewItem,
        _limit: Duration,
    ) -> Result<Item, MySqlError> {
        conn.exec_drop(
            "INSERT INTO items (name, description, price, created_at) VALUES (?, ?, ?, ?)",
            (
                new.name.as_str(),
                new.description.as_deref(),
                new.price,
                to_value(&new.created_at),
            ),
        )
        .await?;
        let id = conn.last_insert_id().ok_or_else(|| {
            MySqlError::from(mysql_async::Error::Other(
                "INSERT did not report the new id".into(),
            ))
        })?;
        let id = i64::try_from(id).map_err(|_| {
            MySqlError::from(mysql_async::Error::Other(
                format!("new id {id} does not fit in BIGINT").into(),
            ))
        })?;
        Ok(Item {
            id,
            name: new.name,
            description: new.description,
            price: new.price,
            created_at: new.created_at,
        })
    }

    async fn update(
        conn: &mut MySqlConnection,
        id: i64,
        new: NewItem,
        limit: Duration,
    ) -> Result<Option<Item>, MySqlError> {
        // MySQL has no UPDATE ... RETURNING; the row is read back on the same connection.
        conn.exec_drop(
            "UPDATE items SET name = ?, description = ?, price = ? WHERE id = ?",
            (new.name.as_str(), new.description.as_deref(), new.price, id),
        )
        .await?;
        Self::find(conn, id, limit).await
    }

    async fn delete(
        conn: &mut MySqlConnection,
        id: i64,
        _limit: Duration,
    ) -> Result<bool, MySqlError> {
        conn.exec_drop("DELETE FROM items WHERE id = ?", (id,))
            .await?;
        Ok(conn.affected_rows() > 0)
    }
}
