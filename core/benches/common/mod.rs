//! What the benchmarks share: a throwaway PostgreSQL database on the test server.

use sqlx::Connection;

/// The admin URL of the test PostgreSQL (`STREAMFLOW_TEST_POSTGRES_URL`).
pub fn postgres_admin_url() -> String {
    std::env::var("STREAMFLOW_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Creates an empty database; returns its URL and name, or `None` without PostgreSQL.
pub async fn postgres_database() -> Option<(String, String)> {
    postgres_database_at(&postgres_admin_url()).await
}

/// [`postgres_database`] through another admin URL (a Unix socket, say).
pub async fn postgres_database_at(admin: &str) -> Option<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(admin).await.ok()?;
    let name = format!("sf_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .ok()?;
    Some((format!("{}/{name}", &admin[..admin.rfind('/')?]), name))
}

pub async fn drop_postgres_database(name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}
