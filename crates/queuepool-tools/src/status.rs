//! `queuepool status`: reads a running service's `GET /pool` and prints it; `--watch`
//! refreshes it every second with the checkout rate.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::args::parse_duration;
use crate::error::ToolsError;

/// Options of `queuepool status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Base URL of the running service
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Refresh until interrupted (Ctrl-C)
    #[arg(long)]
    pub watch: bool,
    /// Refresh interval with --watch
    #[arg(long, value_name = "SECONDS", default_value = "1")]
    pub interval: String,
    /// Print the service's JSON as it is
    #[arg(long)]
    pub json: bool,
}

/// `<base>/pool`, checked to be an http(s) URL.
pub fn pool_url(base: &str) -> Result<String, ToolsError> {
    let trimmed = base.trim();
    // `127.0.0.1:8000` or `localhost:8000`: the scheme is missing; say which to add.
    let hint = if trimmed.contains("://") {
        String::new()
    } else {
        format!(" (did you mean \"http://{trimmed}\"?)")
    };
    let parsed = url::Url::parse(trimmed)
        .map_err(|e| ToolsError::arg("--url", format!("invalid URL {base:?}: {e}{hint}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ToolsError::arg(
            "--url",
            format!("invalid URL {base:?}: expected http:// or https://{hint}"),
        ));
    }
    Ok(format!("{}/pool", parsed.as_str().trim_end_matches('/')))
}

/// Fetches the `/pool` report.
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Value, ToolsError> {
    let http = |source| ToolsError::Http {
        url: url.to_owned(),
        source,
    };
    let response = client.get(url).send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            // The innermost cause says it best ("Connection refused (os error 111)").
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            ToolsError::Unreachable {
                url: url.to_owned(),
                reason: cause.to_string(),
            }
        } else {
            http(e)
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(ToolsError::BadReply {
            url: url.to_owned(),
            reason: format!("HTTP {status}"),
        });
    }
    let value: Value = response.json().await.map_err(http)?;
    if value.get("pool_size").is_none() || value.get("stats").is_none() {
        return Err(ToolsError::BadReply {
            url: url.to_owned(),
            reason: "no pool_size or stats field: is this a queuepool service?".into(),
        });
    }
    Ok(value)
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_f64().unwrap_or(0.0)
}

/// The report as text; `rate` is checkouts per second since the previous sample.
pub fn render(v: &Value, rate: Option<f64>) -> String {
    let int = |path: &[&str]| num(v, path) as i64;
    let max = match &v["config"]["max_connections"] {
        Value::Null => "unlimited".to_owned(),
        other => other.to_string(),
    };
    let mut out = format!(
        "pool {}: {}\n",
        v["name"].as_str().unwrap_or("?"),
        v["status"].as_str().unwrap_or("")
    );
    out.push_str(&format!(
        "  connections  idle {}  in use {}  waiting {}  connecting {}  overflow {}  (pool_size {}, max {max})\n",
        int(&["idle"]),
        int(&["checked_out"]),
        int(&["waiting"]),
        int(&["connecting"]),
        int(&["overflow"]),
        int(&["pool_size"]),
    ));
    out.push_str(&format!(
        "  counters     checkouts {}  timeouts {}  opened {}  closed {}  invalidated {}  recycled {}  connect errors {}\n",
        int(&["stats", "checkouts"]),
        int(&["stats", "timeouts"]),
        int(&["stats", "connections_created"]),
        int(&["stats", "closed"]),
        int(&["stats", "invalidated"]),
        int(&["stats", "recycled"]),
        int(&["stats", "connect_errors"]),
    ));
    for (label, key) in [("wait ", "wait"), ("usage", "usage")] {
        out.push_str(&format!(
            "  {label}        p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  mean {:.3} ms\n",
            num(v, &["stats", key, "p50_ms"]),
            num(v, &["stats", key, "p99_ms"]),
            num(v, &["stats", key, "max_ms"]),
            num(v, &["stats", key, "mean_ms"]),
        ));
    }
    if let Some(rate) = rate {
        out.push_str(&format!("  rate         {rate:.1} checkouts/s\n"));
    }
    out
}

/// Prints the status once, or until Ctrl-C with `--watch`.
pub async fn run(args: &StatusArgs) -> Result<(), ToolsError> {
    let url = pool_url(&args.url)?;
    let interval = parse_duration("--interval", &args.interval)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| ToolsError::Http {
            url: url.clone(),
            source,
        })?;
    let first = fetch(&client, &url).await?;
    if !args.watch {
        if args.json {
            println!("{first}");
        } else {
            print!("{}", render(&first, None));
        }
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    let mut previous = (Instant::now(), num(&first, &["stats", "checkouts"]));
    let mut current = Ok(first);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        match &current {
            Ok(v) if args.json => println!("{v}"),
            Ok(v) => {
                let now = Instant::now();
                let checkouts = num(v, &["stats", "checkouts"]);
                let secs = now.duration_since(previous.0).as_secs_f64();
                let rate = (secs > 0.01).then(|| (checkouts - previous.1).max(0.0) / secs);
                previous = (now, checkouts);
                if tty {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render(v, rate));
                println!(
                    "  (every {:.1} s from {url}; Ctrl-C to stop)",
                    interval.as_secs_f64()
                );
            }
            Err(e) => println!("{}", crate::error::chain(e)),
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
        current = fetch(&client, &url).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http() {
        assert_eq!(
            pool_url("http://127.0.0.1:8000/").unwrap(),
            "http://127.0.0.1:8000/pool"
        );
        let err = pool_url("ftp://x").unwrap_err().to_string();
        assert!(err.starts_with("--url: invalid URL"), "{err}");
        assert!(pool_url("not a url").is_err());
        for bare in ["127.0.0.1:8123", "localhost:8123"] {
            let err = pool_url(bare).unwrap_err().to_string();
            assert!(
                err.contains(&format!("did you mean \"http://{bare}\"?")),
                "{err}"
            );
        }
        let err = pool_url("ftp://x").unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn renders_every_figure() {
        let v = serde_json::json!({
            "name": "serve", "status": "Pool size: 5  Connections in pool: 4 Current Overflow: 0 Current Checked out connections: 1",
            "pool_size": 5, "idle": 4, "checked_out": 1, "overflow": 0, "connecting": 0, "waiting": 2,
            "stats": {"checkouts": 10, "timeouts": 3, "connections_created": 5, "closed": 0, "invalidated": 0,
                      "recycled": 0, "connect_errors": 0,
                      "wait": {"p50_ms": 0.1, "p99_ms": 2.5, "max_ms": 3.0, "mean_ms": 0.2},
                      "usage": {"p50_ms": 1.0, "p99_ms": 4.0, "max_ms": 5.0, "mean_ms": 1.5}},
            "config": {"max_connections": 15}
        });
        let text = render(&v, Some(12.0));
        for needle in [
            "in use 1",
            "waiting 2",
            "timeouts 3",
            "p99 2.500 ms",
            "max 15",
            "12.0 checkouts/s",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }
}
