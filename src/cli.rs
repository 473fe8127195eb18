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
    /// Drive a canary or blue-green rollout through the admin listeners of
    /// one or more agora processes (each runs it over the calls it makes).
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
    },
}

/// `agora rollout …`
#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Start one: a canary (`--url` the canary instances) or a blue-green
    /// switch (`--strategy blue-green`, `--url` the green instances).
    Start {
        /// order, inventory, payment or notification.
        #[arg(long)]
        module: String,
        /// canary or blue-green.
        #[arg(long, default_value = "canary", value_parser = ["canary", "blue-green"])]
        strategy: String,
        /// A base URL of the new pool; repeat for several instances.
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        /// Canary weights in percent, e.g. 5,25,50,100 (default: the settings').
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<u8>>,
        /// Seconds each canary step lasts at least (default: the settings').
        #[arg(long)]
        step_secs: Option<u64>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Where a module's rollout stands, with its decisions.
    Status {
        #[arg(long)]
        module: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// All traffic back to the stable pool.
    Abort {
        #[arg(long)]
        module: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// After a promotion: back to the previous pool.
    Rollback {
        #[arg(long)]
        module: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Which processes to tell, and with which credential.
#[derive(Debug, clap::Args)]
pub struct AdminTarget {
    /// An admin listener's base URL (http://host:9464); repeat for every
    /// process that calls the module. Default: this configuration's admin address.
    #[arg(long = "admin")]
    pub admins: Vec<String>,
    /// A bearer token with the admin role. Default: one minted with the
    /// configured HS256 secret.
    #[arg(long, env = "AGORA_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Run `agora rollout …`: one request per admin URL; prints each answer.
/// Fails (non-zero) when any process refused.
pub fn rollout(settings: &crate::Settings, action: RolloutAction) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (module, target) = match &action {
        RolloutAction::Start { module, target, .. }
        | RolloutAction::Status { module, target }
        | RolloutAction::Abort { module, target }
        | RolloutAction::Rollback { module, target } => (module.clone(), target),
    };
    let token = match &target.token {
        Some(t) => t.clone(),
        None => match crate::gateway::auth::mint(
            &settings.auth,
            "agora-cli",
            &[Role::Admin],
            None,
            Duration::from_secs(300),
        ) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("agora: {e:#}; pass --token (or AGORA_ADMIN_TOKEN)");
                return ExitCode::from(2);
            }
        },
    };
    let admins = if target.admins.is_empty() {
        vec![format!("http://{}", settings.admin.addr)]
    } else {
        target.admins.clone()
    };
    let (method, path, body) = match &action {
        RolloutAction::Start {
            strategy,
            urls,
            steps,
            step_secs,
            ..
        } => {
            let mut body = serde_json::json!({"module": module});
            if strategy == "canary" {
                body["strategy"] = "canary".into();
                body["canary_urls"] = serde_json::json!(urls);
                if let Some(s) = steps {
                    body["steps"] = serde_json::json!(s);
                }
                if let Some(s) = step_secs {
                    body["step_secs"] = serde_json::json!(s);
                }
            } else {
                body["strategy"] = "blue_green".into();
                body["green_urls"] = serde_json::json!(urls);
            }
            (
                reqwest::Method::POST,
                "/admin/rollouts".to_owned(),
                Some(body),
            )
        }
        RolloutAction::Status { .. } => (
            reqwest::Method::GET,
            format!("/admin/rollouts/{module}"),
            None,
        ),
        RolloutAction::Abort { .. } => (
            reqwest::Method::POST,
            format!("/admin/rollouts/{module}/abort"),
            None,
        ),
        RolloutAction::Rollback { .. } => (
            reqwest::Method::POST,
            format!("/admin/rollouts/{module}/rollback"),
            None,
        ),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agora: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build();
        let Ok(client) = client else {
            eprintln!("agora: failed to build an HTTP client");
            return ExitCode::FAILURE;
        };
        let mut failed = false;
        for admin in admins {
            let url = format!("{}{path}", admin.trim_end_matches('/'));
            let mut rb = client.request(method.clone(), &url).bearer_auth(&token);
            if let Some(b) = &body {
                rb = rb.json(b);
            }
            match rb.send().await {
                Ok(res) => {
                    let status = res.status();
                    let text = res.text().await.unwrap_or_default();
                    println!("{admin}: {} {text}", status.as_u16());
                    failed |= !status.is_success();
                }
                Err(e) => {
                    println!("{admin}: unreachable ({e})");
                    failed = true;
                }
            }
        }
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
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
