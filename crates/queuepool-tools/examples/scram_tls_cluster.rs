//! Starts a throwaway PostgreSQL cluster with SCRAM-SHA-256 and TLS (the testkit's
//! `EphemeralCluster`), prints its `sslmode=verify-full` URL on stdout and keeps it
//! running until Ctrl-C or stdin closes: the server for measuring pooled against
//! unpooled over SCRAM+TLS.
//!
//! ```text
//! cargo run -p queuepool-tools --example scram_tls_cluster > /tmp/cluster-url &
//! queuepool bench --database-url "$(head -1 /tmp/cluster-url)" --concurrency 8
//! ```

use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = queuepool_testkit::EphemeralCluster::new().await?;
    println!("{}", cluster.url("verify-full"));
    std::io::stdout().flush()?;
    eprintln!("cluster on port {} (Ctrl-C to stop)", cluster.port());
    tokio::signal::ctrl_c().await?;
    drop(cluster);
    Ok(())
}
