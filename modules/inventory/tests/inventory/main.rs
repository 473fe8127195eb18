//! Integration tests of the inventory module: one contract suite run against
//! every store backend (SQLite always; MongoDB when `AGORA_TEST_MONGODB_URL`
//! names a server), and the HTTP surface (roles, problem+json bodies).
//! One binary, one module per subject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;
mod helpers;
mod http;
mod tasks;
