//! SQLite backend against real temporary database files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use queuepool::{Health, Manager, Pool, PoolConfig, PooledConn};
use queuepool_sqlite::{DEFAULT_BUSY_TIMEOUT, SqliteConnection, SqliteError, SqliteManager};
use rusqlite::ErrorCode;

/// Every test is bounded: a hang fails the test instead of the CI job.
const BOUND: Duration = Duration::from_secs(60);

fn config(pool_size: u32, max_overflow: u32) -> PoolConfig {
    PoolConfig::builder()
        .pool_size(pool_size)
        .max_overflow(max_overflow)
        .pool_timeout(Duration::from_secs(5))
        .build()
        .expect("valid config")
}

async fn pool_on(dir: &tempfile::TempDir, pool_size: u32) -> Pool<SqliteManager> {
    let manager = SqliteManager::file(dir.path().join("test.db"));
    Pool::new(manager, config(pool_size, 0))
        .await
        .expect("pool")
}

async fn count(conn: &mut SqliteConnection, table: &'static str) -> i64 {
    conn.interact(move |c| c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)))
        .await
        .expect("count")
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("test exceeded its time bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_share_one_database_file() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_on(&dir, 3).await;
        let mut a = pool.get().await.unwrap();
        let mut b = pool.get().await.unwrap();
        a.interact(|c| {
            c.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);")
        })
        .await
        .unwrap();
        assert_eq!(count(&mut b, "t").await, 2, "b sees what a committed");
        drop((a, b));
        pool.close(Duration::from_secs(5)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_opens_in_wal_with_busy_timeout_foreign_keys_and_synchronous_normal() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let manager = SqliteManager::file(dir.path().join("p.db"))
            .with_busy_timeout(Duration::from_millis(1234));
        let pool = Pool::new(manager, config(3, 0)).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = pool.get().await.unwrap();
            let (mode, busy, fk, sync) = conn
                .interact(|c| {
                    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                    let busy: i64 = c.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
                    let fk: i64 = c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
                    let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                    Ok((mode, busy, fk, sync))
                })
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            assert_eq!(busy, 1234);
            assert_eq!(fk, 1);
            assert_eq!(sync, 1, "1 is NORMAL");
            held.push(conn);
        }
        assert!(dir.path().join("p.db-wal").exists(), "the WAL file exists");
        assert_eq!(
            SqliteManager::file("x.db").busy_timeout(),
            DEFAULT_BUSY_TIMEOUT
        );
        assert_eq!(DEFAULT_BUSY_TIMEOUT, Duration::from_secs(5));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_are_enforced() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_on(&dir, 1).await;
        let mut conn = pool.get().await.unwrap();
        let err = conn
            .interact(|c| {
                c.execute_batch(
                    "CREATE TABLE parent (id INTEGER PRIMARY KEY);
                     CREATE TABLE child (p INTEGER REFERENCES parent(id));
                     INSERT INTO child VALUES (7);",
                )
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        assert!(
            !pool.manager().is_disconnect(&err),
            "a constraint is not a disconnect"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_directory_is_a_clear_error() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir");
        let manager = SqliteManager::file(missing.join("app.db"));
        let err = manager.connect().await.unwrap_err();
        assert!(
            matches!(err, SqliteError::MissingDirectory { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("no-such-dir"), "{message}");
        assert!(message.contains("does not exist"), "{message}");
        assert!(!missing.exists(), "the directory is not created");

        let pool_err = Pool::new(SqliteManager::file(missing.join("app.db")), config(2, 0))
            .await
            .map(drop)
            .unwrap_err();
        let chain = format!(
            "{pool_err} / {:?}",
            std::error::Error::source(&pool_err).map(|s| s.to_string())
        );
        assert!(chain.contains("does not exist"), "{chain}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_connection_with_open_transaction_is_rolled_back() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        // One connection: the next checkout gets the very connection that was returned.
        let pool = pool_on(&dir, 1).await;
        let mut conn = pool.get().await.unwrap();
        conn.interact(|c| c.execute_batch("CREATE TABLE t (x INTEGER)"))
            .await
            .unwrap();
        assert!(
            !pool.manager().needs_reset(&conn),
            "autocommit: nothing to reset"
        );
        conn.interact(|c| c.execute_batch("BEGIN; INSERT INTO t VALUES (1);"))
            .await
            .unwrap();
        assert!(conn.in_transaction());
        assert!(pool.manager().needs_reset(&conn));
        assert_eq!(
            count(&mut conn, "t").await,
            1,
            "visible inside the transaction"
        );
        drop(conn); // returned without COMMIT

        let mut conn = pool.get().await.unwrap();
        let autocommit = conn.interact(|c| Ok(c.is_autocommit())).await.unwrap();
        assert!(autocommit, "the returned transaction was closed");
        assert_eq!(count(&mut conn, "t").await, 0, "and rolled back");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_reset_rolls_back_only_an_open_transaction() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let manager = SqliteManager::file(dir.path().join("r.db"));
        let mut conn = manager.connect().await.unwrap();
        conn.interact(|c| {
            c.execute_batch("CREATE TABLE t (x INTEGER); BEGIN; INSERT INTO t VALUES (1);")
        })
        .await
        .unwrap();
        manager.reset(&mut conn).await.unwrap();
        assert!(!conn.in_transaction());
        assert!(!manager.needs_reset(&conn));
        assert_eq!(count(&mut conn, "t").await, 0);
        // Reset on a clean connection is a no-op, not an error ("no transaction is active").
        manager.reset(&mut conn).await.unwrap();
        manager.is_valid(&mut conn).await.unwrap();
        manager.close(conn).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interact_dropped_mid_operation_discards_the_connection_and_keeps_capacity() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_on(&dir, 2).await;
        let mut conn = pool.get().await.unwrap();
        let slow = conn.interact(|c| {
            std::thread::sleep(Duration::from_millis(300));
            c.execute_batch("SELECT 1")
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(20), slow)
                .await
                .is_err(),
            "the operation outlives the timeout"
        );
        assert!(conn.is_lost());
        assert_eq!(pool.manager().health(&mut conn), Health::Broken);
        let err = conn.interact(|_| Ok(())).await.unwrap_err();
        assert!(matches!(err, SqliteError::ConnectionLost), "{err:?}");
        let created_before = pool.stats().connections_created;
        drop(conn);

        // Full capacity: both connections can be held at once, and both work.
        let mut a = pool.get().await.unwrap();
        let mut b = pool.get().await.unwrap();
        for conn in [&mut a, &mut b] {
            let one: i64 = conn
                .interact(|c| c.query_row("SELECT 1", [], |r| r.get(0)))
                .await
                .unwrap();
            assert_eq!(one, 1);
            assert!(!conn.is_lost());
        }
        let stats = pool.stats();
        assert!(
            stats.invalidated >= 1,
            "the lost connection was discarded: {stats:?}"
        );
        assert_eq!(
            stats.connections_created,
            created_before + 1,
            "and replaced: {stats:?}"
        );
        assert_eq!(pool.status().checked_out, 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_interact_is_an_error_and_the_connection_is_discarded() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_on(&dir, 1).await;
        let mut conn = pool.get().await.unwrap();
        let err = conn
            .interact(|_| -> rusqlite::Result<()> { panic!("boom in closure") })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SqliteError::Panicked { message } if message == "boom in closure"),
            "{err:?}"
        );
        assert_eq!(pool.manager().health(&mut conn), Health::Broken);
        drop(conn);
        let mut conn = pool.get().await.unwrap();
        assert!(!conn.is_lost());
        conn.interact(|c| c.execute_batch("SELECT 1"))
            .await
            .unwrap();
    })
    .await
}

/// Each writer holds the write lock across a few milliseconds: without `busy_timeout`
/// the others' `BEGIN IMMEDIATE` fails at once with "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_wait_for_the_lock_instead_of_failing() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_on(&dir, 6).await;
        pool.get()
            .await
            .unwrap()
            .interact(|c| c.execute_batch("CREATE TABLE w (writer INTEGER, n INTEGER)"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for writer in 0..6_i64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..15_i64 {
                    let mut conn = pool.get().await?;
                    conn.interact(move |c| {
                        let tx =
                            c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        tx.execute("INSERT INTO w VALUES (?1, ?2)", [writer, n])?;
                        std::thread::sleep(Duration::from_millis(2));
                        tx.commit()
                    })
                    .await?;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        for task in tasks {
            task.await
                .unwrap()
                .expect("no writer fails with database is locked");
        }
        let mut conn = pool.get().await.unwrap();
        assert_eq!(count(&mut conn, "w").await, 6 * 15);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_timeout_bounds_the_wait_for_a_held_lock() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let manager = SqliteManager::file(dir.path().join("b.db"))
            .with_busy_timeout(Duration::from_millis(150));
        let mut holder = manager.connect().await.unwrap();
        let mut waiter = manager.connect().await.unwrap();
        holder
            .interact(|c| c.execute_batch("CREATE TABLE t (x INTEGER); BEGIN IMMEDIATE;"))
            .await
            .unwrap();
        let started = Instant::now();
        let err = waiter
            .interact(|c| c.execute_batch("BEGIN IMMEDIATE"))
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.code(), Some(ErrorCode::DatabaseBusy), "{err:?}");
        assert_eq!(err.to_string(), "database is locked (SQLite code 5)");
        assert!(
            std::error::Error::source(&err).is_none(),
            "the cause is in the message only"
        );
        assert!(
            waited >= Duration::from_millis(120),
            "waited for the lock: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(3),
            "but not much longer than busy_timeout: {waited:?}"
        );
        assert!(!manager.is_disconnect(&err), "busy is not a disconnect");
        holder
            .interact(|c| c.execute_batch("COMMIT"))
            .await
            .unwrap();
        waiter
            .interact(|c| c.execute_batch("BEGIN IMMEDIATE; COMMIT;"))
            .await
            .unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_database_is_shared_by_the_managers_connections_and_outlives_them() {
    bounded(async {
        let manager = SqliteManager::from_url("sqlite::memory:").unwrap();
        let uri = manager.memory_uri().unwrap().to_owned();
        assert!(
            uri.starts_with("file:/queuepool-mem-") && uri.ends_with("?vfs=memdb"),
            "{uri}"
        );
        let mut a = manager.connect().await.unwrap();
        a.interact(|c| c.execute_batch("CREATE TABLE m (x INTEGER); INSERT INTO m VALUES (5);"))
            .await
            .unwrap();
        let mut b = manager.connect().await.unwrap();
        assert_eq!(count(&mut b, "m").await, 1, "b sees a's table");
        manager.close(a).await;
        manager.close(b).await;
        // Every pooled connection closed: the data is still there.
        let mut c = manager.connect().await.unwrap();
        assert_eq!(count(&mut c, "m").await, 1);

        // Another manager has a database of its own.
        let other = SqliteManager::from_url("sqlite://:memory:").unwrap();
        assert_ne!(other.memory_uri(), manager.memory_uri());
        let mut d = other.connect().await.unwrap();
        let err = d
            .interact(|c| c.query_row("SELECT count(*) FROM m", [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no such table"), "{err}");

        let pool = Pool::new(manager, config(2, 0)).await.unwrap();
        let mut e = pool.get().await.unwrap();
        assert_eq!(count(&mut e, "m").await, 1, "pooled connections see it too");
    })
    .await
}

/// Shared-cache in-memory databases fail the second writer at once with "database
/// table is locked"; the `memdb` database the manager uses waits like a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_database_writers_wait_for_the_lock_instead_of_failing() {
    bounded(async {
        let pool = Pool::new(SqliteManager::memory().unwrap(), config(4, 0))
            .await
            .unwrap();
        pool.get()
            .await
            .unwrap()
            .interact(|c| c.execute_batch("CREATE TABLE w (writer INTEGER, n INTEGER)"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for writer in 0..4_i64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..10_i64 {
                    let mut conn = pool.get().await?;
                    conn.interact(move |c| {
                        let tx =
                            c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        tx.execute("INSERT INTO w VALUES (?1, ?2)", [writer, n])?;
                        std::thread::sleep(Duration::from_millis(2));
                        tx.commit()
                    })
                    .await?;
                    // Readers too wait out the writers' locks.
                    count(&mut conn, "w").await;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        for task in tasks {
            task.await
                .unwrap()
                .expect("no writer fails with database table is locked");
        }
        let mut conn = pool.get().await.unwrap();
        assert_eq!(count(&mut conn, "w").await, 4 * 10);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_is_a_disconnect_class_error() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a_u8; 8192]).unwrap();
        let manager = SqliteManager::file(&path);
        let err = manager.connect().await.unwrap_err();
        assert!(matches!(err, SqliteError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.db"), "{err}");
        assert!(manager.is_disconnect(&err), "{err:?}");
    })
    .await
}

#[test]
fn urls_parse_to_files_and_memory() {
    let rel = SqliteManager::from_url("sqlite://data/app.db").unwrap();
    assert_eq!(rel.path().unwrap(), std::path::Path::new("data/app.db"));
    let abs = SqliteManager::from_url("sqlite:///var/lib/app.db").unwrap();
    assert_eq!(abs.path().unwrap(), std::path::Path::new("/var/lib/app.db"));
    let short = SqliteManager::from_url("sqlite:app.db").unwrap();
    assert_eq!(short.path().unwrap(), std::path::Path::new("app.db"));
    assert!(
        SqliteManager::from_url("sqlite::memory:")
            .unwrap()
            .path()
            .is_none()
    );

    for bad in [
        "postgres://x/y",
        "sqlite://",
        "sqlite:",
        "sqlite://a.db?mode=ro",
    ] {
        let err = SqliteManager::from_url(bad).map(drop).unwrap_err();
        assert!(
            matches!(err, SqliteError::InvalidUrl { .. }),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn from_url_never_shows_the_password_of_another_backends_url() {
    for url in [
        "postgres://:Hunter2pw@/",
        "postgres:///:Hunter2pw@/db",
        "mysql://root:Hunter2pw@localhost:3306/test?ssl-mode=DISABLED",
        "sqlite://u:Hunter2pw@h/db?x=1",
        "host=h user=u password=Hunter2pw",
    ] {
        let err = SqliteManager::from_url(url).map(drop).unwrap_err();
        assert!(
            matches!(err, SqliteError::InvalidUrl { .. }),
            "{url}: {err:?}"
        );
        assert!(!err.to_string().contains("Hunter2pw"), "{err}");
        assert!(!format!("{err:?}").contains("Hunter2pw"), "{err:?}");
    }
    let err = SqliteManager::from_url("postgres://app:Hunter2pw@db/shop")
        .map(drop)
        .unwrap_err();
    assert!(
        err.to_string().contains("`postgres://***@db/shop`"),
        "the rest of the URL is still shown: {err}"
    );
}

#[test]
fn interact_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let mut conn: Option<SqliteConnection> = None;
    if let Some(conn) = conn.as_mut() {
        let fut = conn.interact(|c| c.execute_batch("SELECT 1"));
        assert_send(&fut);
    }
    let manager = Arc::new(SqliteManager::file("unused.db"));
    let fut = manager.connect();
    assert_send(&fut);
}

/// Switching a new file to WAL needs an exclusive lock, and SQLite reports busy at once
/// (no busy handler) when connections opened together race for it, as in a prefill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_together_on_a_new_file_all_succeed() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..60 {
            let manager = Arc::new(SqliteManager::file(
                dir.path().join(format!("new-{round}.db")),
            ));
            let opens: Vec<_> = (0..6)
                .map(|_| {
                    let manager = Arc::clone(&manager);
                    tokio::spawn(async move { manager.connect().await })
                })
                .collect();
            for open in opens {
                let conn = open.await.unwrap();
                assert!(conn.is_ok(), "round {round}: {:?}", conn.err());
            }
        }
    })
    .await
}

/// A discarded guard dropped on a thread with no tokio runtime: the core polls
/// `Manager::close` there, which has no blocking pool to use. It closes the connection
/// on that thread instead of panicking (`spawn_blocking` outside a runtime), and the
/// slot comes back.
#[test]
fn a_guard_discarded_on_a_thread_without_a_runtime_closes_there_and_frees_its_slot() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pool = runtime.block_on(pool_on(&dir, 1));
    let mut guard = runtime.block_on(async {
        let mut guard = pool.get().await.unwrap();
        guard
            .interact(|c| c.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);"))
            .await
            .unwrap();
        guard
    });
    PooledConn::invalidate(&mut guard);
    let closed_before = pool.stats().closed;
    let dropped = std::thread::spawn(move || {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "a plain thread"
        );
        drop(guard);
    })
    .join();
    assert!(dropped.is_ok(), "dropping the discarded guard panicked");
    assert_eq!(pool.status().checked_out, 0, "the slot came back");
    assert_eq!(
        pool.stats().closed,
        closed_before + 1,
        "the connection was closed"
    );
    runtime.block_on(async {
        let mut again = tokio::time::timeout(Duration::from_secs(2), pool.get())
            .await
            .expect("the only slot is free again")
            .unwrap();
        assert_eq!(
            count(&mut again, "t").await,
            1,
            "a new connection, same database"
        );
        drop(again);
        pool.close(Duration::from_secs(5)).await;
    });
}
