//! The store a test runs on: sled in a temp dir, or PostgreSQL in a schema of its own (dropped
//! when the test ends). [`on_each_store!`] runs one test body once per backend.
//!
//! PostgreSQL is found at `HOOKSHIM_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached, a database test
//! prints one `skipped: no PostgreSQL at …` line and passes — except in CI (`CI=true`), where
//! that is a failure.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// The default test database.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The environment variable the configs of PostgreSQL tests name in `store.url_env` (passed to
/// hookshim through the config's environment lookup, never set in this process).
pub const TEST_URL_ENV: &str = "HOOKSHIM_TEST_PG_URL";

/// Which store a test runs on.
#[derive(Clone)]
pub enum Backend {
    Sled,
    Postgres(Arc<PgSchema>),
}

impl Backend {
    /// A fresh schema on the test database, or `None` (with the "skipped" line) when there is
    /// no PostgreSQL and this is not CI.
    pub async fn postgres() -> Option<Backend> {
        PgSchema::create()
            .await
            .map(|s| Backend::Postgres(Arc::new(s)))
    }

    /// `config` (a test config with a `[store]` table) made to use this backend, and the
    /// environment it needs.
    pub fn apply(&self, config: &str) -> (String, Vec<(String, String)>) {
        match self {
            Backend::Sled => (config.to_string(), Vec::new()),
            Backend::Postgres(db) => (db.config(config), db.env()),
        }
    }
}

/// The test database's URL.
pub fn test_database_url() -> String {
    std::env::var("HOOKSHIM_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_string())
}

/// One test's schema on the test database; dropped (with every table in it) when dropped.
pub struct PgSchema {
    pub url: String,
    pub schema: String,
}

impl PgSchema {
    async fn create() -> Option<PgSchema> {
        let url = test_database_url();
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await;
        let (client, conn) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return no_database(&url, &e.to_string()),
            Err(_) => return no_database(&url, "no answer within 10s"),
        };
        tokio::spawn(conn);
        let schema = format!("hs_test_{:016x}", rand::random::<u64>());
        // Created by hookshim at start; here only checked that we may.
        client
            .simple_query("SELECT 1")
            .await
            .expect("the test database answers");
        Some(PgSchema { url, schema })
    }

    /// `config` with `[store]` switched to this schema (the table must be there).
    pub fn config(&self, config: &str) -> String {
        assert!(
            config.contains("\n[store]\n"),
            "a PostgreSQL test config needs a [store] table"
        );
        config.replacen(
            "\n[store]\n",
            &format!(
                "\n[store]\nbackend = \"postgres\"\nurl_env = \"{TEST_URL_ENV}\"\nschema = \"{}\"\npool_size = 4\n",
                self.schema
            ),
            1,
        )
    }

    /// The environment the config needs.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(TEST_URL_ENV.to_string(), self.hookshim_url())]
    }

    /// The URL hookshim connects with: its connections named after the schema, so that the
    /// end of the test can close them.
    pub fn hookshim_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}application_name={}", self.url, self.schema)
    }

    /// Run statements on the test database (names qualified by the caller).
    pub async fn execute(&self, sql: &str) {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
    }

    /// Run SQL on the test database (in this schema), e.g. to look at what hookshim wrote.
    pub async fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("SET search_path TO {}", self.schema))
            .await
            .unwrap();
        client.query(sql, &[]).await.unwrap()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop is synchronous and may run inside a runtime: a thread of its own, briefly.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                // A hookshim still running (a test that panicked, or ended without stopping it)
                // would hold locks the drop needs: close its connections first.
                for _ in 0..5 {
                    let _ = client
                        .execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = $1",
                            &[&schema],
                        )
                        .await;
                    let dropped = client
                        .batch_execute(&format!(
                            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                        ))
                        .await;
                    if dropped.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                eprintln!("could not drop the test schema {schema}");
            });
        });
        let _ = dropped.join();
    }
}

fn no_database(url: &str, why: &str) -> Option<PgSchema> {
    // The URL as shown: without a password.
    let shown = match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    };
    let url = shown.as_str();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "no PostgreSQL at {url} ({why}); CI needs it: start it or set HOOKSHIM_TEST_DATABASE_URL"
        );
    }
    // Straight to stderr (not the test harness's captured output), named after the test thread.
    let test = std::thread::current()
        .name()
        .unwrap_or("a database test")
        .to_string();
    let _ = writeln!(
        std::io::stderr(),
        "{test} skipped: no PostgreSQL at {url} ({why}); set HOOKSHIM_TEST_DATABASE_URL"
    );
    None
}

/// Run one test body on each store: `mod name { async fn sled(); async fn postgres() }`, the
/// body seeing the backend as `$store` (pass it to [`super::TestShim::start_on`]).
macro_rules! on_each_store {
    ($(#[$attr:meta])* async fn $name:ident($store:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$attr])*
            async fn sled() {
                let $store = crate::common::Backend::Sled;
                $body
            }
            $(#[$attr])*
            async fn postgres() {
                let Some($store) = crate::common::Backend::postgres().await else {
                    return;
                };
                $body
            }
        }
    };
}
pub(crate) use on_each_store;
