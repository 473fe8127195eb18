//! The recovery worker: on start-up and then periodically, resume every order
//! left in `pending` or `awaiting_payment` whose next step is due (a crash
//! mid-request, a payment retry, a passed deadline).

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::{Round, periodically};
use tokio_util::sync::CancellationToken;

use crate::domain::service::OrderService;

pub async fn run(service: Arc<OrderService>, every: Duration, shutdown: CancellationToken) {
    periodically(&shutdown, every, None, || async {
        match service.recover_due(50).await {
            Ok(n) if n > 0 => {
                tracing::info!(resumed = n, "recovery worker resumed orders");
                Round::More
            }
            Ok(_) => Round::Idle,
            Err(e) => {
                tracing::error!(error = %e, "recovery worker failed to claim orders");
                Round::Idle
            }
        }
    })
    .await;
}
