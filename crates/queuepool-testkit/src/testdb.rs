//! [`TestDb`]: a database of its own for each test, on the shared server.

use queuepool_postgres::{PgConnection, PgManager};
use tracing::warn;

use crate::TestkitError;
use crate::util::unique_name;

/// The server tests use: `DATABASE_URL` when set, else this machine's local server.
pub const DEFAULT_DATABASE_URL: &str =
    "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";

/// `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// Adds (or overrides) `key=value` parameters on a URL or key-value connection string.
pub fn with_params(base: &str, params: &[(&str, &str)]) -> String {
    let is_url = base.starts_with("postgres://") || base.starts_with("postgresql://");
    let mut out = base.trim().to_owned();
    for (k, v) in params {
        if is_url {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(k);
            out.push('=');
            out.push_str(&percent_encode(v));
        } else {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            out.push_str(&v.replace('\\', "\\\\").replace('\'', "\\'"));
            out.push('\'');
        }
    }
    out
}

fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A uniquely named database, created for one test and dropped after it, with a unique
/// `application_name` so the test finds exactly its own connections in
/// `pg_stat_activity` while other tests run in parallel.
///
/// Dropped on `Drop` (`DROP DATABASE .. WITH (FORCE)`, from a helper thread) or
/// explicitly with [`TestDb::drop_database`].
#[derive(Debug)]
pub struct TestDb {
    base_url: String,
    name: String,
    app: String,
    url: String,
    dropped: bool,
}

impl TestDb {
    /// Creates a database on [`database_url()`].
    pub async fn create() -> Result<TestDb, TestkitError> {
        TestDb::create_on(&database_url()).await
    }

    /// Creates a database on the server of `base_url` (whose database must exist, it
    /// is used to run `CREATE DATABASE`).
    pub async fn create_on(base_url: &str) -> Result<TestDb, TestkitError> {
        let name = unique_name("qp_test");
        let admin = admin_manager(base_url)?.connect_one().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        let app = unique_name("qp_app");
        let url = with_params(base_url, &[("dbname", &name), ("application_name", &app)]);
        Ok(TestDb {
            base_url: base_url.to_owned(),
            name,
            app,
            url,
            dropped: false,
        })
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection string of the test database, with the unique `application_name`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The test database's URL with another address (a proxy or PgBouncer in front).
    /// Keeps user, password, `sslmode` and `application_name`; `sslrootcert` is not
    /// carried over (the shared test server is expected to be plaintext or `require`).
    pub fn url_via(&self, host: &str, port: u16) -> Result<String, TestkitError> {
        let m = self.manager()?;
        let pg = m.pg_config();
        let enc = |s: &str| percent_encode(s);
        let user = enc(pg.get_user().unwrap_or("postgres"));
        let auth = match pg.get_password() {
            Some(p) => format!("{user}:{}", enc(&String::from_utf8_lossy(p))),
            None => user,
        };
        let mode = match m.ssl_mode() {
            queuepool_postgres::SslMode::Disable => "disable",
            queuepool_postgres::SslMode::Prefer => "prefer",
            _ => "require",
        };
        Ok(format!(
            "postgres://{auth}@{host}:{port}/{}?sslmode={mode}&application_name={}",
            enc(&self.name),
            enc(&self.app)
        ))
    }

    /// The unique `application_name` of [`TestDb::url`].
    pub fn application_name(&self) -> &str {
        &self.app
    }

    /// A manager for [`TestDb::url`].
    pub fn manager(&self) -> Result<PgManager, TestkitError> {
        Ok(PgManager::from_url(&self.url)?)
    }

    /// A fresh `application_name` (for a second pool in the same test).
    pub fn unique_application_name(&self) -> String {
        unique_name("qp_app")
    }

    /// A connection to the test database that is not counted as the pool's (its
    /// `application_name` is `<app>_observer`), to look at the server from outside.
    pub async fn observer(&self) -> Result<PgConnection, TestkitError> {
        let m = self
            .manager()?
            .with_application_name(&format!("{}_observer", self.app));
        Ok(m.connect_one().await?)
    }

    /// Backend pids of the connections with `application_name` in this database.
    pub async fn backend_pids(&self, application_name: &str) -> Result<Vec<i32>, TestkitError> {
        let obs = self.observer().await?;
        let rows = obs
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 ORDER BY pid",
                &[&self.name, &application_name],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// How many connections with `application_name` are open in this database.
    pub async fn count_connections(&self, application_name: &str) -> Result<usize, TestkitError> {
        Ok(self.backend_pids(application_name).await?.len())
    }

    /// `pg_terminate_backend` on every connection with `application_name`; returns how
    /// many were terminated.
    pub async fn terminate_all(&self, application_name: &str) -> Result<usize, TestkitError> {
        let obs = self.observer().await?;
        let rows = obs
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                &[&self.name, &application_name],
            )
            .await?;
        Ok(rows.iter().filter(|r| r.get::<_, bool>(0)).count())
    }

    /// Drops the database now (terminating leftover connections).
    pub async fn drop_database(mut self) -> Result<(), TestkitError> {
        self.dropped = true;
        drop_db(&self.base_url, &self.name).await
    }
}

fn admin_manager(base_url: &str) -> Result<PgManager, TestkitError> {
    Ok(PgManager::from_url(base_url)?.with_application_name("queuepool_testkit_admin"))
}

async fn drop_db(base_url: &str, name: &str) -> Result<(), TestkitError> {
    let admin = admin_manager(base_url)?.connect_one().await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    Ok(())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let base = self.base_url.clone();
        let name = self.name.clone();
        // Drop cannot await, and a runtime cannot be blocked on from inside another:
        // a short-lived thread with its own runtime does the work.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| TestkitError::Db(e.to_string()))?;
            rt.block_on(drop_db(&base, &name))
        })
        .join();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(database = %self.name, error = %e, "could not drop test database"),
            Err(_) => warn!(database = %self.name, "test database drop thread panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_appended_to_urls_and_key_value_strings() {
        assert_eq!(
            with_params(
                "postgres://u@h/db",
                &[("dbname", "x"), ("application_name", "a b")]
            ),
            "postgres://u@h/db?dbname=x&application_name=a%20b"
        );
        assert_eq!(
            with_params("postgres://u@h/db?sslmode=disable", &[("dbname", "x")]),
            "postgres://u@h/db?sslmode=disable&dbname=x"
        );
        assert_eq!(
            with_params("host=h user=u", &[("application_name", "it's")]),
            "host=h user=u application_name='it\\'s'"
        );
    }
}
