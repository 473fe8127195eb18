//! agora's shared kernel: the few types and ports every module speaks.
//!
//! Kept deliberately small. Everything here is either a value every module needs
//! to agree on (ids, [`Money`], [`Principal`], [`EventEnvelope`], [`Problem`]) or a
//! piece of infrastructure that each module instantiates against its *own*
//! database (outbox, inbox, idempotency keys). No business rule lives here.

pub mod breaker;
pub mod clock;
pub mod context;
pub mod db;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod inbox;
pub mod module;
pub mod money;
pub mod outbox;
pub mod pagination;
pub mod principal;
pub mod problem;
pub mod remote;
pub mod settings;
pub mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{CallContext, RequestId};
pub use events::{DeliveryPolicy, EventBus, EventEnvelope, EventHandler, InMemoryBus};
pub use module::{BackgroundTask, Module, ModuleInfo, Round, Wiring, periodically};
pub use money::{Currency, Money, MoneyError};
pub use principal::{Denied, Principal, Role};
pub use problem::{FieldErrors, Problem};
pub use settings::InvalidSetting;
