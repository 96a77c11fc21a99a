//! [`ReplicaSet`] against real servers: streaming, apply delay, blackhole, kill,
//! promotion.

use std::time::{Duration, Instant};

use queuepool_postgres::PgManager;
use queuepool_testkit::ReplicaSet;
use tokio_postgres::SimpleQueryMessage;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn one(url: &str, sql: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let conn = PgManager::from_url(url)?.connect_one().await?;
    let rows = conn.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .unwrap_or_default())
}

#[tokio::test]
async fn standbys_stream_delay_die_and_take_over() -> TestResult {
    let mut set = ReplicaSet::new(2).await?;
    assert_eq!(set.len(), 3);
    assert!(!set.is_in_recovery(0).await?);
    assert!(set.is_in_recovery(1).await?);
    assert!(set.is_in_recovery(2).await?);

    // Writes on the primary reach both standbys, through their proxies.
    one(
        &set.node_url(0),
        "CREATE TABLE t(v int); INSERT INTO t VALUES (1)",
    )
    .await?;
    for i in [1, 2] {
        set.wait_caught_up(0, i, Duration::from_secs(10)).await?;
        assert_eq!(one(&set.node_url(i), "SELECT count(*) FROM t").await?, "1");
    }

    // A replay delay on standby 2: a new row shows on standby 1 at once, on 2 later.
    set.set_apply_delay(2, Duration::from_millis(1500)).await?;
    one(&set.node_url(0), "INSERT INTO t VALUES (2)").await?;
    set.wait_caught_up(0, 1, Duration::from_secs(10)).await?;
    assert_eq!(one(&set.node_url(1), "SELECT count(*) FROM t").await?, "2");
    assert_eq!(one(&set.node_url(2), "SELECT count(*) FROM t").await?, "1");
    set.wait_caught_up(0, 2, Duration::from_secs(10)).await?;
    assert_eq!(one(&set.node_url(2), "SELECT count(*) FROM t").await?, "2");

    // Blackholed: a connection attempt through the proxy gets no answer; healed, it works.
    set.blackhole(0);
    let silent = tokio::time::timeout(
        Duration::from_millis(500),
        one(&set.node_url(0), "SELECT 1"),
    )
    .await;
    assert!(silent.is_err(), "a blackholed node must not answer");
    set.heal(0);
    assert_eq!(one(&set.node_url(0), "SELECT 1").await?, "1");

    // Standby 2 killed: the others carry on.
    set.cluster_mut(2).kill().await?;
    assert!(!set.cluster(2).is_running());
    assert!(one(&set.node_url(2), "SELECT 1").await.is_err());

    // Standby 1 promoted while the primary is silent: it takes writes at once.
    set.blackhole(0);
    let started = Instant::now();
    set.promote(1).await?;
    assert!(!set.is_in_recovery(1).await?);
    one(&set.node_url(1), "INSERT INTO t VALUES (3)").await?;
    assert_eq!(one(&set.node_url(1), "SELECT count(*) FROM t").await?, "3");
    assert!(started.elapsed() < Duration::from_secs(30));

    // The multi-host URL lists every proxy in node order.
    let url = set.url(&[("target_session_attrs", "read-write")]);
    for i in 0..set.len() {
        assert!(
            url.contains(&format!("127.0.0.1:{}", set.proxy(i).port())),
            "{url}"
        );
    }
    assert!(url.ends_with("target_session_attrs=read-write"), "{url}");
    Ok(())
}
