//! The items table: the model, its validation, and one [`Store`] implementation per
//! backend (the SQL differs, the HTTP layer does not).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use queuepool::Manager;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod input;
mod mysql;
mod postgres;
mod sqlite;

pub use input::{
    FieldError, ItemIn, LIST_MAX_LIMIT, ListParams, NAME_MAX_CHARS, NewItem, Page, parse_integer,
};

/// The database behind the service, chosen by the scheme of `DATABASE_URL`.
pub use queuepool::url::Backend;

/// A stored item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Item {
    /// Assigned by the database.
    #[schema(example = 1)]
    pub id: i64,
    /// 1 to 200 characters.
    #[schema(example = "Widget")]
    pub name: String,
    /// Free text, optional.
    #[schema(example = "A small widget")]
    pub description: Option<String>,
    /// Zero or more.
    #[schema(example = 9.99)]
    pub price: f64,
    /// When the item was created (UTC, microseconds).
    pub created_at: DateTime<Utc>,
}

/// The SQL of the service for one backend, on that backend's pooled connection.
///
/// Every method runs on a connection lent by the pool for one request; none keeps a
/// transaction open when it returns.
///
/// # Timeouts
/// Every method but [`Store::migrate`] is given `limit`, the service's
/// `query_timeout`. A backend that can bound a query itself does so and returns its own
/// timeout error, which [`Store::is_query_timeout`] recognises (PostgreSQL:
/// [`PgConnection::timeout`](queuepool_postgres::PgConnection::timeout), which also
/// sends a cancel request and marks the connection broken). The handlers also drop
/// any query still running shortly after `limit` and discard its connection, which is
/// the bound for MySQL and SQLite (their drivers have no client-side query timeout).
pub trait Store: Manager + Sized {
    /// Which backend this is.
    const BACKEND: Backend;

    /// Builds the manager from `DATABASE_URL`.
    fn open(url: &str) -> Result<Self, Self::Error>;

    /// Adapts the manager to the pool it serves (PostgreSQL: each host of a
    /// multi-host URL without `connect_timeout` gets a share of the pool's).
    fn for_pool(self, _config: &queuepool::PoolConfig) -> Self {
        self
    }

    /// Whether `error` is this backend's own query timeout (see [Timeouts](Store#timeouts)).
    fn is_query_timeout(_error: &Self::Error) -> bool {
        false
    }

    /// Creates the items table if it does not exist.
    fn migrate(conn: &mut Self::Connection)
    -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// `SELECT 1`.
    fn ping(
        conn: &mut Self::Connection,
        limit: Duration,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// One page of items, by id.
    fn list(
        conn: &mut Self::Connection,
        page: Page,
        limit: Duration,
    ) -> impl Future<Output = Result<Vec<Item>, Self::Error>> + Send;

    /// The item `id`, if it exists.
    fn find(
        conn: &mut Self::Connection,
        id: i64,
        limit: Duration,
    ) -> impl Future<Output = Result<Option<Item>, Self::Error>> + Send;

    /// Inserts an item and returns it with its id.
    fn insert(
        conn: &mut Self::Connection,
        item: NewItem,
        limit: Duration,
    ) -> impl Future<Output = Result<Item, Self::Error>> + Send;

    /// Replaces name, description and price of item `id` (keeps `created_at`); `None`
    /// if it does not exist.
    fn update(
        conn: &mut Self::Connection,
        id: i64,
        item: NewItem,
        limit: Duration,
    ) -> impl Future<Output = Result<Option<Item>, Self::Error>> + Send;

    /// Deletes item `id`; `false` if it did not exist.
    fn delete(
        conn: &mut Self::Connection,
        id: i64,
        limit: Duration,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_chosen_by_scheme() {
        assert_eq!(
            Backend::from_url("postgres://u@h/d"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::from_url("postgresql://h"), Some(Backend::Postgres));
        assert_eq!(Backend::from_url("host=h user=u"), Some(Backend::Postgres));
        assert_eq!(
            Backend::from_url("mysql://root@h/test"),
            Some(Backend::MySql)
        );
        assert_eq!(
            Backend::from_url("mariadb://root@h/test"),
            Some(Backend::MySql)
        );
        assert_eq!(
            Backend::from_url("sqlite://queuepool.db"),
            Some(Backend::Sqlite)
        );
        assert_eq!(Backend::from_url("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(Backend::from_url("redis://h"), None);
        assert_eq!(Backend::from_url("queuepool.db"), None);
    }
}
