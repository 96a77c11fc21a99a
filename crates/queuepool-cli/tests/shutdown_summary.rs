//! The shutdown summary (`N connections opened, N closed in total`) is true: when
//! `Pool::close` returns, every connection it waited for is counted closed, even when
//! writing the pool's log line is slow (a full pipe, a slow terminal: the
//! `--echo-pool` case where the summary once said `5 opened, 4 closed` with none left).
//! Its own test binary: it installs the process-wide log subscriber.

use std::io::Write;
use std::time::Duration;

use queuepool::{PoolConfig, PooledConn};
use queuepool_cli::serve::open_pool;
use queuepool_sqlite::SqliteManager;

/// A log writer that takes its time over the pool's close lines, as a blocked stderr
/// does.
struct SlowWriter;

impl Write for SlowWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if String::from_utf8_lossy(buf).contains("Invalidate connection") {
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_only_after_the_last_connection_is_counted_closed() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(|| SlowWriter)
        .init();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("items.db").display());
    let config = PoolConfig::builder()
        .pool_size(2)
        .max_overflow(0)
        .name("summary")
        .build()
        .expect("config");
    let pool = open_pool::<SqliteManager>(&url, config)
        .await
        .expect("pool");
    let mut conn = pool.get().await.expect("checkout");
    let closer = tokio::spawn({
        let pool = pool.clone();
        async move {
            let lent = pool.close(Duration::from_secs(10)).await;
            (lent, pool.stats())
        }
    });
    // close() is now waiting for the lent connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!closer.is_finished());
    // Discarded from a thread that is not one of the runtime's workers (but inside its
    // context, as the manager's close needs), so that close() can wake on a worker
    // while this thread is still inside the pool's close bookkeeping.
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        let _context = runtime.enter();
        PooledConn::invalidate(&mut conn);
        drop(conn);
    })
    .join()
    .expect("discard thread");
    let (lent, stats) = closer.await.expect("close task");
    assert_eq!(lent, 0);
    assert_eq!(stats.connections_created, 2);
    assert_eq!(
        stats.closed, stats.connections_created,
        "close() returned before the discarded connection was counted: {stats:?}"
    );
}
