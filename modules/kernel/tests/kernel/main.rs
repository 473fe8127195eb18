//! Integration tests of the shared kernel: the outbox relay and the inbox against
//! a real SQLite file, the idempotency middleware, and the JSON extractor's
//! problem+json answers. One binary, one module per subject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bus;
mod helpers;
mod idempotency;
mod inbox;
mod json;
mod optional_body;
mod outbox;
mod overload;
mod path_and_query;
