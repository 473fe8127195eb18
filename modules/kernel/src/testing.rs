//! Test support shared by every module's suite (feature `testing`).

use std::time::Duration;

/// A fresh PostgreSQL database on the test server (`AGORA_TEST_POSTGRES_URL`,
/// default `postgres://postgres@127.0.0.1:5432/postgres`). Outside CI a missing
/// server skips the test with a message (`None`); in CI (`CI` set) it fails.
pub async fn fresh_postgres_url() -> Option<String> {
    let admin_url = std::env::var("AGORA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let conn =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgPool::connect(&admin_url)).await;
    let pool = match conn {
        Ok(Ok(pool)) => pool,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            assert!(
                std::env::var("CI").is_err(),
                "PostgreSQL is required in CI but unreachable at {admin_url}: {why}"
            );
            eprintln!(
                "SKIPPED: PostgreSQL unreachable at {admin_url} ({why}); set AGORA_TEST_POSTGRES_URL"
            );
            return None;
        }
    };
    let name = format!("agora_test_{}", uuid::Uuid::new_v4().simple());
    if let Err(e) = sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
    {
        panic!("failed to create a test database: {e}");
    }
    pool.close().await;
    let base = admin_url.rsplit_once('/').map(|(b, _)| b.to_owned())?;
    Some(format!("{base}/{name}"))
}
