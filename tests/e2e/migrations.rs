//! The SQLite and PostgreSQL migrations describe the same schema: every table has the same
//! columns on both, of the same kind and nullability, so the two cannot drift apart.

use std::collections::BTreeMap;

use sqlx::Row;
use streamflow::store::Store;
use streamflow::store::test_support::pool;

use crate::harness::{create_postgres_database, drop_postgres_database, postgres_available};

/// table → column → (kind, nullable)
type Schema = BTreeMap<String, BTreeMap<String, (&'static str, bool)>>;

/// The kind of a column, whatever the backend calls its type.
fn kind(declared: &str) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        // UUIDs are BLOBs on SQLite; packages and sealed secrets are bytes on both.
        "blob" | "uuid" | "bytea" => "bytes",
        "integer" | "bigint" | "int8" | "int4" | "smallint" => "integer",
        // JSON is TEXT on SQLite.
        "text" | "jsonb" | "json" | "character varying" => "text",
        "boolean" | "bool" => "boolean",
        "real" | "double precision" | "float8" => "real",
        other => panic!("a column type the comparison does not know: {other}"),
    }
}

async fn sqlite_schema() -> Schema {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("schema.db").display());
    let store = Store::connect(&url).await.unwrap();
    let streamflow::store::Pool::Sqlite(pool) = pool(&store) else {
        unreachable!("a SQLite URL opens SQLite")
    };
    let rows = sqlx::query(
        "SELECT m.name AS t, c.name AS c, c.type AS ty, c.\"notnull\" AS nn, c.pk AS pk \
         FROM sqlite_master m JOIN pragma_table_info(m.name) c \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut schema = Schema::new();
    for row in rows {
        let (table, column, ty): (String, String, String) =
            (row.get("t"), row.get("c"), row.get("ty"));
        // SQLite lets a primary-key column be NULL unless declared NOT NULL; PostgreSQL
        // never does. Either way, the key is never null in practice.
        let nullable = row.get::<i64, _>("nn") == 0 && row.get::<i64, _>("pk") == 0;
        schema
            .entry(table)
            .or_default()
            .insert(column, (kind(&ty), nullable));
    }
    store.close().await;
    schema
}

async fn postgres_schema(url: &str) -> Schema {
    let store = Store::connect(url).await.unwrap();
    let streamflow::store::Pool::Postgres(pg) = pool(&store) else {
        unreachable!("a PostgreSQL URL opens PostgreSQL")
    };
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c, data_type::text AS ty, \
         is_nullable::text AS nullable FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name NOT LIKE '_sqlx%'",
    )
    .fetch_all(pg)
    .await
    .unwrap();
    let mut schema = Schema::new();
    for row in rows {
        let (table, column, ty): (String, String, String) =
            (row.get("t"), row.get("c"), row.get("ty"));
        let nullable = row.get::<String, _>("nullable") == "YES";
        schema
            .entry(table)
            .or_default()
            .insert(column, (kind(&ty), nullable));
    }
    store.close().await;
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_migrations_agree_column_by_column() {
    if !postgres_available().await {
        return;
    }
    let (url, name) = create_postgres_database("schema").await;
    let postgres = postgres_schema(&url).await;
    drop_postgres_database(&name).await;
    let sqlite = sqlite_schema().await;
    assert!(sqlite.len() >= 10, "the schema has its tables: {sqlite:?}");
    let tables = |s: &Schema| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        tables(&sqlite),
        tables(&postgres),
        "the same tables on both"
    );
    let mut differences = Vec::new();
    for (table, columns) in &sqlite {
        let other = &postgres[table];
        for (column, on_sqlite) in columns {
            match other.get(column) {
                None => differences.push(format!("{table}.{column}: only on SQLite")),
                Some(on_pg) if on_pg != on_sqlite => differences.push(format!(
                    "{table}.{column}: SQLite {on_sqlite:?}, PostgreSQL {on_pg:?}"
                )),
                Some(_) => {}
            }
        }
        for column in other.keys().filter(|c| !columns.contains_key(*c)) {
            differences.push(format!("{table}.{column}: only on PostgreSQL"));
        }
    }
    assert!(
        differences.is_empty(),
        "the migrations drifted apart:\n{}",
        differences.join("\n")
    );
}
