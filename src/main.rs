//! `agora`: serve, mint a development token, load the demo catalogue, or
//! print the OpenAPI document.

use std::process::ExitCode;

use agora::cli::{Cli, Command};
use agora::gateway::auth;
use agora::{Application, Settings, demo, openapi, telemetry};
use clap::Parser;

/// mimalloc instead of glibc's malloc for Rust's allocations (SQLite keeps
/// its own): see the note beside the dependency in Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agora: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => {
            println!("{}", openapi::spec_json());
            ExitCode::SUCCESS
        }
        Command::Token {
            sub,
            roles,
            email,
            ttl,
        } => match auth::mint(&settings.auth, &sub, &roles, email.as_deref(), ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("agora: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Rollout { action } => agora::cli::rollout(&settings, action),
        Command::Demo { url, ttl } => run_demo(&settings, url, ttl),
        Command::Serve => serve(settings),
    }
}

/// The multi-threaded runtime, or `None` once the reason is on stderr.
fn runtime(who: &str) -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("{who}: failed to start the runtime: {e}"))
        .ok()
}

fn run_demo(settings: &Settings, url: Option<String>, ttl: std::time::Duration) -> ExitCode {
    let tokens = match demo::Tokens::mint(settings, ttl) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("agora demo: {e:#}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime("agora demo") else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(demo::run(settings, url, &tokens.staff)) {
        Ok(outcome) => {
            print!("{}", tokens.shell_assignments());
            for line in demo::next_steps(&outcome) {
                eprintln!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agora demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> ExitCode {
    if let Err(e) = settings.check_serving_secret() {
        eprintln!("agora: {e}");
        return ExitCode::from(2);
    }
    let Some(runtime) = runtime("agora") else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let _guard = match telemetry::init(settings.log.format) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("agora: failed to set up telemetry: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let host = settings.http_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "127.0.0.1".into());
        let admin_host = settings.admin_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "127.0.0.1".into());
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "start-up failed");
                eprintln!("agora: start-up failed: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let (port, admin_port) = (app.port(), app.admin_port());
        tracing::info!(port, admin_port, "agora listening");
        eprintln!(
            "agora listening on http://{host}:{port}  (Swagger UI: http://{host}:{port}/swagger-ui/, metrics: http://{admin_host}:{admin_port}/metrics)"
        );
        match app.run_until_stopped().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
