//! Scenario 8: bad input. Property-based fuzzing (bounded proptest runs) of the URL and
//! configuration parsers, and of the HTTP API of the running service: no panic, a clear
//! JSON 4xx, the body size limited, nothing written on rejection.

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use queuepool_testkit::TestDb;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Ctx;
use crate::error::ChaosError;
use crate::load;
use crate::report::Report;
use crate::service::Service;

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// proptest cases for each parser property.
    pub parser_cases: u32,
    /// Random HTTP requests.
    pub http_cases: usize,
}

impl Params {
    /// The full form.
    pub fn full() -> Params {
        Params {
            parser_cases: 5_000,
            http_cases: 5_000,
        }
    }

    /// For tests.
    pub fn short() -> Params {
        Params {
            parser_cases: 512,
            http_cases: 400,
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// The parameters.
    pub params: Option<Params>,
    /// Each parser property and its failure (`None`: held for every case).
    pub parser_properties: Vec<(String, Option<String>)>,
    /// HTTP requests sent.
    pub http_sent: usize,
    /// Answers by status class: 2xx, 4xx, 5xx.
    pub by_class: [usize; 3],
    /// 4xx answers without a JSON `{"error": ...}` body.
    pub bare_4xx: Vec<String>,
    /// 5xx answers (and transport errors), with the request that caused them.
    pub server_errors: Vec<String>,
    /// Oversized bodies sent, and how many were answered 413.
    pub oversized: (usize, usize),
    /// Items in the table at the end, and items the accepted requests account for.
    pub rows: (i64, i64),
    /// Whether the seeded item still holds the last accepted write to it.
    pub seed_intact: bool,
    /// Whether the service was still running at the end.
    pub alive: bool,
}

const SECRET: &str = "Sekr1tPw0rd";

/// The name of the `redact_url` property (it found `postgres:///:pw@/`, where
/// `redact_url` and tokio-postgres disagreed on where the userinfo ends; fixed).
pub const REDACT_PROPERTY: &str =
    "redact_url: never panics, hides every password the PostgreSQL driver would use";

/// The name of the cross-backend URL property (it found parsers that quoted another
/// backend's URL, password included, in their errors; fixed).
pub const SQLITE_PROPERTY: &str =
    "any string given to the PostgreSQL or SQLite parser: its error never shows the password";

fn url_strategy() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just("postgres"),
        Just("postgresql"),
        Just("mysql"),
        Just("mariadb"),
        Just("sqlite"),
        Just("redis"),
        Just("")
    ];
    let piece = prop_oneof![
        "[a-z0-9]{0,8}",
        "\\PC{0,8}",
        "%[0-9A-Fa-f]{0,2}",
        Just("::".to_owned()),
        Just("[".to_owned())
    ];
    let port = prop_oneof![
        Just(String::new()),
        "[0-9]{1,7}".prop_map(|p| format!(":{p}")),
        "\\PC{0,4}".prop_map(|p| format!(":{p}"))
    ];
    let query = proptest::collection::vec(("[a-z_]{1,16}", "\\PC{0,10}"), 0..4).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    });
    prop_oneof![
        "\\PC{0,120}",
        (scheme, piece.clone(), piece.clone(), port, piece, query).prop_map(
            |(s, user, host, port, db, q)| {
                format!("{s}://{user}:{SECRET}@{host}{port}/{db}?{q}")
            }
        ),
        // Values without blanks: libpq reads `a= password=x` as `a` = `password=x`.
        ("[a-z_]{1,12}", "[A-Za-z0-9._-]{1,12}")
            .prop_map(|(k, v)| format!("host=h {k}={v} password={SECRET}")),
    ]
}

fn check(
    name: &str,
    cases: u32,
    f: impl Fn(&mut TestRunner) -> Result<(), String>,
) -> (String, Option<String>) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    (name.to_owned(), f(&mut runner).err())
}

