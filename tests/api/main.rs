//! Host-level tests: the real application on port 0 with a temporary data
//! directory, driven over HTTP with a real client. Tests that need PostgreSQL
//! use the machine's server (CI always provides it; locally they say when they
//! skip).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_contracts;
mod architecture;
mod auth;
mod bad_input;
mod bus;
mod cli;
mod crash;
mod demo;
mod errors;
mod examples;
mod health;
mod helpers;
mod observability;
mod openapi;
mod orders;
mod process;
mod rate_limit;
mod rollouts;
mod stores;
mod topologies;
mod tutorial;
