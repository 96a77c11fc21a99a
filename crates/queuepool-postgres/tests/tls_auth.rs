//! TLS modes and SCRAM against an ephemeral cluster (self-signed certificate for
//! `localhost`, SCRAM-SHA-256 passwords).

mod common;

use common::{TestResult, bounded};
use queuepool_postgres::{PgError, PgManager};
use queuepool_testkit::EphemeralCluster;

async fn uses_tls(manager: &PgManager) -> Result<bool, PgError> {
    let conn = manager.connect_one().await?;
    let row = conn
        .query_typed_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// One cluster for all TLS cases: starting one costs about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_and_scram_against_an_ephemeral_cluster() -> TestResult {
    bounded(60, async {
        let cluster = EphemeralCluster::new().await?;
        let port = cluster.port();

        // verify-full: chain and host name (the certificate is for "localhost").
        let full = PgManager::from_url(&cluster.url("verify-full"))?;
        assert!(uses_tls(&full).await?, "verify-full connects over TLS");
        // SCRAM-SHA-256-PLUS: channel binding works through the status-reading wrapper.
        let bound = PgManager::from_url(&format!("{}&channel_binding=require", cluster.url("verify-full")))?;
        assert!(uses_tls(&bound).await?);

        // verify-full with a host name the certificate does not name: a clear error.
        let wrong_host = PgManager::from_url(&cluster.url_for("127.0.0.1", port, "verify-full"))?;
        let err = wrong_host.connect_one().await.err().ok_or("expected a certificate error")?;
        let text = err.to_string();
        assert!(matches!(err, PgError::Connect { .. }), "{err:?}");
        assert!(text.contains("certificate not valid for name") && text.contains("127.0.0.1"), "{text}");

        // verify-ca: same chain, host name not checked.
        let ca = PgManager::from_url(&cluster.url_for("127.0.0.1", port, "verify-ca"))?;
        assert!(uses_tls(&ca).await?, "verify-ca accepts the chain under another name");

        // verify-ca or verify-full without sslrootcert: refused before connecting
        // (the system store is never used unless asked for).
        for mode in ["verify-ca", "verify-full"] {
            let url = format!("postgres://postgres:{}@127.0.0.1:{port}/postgres?sslmode={mode}", cluster.password());
            let err = PgManager::from_url(&url).err().ok_or("verify without sslrootcert must be refused")?;
            assert!(err.to_string().contains("needs sslrootcert"), "{err}");
        }

        // sslrootcert=system: the system roots and verify-full; the cluster's
        // self-signed certificate is unknown there.
        let system = format!(
            "postgres://postgres:{}@localhost:{port}/postgres?sslrootcert=system",
            cluster.password()
        );
        match PgManager::from_url(&system) {
            Ok(m) => {
                let err = m.connect_one().await.err().ok_or("expected an untrusted certificate")?;
                assert!(err.to_string().contains("UnknownIssuer") || err.to_string().contains("issuer"), "{err}");
            }
            // A machine without any system root certificate fails at parse time, clearly.
            Err(e) => assert!(e.to_string().contains("system root certificate"), "{e}"),
        }

        // require: encrypted, certificate not checked (no sslrootcert).
        let require = format!(
            "postgres://postgres:{}@127.0.0.1:{port}/postgres?sslmode=require",
            cluster.password()
        );
        assert!(uses_tls(&PgManager::from_url(&require)?).await?);

        // disable: plaintext (pg_hba allows SCRAM over plain TCP too).
        let plain = PgManager::from_url(&cluster.url_for("127.0.0.1", port, "disable"))?;
        assert!(!uses_tls(&plain).await?);

        // SCRAM with a wrong password: a clear authentication error, no password shown.
        let bad = format!(
            "postgres://postgres:WrongPassw0rd@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            cluster.root_cert_path().display()
        );
        let err = PgManager::from_url(&bad)?.connect_one().await.err().ok_or("expected auth failure")?;
        assert!(err.is_auth(), "{err:?}");
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"));
        assert!(err.to_string().contains("password authentication failed for user \"postgres\""), "{err}");
        assert!(!err.to_string().contains("WrongPassw0rd") && !format!("{err:?}").contains("WrongPassw0rd"));
        assert!(!format!("{:?}", PgManager::from_url(&bad)?).contains("WrongPassw0rd"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_status_is_read_through_tls_and_unix_sockets() -> TestResult {
    bounded(60, async {
        let cluster = EphemeralCluster::new().await?;
        let tls = PgManager::from_url(&cluster.url("verify-full"))?
            .connect_one()
            .await?;
        tls.simple_query("BEGIN").await?;
        assert_eq!(
            tls.transaction_status(),
            queuepool_postgres::TxStatus::InTransaction
        );
        tls.simple_query("ROLLBACK").await?;
        assert_eq!(tls.transaction_status(), queuepool_postgres::TxStatus::Idle);

        // A Unix socket directory as host: no TLS, messages framed from the first byte.
        let unix = format!(
            "host={} port={} user=postgres dbname=postgres",
            cluster.socket_dir().display(),
            cluster.port()
        );
        let conn = PgManager::from_url(&unix)?.connect_one().await?;
        assert_eq!(
            conn.transaction_status(),
            queuepool_postgres::TxStatus::Idle
        );
        conn.simple_query("BEGIN").await?;
        assert_eq!(
            conn.transaction_status(),
            queuepool_postgres::TxStatus::InTransaction
        );
        let row = conn
            .query_typed_one("SELECT inet_server_port()", &[])
            .await?;
        assert_eq!(
            row.get::<_, Option<i32>>(0),
            None,
            "connected over the Unix socket"
        );
        Ok(())
    })
    .await
}

/// Multi-host failover: the first host is read-only (`default_transaction_read_only`),
/// the second is the local server; `target_session_attrs=read-write` skips the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_host_with_read_write_target_skips_a_read_only_server() -> TestResult {
    bounded(60, async {
        let cluster = EphemeralCluster::new().await?;
        let admin = PgManager::from_url(&cluster.url("verify-full"))?.connect_one().await?;
        admin
            .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
            .await?;
        admin.batch_execute("SELECT pg_reload_conf()").await?;
        // The reload is asynchronous: wait until new sessions see it.
        let cluster_url = cluster.url("verify-full");
        let reloaded = common::eventually(std::time::Duration::from_secs(5), || async {
            let c = PgManager::from_url(&cluster_url)?.connect_one().await?;
            let row = c.query_typed_one("SHOW transaction_read_only", &[]).await?;
            Ok(row.get::<_, String>(0) == "on")
        })
        .await?;
        assert!(reloaded, "the cluster became read-only");
        let local = PgManager::from_url(&queuepool_testkit::database_url())?;
        let local_port = local.pg_config().get_ports().first().copied().unwrap_or(5432);
        let local_user = local.user().unwrap_or("postgres").to_owned();
        if local_user != "postgres" {
            return Ok(()); // the cluster only knows `postgres`; both hosts need one user
        }
        let hosts = |attrs: &str| {
            format!(
                "host=127.0.0.1,127.0.0.1 port={},{local_port} user=postgres password={} dbname=postgres sslmode=prefer {attrs}",
                cluster.port(),
                cluster.password()
            )
        };
        let port_of = |m: PgManager| async move {
            let c = m.connect_one().await?;
            let row = c.query_typed_one("SELECT inet_server_port()", &[]).await?;
            Ok::<i32, PgError>(row.get::<_, i32>(0))
        };
        assert_eq!(port_of(PgManager::from_url(&hosts(""))?).await?, i32::from(cluster.port()));
        assert_eq!(
            port_of(PgManager::from_url(&hosts("target_session_attrs=read-write"))?).await?,
            i32::from(local_port)
        );
        // And the first host unreachable: the second one is used.
        let dead = format!(
            "host=127.0.0.1,127.0.0.1 port={},{local_port} user=postgres dbname=postgres sslmode=disable connect_timeout=2",
            queuepool_testkit::free_port()?
        );
        assert_eq!(port_of(PgManager::from_url(&dead)?).await?, i32::from(local_port));
        Ok(())
    })
    .await
}
