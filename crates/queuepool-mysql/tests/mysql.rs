//! MySQL backend against the MariaDB server on 127.0.0.1:3306 (or `MYSQL_URL`).
//!
//! Tests run in parallel against one server: each one works in a database of its own,
//! `qp_<pid>_<n>`, and finds its pool's connections in `information_schema.processlist`
//! by that database name (mysql_async sends no connect attributes to tag them with).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use queuepool::{Health, Manager, Pool, PoolConfig, PooledConn};
use queuepool_mysql::{MySqlError, MySqlManager, ResetMode, SslMode};

const BOUND: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("test exceeded its time bound")
}

fn base_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

fn url_with(db: &str, user: Option<(&str, &str)>, query: Option<&str>) -> String {
    let mut url = url::Url::parse(&base_url()).expect("MYSQL_URL is a URL");
    url.set_path(db);
    if let Some((name, password)) = user {
        url.set_username(name).unwrap();
        url.set_password(Some(password)).unwrap();
    }
    url.set_query(query);
    url.to_string()
}

fn config(pool_size: u32) -> PoolConfig {
    PoolConfig::builder()
        .pool_size(pool_size)
        .max_overflow(0)
        .pool_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A database of the test's own (and users), dropped by [`TestDb::drop_db`], or by
/// `Drop` when a failing test panics before reaching it.
struct TestDb {
    name: String,
    admin: Conn,
    users: Vec<String>,
    dropped: bool,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let mut statements = vec![format!("DROP DATABASE IF EXISTS {}", self.name)];
        statements.extend(
            self.users
                .iter()
                .map(|u| format!("DROP USER IF EXISTS '{u}'@'%'")),
        );
        // Drop cannot await, and runs inside the test's runtime: use a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = Conn::new(Opts::from_url(&base_url()).ok()?).await.ok()?;
                for sql in statements {
                    admin.query_drop(sql).await.ok()?;
                }
                admin.disconnect().await.ok()
            })
        });
        let _ = cleanup.join();
    }
}

impl TestDb {
    async fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "qp_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = Conn::new(Opts::from_url(&base_url()).unwrap())
            .await
            .expect("MariaDB is running");
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        admin
            .query_drop(format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self {
            name,
            admin,
            users: Vec::new(),
            dropped: false,
        }
    }

    fn url(&self) -> String {
        url_with(&self.name, None, None)
    }

    /// Server ids of the connections whose current database is this one.
    async fn server_ids(&mut self) -> Vec<u32> {
        self.admin
            .exec(
                "SELECT ID FROM information_schema.processlist WHERE DB = ? ORDER BY ID",
                (self.name.as_str(),),
            )
            .await
            .unwrap()
    }

