//! Says plainly whether the PostgreSQL half of the test suite runs.
//!
//! The end-to-end tests run every storage story on SQLite and on PostgreSQL. This target
//! (no test harness, so its output is never captured) checks the server at
//! `STREAMFLOW_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and
//! prints whether those tests ran or were skipped. With `STREAMFLOW_TEST_POSTGRES=required`
//! (as CI sets it) an unreachable server fails the run.

use sqlx::Connection;

fn main() -> std::process::ExitCode {
    let url = std::env::var("STREAMFLOW_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let required =
        std::env::var("STREAMFLOW_TEST_POSTGRES").is_ok_and(|v| v == "required" || v == "1");
    let shown = streamflow::store::redact_url(&url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reachable = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            sqlx::PgConnection::connect(&url),
        )
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map(|_| ())
    });
    match (reachable, required) {
        (Ok(()), _) => {
            println!("PostgreSQL suite: RAN against {shown}");
            std::process::ExitCode::SUCCESS
        }
        (Err(e), false) => {
            println!(
                "PostgreSQL suite: SKIPPED, {shown} is unreachable ({e}). Only SQLite was tested. \
                 Start PostgreSQL or set STREAMFLOW_TEST_POSTGRES_URL to run it."
            );
            std::process::ExitCode::SUCCESS
        }
        (Err(e), true) => {
            eprintln!("PostgreSQL suite: REQUIRED but {shown} is unreachable ({e}).");
            std::process::ExitCode::FAILURE
        }
    }
}
