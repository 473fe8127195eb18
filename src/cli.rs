//! The command line: `agora` (serve), `agora token …`, `agora openapi`.

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
