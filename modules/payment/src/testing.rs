//! The adapters the payment suites drive directly (feature `testing`): the
//! module keeps `inbound` and `outbound` to itself, as every module does.

pub use crate::outbound::breaker::{BreakerConfig, GuardedProvider};
pub use crate::outbound::http_provider::{HttpProvider, form_encode};
pub use crate::outbound::simulated::SimulatedProvider;
pub use crate::outbound::sql::store_for;
pub use agora_kernel::breaker::STATE_GAUGE;
