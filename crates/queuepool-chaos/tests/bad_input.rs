//! Scenario 8, short form: fuzzing the parsers and the HTTP API.

mod common;

use queuepool_chaos::scenarios::bad_input;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_panics_gets_json_4xx_and_writes_nothing() {
    let ctx = common::ctx();
    let f = bad_input::run(&ctx, &bad_input::Params::short())
        .await
        .unwrap();
    common::show(f.report());
    for (name, failure) in &f.parser_properties {
        assert!(failure.is_none(), "{name}: {failure:?}");
    }
    assert!(
        f.by_class[1] > f.http_sent / 2,
        "most random requests are rejected: {:?}",
        f.by_class
    );
    assert!(f.server_errors.is_empty(), "{:#?}", f.server_errors);
    assert!(f.bare_4xx.is_empty(), "{:#?}", f.bare_4xx);
    assert!(f.oversized.0 == f.oversized.1, "{:?}", f.oversized);
    assert_eq!(
        f.rows.0, f.rows.1,
        "rows in the table vs accepted creates - deletes"
    );
    assert!(f.seed_intact);
    assert!(f.alive);
}

/// Fixed in a390b22 (found by this suite): the errors no longer quote the URL.
#[test]
fn url_errors_never_show_the_password_whatever_the_parser() {
    let props = bad_input::parser_properties(256);
    let (_, failure) = props
        .iter()
        .find(|(n, _)| n == bad_input::SQLITE_PROPERTY)
        .unwrap();
    assert!(failure.is_none(), "{failure:?}");
}

/// Fixed in c435185 (found by this suite).
#[test]
fn redact_url_hides_every_password_the_driver_uses() {
    use queuepool::url::redact_url;
    // Both found by the fuzzer: the url crate sees a path, or a query, where
    // tokio-postgres sees `user:password@`.
    for url in ["postgres:///:Sekr1tPw0rd@/?", "postgres://?:Sekr1tPw0rd@/?"] {
        let m = queuepool_postgres::PgManager::from_url(url).unwrap();
        assert_eq!(
            m.pg_config().get_password(),
            Some(&b"Sekr1tPw0rd"[..]),
            "{url}"
        );
        let shown = redact_url(url);
        assert!(!shown.contains("Sekr1tPw0rd"), "{url} is shown as {shown}");
    }
}

// Found by the fuzzer (mysql://0?:Sekr1tPw0rd@/?), fixed in b7cbd9b.
#[test]
fn mysql_url_errors_never_show_the_password() {
    let err = queuepool_mysql::MySqlManager::from_url("mysql://0?:Sekr1tPw0rd@/?").unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("Sekr1tPw0rd"), "{text}");
}
