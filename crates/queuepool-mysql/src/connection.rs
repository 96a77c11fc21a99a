//! [`MySqlConnection`]: a `mysql_async::Conn` that knows which manager opened it.

use std::collections::HashSet;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// A pooled MySQL / MariaDB connection; derefs to [`mysql_async::Conn`].
///
/// It is registered with its [`MySqlManager`](crate::MySqlManager) while it lives, so
/// [`MySqlManager::connection_ids`](crate::MySqlManager::connection_ids) lists the
/// server-side ids of the manager's open connections.
pub struct MySqlConnection {
    conn: Option<mysql_async::Conn>,
    id: u32,
    registry: Arc<Mutex<HashSet<u32>>>,
    /// Counts resets, to give each reset's check query a fresh answer.
    pub(crate) resets: u64,
    /// Set when an operation of the manager found the connection unusable.
    pub(crate) broken: bool,
}

impl MySqlConnection {
    pub(crate) fn new(conn: mysql_async::Conn, registry: Arc<Mutex<HashSet<u32>>>) -> Self {
        let id = conn.id();
        if let Ok(mut ids) = registry.lock() {
            ids.insert(id);
        }
        Self {
            conn: Some(conn),
            id,
            registry,
            resets: 0,
            broken: false,
        }
    }

    /// The server's id of this connection: `information_schema.processlist.ID`,
    /// `CONNECTION_ID()`, the argument of `KILL`.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Takes the driver connection out (it is no longer listed by its manager).
    pub fn into_inner(mut self) -> mysql_async::Conn {
        // `conn` is `Some` from `new` until here or `Drop`, which are each run once.
        match self.conn.take() {
            Some(conn) => conn,
            None => unreachable!("MySqlConnection holds its Conn until consumed"),
        }
    }
}

impl Deref for MySqlConnection {
    type Target = mysql_async::Conn;

    fn deref(&self) -> &mysql_async::Conn {
        match &self.conn {
            Some(conn) => conn,
            None => unreachable!("MySqlConnection holds its Conn until consumed"),
        }
    }
}

impl DerefMut for MySqlConnection {
    fn deref_mut(&mut self) -> &mut mysql_async::Conn {
        match &mut self.conn {
            Some(conn) => conn,
            None => unreachable!("MySqlConnection holds its Conn until consumed"),
        }
    }
}

impl Drop for MySqlConnection {
    fn drop(&mut self) {
        if let Ok(mut ids) = self.registry.lock() {
            ids.remove(&self.id);
        }
    }
}

/// Prints the connection id only: `mysql_async::Conn`'s own `Debug` prints its options,
/// password included.
impl fmt::Debug for MySqlConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlConnection")
            .field("id", &self.id)
            .field("broken", &self.broken)
            .finish()
    }
}
