//! Property test: random interleavings of checkout, return, drop mid-query, invalidate,
//! detach, time passing and close keep the accounting invariants, and nothing is lost.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{FakeManager, config, settle};
use proptest::prelude::*;
use queuepool::{Pool, PooledConn};
use tokio::time::timeout;

#[derive(Debug, Clone)]
enum Op {
    Get,
    GetCancelledAfter(u64),
    Return(usize),
    ReturnInTransaction(usize),
    DropMidQuery(usize),
    Invalidate(usize),
    ReportDisconnect(usize),
    Detach(usize),
    InvalidatePool,
    RestartServer,
    Advance(u64),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Get),
        1 => (0u64..20).prop_map(Op::GetCancelledAfter),
        3 => any::<usize>().prop_map(Op::Return),
        1 => any::<usize>().prop_map(Op::ReturnInTransaction),
        1 => any::<usize>().prop_map(Op::DropMidQuery),
        1 => any::<usize>().prop_map(Op::Invalidate),
        1 => any::<usize>().prop_map(Op::ReportDisconnect),
        1 => any::<usize>().prop_map(Op::Detach),
        1 => Just(Op::InvalidatePool),
        1 => Just(Op::RestartServer),
        2 => (0u64..3000).prop_map(Op::Advance),
        1 => Just(Op::Close),
    ]
}

fn check_invariants(pool: &Pool<FakeManager>, held: usize, limit: usize) {
    let s = pool.status();
    let open = (s.overflow + i64::from(s.pool_size)) as usize;
    assert!(open <= limit, "more connections than the limit: {s}");
    assert!(
        s.checked_out >= held,
        "a held connection is not counted: {s} held {held}"
    );
}

async fn run(ops: Vec<Op>, pool_size: u32, overflow: u32) {
    let limit = (pool_size + overflow) as usize;
    let manager = FakeManager::default();
    let server = manager.server.clone();
    server.reset_ms.store(5, SeqCst);
    let cfg = config()
        .pool_size(pool_size)
        .max_overflow(overflow)
        .pool_timeout(Duration::from_millis(50))
        .pool_recycle(Some(Duration::from_secs(5)))
        .overflow_idle(Duration::from_secs(1))
        .build()
        .unwrap();
    let pool = Pool::new(manager, cfg).await.unwrap();
    let mut held: Vec<PooledConn<FakeManager>> = Vec::new();
    let mut closed = false;
    for op in ops {
        let pick = |i: usize, held: &mut Vec<_>| {
            (!held.is_empty()).then(|| held.swap_remove(i % held.len()))
        };
        match op {
            Op::Get => match pool.get().await {
                Ok(c) => held.push(c),
                Err(e) => assert!(e.is_timeout() || (closed && e.is_closed()), "{e}"),
            },
            Op::GetCancelledAfter(ms) => {
                if let Ok(Ok(c)) = timeout(Duration::from_millis(ms), pool.get()).await {
                    held.push(c);
                }
            }
            Op::Return(i) => drop(pick(i, &mut held)),
            Op::ReturnInTransaction(i) => {
                if let Some(mut c) = pick(i, &mut held) {
                    c.begin();
                }
            }
            Op::DropMidQuery(i) => {
                if let Some(mut c) = pick(i, &mut held) {
                    let _ =
                        timeout(Duration::from_millis(1), c.query(Duration::from_secs(1))).await;
                }
            }
            Op::Invalidate(i) => {
                if let Some(mut c) = pick(i, &mut held) {
                    PooledConn::invalidate(&mut c);
                }
            }
            Op::ReportDisconnect(i) => {
                if let Some(mut c) = pick(i, &mut held) {
                    PooledConn::report_error(&mut c, &common::FakeError::Disconnected);
                }
            }
            Op::Detach(i) => {
                if let Some(c) = pick(i, &mut held) {
                    drop(PooledConn::detach(c));
                }
            }
            Op::InvalidatePool => pool.invalidate_all(),
            Op::RestartServer => server.restart(),
            Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Close => {
                let p = pool.clone();
                tokio::spawn(async move { p.close(Duration::from_millis(100)).await });
                settle().await;
                closed = true;
            }
        }
        check_invariants(&pool, held.len(), limit);
        if !held.iter().all(|c| !c.in_tx) {
            panic!("a borrower was lent a connection inside a transaction");
        }
    }
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    let s = pool.status();
    assert_eq!(s.checked_out, 0, "slot leaked: {s}");
    if closed {
        assert_eq!(s.idle, 0, "closed pool kept connections: {s}");
        assert!(pool.get().await.unwrap_err().is_closed());
    } else {
        let mut all = Vec::new();
        for _ in 0..limit {
            all.push(pool.get().await.expect("full capacity after the run"));
        }
        assert!(pool.get().await.unwrap_err().is_timeout());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_the_accounting(ops in prop::collection::vec(op(), 1..60), pool_size in 1u32..3, overflow in 1u32..3) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(run(ops, pool_size, overflow));
    }
}
