//! Scenario 6: leak detection. A handler that holds its connection past
//! `leak_threshold` produces exactly one warning, naming where the connection was
//! checked out.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use queuepool::{Pool, PoolConfig};
use queuepool_axum::Db;
use queuepool_postgres::PgManager;
use queuepool_testkit::{TestDb, unique_name};

use crate::Ctx;
use crate::capture::Capture;
use crate::error::ChaosError;
use crate::load;
use crate::report::{Report, ms};

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// `leak_threshold`.
    pub threshold: Duration,
    /// How long the leaking handler holds its connection.
    pub hold: Duration,
    /// Well-behaved requests sent around the leaking one.
    pub quick_requests: usize,
}

impl Params {
    /// The only form (it is short).
    pub fn short() -> Params {
        Params {
            threshold: Duration::from_millis(200),
            hold: Duration::from_millis(600),
            quick_requests: 20,
        }
    }

    /// Same as [`Params::short`].
    pub fn full() -> Params {
        Params::short()
    }
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The parameters.
    pub params: Params,
    /// Leak warnings of the pool (handler with `pool.get()`).
    pub warnings: Vec<String>,
    /// `file:line` of the `pool.get()` in the leaking handler.
    pub expected_location: String,
    /// Leak warnings when the handler holds the `Db` extractor instead.
    pub extractor_warnings: Vec<String>,
    /// `stats().leaks` of the first pool.
    pub leaks_counted: u64,
    /// Quick requests answered 200.
    pub quick_ok: usize,
}

#[derive(Clone)]
struct AppState {
    pool: Pool<PgManager>,
    hold: Duration,
}

impl axum::extract::FromRef<AppState> for Pool<PgManager> {
    fn from_ref(s: &AppState) -> Pool<PgManager> {
        s.pool.clone()
    }
}

/// The line of the checkout in [`slow`], recorded when it runs.
static CHECKOUT_LINE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

async fn slow(State(s): State<AppState>) -> &'static str {
    let (conn, line) = (s.pool.get().await, line!());
    CHECKOUT_LINE.store(line, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(s.hold).await;
    drop(conn);
    "slow"
}

async fn quick(State(s): State<AppState>) -> &'static str {
    let conn = s.pool.get().await;
    drop(conn);
    "quick"
}

async fn slow_db(db: Db<PgManager>, State(s): State<AppState>) -> &'static str {
    tokio::time::sleep(s.hold).await;
    drop(db);
    "slow"
}

async fn serve_and_call(
    pool: Pool<PgManager>,
    p: &Params,
    slow_path: &str,
) -> Result<usize, ChaosError> {
    let app = Router::new()
        .route("/slow", get(slow))
        .route("/slow-db", get(slow_db))
        .route("/quick", get(quick))
        .with_state(AppState { pool, hold: p.hold });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(ChaosError::io("binding the leak test server"))?;
    let addr = listener
        .local_addr()
        .map_err(ChaosError::io("reading its address"))?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = load::client(4, Duration::from_secs(10))?;
    let base = format!("http://{addr}");
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}{slow_path}"));
        async move {
            load::send(&client, reqwest::Method::GET, &url, None)
                .await
                .0
        }
    });
    let mut ok = 0;
    for _ in 0..p.quick_requests {
        let (o, _) = load::send(
            &client,
            reqwest::Method::GET,
            &format!("{base}/quick"),
            None,
        )
        .await;
        ok += usize::from(o.is_ok());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = slow.await;
    // The warning is written by a timer task: give it a moment after the return.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.abort();
    Ok(ok)
}

fn leak_warnings(capture: &Capture, pool: &str) -> Vec<String> {
    capture
        .events()
        .into_iter()
        .filter(|e| {
            e.level == tracing::Level::WARN
                && e.message.contains("leak")
                && e.fields.contains(&format!("pool={pool} "))
        })
        .map(|e| e.line())
        .collect()
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "leak";
    let capture = Capture::start();
    let db = TestDb::create().await?;
    let name = unique_name("chaos_leak");
    let config = |name: &str| {
        PoolConfig::builder()
            .pool_size(2)
            .max_overflow(2)
            .leak_threshold(Some(p.threshold))
            .name(name)
            .build()
    };
    let pool = Pool::new(db.manager()?, config(&name)?).await?;
    ctx.phase(
        NAME,
        format!(
            "one handler holds its connection {} with leak_threshold {}",
            ms(p.hold),
            ms(p.threshold)
        ),
    );
    let quick_ok = serve_and_call(pool.clone(), p, "/slow").await?;
    let warnings = leak_warnings(&capture, &name);
    let leaks_counted = pool.stats().leaks;
    pool.close(Duration::from_secs(1)).await;

    let name2 = unique_name("chaos_leak_db");
    let pool2 = Pool::new(db.manager()?, config(&name2)?).await?;
    serve_and_call(pool2.clone(), p, "/slow-db").await?;
    let extractor_warnings = leak_warnings(&capture, &name2);
    pool2.close(Duration::from_secs(1)).await;
    let line = CHECKOUT_LINE.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Figures {
        params: p.clone(),
        warnings,
        expected_location: format!("{}:{line}", file!()),
        extractor_warnings,
        leaks_counted,
        quick_ok,
    })
}

impl Figures {
    /// Whether the single warning names the leaking handler's checkout.
    pub fn names_location(&self) -> bool {
        self.warnings.len() == 1 && self.warnings[0].contains(&self.expected_location)
    }

    /// Whether the extractor's warning names the handler: its file, or its route
    /// (`GET /slow-db`), not only the extractor's own location.
    pub fn extractor_names_handler(&self) -> bool {
        self.extractor_warnings.len() == 1
            && (self.extractor_warnings[0].contains(file!())
                || self.extractor_warnings[0].contains("GET /slow-db"))
    }

    /// The figures as a table.
    pub fn report(&self) -> Report {
        let p = &self.params;
        let mut r = Report::new(
            "6. Leak detection",
            format!(
                "An axum app on `Pool<PgManager>` with leak_threshold={}; one request to a handler that holds its connection {} \
                 among {} quick requests; then the same with the handler holding the `Db` extractor.",
                ms(p.threshold),
                ms(p.hold),
                p.quick_requests
            ),
        );
        r.check(
            "leak warnings (handler calling pool.get())",
            self.warnings.len(),
            "1",
            self.warnings.len() == 1,
        )
        .check(
            "warning names the checkout's file:line",
            self.names_location(),
            self.expected_location.clone(),
            self.names_location(),
        )
        .check(
            "stats().leaks",
            self.leaks_counted,
            "1",
            self.leaks_counted == 1,
        )
        .check(
            "quick requests answered",
            self.quick_ok,
            p.quick_requests.to_string(),
            self.quick_ok == p.quick_requests,
        )
        .info(
            "leak warnings (handler holding Db<M>)",
            self.extractor_warnings.len(),
        )
        .check(
            "Db<M> warning names the handler (file or route)",
            self.extractor_names_handler(),
            "true",
            self.extractor_names_handler(),
        );
        for w in self.warnings.iter().chain(&self.extractor_warnings) {
            r.note(format!("`{}`", w.trim()));
        }
        r
    }
}
