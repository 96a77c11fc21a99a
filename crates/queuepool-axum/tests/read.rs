//! The `DbRead` extractor over a fake two-server router: the client's token reaches the
//! router, a malformed one is a 422 that checks nothing out, a retry after a
//! disconnect goes elsewhere, and a single pool ignores tokens and issues none.

use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::FromRef;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::get;
use queuepool::{Manager, Pool, PoolConfig};
use queuepool_axum::{
    BoxFuture, DbError, DbRead, READ_AFTER, ReadRoute, ReadRouter, Reads, RoutedConn,
};
use tower::ServiceExt;

#[derive(Debug, thiserror::Error)]
#[error("server closed the connection unexpectedly")]
struct Gone;

struct Fake;

impl Manager for Fake {
    type Connection = ();
    type Error = Gone;

    async fn connect(&self) -> Result<(), Gone> {
        Ok(())
    }
    async fn is_valid(&self, _: &mut ()) -> Result<(), Gone> {
        Ok(())
    }
    async fn reset(&self, _: &mut ()) -> Result<(), Gone> {
        Ok(())
    }
    fn is_disconnect(&self, _: &Gone) -> bool {
        true
    }
}

async fn pool() -> Pool<Fake> {
    let config = PoolConfig::builder()
        .pool_size(1)
        .max_overflow(0)
        .pool_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    Pool::new(Fake, config).await.unwrap()
}

/// Reads go to the standby unless it is avoided; records what it was asked.
struct TwoServers {
    primary: Pool<Fake>,
    standby: Pool<Fake>,
    asked: Mutex<Vec<(Option<String>, Option<String>)>>,
    failed: Mutex<Vec<String>>,
}

impl ReadRouter<Fake> for TwoServers {
    fn checkout<'a>(
        &'a self,
        after: Option<&'a str>,
        avoid: Option<&'a ReadRoute>,
    ) -> BoxFuture<'a, Result<RoutedConn<Fake>, DbError>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push((
                after.map(str::to_owned),
                avoid.map(|r| r.label().to_owned()),
            ));
            if avoid.is_some_and(|r| r.standby_index() == Some(0)) {
                Ok(RoutedConn {
                    conn: self.primary.get().await?,
                    route: ReadRoute::primary(),
                })
            } else {
                Ok(RoutedConn {
                    conn: self.standby.get().await?,
                    route: ReadRoute::standby(0, "standby-a"),
                })
            }
        })
    }

    fn failed(&self, conn: &mut RoutedConn<Fake>, _error: &Gone) -> bool {
        self.failed
            .lock()
            .unwrap()
            .push(conn.route.label().to_owned());
        true
    }

    fn token<'a>(&'a self, _conn: &'a mut ()) -> BoxFuture<'a, Result<Option<String>, Gone>> {
        Box::pin(async { Ok(Some("0/10".to_owned())) })
    }
}

#[derive(Clone)]
struct State {
    reads: Reads<Fake>,
}

impl FromRef<State> for Reads<Fake> {
    fn from_ref(s: &State) -> Reads<Fake> {
        s.reads.clone()
    }
}

async fn route_of(db: DbRead<Fake>) -> String {
    DbRead::route(&db).label().to_owned()
}

async fn lose_then_retry(mut db: DbRead<Fake>) -> Result<String, DbError> {
    let first = DbRead::route(&db).label().to_owned();
    let error = DbRead::error(&mut db, Gone);
    assert!(matches!(error, DbError::Disconnected(_)));
    let db = DbRead::retry(db).await?;
    Ok(format!("{first} -> {}", DbRead::route(&db).label()))
}

fn app(reads: Reads<Fake>) -> Router {
    Router::new()
        .route("/route", get(route_of))
        .route("/retry", get(lose_then_retry))
        .with_state(State { reads })
}

async fn body(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn get_with(path: &str, token: Option<HeaderValue>) -> Request<Body> {
    let mut request = Request::get(path).body(Body::empty()).unwrap();
    if let Some(token) = token {
        request.headers_mut().insert(READ_AFTER, token);
    }
    request
}

async fn two_servers() -> std::sync::Arc<TwoServers> {
    std::sync::Arc::new(TwoServers {
        primary: pool().await,
        standby: pool().await,
        asked: Mutex::new(Vec::new()),
        failed: Mutex::new(Vec::new()),
    })
}

/// Lets an `Arc` of the fake be the router while the test keeps looking at it.
struct Shared(std::sync::Arc<TwoServers>);

impl ReadRouter<Fake> for Shared {
    fn checkout<'a>(
        &'a self,
        after: Option<&'a str>,
        avoid: Option<&'a ReadRoute>,
    ) -> BoxFuture<'a, Result<RoutedConn<Fake>, DbError>> {
        self.0.checkout(after, avoid)
    }
    fn failed(&self, conn: &mut RoutedConn<Fake>, error: &Gone) -> bool {
        self.0.failed(conn, error)
    }
    fn token<'a>(&'a self, conn: &'a mut ()) -> BoxFuture<'a, Result<Option<String>, Gone>> {
        self.0.token(conn)
    }
}

#[tokio::test]
async fn db_read_hands_the_clients_token_to_the_router_and_reads_where_it_says() {
    let fake = two_servers().await;
    let app = app(Reads::new(Shared(fake.clone())));
    let response = app
        .clone()
        .oneshot(get_with(
            "/route",
            Some(HeaderValue::from_static("16/B374D848")),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "standby-a");
    let response = app.oneshot(get_with("/route", None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let asked = fake.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        [(Some("16/B374D848".to_owned()), None), (None, None)]
    );
    // Both connections went back.
    assert_eq!(fake.standby.status().checked_out, 0);
}

#[tokio::test]
async fn a_read_after_header_that_is_not_text_is_422_and_checks_nothing_out() {
    let fake = two_servers().await;
    let app = app(Reads::new(Shared(fake.clone())));
    let bad = HeaderValue::from_bytes(b"0/\xff\xfe").unwrap();
    let response = app.oneshot(get_with("/route", Some(bad))).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = body(response).await;
    assert!(text.contains("\"invalid_read_after\""), "{text}");
    assert!(fake.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_retry_after_a_lost_connection_avoids_the_server_that_lost_it() {
    let fake = two_servers().await;
    let app = app(Reads::new(Shared(fake.clone())));
    let response = app
        .oneshot(get_with("/retry", Some(HeaderValue::from_static("0/5"))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "standby-a -> primary");
    assert_eq!(*fake.failed.lock().unwrap(), ["standby-a"]);
    let asked = fake.asked.lock().unwrap().clone();
    // The retry keeps the client's token and names the server to avoid.
    assert_eq!(
        asked,
        [
            (Some("0/5".to_owned()), None),
            (Some("0/5".to_owned()), Some("standby-a".to_owned()))
        ]
    );
}

#[tokio::test]
async fn a_single_pool_reads_everything_itself_and_issues_no_token() {
    let pool = pool().await;
    let reads = Reads::single(pool.clone());
    let app = app(reads.clone());
    let response = app
        .oneshot(get_with(
            "/route",
            Some(HeaderValue::from_static("anything")),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "primary");
    let mut conn = pool.get().await.unwrap();
    assert_eq!(reads.token_header(&mut conn).await.unwrap(), None);
}
