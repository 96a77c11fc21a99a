//! The Prometheus names docs/DESIGN.md lists, emitted through the `metrics` facade.

mod common;

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(start_paused = true)]
async fn pool_emits_the_documented_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let (pool, _) = common::pool(
        common::config()
            .pool_size(1)
            .max_overflow(0)
            .pool_timeout(Duration::from_secs(1))
            .overflow_idle(Duration::ZERO)
            .name("metrics-test"),
    )
    .await;
    let conn = pool.get().await.unwrap();
    assert!(pool.get().await.unwrap_err().is_timeout());
    let mut conn = conn;
    queuepool::PooledConn::invalidate(&mut conn);
    drop(conn);
    common::settle().await;

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, label: Option<(&str, &str)>| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                let k = key.key();
                k.name() == name
                    && k.labels()
                        .any(|l| l.key() == "pool" && l.value() == "metrics-test")
                    && label
                        .is_none_or(|(lk, lv)| k.labels().any(|l| l.key() == lk && l.value() == lv))
            })
            .map(|(_, _, _, v)| v)
            .unwrap_or_else(|| panic!("metric {name} {label:?} missing"))
    };
    assert_eq!(
        find("queuepool_connections_created_total", None),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        find("queuepool_timeouts_total", None),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        find(
            "queuepool_connections_closed_total",
            Some(("reason", "invalidated"))
        ),
        &DebugValue::Counter(1)
    );
    for state in ["idle", "in_use", "pending"] {
        assert!(matches!(
            find("queuepool_connections", Some(("state", state))),
            DebugValue::Gauge(_)
        ));
    }
    assert!(
        matches!(find("queuepool_connections", Some(("state", "in_use"))), DebugValue::Gauge(g) if g.into_inner() == 0.0)
    );
    for h in [
        "queuepool_acquire_seconds",
        "queuepool_usage_seconds",
        "queuepool_connect_seconds",
    ] {
        assert!(
            matches!(find(h, None), DebugValue::Histogram(v) if !v.is_empty()),
            "{h}"
        );
    }
}
