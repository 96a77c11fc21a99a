//! Multi-host connection strings as libpq reads them: `connect_timeout` per host, and
//! `target_session_attrs` against a real primary + streaming standby pair.

mod common;

use std::time::{Duration, Instant};

use common::{TestResult, bounded};
use queuepool::{Pool, PoolConfig};
use queuepool_postgres::{PgError, PgManager};
use queuepool_testkit::{FaultMode, FaultProxy, ReplicaSet, TestDb};

/// The test database's URL listing `first` then `second` (proxies on 127.0.0.1).
fn two_hosts(
    db: &TestDb,
    first: u16,
    second: u16,
    extra: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let one = db.url_via("127.0.0.1", first)?;
    let two = one.replacen(
        &format!("127.0.0.1:{first}"),
        &format!("127.0.0.1:{first},127.0.0.1:{second}"),
        1,
    );
    Ok(format!("{two}{extra}"))
}

async fn server_proxy(db: &TestDb) -> Result<FaultProxy, Box<dyn std::error::Error + Send + Sync>> {
    let m = db.manager()?;
    let host = match m.pg_config().get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = m.pg_config().get_ports().first().copied().unwrap_or(5432);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
        .next()
        .ok_or("server address did not resolve")?;
    Ok(FaultProxy::start(addr).await?)
}

fn config(size: u32, connect_timeout: Duration) -> Result<PoolConfig, queuepool::ConfigError> {
    PoolConfig::builder()
        .pool_size(size)
        .max_overflow(0)
        .pool_timeout(Duration::from_secs(5))
        .connect_timeout(connect_timeout)
        .build()
}

#[tokio::test]
async fn a_silent_first_host_costs_each_connect_one_connect_timeout_then_the_second_serves()
-> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let silent = server_proxy(&db).await?;
        silent.set_mode(FaultMode::Blackhole);
        let healthy = server_proxy(&db).await?;
        let url = two_hosts(&db, silent.port(), healthy.port(), "&connect_timeout=1")?;
        let second = format!("127.0.0.1:{}", healthy.port());
        let per_host = Duration::from_secs(1);
        let margin = Duration::from_millis(1500);

        // libpq's fixed order (no memory of the silent host): every connect waits one
        // connect_timeout on the first host, then succeeds on the second, well within
        // the pool's connect_timeout of 5 s (one deadline for the list would be used up
        // by the first host).
        let manager = PgManager::from_url(&url)?.host_recheck(Duration::ZERO);
        let started = Instant::now();
        let pool = Pool::new(manager.clone(), config(1, Duration::from_secs(5))?).await?;
        let took = started.elapsed();
        assert!(
            took >= per_host && took < per_host + margin,
            "Pool::new took {took:?}"
        );
        let conn = pool.get().await?;
        assert_eq!(conn.host(), Some(second.as_str()));
        conn.simple_query("SELECT 1").await?;
        for _ in 0..2 {
            let started = Instant::now();
            let conn = manager.connect_one().await?;
            let took = started.elapsed();
            assert!(
                took >= per_host && took < per_host + margin,
                "connect took {took:?}"
            );
            assert_eq!(conn.host(), Some(second.as_str()));
        }

        // With the default memory, the host found silent goes last: later connects go
        // straight to the second host.
        let manager = PgManager::from_url(&url)?;
        manager.connect_one().await?;
        let started = Instant::now();
        let conn = manager.connect_one().await?;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(conn.host(), Some(second.as_str()));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn without_a_connect_timeout_in_the_url_each_host_gets_a_share_of_the_pools() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let silent = server_proxy(&db).await?;
        silent.set_mode(FaultMode::Blackhole);
        let healthy = server_proxy(&db).await?;
        let url = two_hosts(&db, silent.port(), healthy.port(), "")?;
        let pool_connect = Duration::from_secs(2);

        let shared = PgManager::from_url(&url)?
            .host_recheck(Duration::ZERO)
            .pool_connect_timeout(pool_connect);
        let started = Instant::now();
        let pool = Pool::new(shared, config(1, pool_connect)?).await?;
        let took = started.elapsed();
        assert!(
            took >= pool_connect / 2 && took < pool_connect,
            "Pool::new took {took:?}"
        );
        assert_eq!(
            pool.get().await?.host(),
            Some(format!("127.0.0.1:{}", healthy.port()).as_str())
        );

        // Unshared (libpq without connect_timeout: no bound per host), the silent host
        // uses up the pool's whole connect_timeout.
        let unshared = PgManager::from_url(&url)?.host_recheck(Duration::ZERO);
        match Pool::new(unshared, config(1, pool_connect)?).await {
            Err(queuepool::PoolError::ConnectTimeout(_)) => {}
            Err(e) => return Err(format!("unexpected error {e}").into()),
            Ok(_) => return Err("the silent first host should have used up the deadline".into()),
        }
        Ok(())
    })
    .await
}

/// Where a fresh manager for `url` connects: the node index (by proxy port), or the
/// error.
async fn lands_on(set: &ReplicaSet, url: &str) -> Result<usize, PgError> {
    let conn = PgManager::from_url(url)?.connect_one().await?;
    let host = conn.host().unwrap_or_default().to_owned();
    Ok((0..set.len())
        .find(|&i| host == format!("127.0.0.1:{}", set.proxy(i).port()))
        .unwrap_or(usize::MAX))
}

#[tokio::test]
async fn target_session_attrs_picks_the_server_libpq_would() -> TestResult {
    bounded(120, async {
        let set = ReplicaSet::new(1).await?;
        let (primary, standby) = (0usize, 1usize);
        let both_orders = [[primary, standby], [standby, primary]];
        for (attrs, expected) in [
            ("read-write", Some(primary)),
            ("primary", Some(primary)),
            ("read-only", Some(standby)),
            ("standby", Some(standby)),
            ("prefer-standby", Some(standby)),
            ("any", None), // the first listed
        ] {
            for order in both_orders {
                let url = set.url_of(&order, &[("target_session_attrs", attrs)]);
                let node = lands_on(&set, &url).await?;
                let want = expected.unwrap_or(order[0]);
                assert_eq!(node, want, "{attrs} with hosts {order:?}");
            }
        }

        // Alone, a server of the wrong kind is refused with a clear error...
        for (attrs, node) in [
            ("standby", primary),
            ("read-only", primary),
            ("primary", standby),
            ("read-write", standby),
        ] {
            let url = set.url_of(&[node], &[("target_session_attrs", attrs)]);
            let err = lands_on(&set, &url).await.expect_err(attrs).to_string();
            assert!(
                err.contains(&format!("target_session_attrs={attrs}")),
                "{attrs}: {err}"
            );
        }
        // ...except by prefer-standby, which takes any server when none is a standby.
        let url = set.url_of(&[primary], &[("target_session_attrs", "prefer-standby")]);
        assert_eq!(lands_on(&set, &url).await?, primary);

        // read-write / read-only look at the session's default, primary / standby at the
        // server's recovery state: a primary whose sessions default to read-only is
        // read-only and still a primary.
        let ro_primary = |attrs: &str| {
            set.url_of(
                &[primary, standby],
                &[
                    ("target_session_attrs", attrs),
                    ("options", "-c default_transaction_read_only=on"),
                ],
            )
        };
        assert_eq!(lands_on(&set, &ro_primary("read-only")).await?, primary);
        assert_eq!(lands_on(&set, &ro_primary("primary")).await?, primary);
        assert!(lands_on(&set, &ro_primary("read-write")).await.is_err());
        Ok(())
    })
    .await
}