fn no_secret(what: &str, text: &str) -> Result<(), TestCaseError> {
    if text.contains(SECRET) {
        return Err(TestCaseError::fail(format!(
            "{what} shows the password: {text}"
        )));
    }
    Ok(())
}

/// The parser properties.
pub fn parser_properties(cases: u32) -> Vec<(String, Option<String>)> {
    use queuepool::url::redact_url;
    use queuepool_cli::config::ServeConfig;
    let mut out = Vec::new();
    out.push(check("database URLs of each backend's own schemes: the parser returns (no panic); PostgreSQL and MySQL errors never show the password", cases, |runner| {
        use queuepool::url::Backend;
        runner
            .run(&url_strategy(), |url| {
                // Only a password in the place the URL grammar gives it (userinfo, or
                // `password=` of a key-value string) is a password.
                let has_password = url::Url::parse(&url).ok().is_some_and(|u| u.password() == Some(SECRET))
                    || url.starts_with("host=");
                if !has_password {
                    let _ = Backend::from_url(&url);
                    return Ok(());
                }
                match Backend::from_url(&url) {
                    Some(Backend::Postgres) => {
                        if let Err(e) = queuepool_postgres::PgManager::from_url(&url) {
                            no_secret("PgError", &format!("{e} {e:?}"))?;
                        }
                    }
                    Some(Backend::MySql) => {
                        if let Err(e) = queuepool_mysql::MySqlManager::from_url(&url) {
                            no_secret("MySqlError", &format!("{e} {e:?}"))?;
                        }
                    }
                    // SQLite URLs carry no password: only "no panic" applies.
                    Some(Backend::Sqlite) => drop(queuepool_sqlite::SqliteManager::from_url(&url)),
                    None => {}
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    }));
    out.push(check(SQLITE_PROPERTY, cases, |runner| {
        runner
            .run(&url_strategy(), |url| {
                // MySQL is left out: it quotes an unknown query parameter, and
                // `mysql://u?:pw@h/` has `:pw@h/` as one (see the crate's tests).
                if let Err(e) = queuepool_postgres::PgManager::from_url(&url) {
                    no_secret("PgError", &format!("{e} {e:?}"))?;
                }
                if let Err(e) = queuepool_sqlite::SqliteManager::from_url(&url) {
                    no_secret("SqliteError", &format!("{e} {e:?}"))?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    }));
    out.push(check(
        "redact_url: never panics, hides every password the PostgreSQL driver would use",
        cases,
        |runner| {
            runner
                .run(&url_strategy(), |url| {
                    let red = redact_url(&url);
                    let used = queuepool_postgres::PgManager::from_url(&url)
                        .ok()
                        .and_then(|m| m.pg_config().get_password().map(|p| p == SECRET.as_bytes()))
                        .unwrap_or(false);
                    if used {
                        no_secret("redact_url", &red)?;
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())
        },
    ));
    let value = prop_oneof![
        "\\PC{0,12}",
        "-?[0-9]{1,25}",
        "-?[0-9]{0,6}\\.[0-9]{0,6}(ms|s|m|h|x)?",
        Just(String::new())
    ];
    let keys = [
        "POOL_SIZE",
        "MAX_OVERFLOW",
        "POOL_TIMEOUT",
        "POOL_RECYCLE",
        "POOL_PRE_PING",
        "POOL_PRESET",
        "BIND",
        "SHUTDOWN_TIMEOUT",
    ];
    out.push(check(
        "queuepool serve settings: any flag values load or fail naming their key (environment variables go through the same value parsers)",
        cases,
        |runner| {
            let strat = (
                proptest::collection::vec(value.clone(), keys.len()),
                proptest::collection::vec(proptest::bool::ANY, keys.len()),
            );
            runner
                .run(&strat, |(values, given)| {
                    let url = format!("postgres://u:{SECRET}@127.0.0.1/db");
                    let mut argv = vec![
                        "queuepool".to_owned(),
                        "serve".to_owned(),
                        format!("--database-url={url}"),
                    ];
                    for ((key, value), given) in keys.iter().zip(&values).zip(&given) {
                        if *given {
                            argv.push(format!("--{}={value}", key.to_ascii_lowercase().replace('_', "-")));
                        }
                    }
                    let text = match queuepool_cli::cli::try_parse_from(&argv) {
                        Err(e) => e.to_string(),
                        Ok((queuepool_cli::cli::Cli { command: queuepool_cli::cli::Command::Serve(args), .. }, matches)) => {
                            let matches = matches.subcommand_matches("serve").unwrap_or(&matches);
                            match ServeConfig::load(&args, matches) {
                                Ok(c) => {
                                    no_secret("ServeConfig Debug", &format!("{c:?}"))?;
                                    return Ok(());
                                }
                                Err(e) => crate::error::chain(&e),
                            }
                        }
                        Ok(_) => return Err(TestCaseError::fail("not parsed as serve")),
                    };
                    no_secret("config error", &text)?;
                    let names = keys.iter().any(|k| {
                        text.contains(&format!("--{}", k.to_ascii_lowercase().replace('_', "-")))
                    }) || text.contains("pool_size");
                    prop_assert!(names, "error names no key: {}", text);
                    Ok(())
                })
                .map_err(|e| e.to_string())
        },
    ));
    out.push(check(
        "PoolConfig builder: any values build or fail with ConfigError (no panic)",
        cases,
        |runner| {
            let strat = (
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                proptest::option::of(any::<u64>()),
            );
            runner
                .run(
                    &strat,
                    |(size, overflow, timeout_ms, connect_ms, max_connecting, leak_ms)| {
                        let built = queuepool::PoolConfig::builder()
                            .pool_size(size)
                            .max_overflow(overflow)
                            .pool_timeout(Duration::from_millis(timeout_ms))
                            .connect_timeout(Duration::from_millis(connect_ms))
                            .max_connecting(max_connecting)
                            .leak_threshold(leak_ms.map(Duration::from_millis))
                            .build();
                        if let Ok(c) = built {
                            prop_assert!(c.pool_size <= queuepool::MAX_POOL_SIZE);
                        }
                        Ok(())
                    },
                )
                .map_err(|e| e.to_string())
        },
    ));
    out
}

/// A random request: method, path, body bytes, content type.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    json_type: bool,
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,30}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("name".to_owned()),
                    Just("price".to_owned()),
                    Just("description".to_owned()),
                    "\\PC{0,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn item_like() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just(Value::from("")),
        "\\PC{1,20}".prop_map(Value::from),
        "x{190,210}".prop_map(Value::from),
        Just(Value::from(5)),
        Just(Value::Null)
    ];
    let price = prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(Value::from("9.99")),
        Just(Value::from(-1)),
        Just(Value::Null),
        Just(json!(1e308))
    ];
    let desc = prop_oneof![
        Just(None::<Value>),
        Just(Some(Value::Null)),
        "\\PC{0,40}".prop_map(|s| Some(Value::from(s))),
        Just(Some(json!([1])))
    ];
    (name, price, desc).prop_map(|(n, p, d)| {
        let mut o = serde_json::Map::new();
        o.insert("name".into(), n);
        o.insert("price".into(), p);
        if let Some(d) = d {
            o.insert("description".into(), d);
        }
        Value::Object(o)
    })
}

fn request(seed_id: i64) -> impl Strategy<Value = Req> {
    let method = prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH)
    ];
    let id = prop_oneof![
        Just(seed_id.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        "[0-9]{19,30}",
        "\\PC{0,12}".prop_map(|s| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>()),
        Just("..%2F..%2Fetc%2Fpasswd".to_owned()),
        Just("%00".to_owned()),
        Just("1.5".to_owned()),
    ];
    let path = prop_oneof![
        Just("/items".to_owned()),
        id.prop_map(|i| format!("/items/{i}")),
        ("[0-9]{0,4}", "\\PC{0,6}").prop_map(|(l, o)| format!(
            "/items?limit={l}&offset={}",
            o.bytes().map(|b| format!("%{b:02X}")).collect::<String>()
        )),
        Just("/items/".to_owned()),
    ];
    let body = prop_oneof![
        2 => Just(None),
        3 => item_like().prop_map(|v| Some(v.to_string().into_bytes())),
        2 => json_value().prop_map(|v| Some(v.to_string().into_bytes())),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        1 => (65_000usize..200_000).prop_map(|n| Some(json!({"name": "x".repeat(n), "price": 1}).to_string().into_bytes())),
    ];
    (
        method,
        path,
        body,
        prop_oneof![4 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(method, path, body, json_type)| Req {
            method,
            path,
            body,
            json_type,
        })
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, p: &Params) -> Result<Figures, ChaosError> {
    const NAME: &str = "bad-input";
    ctx.phase(
        NAME,
        format!("parsers: {} proptest cases per property", p.parser_cases),
    );
    let cases = p.parser_cases;
    let parser_properties = tokio::task::spawn_blocking(move || parser_properties(cases))
        .await
        .map_err(|e| ChaosError::Unexpected(format!("parser fuzz task: {e}")))?;

    let db = TestDb::create().await?;
    let env = [
        ("DATABASE_URL", db.url().to_owned()),
        ("POOL_SIZE", "2".to_owned()),
    ];
    let mut service = Service::start(&ctx.serve_bin, &env, &[]).await?;
    let base = service.base_url();
    // A new connection for every request: the server may close a connection whose body
    // it did not read, and a reused one would then fail for the next request.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?;
    let seed_body = json!({"name": "seed", "description": "seed", "price": 1.0});
    let (o, j) = load::send(
        &client,
        Method::POST,
        &format!("{base}/items"),
        Some(&seed_body),
    )
    .await;
    let seed_id = match (o, j.and_then(|j| j["id"].as_i64())) {
        (load::Outcome::Ok(201), Some(id)) => id,
        (o, _) => {
            return Err(ChaosError::Unexpected(format!(
                "seeding an item: {}",
                o.label()
            )));
        }
    };
    ctx.phase(NAME, format!("HTTP: {} random requests", p.http_cases));
    let mut f = Figures {
        params: Some(p.clone()),
        parser_properties,
        ..Figures::default()
    };
    let mut created = 1i64;
    let mut deleted = 0i64;
    let mut seed_value = Some(seed_body);
    let mut runner = TestRunner::new(Config::default());
    let strategy = request(seed_id);
    for _ in 0..p.http_cases {
        let req = strategy
            .new_tree(&mut runner)
            .map_err(|e| ChaosError::Unexpected(format!("proptest: {e}")))?
            .current();
        let mut rb = client.request(req.method.clone(), format!("{base}{}", req.path));
        let big = req.body.as_ref().is_some_and(|b| b.len() > 64 * 1024);
        // Routes that read a JSON body: there an oversized one must be a 413.
        let reads_body = req.json_type
            && ((req.method == Method::POST && req.path == "/items")
                || (req.method == Method::PUT
                    && req
                        .path
                        .strip_prefix("/items/")
                        .is_some_and(|id| id.parse::<i64>().is_ok())));
        let big = big && reads_body;
        if let Some(b) = &req.body {
            if req.json_type {
                rb = rb.header("content-type", "application/json");
            }
            rb = rb.body(b.clone());
        }
        f.http_sent += 1;
        f.oversized.0 += usize::from(big);
        let described = format!(
            "{} {} body={}",
            req.method,
            req.path,
            req.body.as_ref().map_or(0, Vec::len)
        );
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                f.server_errors.push(format!("{described}: transport: {e}"));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        match status {
            200..=299 => {
                f.by_class[0] += 1;
                if status == 201 {
                    created += 1;
                }
                if status == 204 {
                    deleted += 1;
                    if req.path == format!("/items/{seed_id}") {
                        seed_value = None;
                    }
                }
                if status == 200
                    && req.method == Method::PUT
                    && req.path == format!("/items/{seed_id}")
                {
                    seed_value = req
                        .body
                        .as_ref()
                        .and_then(|b| serde_json::from_slice(b).ok());
                }
            }
            400..=499 => {
                f.by_class[1] += 1;
                f.oversized.1 += usize::from(big && status == 413);
                if body.as_ref().and_then(|b| b["error"].as_str()).is_none() {
                    f.bare_4xx.push(format!(
                        "{described} -> {status} {}",
                        String::from_utf8_lossy(&bytes)
                            .chars()
                            .take(80)
                            .collect::<String>()
                    ));
                }
            }
            _ => {
                f.by_class[2] += 1;
                f.server_errors.push(format!("{described} -> {status}"));
            }
        }
    }
    f.alive = service.is_running();
    let obs = db.observer().await?;
    let rows = obs
        .query("SELECT count(*) FROM items", &[])
        .await
        .map_err(queuepool_postgres::PgError::from)?;
    f.rows = (rows.first().map_or(-1, |r| r.get(0)), created - deleted);
    let seed = obs
        .query(
            "SELECT name, description, price FROM items WHERE id = $1",
            &[&seed_id],
        )
        .await
        .map_err(queuepool_postgres::PgError::from)?;
    f.seed_intact = match (seed.first(), &seed_value) {
        (None, None) => true,
        (Some(r), Some(v)) => {
            let (name, desc, price): (String, Option<String>, f64) = (r.get(0), r.get(1), r.get(2));
            v["name"].as_str() == Some(name.as_str())
                && v["description"].as_str() == desc.as_deref()
                && v["price"].as_f64() == Some(price)
        }
        _ => false,
    };
    let _ = service.stop(Duration::from_secs(15)).await?;
    Ok(f)
}

impl Figures {
    /// The figures as a table.
    pub fn report(&self) -> Report {
        let p = self.params.clone().unwrap_or_else(Params::short);
        let mut r = Report::new(
            "8. Bad input",
            format!(
                "proptest, {} cases per parser property (database URLs for the three backends with a password inside, `redact_url`, \
                 `queuepool serve` settings from flags and environment, the pool builder); then {} random requests against \
                 `queuepool serve` (random methods, ids, query strings, JSON values, item-shaped bodies with wrong types, random bytes, \
                 bodies of 65-200 KB, with and without `Content-Type: application/json`).",
                p.parser_cases, p.http_cases
            ),
        );
        for (name, failure) in &self.parser_properties {
            r.check(
                name.clone(),
                if failure.is_none() { "held" } else { "FAILED" },
                "held",
                failure.is_none(),
            );
        }
        r.info("HTTP requests", self.http_sent)
            .info(
                "answers 2xx / 4xx",
                format!("{} / {}", self.by_class[0], self.by_class[1]),
            )
            .check(
                "5xx answers or dropped connections",
                self.server_errors.len(),
                "0",
                self.server_errors.is_empty(),
            )
            .check(
                "4xx without a JSON error body",
                self.bare_4xx.len(),
                "0",
                self.bare_4xx.is_empty(),
            )
            .check(
                "oversized JSON bodies to POST /items and PUT /items/{id} answered 413",
                format!("{} of {}", self.oversized.1, self.oversized.0),
                "all",
                self.oversized.0 == self.oversized.1,
            )
            .check(
                "rows in the table / rows accepted requests account for",
                format!("{} / {}", self.rows.0, self.rows.1),
                "equal",
                self.rows.0 == self.rows.1,
            )
            .check(
                "seeded item holds the last accepted write",
                self.seed_intact,
                "true",
                self.seed_intact,
            )
            .check("service still running", self.alive, "true", self.alive);
        for (name, failure) in &self.parser_properties {
            if let Some(f) = failure {
                r.note(format!(
                    "{name}: {}",
                    f.chars().take(300).collect::<String>()
                ));
            }
        }
        for e in self.server_errors.iter().chain(&self.bare_4xx).take(5) {
            r.note(e.clone());
        }
        r
    }
}
