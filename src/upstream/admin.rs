//! The rollout API on the admin listener (`/admin/*`, the `admin` role only):
//! start a canary or blue-green rollout of one module's traffic, follow its
//! decisions, abort it, roll a promotion back.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::LOCATION;
use actix_web::middleware::from_fn;
use actix_web::{Handler, HttpResponse, web};
use agora_kernel::{FieldErrors, Principal, Problem, Role};
use serde_json::Value;

use super::rollout::{Plan, RolloutError, RolloutView, Rollouts, Strategy};
use crate::gateway::auth;

/// `/admin/rollouts…`, behind bearer authentication.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .wrap(from_fn(auth::authenticate))
            .wrap(from_fn(crate::gateway::observe::observe))
            .route("/rollouts", web::post().to(start))
            .route("/rollouts/{module}", web::get().to(on(Rollouts::view)))
            .route(
                "/rollouts/{module}/abort",
                web::post().to(on(Rollouts::abort)),
            )
            .route(
                "/rollouts/{module}/rollback",
                web::post().to(on(Rollouts::rollback)),
            ),
    );
}

fn problem(e: RolloutError) -> Problem {
    match e {
        RolloutError::Progressing(_) => Problem::conflict(e.to_string()),
        RolloutError::NotFound(_) => Problem::not_found(e.to_string()),
        RolloutError::NotApplicable(_) => Problem::conflict(e.to_string()),
    }
}

fn module_name(raw: &str) -> Option<&'static str> {
    crate::settings::MODULES.iter().copied().find(|m| *m == raw)
}

fn urls(errors: &mut FieldErrors, field: &str, v: Option<&Value>) -> Vec<String> {
    let Some(list) = v.and_then(Value::as_array) else {
        errors.add(field, "required: a list of the instances' base URLs");
        return Vec::new();
    };
    if list.is_empty() || list.len() > 32 {
        errors.add(field, "1 to 32 base URLs");
    }
    let mut out = Vec::new();
    for (i, u) in list.iter().enumerate() {
        match u.as_str() {
            Some(s)
                if (s.starts_with("http://") || s.starts_with("https://"))
                    && s.len() > "https://".len()
                    && !s.contains(char::is_whitespace) =>
            {
                out.push(s.to_owned());
            }
            _ => errors.add(&format!("{field}[{i}]"), "must be an http(s) base URL"),
        }
    }
    out
}

/// Parse a start request into the module and its plan, listing every bad field.
fn plan(rollouts: &Rollouts, body: &Value) -> Result<(&'static str, Plan), Problem> {
    let mut errors = FieldErrors::default();
    let Some(obj) = body.as_object() else {
        return Err(Problem::invalid_field("body", "must be a JSON object"));
    };
    const KNOWN: [&str; 6] = [
        "module",
        "strategy",
        "canary_urls",
        "green_urls",
        "steps",
        "step_secs",
    ];
    for key in obj.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        errors.add(key, "unknown field");
    }
    let module = match obj.get("module").and_then(Value::as_str) {
        Some(m) => match module_name(m) {
            Some(m) => Some(m),
            None => {
                errors.add("module", "order, inventory, payment or notification");
                None
            }
        },
        None => {
            errors.add("module", "required");
            None
        }
    };
    let strategy = match obj.get("strategy").and_then(Value::as_str) {
        Some("canary") => Some(Strategy::Canary),
        Some("blue_green") => Some(Strategy::BlueGreen),
        _ => {
            errors.add("strategy", "`canary` or `blue_green`");
            None
        }
    };
    let defaults = rollouts.settings();
    let mut steps = defaults.steps.clone();
    let mut step = Duration::from_secs(defaults.step_secs);
    let urls = match strategy {
        Some(Strategy::Canary) => {
            if obj.contains_key("green_urls") {
                errors.add("green_urls", "a canary takes canary_urls");
            }
            if let Some(v) = obj.get("steps") {
                match v
                    .as_array()
                    .map(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
                {
                    Some(Some(list))
                        if !list.is_empty()
                            && list.len() <= 20
                            && list.windows(2).all(|w| w[0] < w[1])
                            && list.first().is_some_and(|f| *f >= 1)
                            && list.last() == Some(&100) =>
                    {
                        steps = list.into_iter().map(|w| w as u8).collect();
                    }
                    _ => errors.add(
                        "steps",
                        "ascending weights in percent, 1 to 100, ending with 100",
                    ),
                }
            }
            if let Some(v) = obj.get("step_secs") {
                match v.as_u64() {
                    Some(n @ 1..=86_400) => step = Duration::from_secs(n),
                    _ => errors.add("step_secs", "an integer from 1 to 86400"),
                }
            }
            urls(&mut errors, "canary_urls", obj.get("canary_urls"))
        }
        Some(Strategy::BlueGreen) => {
            for f in ["canary_urls", "steps", "step_secs"] {
                if obj.contains_key(f) {
                    errors.add(f, "a blue-green switch takes green_urls only");
                }
            }
            urls(&mut errors, "green_urls", obj.get("green_urls"))
        }
        None => Vec::new(),
    };
    errors.into_result()?;
    match (module, strategy) {
        (Some(module), Some(strategy)) => Ok((
            module,
            Plan {
                strategy,
                urls,
                steps,
                step,
            },
        )),
        _ => Err(Problem::internal()),
    }
}

async fn start(
    principal: Principal,
    rollouts: web::Data<Rollouts>,
    body: web::Json<Value>,
) -> Result<HttpResponse, Problem> {
    principal.require_any(&[Role::Admin])?;
    let (module, plan) = plan(&rollouts, &body)?;
    let rollouts: Arc<Rollouts> = rollouts.into_inner();
    let view = rollouts.start(module, plan).map_err(problem)?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((LOCATION, format!("/admin/rollouts/{module}")))
        .json(view))
}

/// What an admin call on one module's rollout does, given the rollouts.
type OnRollout = fn(&Rollouts, &str) -> Result<RolloutView, RolloutError>;

/// An admin's call on one module's rollout: its view after `action`.
async fn on_rollout(
    principal: Principal,
    rollouts: web::Data<Rollouts>,
    module: web::Path<String>,
    action: OnRollout,
) -> Result<HttpResponse, Problem> {
    principal.require_any(&[Role::Admin])?;
    Ok(HttpResponse::Ok().json(action(&rollouts, &module).map_err(problem)?))
}

/// The handler of an admin call on one module's rollout (`GET` its status,
/// `POST …/abort`, `POST …/rollback`): they differ only in the action.
fn on(
    action: OnRollout,
) -> impl Handler<
    (Principal, web::Data<Rollouts>, web::Path<String>),
    Output = Result<HttpResponse, Problem>,
> {
    move |p: Principal, r: web::Data<Rollouts>, m: web::Path<String>| on_rollout(p, r, m, action)
}
