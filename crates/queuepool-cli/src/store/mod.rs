//! The items table: the model, its validation, and one [`Store`] implementation per
//! backend (the SQL differs, the HTTP layer does not).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use queuepool::Manager;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

mod mysql;
mod postgres;
mod sqlite;

/// Longest item name, in characters.
pub const NAME_MAX_CHARS: usize = 200;
/// Largest page of `GET /items`.
pub const LIST_MAX_LIMIT: i64 = 100;

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

/// The body of `POST /items` and `PUT /items/{id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ItemIn {
    /// 1 to 200 characters.
    #[schema(example = "Widget", min_length = 1, max_length = 200)]
    pub name: String,
    /// Free text, optional.
    #[serde(default)]
    #[schema(example = "A small widget")]
    pub description: Option<String>,
    /// Zero or more.
    #[schema(example = 9.99, minimum = 0.0)]
    pub price: f64,
}

/// A field that failed validation, as listed in a 422 response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name (`name`, `price`, `limit`...).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validated item, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// 1 to 200 characters.
    pub name: String,
    /// Optional.
    pub description: Option<String>,
    /// Finite and >= 0.
    pub price: f64,
    /// Creation time, set by the service so that every backend stores the same value.
    pub created_at: DateTime<Utc>,
}

impl ItemIn {
    /// Checks every field; the error lists each invalid one.
    pub fn validate(self) -> Result<NewItem, Vec<FieldError>> {
        let mut errors = Vec::new();
        let chars = self.name.chars().count();
        if chars == 0 || chars > NAME_MAX_CHARS {
            errors.push(FieldError::new(
                "name",
                format!("must be 1 to {NAME_MAX_CHARS} characters long (got {chars})"),
            ));
        }
        if !self.price.is_finite() || self.price < 0.0 {
            errors.push(FieldError::new("price", "must be a number >= 0"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(NewItem {
            name: self.name,
            description: self.description,
            price: self.price,
            // Microseconds: what every backend's timestamp type keeps.
            created_at: Utc::now().trunc_subsecs(6),
        })
    }
}

/// The query string of `GET /items`.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1 to 100 (default 100).
    pub limit: Option<i64>,
    /// Items to skip, >= 0 (default 0).
    pub offset: Option<i64>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1..=100.
    pub limit: i64,
    /// >= 0.
    pub offset: i64,
}

impl ListParams {
    /// Applies the defaults and checks the bounds.
    pub fn validate(self) -> Result<Page, Vec<FieldError>> {
        let mut errors = Vec::new();
        let limit = self.limit.unwrap_or(LIST_MAX_LIMIT);
        if !(1..=LIST_MAX_LIMIT).contains(&limit) {
            errors.push(FieldError::new(
                "limit",
                format!("must be between 1 and {LIST_MAX_LIMIT} (got {limit})"),
            ));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            errors.push(FieldError::new(
                "offset",
                format!("must be >= 0 (got {offset})"),
            ));
        }
        if errors.is_empty() {
            Ok(Page { limit, offset })
        } else {
            Err(errors)
        }
    }
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

    fn item(name: &str, price: f64) -> ItemIn {
        ItemIn {
            name: name.to_owned(),
            description: None,
            price,
        }
    }

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

    #[test]
    fn name_length_is_counted_in_characters() {
        assert!(item(&"é".repeat(200), 0.0).validate().is_ok());
        let errors = item(&"é".repeat(201), 0.0).validate().unwrap_err();
        assert_eq!(errors[0].field, "name");
        assert_eq!(item("", 1.0).validate().unwrap_err()[0].field, "name");
    }

    #[test]
    fn negative_price_is_rejected_and_every_bad_field_is_listed() {
        assert!(item("free", 0.0).validate().is_ok());
        let errors = item("", -0.01).validate().unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "price"]);
    }

    #[test]
    fn page_defaults_and_bounds() {
        assert_eq!(
            ListParams::default().validate().unwrap(),
            Page {
                limit: 100,
                offset: 0
            }
        );
        let bad = ListParams {
            limit: Some(101),
            offset: Some(-1),
        };
        let fields: Vec<_> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["limit", "offset"]);
        let zero = ListParams {
            limit: Some(0),
            offset: None,
        };
        assert_eq!(zero.validate().unwrap_err()[0].field, "limit");
    }
}
