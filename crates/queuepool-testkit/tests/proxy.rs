//! The fault proxy against a local echo server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use queuepool_testkit::{FaultMode, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn echo_server() -> Result<SocketAddr, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn round_trip(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    match tokio::time::timeout(limit, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Ok(buf.to_vec()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test]
async fn every_mode_does_what_it_says() -> TestResult {
    let proxy = FaultProxy::start(echo_server().await?).await?;
    let limit = Duration::from_millis(500);

    let mut a = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(round_trip(&mut a, limit).await?, b"ping");
    assert_eq!(proxy.open_connections(), 1);

    proxy.set_mode(FaultMode::Latency(Duration::from_millis(100)));
    let started = Instant::now();
    assert_eq!(round_trip(&mut a, Duration::from_secs(2)).await?, b"ping");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "delayed both ways"
    );

    proxy.set_mode(FaultMode::Blackhole);
    assert_eq!(round_trip(&mut a, limit).await, Err("timed out".into()));
    let mut b = TcpStream::connect(proxy.addr()).await?; // accepted...
    assert_eq!(round_trip(&mut b, limit).await, Err("timed out".into())); // ...and silent

    proxy.set_mode(FaultMode::RefuseNew);
    let mut c = TcpStream::connect(proxy.addr()).await?;
    let refused = round_trip(&mut c, limit).await;
    assert!(
        matches!(&refused, Err(e) if e != "timed out"),
        "{refused:?}"
    );

    proxy.set_mode(FaultMode::PassThrough);
    let mut d = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(round_trip(&mut d, limit).await?, b"ping");
    proxy.reset_all();
    let reset = round_trip(&mut d, limit).await;
    assert!(
        matches!(&reset, Err(e) if e != "timed out"),
        "reset: {reset:?}"
    );
    assert!(proxy.accepted_connections() >= 4);
    Ok(())
}