    /// Polls the processlist until it shows `n` connections (closing is asynchronous on
    /// the server side).
    async fn wait_for_count(&mut self, n: usize) -> Vec<u32> {
        for _ in 0..100 {
            let ids = self.server_ids().await;
            if ids.len() == n {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "expected {n} connections, processlist shows {:?}",
            self.server_ids().await
        );
    }

    async fn kill(&mut self, id: u32) {
        self.admin.query_drop(format!("KILL {id}")).await.unwrap();
    }

    async fn drop_db(mut self) {
        self.admin
            .query_drop(format!("DROP DATABASE IF EXISTS {}", self.name))
            .await
            .unwrap();
        for user in std::mem::take(&mut self.users) {
            self.admin
                .query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
                .await
                .unwrap();
        }
        self.dropped = true;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_opens_pool_size_connections_seen_in_processlist_and_close_ends_them() {
    bounded(async {
        let mut db = TestDb::new().await;
        let pool = Pool::new(MySqlManager::from_url(&db.url()).unwrap(), config(3))
            .await
            .unwrap();
        let ids = db.wait_for_count(3).await;
        assert_eq!(
            ids,
            pool.manager().connection_ids(),
            "the manager knows its connections"
        );
        assert_eq!(pool.status().idle, 3);
        // Connected over TCP where the URL says, not switched to the server's Unix socket.
        let hosts: Vec<String> = db
            .admin
            .exec(
                "SELECT HOST FROM information_schema.processlist WHERE DB = ?",
                (db.name.as_str(),),
            )
            .await
            .unwrap();
        assert_eq!(hosts.len(), 3);
        assert!(hosts.iter().all(|h| h != "localhost"), "{hosts:?}");
        pool.close(Duration::from_secs(5)).await;
        db.wait_for_count(0).await;
        assert!(pool.manager().connection_ids().is_empty());
        db.drop_db().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_connection_with_open_transaction_is_rolled_back() {
    bounded(async {
        let db = TestDb::new().await;
        let pool = Pool::new(MySqlManager::from_url(&db.url()).unwrap(), config(1))
            .await
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        let id = conn.id();
        conn.query_drop("CREATE TABLE t (x INT) ENGINE=InnoDB")
            .await
            .unwrap();
        conn.query_drop("START TRANSACTION").await.unwrap();
        conn.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
        let inside: Option<i64> = conn.query_first("SELECT COUNT(*) FROM t").await.unwrap();
        assert_eq!(inside, Some(1));
        drop(conn); // returned without COMMIT

        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.id(), id, "the same connection came back");
        let in_tx: Option<i64> = conn.query_first("SELECT @@in_transaction").await.unwrap();
        assert_eq!(in_tx, Some(0), "its transaction is closed");
        let after: Option<i64> = conn.query_first("SELECT COUNT(*) FROM t").await.unwrap();
        assert_eq!(after, Some(0), "and was rolled back");
        drop(conn);
        pool.close(Duration::from_secs(5)).await;
        db.drop_db().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_keeps_session_state_and_reset_connection_clears_it() {
    bounded(async {
        let db = TestDb::new().await;
        for (mode, survives) in [
            (ResetMode::Rollback, true),
            (ResetMode::ResetConnection, false),
        ] {
            let manager = MySqlManager::from_url(&db.url())
                .unwrap()
                .with_reset_mode(mode);
            let pool = Pool::new(manager, config(1)).await.unwrap();
            let mut conn = pool.get().await.unwrap();
            conn.query_drop("SET @qp_marker = 7").await.unwrap();
            conn.query_drop("START TRANSACTION").await.unwrap();
            drop(conn);
            let mut conn = pool.get().await.unwrap();
            let marker: Option<Option<i64>> = conn.query_first("SELECT @qp_marker").await.unwrap();
            let expected = if survives { Some(7) } else { None };
            assert_eq!(marker, Some(expected), "{mode:?}");
            let in_tx: Option<i64> = conn.query_first("SELECT @@in_transaction").await.unwrap();
            assert_eq!(in_tx, Some(0), "{mode:?} closes the transaction");
            drop(conn);
            pool.close(Duration::from_secs(5)).await;
        }
        let url_mode =
            MySqlManager::from_url(&url_with(&db.name, None, Some("reset=connection"))).unwrap();
        assert_eq!(url_mode.reset_mode(), ResetMode::ResetConnection);
        db.drop_db().await;
    })
    .await
}

/// A query whose future is dropped after it was sent leaves its reply in the socket;
/// a plain `ROLLBACK` would read that reply, and the next borrower would read
/// `ROLLBACK`'s. The checked reset notices and the connection is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_cancelled_in_flight_does_not_leak_its_reply_to_the_next_borrower() {
    bounded(async {
        let db = TestDb::new().await;
        let pool = Pool::new(MySqlManager::from_url(&db.url()).unwrap(), config(1))
            .await
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        let first_id = conn.id();
        let slow = conn.query_drop("SELECT SLEEP(0.4)");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), slow)
                .await
                .is_err()
        );
        drop(conn);

        let mut conn = pool.get().await.unwrap();
        let answer: Option<i64> = conn.query_first("SELECT 42").await.unwrap();
        assert_eq!(
            answer,
            Some(42),
            "the borrower gets the answer to its own query"
        );
        assert_ne!(
            conn.id(),
            first_id,
            "the out-of-sync connection was replaced"
        );
        assert!(pool.stats().invalidated >= 1);
        drop(conn);
        pool.close(Duration::from_secs(5)).await;
        db.drop_db().await;
    })
    .await
}

/// The checked reset must not discard connections that are merely untidy: an unread
/// result set or a dropped `mysql_async::Transaction` is cleaned and the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untidy_but_consistent_connections_are_cleaned_and_kept() {
    bounded(async {
        let db = TestDb::new().await;
        let pool = Pool::new(MySqlManager::from_url(&db.url()).unwrap(), config(1))
            .await
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        let id = conn.id();
        conn.query_drop("CREATE TABLE t (x INT) ENGINE=InnoDB")
            .await
            .unwrap();
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .unwrap();
        tx.query_drop("INSERT INTO t VALUES (1), (2), (3)")
            .await
            .unwrap();
        drop(tx); // neither committed nor rolled back
        let unread = conn.query_iter("SELECT x FROM t; SELECT 1").await.unwrap();
        drop(unread); // both result sets left unread
        drop(conn);

        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.id(), id, "the connection was kept");
        let rows: Option<i64> = conn.query_first("SELECT COUNT(*) FROM t").await.unwrap();
        assert_eq!(rows, Some(0), "the dropped transaction was rolled back");
        assert_eq!(pool.stats().invalidated, 0);
        drop(conn);
        pool.close(Duration::from_secs(5)).await;
        db.drop_db().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle_connections_are_replaced_at_checkout_by_pre_ping() {
    bounded(async {
        let mut db = TestDb::new().await;
        let pool = Pool::new(MySqlManager::from_url(&db.url()).unwrap(), config(2))
            .await
            .unwrap();
        let before = db.wait_for_count(2).await;
        for id in &before {
            db.kill(*id).await;
        }
        db.wait_for_count(0).await;
        // Connections used within the last second are not pinged: let them age past it.
        tokio::time::sleep(Duration::from_millis(1100)).await;

        let mut a = pool.get().await.unwrap();
        let mut b = pool.get().await.unwrap();
        for conn in [&mut a, &mut b] {
            let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
            assert_eq!(one, Some(1));
            assert!(!before.contains(&conn.id()), "a new connection");
        }
        drop((a, b));
        assert!(pool.stats().invalidated >= 1, "{:?}", pool.stats());
        pool.close(Duration::from_secs(5)).await;
        db.drop_db().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_while_checked_out_fails_with_a_disconnect_error() {
    bounded(async {
        let mut db = TestDb::new().await;
        let pool = Pool::new(MySqlManager::from_url(&db.url()).unwrap(), config(1))
            .await
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        let id = conn.id();
        db.kill(id).await;
        db.wait_for_count(0).await;
        let err = MySqlError::from(conn.query_drop("SELECT 1").await.unwrap_err());
        assert!(pool.manager().is_disconnect(&err), "{err:?}");
        assert!(PooledConn::report_error(&mut conn, &err));
        drop(conn);
        let mut conn = pool.get().await.unwrap();
        assert_ne!(conn.id(), id);
        conn.query_drop("SELECT 1").await.unwrap();
        assert!(pool.stats().pool_invalidations >= 1, "{:?}", pool.stats());
        drop(conn);
        pool.close(Duration::from_secs(5)).await;
        db.drop_db().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_ping_marks_the_connection_broken() {
    bounded(async {
        let mut db = TestDb::new().await;
        let manager = MySqlManager::from_url(&db.url()).unwrap();
        let mut conn = manager.connect().await.unwrap();
        manager.is_valid(&mut conn).await.unwrap();
        assert_eq!(manager.health(&mut conn), Health::Ok);
        db.kill(conn.id()).await;
        db.wait_for_count(0).await;
        let err = manager.is_valid(&mut conn).await.unwrap_err();
        assert!(manager.is_disconnect(&err), "{err:?}");
        assert_eq!(manager.health(&mut conn), Health::Broken);
        manager.close(conn).await;
        db.drop_db().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_errors_or_debug_output() {
    bounded(async {
        let mut db = TestDb::new().await;
        let user = db.name.clone();
        let password = format!("Pw-{}-zz9", db.name);
        db.admin
            .query_drop(format!(
                "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"
            ))
            .await
            .unwrap();
        db.users.push(user.clone());
        db.admin
            .query_drop(format!("GRANT ALL ON {}.* TO '{user}'@'%'", db.name))
            .await
            .unwrap();

        // A working connection with a password.
        let url = url_with(&db.name, Some((&user, &password)), None);
        let pool = Pool::new(MySqlManager::from_url(&url).unwrap(), config(1))
            .await
            .unwrap();
        let conn = pool.get().await.unwrap();
        let mut seen = vec![format!("{conn:?}"), format!("{:?}", pool.manager())];
        assert!(seen[1].contains("********"), "{}", seen[1]);
        drop(conn);
        pool.close(Duration::from_secs(5)).await;

        // A wrong password, a refused port, bad URLs.
        let wrong = url_with(&db.name, Some((&user, &format!("{password}-wrong"))), None);
        let err = Pool::new(MySqlManager::from_url(&wrong).unwrap(), config(1))
            .await
            .map(drop)
            .unwrap_err();
        assert!(
            err.to_string().contains("Access denied")
                || format!("{err:?}").contains("Access denied"),
            "{err:?}"
        );
        seen.push(format!("{err} {err:?}"));
        let refused = format!("mysql://{user}:{password}@127.0.0.1:1/{}", db.name);
        let err = MySqlManager::from_url(&refused)
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert!(
            std::error::Error::source(&err).is_none(),
            "the cause is in the message only"
        );
        seen.push(format!("{err} {err:?}"));
        for bad in [
            format!("mysql://{user}:{password}@127.0.0.1:99999/db"),
            format!("mysql://{user}:{password}@127.0.0.1/db?ssl-mode=bogus"),
            format!("mysql://{user}:{password}@127.0.0.1/db?nonsense=1"),
            format!("postgres://{user}:{password}@127.0.0.1/db"),
        ] {
            let err = MySqlManager::from_url(&bad).map(drop).unwrap_err();
            assert!(matches!(err, MySqlError::InvalidUrl { .. }), "{err:?}");
            seen.push(format!("{err} {err:?}"));
        }
        for text in &seen {
            assert!(!text.contains(&password), "password leaked: {text}");
        }
        db.drop_db().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_scheme_and_url_parameters_are_understood() {
    bounded(async {
        let db = TestDb::new().await;
        let url = db.url().replacen("mysql://", "mariadb://", 1);
        let manager =
            MySqlManager::from_url(&format!("{url}?program_name=orders-api&stmt_cache_size=8"))
                .unwrap();
        assert_eq!(manager.program_name(), "orders-api");
        assert_eq!(
            manager.opts().stmt_cache_size(),
            8,
            "driver parameters pass through"
        );
        assert_eq!(manager.ssl_mode(), SslMode::Disabled);
        assert!(!manager.opts().prefer_socket(), "off unless asked for");
        let asked = MySqlManager::from_url(&format!("{}?prefer_socket=true", db.url())).unwrap();
        assert!(asked.opts().prefer_socket());
        let mut conn = manager.connect().await.unwrap();
        let current: Option<String> = conn.query_first("SELECT DATABASE()").await.unwrap();
        assert_eq!(current.as_deref(), Some(db.name.as_str()));
        manager.close(conn).await;
        assert_eq!(
            MySqlManager::from_url(&db.url()).unwrap().program_name(),
            "queuepool"
        );

        for (value, mode) in [
            ("DISABLED", SslMode::Disabled),
            ("required", SslMode::Required),
            ("VERIFY_CA", SslMode::VerifyCa),
            ("verify-identity", SslMode::VerifyIdentity),
        ] {
            let m = MySqlManager::from_url(&format!("{}?ssl-mode={value}", db.url())).unwrap();
            assert_eq!(m.ssl_mode(), mode, "{value}");
            assert_eq!(
                m.opts().ssl_opts().is_some(),
                mode != SslMode::Disabled,
                "{value}"
            );
        }
        let err = MySqlManager::from_url(&format!("{}?ssl-mode=PREFERRED", db.url()))
            .map(drop)
            .unwrap_err();
        assert!(err.to_string().contains("PREFERRED"), "{err}");

        // This server has TLS disabled: REQUIRED must fail, not fall back to plain text.
        let have_ssl: Option<String> = Conn::new(Opts::from_url(&base_url()).unwrap())
            .await
            .unwrap()
            .query_first("SELECT @@have_ssl")
            .await
            .unwrap();
        if have_ssl.as_deref() == Some("DISABLED") {
            let m = MySqlManager::from_url(&format!("{}?ssl-mode=REQUIRED", db.url())).unwrap();
            let err = m.connect().await.map(drop).unwrap_err();
            assert!(err.to_string().to_lowercase().contains("ssl"), "{err}");
        }
        db.drop_db().await;
    })
    .await
}

#[test]
fn disconnect_errors_are_classified() {
    use mysql_async::{DriverError, Error, IoError, ServerError};
    let manager = MySqlManager::from_url("mysql://root@127.0.0.1/test").unwrap();
    let server = |code| {
        MySqlError::from(Error::Server(ServerError {
            code,
            message: "m".into(),
            state: "HY000".into(),
        }))
    };
    for code in [1053, 1927, 2006, 2013, 3169, 4031] {
        assert!(manager.is_disconnect(&server(code)), "{code}");
    }
    for code in [1064, 1213, 1205, 1062] {
        assert!(!manager.is_disconnect(&server(code)), "{code}");
    }
    let io = MySqlError::from(Error::Io(IoError::Io(std::io::Error::other(
        "reset by peer",
    ))));
    assert!(manager.is_disconnect(&io));
    assert_eq!(io.to_string(), "MySQL I/O error: reset by peer");
    assert!(manager.is_disconnect(&MySqlError::from(Error::Driver(
        DriverError::ConnectionClosed
    ))));
    assert!(!manager.is_disconnect(&MySqlError::OutOfSync { connection_id: 1 }));
    assert_eq!(server(1213).server_code(), Some(1213));
}
