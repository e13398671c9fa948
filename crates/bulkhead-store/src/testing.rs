//! Fresh databases for tests (behind the `test-support` feature): a SQLite file in a temporary
//! directory, or a new PostgreSQL database on the machine's server, dropped when the test ends.
//! Tests of every crate use these, so no other crate needs the SQL driver to set up or
//! inspect a database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use crate::{Store, StoreOptions};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The server the PostgreSQL half of the suite runs against; the role must be able to create
/// databases and roles (the default, a local superuser with trust auth, can).
pub fn postgres_admin_url() -> String {
    std::env::var("BULKHEAD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Postgres {
        name: String,
        url: String,
    },
}

impl TestDb {
    pub async fn sqlite() -> (Store, TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulkhead.db");
        let store = Store::open_sqlite(&path, &StoreOptions::default())
            .await
            .unwrap();
        (store, TestDb::Sqlite { _dir: dir, path })
    }

    pub async fn postgres() -> (Store, TestDb) {
        Self::postgres_at(&postgres_admin_url()).await
    }

    /// A fresh database on the PostgreSQL server that has pgvector (started by
    /// `scripts/pgvector`; `BULKHEAD_TEST_PGVECTOR_URL`). Fails, not skips, without it.
    pub async fn pgvector() -> (Store, TestDb) {
        let url = std::env::var("BULKHEAD_TEST_PGVECTOR_URL").expect(
            "BULKHEAD_TEST_PGVECTOR_URL is unset: run scripts/pgvector (scripts/test does)",
        );
        Self::postgres_at(&url).await
    }

    async fn postgres_at(admin_url: &str) -> (Store, TestDb) {
        let name = format!("bh_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgConnectOptions::from_str(admin_url).unwrap();
        let mut conn = admin.connect().await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let url = admin.database(&name).to_url_lossy().to_string();
        let store = Store::open(
            &url,
            &StoreOptions {
                max_connections: 4,
                ..StoreOptions::default()
            },
        )
        .await
        .unwrap();
        (store, TestDb::Postgres { name, url })
    }

    /// Runs raw SQL on the same database, behind the store's back, as an attacker with
    /// database access (or a careless migration) would.
    pub async fn raw(&self, sql: &str) {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            TestDb::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }

    /// Whether the database holds `needle` anywhere on disk (see [`TestDb::dump`]).
    pub async fn holds(&self, needle: &[u8]) -> bool {
        contains(&self.dump().await, needle)
    }

    /// Every byte the database holds on disk, as a backup would: the SQLite file and its WAL,
    /// or a `pg_dump` of the PostgreSQL database.
    pub async fn dump(&self) -> Vec<u8> {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut bytes = std::fs::read(path).unwrap();
                for suffix in ["-wal", "-shm"] {
                    let mut side = path.clone().into_os_string();
                    side.push(suffix);
                    bytes.extend(std::fs::read(side).unwrap_or_default());
                }
                bytes
            }
            TestDb::Postgres { url, .. } => {
                let output = std::process::Command::new("pg_dump")
                    .arg("--data-only")
                    // sqlx's URL carries its own query parameters, which libpq refuses.
                    .arg(url.split('?').next().unwrap_or(url))
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                output.stdout
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, TestDb::Postgres { .. })
    }

    pub async fn finish(self, store: Store) {
        store.close().await;
        if let TestDb::Postgres { name, url } = self {
            // The same server the database was made on (the machine's or pgvector's).
            let admin = PgConnectOptions::from_str(&url)
                .unwrap()
                .database("postgres");
            let mut conn = admin.connect().await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    }
}

/// Creates a shared-tier tenant named after its id, in `region`, as the CLI would.
pub async fn create_tenant(store: &Store, id: &str, region: &str) -> bulkhead_core::Tenant {
    store
        .admin()
        .create_tenant(
            crate::NewTenant {
                id: bulkhead_core::TenantId::try_from(id).unwrap(),
                name: id.to_owned(),
                region: bulkhead_core::RegionName::try_from(region).unwrap(),
                allowed_regions: Vec::new(),
                isolation: bulkhead_core::Isolation::Shared,
            },
            &bulkhead_core::audit::Origin::cli(),
        )
        .await
        .unwrap()
}

/// Runs each listed `async fn name(&Store, &TestDb)` of the calling module twice, as
/// `sqlite::name` and `postgres::name`, each on a fresh database: the one way every suite
/// proves the two backends behave the same.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    let (store, db) = $crate::testing::TestDb::sqlite().await;
                    super::$test(&store, &db).await;
                    db.finish(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    let (store, db) = $crate::testing::TestDb::postgres().await;
                    super::$test(&store, &db).await;
                    db.finish(store).await;
                }
            )*
        }
    };
}

/// Whether `needle` occurs in `haystack`: what the tests that look for a secret or a deleted
/// tenant's data in a database file, a dump or a process's environment ask.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
