//! The command line: `agora` (serve), `agora token …`, `agora demo`,
//! `agora openapi`.

use std::time::Duration;

use agora_kernel::Role;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agora",
    version,
    about = "An e-commerce backend: a modular monolith designed for later extraction"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Mint a development token signed with the configured HS256 key.
    Token {
        /// The subject (customer id): 1–255 characters.
        #[arg(long)]
        sub: String,
        /// A role: customer, staff, admin or service. Repeat for several.
        #[arg(long = "role", required = true, value_parser = parse_role)]
        roles: Vec<Role>,
        /// The e-mail claim.
        #[arg(long)]
        email: Option<String>,
        /// Lifetime, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Load a demo catalogue over the HTTP API and print tokens to try it
    /// (`eval "$(agora demo)"` sets CUSTOMER_TOKEN, STAFF_TOKEN, ADMIN_TOKEN).
    /// Safe to run again. When nothing serves at the configured address, an
    /// in-process agora on the configured databases does the loading.
    Demo {
        /// The agora to load into, e.g. http://127.0.0.1:8080 (default: the
        /// configured http.addr, AGORA__HTTP__ADDR).
        #[arg(long)]
        url: Option<String>,
        /// Lifetime of the printed tokens, e.g. 1h, 8h, 7d.
        #[arg(long, default_value = "8h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Print the OpenAPI document (what openapi/openapi.json holds).
    Openapi,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 15m, 1h, 7d)"))?;
    if d.as_secs() == 0 {
        return Err("must be at least one second".to_owned());
    }
    Ok(d)
}
