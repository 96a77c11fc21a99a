//! Model check of the checkout / return / cancel / close state machine under shuttle's
//! randomized scheduler: the pool's own lock is shuttle's, so shuttle explores the
//! interleavings of every critical section. Run with
//! `cargo test -p queuepool --features model-check --test model`.
#![cfg(feature = "model-check")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};

use queuepool::{Health, Manager, Pool, PoolConfig};
use shuttle::future::{block_on, spawn, yield_now};

/// Connections that yield to the scheduler on every operation, so that connects,
/// pings and resets interleave with everything else.
#[derive(Default)]
struct Model {
    open: Arc<AtomicUsize>,
}

struct ModelConn {
    open: Arc<AtomicUsize>,
    in_tx: bool,
}

impl Drop for ModelConn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, SeqCst);
    }
}

impl Manager for Model {
    type Connection = ModelConn;
    type Error = Infallible;

    async fn connect(&self) -> Result<ModelConn, Infallible> {
        yield_now().await;
        self.open.fetch_add(1, SeqCst);
        Ok(ModelConn {
            open: self.open.clone(),
            in_tx: false,
        })
    }
    async fn is_valid(&self, _: &mut ModelConn) -> Result<(), Infallible> {
        yield_now().await;
        Ok(())
    }
    async fn reset(&self, conn: &mut ModelConn) -> Result<(), Infallible> {
        yield_now().await;
        conn.in_tx = false;
        Ok(())
    }
    fn needs_reset(&self, conn: &ModelConn) -> bool {
        conn.in_tx
    }
    fn health(&self, _: &mut ModelConn) -> Health {
        Health::Ok
    }
    fn is_disconnect(&self, _: &Infallible) -> bool {
        false
    }
}

/// Polls `fut` at most `polls` times, then drops it: a cancellation at an arbitrary
/// await point.
struct CancelAfter<F> {
    fut: Pin<Box<F>>,
    polls: usize,
}

impl<F: Future> Future for CancelAfter<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if self.polls == 0 {
            return Poll::Ready(None);
        }
        self.polls -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Checks out, retrying the timeouts the model injects at random, at most `tries` times:
/// a leaked slot fails every try.
async fn get_within(pool: &Pool<Model>, tries: usize) -> queuepool::PooledConn<Model> {
    for _ in 0..tries {
        match pool.get().await {
            Ok(conn) => return conn,
            Err(e) if e.is_timeout() => yield_now().await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no slot came back: {}", pool.status());
}

fn model_pool(pool_size: u32, overflow: u32) -> Pool<Model> {
    let config = PoolConfig::builder()
        .pool_size(pool_size)
        .max_overflow(overflow)
        .prefill(false)
        .max_connecting(1)
        .build()
        .unwrap();
    block_on(Pool::new(Model::default(), config)).unwrap()
}

#[test]
fn checkout_return_and_cancel_never_leak_or_exceed_the_limit() {
    shuttle::check_random(
        || {
            let pool = model_pool(1, 1);
            let open = pool.manager().open.clone();
            let lent = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..4)
                .map(|i| {
                    let pool = pool.clone();
                    let open = open.clone();
                    let lent = lent.clone();
                    spawn(async move {
                        let got = CancelAfter {
                            fut: Box::pin(pool.get()),
                            polls: [0, 2, 8, usize::MAX][i],
                        }
                        .await;
                        if let Some(Ok(mut conn)) = got {
                            lent.fetch_add(1, SeqCst);
                            assert!(!conn.in_tx, "lent inside a transaction");
                            assert!(open.load(SeqCst) <= 2, "over the limit");
                            conn.in_tx = i % 2 == 0;
                            yield_now().await;
                            drop(conn);
                        }
                    })
                })
                .collect();
            block_on(async move {
                for t in tasks {
                    t.await.unwrap();
                }
                // Returns finish their rollbacks in spawned tasks: give them the
                // scheduler (a leaked slot never comes back, however long we wait).
                for _ in 0..1000 {
                    if pool.status().checked_out == 0 {
                        break;
                    }
                    yield_now().await;
                }
                let status = pool.status();
                assert_eq!(status.checked_out, 0, "{status}");
                assert!(open.load(SeqCst) <= 2);
                // Every checkout that returned a connection was counted once, and no
                // other: served waiters that timed out or were cancelled before they
                // picked up what they were served are not.
                let stats = pool.stats();
                assert_eq!(stats.checkouts, lent.load(SeqCst) as u64, "{stats:?}");
                assert_eq!(stats.wait.count, stats.checkouts);
                // A return frees its slot's permit just after its count: a checkout may
                // time out (at random here) in between, never for good.
                let a = get_within(&pool, 1000).await;
                let b = get_within(&pool, 1000).await;
                assert!(!a.in_tx && !b.in_tx);
                drop((a, b));
            });
        },
        3000,
    );
}

#[test]
fn close_races_with_checkouts_and_returns() {
    shuttle::check_random(
        || {
            let pool = model_pool(1, 1);
            let open = pool.manager().open.clone();
            let users: Vec<_> = (0..3)
                .map(|_| {
                    let pool = pool.clone();
                    spawn(async move {
                        if let Ok(conn) = pool.get().await {
                            yield_now().await;
                            drop(conn);
                        }
                    })
                })
                .collect();
            let closer = {
                let pool = pool.clone();
                spawn(async move { pool.close(std::time::Duration::from_secs(1)).await })
            };
            block_on(async move {
                for u in users {
                    u.await.unwrap();
                }
                assert_eq!(closer.await.unwrap(), 0);
                for _ in 0..1000 {
                    if open.load(SeqCst) == 0 {
                        break;
                    }
                    yield_now().await;
                }
                let status = pool.status();
                assert_eq!((status.checked_out, status.idle), (0, 0), "{status}");
                assert_eq!(open.load(SeqCst), 0, "every connection closed");
                assert!(pool.get().await.unwrap_err().is_closed());
            });
        },
        3000,
    );
}
