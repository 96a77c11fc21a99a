//! `GET /pool` shows the limit, and for `pool_size = auto` its bounds and why it last
//! moved.

use std::convert::Infallible;

use queuepool::{Manager, Pool, PoolConfig};
use queuepool_axum::pool_report;
use serde_json::{Value, json};

struct Numbers;

impl Manager for Numbers {
    type Connection = u32;
    type Error = Infallible;
    async fn connect(&self) -> Result<u32, Infallible> {
        Ok(7)
    }
    async fn is_valid(&self, _: &mut u32) -> Result<(), Infallible> {
        Ok(())
    }
    async fn reset(&self, _: &mut u32) -> Result<(), Infallible> {
        Ok(())
    }
    fn is_disconnect(&self, _: &Infallible) -> bool {
        false
    }
}

async fn report(config: queuepool::ConfigBuilder) -> Value {
    let pool = Pool::new(Numbers, config.build().unwrap()).await.unwrap();
    pool_report(&pool)
}

#[tokio::test]
async fn pool_report_shows_the_auto_limit_and_its_reason() {
    let auto = report(PoolConfig::builder().pool_size(2).auto_size(2, 8)).await;
    assert_eq!(auto["limit"], 2);
    assert_eq!(auto["auto_size"]["limit"], 2);
    assert_eq!(auto["auto_size"]["floor"], 2);
    assert_eq!(auto["auto_size"]["ceiling"], 8);
    assert_eq!(auto["auto_size"]["reason"], "initial");
    assert_eq!(auto["auto_size"]["last_change"], Value::Null);
    assert_eq!(auto["auto_size"]["changes"], 0);
    assert_eq!(auto["config"]["auto_size"], json!([2, 8]));
    assert_eq!(auto["config"]["max_connections"], 8);

    let fixed = report(PoolConfig::builder().pool_size(5).max_overflow(10)).await;
    assert_eq!(fixed["limit"], 15);
    assert_eq!(fixed["auto_size"], Value::Null);
    assert_eq!(fixed["config"]["auto_size"], Value::Null);

    let unlimited = report(PoolConfig::builder().unlimited_overflow()).await;
    assert_eq!(unlimited["limit"], Value::Null);
}
