//! agora's host: it composes the modules behind the gateway layer and serves
//! them. No business rule lives here.
//!
//! - [`settings`]: typed, layered settings.
//! - [`gateway`]: request id, JWT auth, rate limits, problem+json, metrics.
//! - [`app`]: the composition root ([`Application`]).
//! - [`telemetry`]: logs, traces, the metrics recorder.
//! - [`openapi`]: the merged OpenAPI document.
//! - [`demo`]: `agora demo`, the demo catalogue over the HTTP API.

pub mod adapters;
pub mod api;
pub mod app;
pub mod cli;
pub mod demo;
pub mod gateway;
pub mod openapi;
pub mod settings;
pub mod telemetry;
pub mod upstream;

pub use app::Application;
pub use settings::Settings;
