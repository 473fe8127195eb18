//! A PostgreSQL pool with no connection free answers 503 with Retry-After,
//! not 500: overload is not a fault, and the client may retry shortly.

use agora_kernel::Problem;
use anyhow::Context;

#[tokio::test]
async fn a_pool_with_no_connection_free_is_unavailable_not_internal() {
    let Some(url) = agora_kernel::testing::fresh_postgres_url().await else {
        return;
    };
    let pool = agora_kernel::db::connect_postgres(&url, 1).await.unwrap();
    let held = pool.acquire().await.unwrap();
    // Waits out the pool's acquire timeout (3 s) for the one connection.
    let err = sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .context("failed to read an order")
        .unwrap_err();
    assert!(agora_kernel::db::is_pool_exhausted(&err), "{err:#}");
    let problem = Problem::unexpected(&err, "order");
    assert_eq!(problem.status, 503);
    let res = problem.to_response();
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    assert!(!problem.detail.contains("pool"), "{}", problem.detail);
    drop(held);

    // Any other failure stays a 500 whose detail says nothing of its cause.
    let err = sqlx::query("SELECT * FROM no_such_table")
        .execute(&pool)
        .await
        .context("failed to read an order")
        .unwrap_err();
    assert!(!agora_kernel::db::is_pool_exhausted(&err));
    let problem = Problem::unexpected(&err, "order");
    assert_eq!(problem.status, 500);
    assert!(!problem.detail.contains("no_such_table"));
    pool.close().await;
}
