//! The live dashboard of `queuepool serve`, in headless Chromium (Debian's `chromium`
//! and `chromium-driver`; `.ci/run` installs them): load `/dashboard`, drive a burst of
//! slow requests, and read from the page's DOM that the in-use figure rose and fell;
//! with `pool_size = auto`, that the chart draws the adaptive limit as a line while a
//! load makes it move. Screenshots are saved as `$CARGO_TARGET_TMPDIR/dashboard.png`
//! and `dashboard-auto.png`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get as route_get;
use base64::Engine;
use common::*;
use queuepool_axum::Db;
use queuepool_cli::serve::{AppState, routes};
use queuepool_sqlite::SqliteManager;
use serde_json::{Value, json};

/// A WebDriver session on chromedriver (the W3C protocol over HTTP, by hand).
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = queuepool_testkit::free_port().expect("free port");
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver must be installed (apt-get install chromium chromium-driver)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--window-size=1400,1000"]
            }
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Browser {
            http,
            base,
            session,
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let reply: Value = request
            .send()
            .await
            .expect("webdriver request")
            .json()
            .await
            .expect("webdriver JSON");
        reply["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// Runs `script` in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn text(&self, id: &str) -> String {
        self.eval(&format!(
            "return document.getElementById('{id}').textContent"
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    async fn screenshot(&self) -> Vec<u8> {
        let data = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(
                data.as_str()
                    .unwrap_or_else(|| panic!("no screenshot: {data}")),
            )
            .expect("valid base64")
    }

    async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

/// Pixels of the connections chart painted exactly in the limit line's colour.
const LIMIT_PIXELS: &str = "const c = document.getElementById('chart-connections'); \
    const hex = getComputedStyle(document.documentElement).getPropertyValue('--limit').trim(); \
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); \
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
    let n = 0; for (let i = 0; i < d.length; i += 4) \
      if (d[i] === r && d[i + 1] === g && d[i + 2] === b && d[i + 3] === 255) n++; \
    return n;";

/// Rows of the connections chart holding a horizontal run of the limit line's colour
/// (at least 15 pixels): one pair of rows per level the limit held.
const LIMIT_ROWS: &str = "const c = document.getElementById('chart-connections'); \
    const hex = getComputedStyle(document.documentElement).getPropertyValue('--limit').trim(); \
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); \
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
    const rows = []; \
    for (let y = 0; y < c.height; y++) { let n = 0; \
      for (let x = 0; x < c.width; x++) { const i = 4 * (y * c.width + x); \
        if (d[i] === r && d[i + 1] === g && d[i + 2] === b && d[i + 3] === 255) n++; } \
      if (n >= 15) rows.push(y); } \
    return rows;";

/// Polls the page until `ok(in_use)` or the deadline; returns the last figure.
async fn wait_in_use(browser: &Browser, what: &str, ok: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shown = browser.text("in-use").await.parse::<i64>().unwrap_or(-1);
        if ok(shown) {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the page shows in use = {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_shows_in_use_rise_and_fall_during_a_burst() {
    let db = SqliteDb::new();
    let pool = db.pool(config(2, 3, Duration::from_secs(5))).await;
    // The service's own routes (with /dashboard) plus a slow route holding its connection.
    let app = routes::<SqliteManager>(None)
        .route(
            "/slow",
            route_get(|db: Db<SqliteManager>| async move {
                tokio::time::sleep(Duration::from_millis(3000)).await;
                drop(db);
                StatusCode::OK
            }),
        )
        .with_state(AppState { pool: pool.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/dashboard")).await;
    wait_in_use(&browser, "page live before the burst", |n| n == 0).await;
    assert_eq!(browser.text("conn-state").await, "live");

    let client = reqwest::Client::new();
    let burst: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get(format!("http://{addr}/slow"))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    let peak = wait_in_use(&browser, "in use rises during the burst", |n| n >= 4).await;
    assert_eq!(peak, 4);
    for request in burst {
        assert_eq!(request.await.unwrap().unwrap(), reqwest::StatusCode::OK);
    }
    wait_in_use(&browser, "in use falls after the burst", |n| n == 0).await;
    assert_eq!(browser.text("in-use-peak").await, "4");
    assert_eq!(browser.text("max-connections").await, "5");
    let rate: f64 = browser.text("rate").await.parse().unwrap_or(-1.0);
    assert!(rate >= 0.0);
    // The connections chart has drawn something.
    let drawn = browser
        .eval(
            "const c = document.getElementById('chart-connections'); \
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
               let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;",
        )
        .await;
    assert!(drawn.as_u64().unwrap_or(0) > 1000, "chart pixels: {drawn}");
    // A fixed pool has no adaptive limit: no line of its colour, no legend.
    assert_eq!(browser.eval(LIMIT_PIXELS).await, json!(0));
    assert_eq!(
        browser
            .eval("return document.getElementById('limit-legend').hidden")
            .await,
        json!(true)
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    browser.quit().await;
    pool.close(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_draws_the_auto_limit_as_it_moves() {
    let db = SqliteDb::new();
    let config = queuepool::PoolConfig::builder()
        .pool_size(2)
        .auto_size(2, 8)
        .pool_timeout(Duration::from_secs(10))
        .name("test")
        .build()
        .expect("valid config");
    let pool = db.pool(config).await;
    // A route that holds its connection 20 ms, as a query to a far database would:
    // under a load of 24 clients the controller finds headroom and raises the limit.
    let app = routes::<SqliteManager>(None)
        .route(
            "/far",
            route_get(|db: Db<SqliteManager>| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(db);
                StatusCode::OK
            }),
        )
        .with_state(AppState { pool: pool.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/dashboard")).await;
    wait_in_use(&browser, "page live before the load", |n| n == 0).await;
    // Four seconds at the floor first, so that the line has a level to rise from
    // (about 10 pixels a second on a chart of the last minute).
    tokio::time::sleep(Duration::from_millis(4200)).await;
    assert_eq!(browser.text("limit").await, "2");
    assert_eq!(
        browser
            .eval("return document.getElementById('limit-legend').hidden")
            .await,
        json!(false)
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = reqwest::Client::new();
    let load: Vec<_> = (0..24)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = client.get(format!("http://{addr}/far")).send().await;
                    assert_eq!(r.map(|r| r.status()).ok(), Some(reqwest::StatusCode::OK));
                }
            })
        })
        .collect();
    // The page's readout follows the pool's limit up to the ceiling.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = browser.text("limit").await;
        if shown == "8" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page shows limit {shown}, the pool {}",
            pool.status().limit
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(browser.text("limit-reason").await, "headroom");
    // Three more samples at the ceiling, then stop the load.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    // The line is drawn: pixels of its colour, in horizontal runs at (at least) two
    // levels (the floor before the load, the ceiling under it).
    let pixels = browser.eval(LIMIT_PIXELS).await.as_u64().unwrap_or(0);
    assert!(pixels > 100, "limit pixels: {pixels}");
    let rows: Vec<u64> = serde_json::from_value(browser.eval(LIMIT_ROWS).await).unwrap();
    let levels = rows.windows(2).filter(|w| w[1] > w[0] + 1).count() + 1;
    assert!(
        levels >= 2 && !rows.is_empty(),
        "rows of the limit line: {rows:?}"
    );

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-auto.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    browser.quit().await;
    pool.close(Duration::from_secs(2)).await;
}
