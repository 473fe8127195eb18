//! The host's own endpoints: health, the caller's identity, and the module map.
//! Everything else is served by the modules.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use agora_kernel::{Module, ModuleInfo, Principal, Problem, Role};
use serde::Serialize;
use utoipa::ToSchema;

/// The composed modules, shared by the host's endpoints.
#[derive(Clone)]
pub struct Modules(pub Arc<Vec<Arc<dyn Module>>>);

#[derive(Serialize, ToSchema)]
pub struct Liveness {
    /// Always `up` while the process serves requests.
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`
    status: &'static str,
    /// Module name → `up`.
    modules: std::collections::BTreeMap<String, String>,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", security(()), responses((status = 200, body = Liveness)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "up" })
}

/// Every module's store is reachable (503 naming the failing modules otherwise).
#[utoipa::path(get, path = "/health/ready", tag = "health", security(()), responses(
    (status = 200, body = Readiness),
    (status = 503, body = Problem, content_type = "application/problem+json"),
))]
pub async fn ready(modules: web::Data<Modules>) -> HttpResponse {
    let checks = modules.0.iter().map(|m| async move {
        let name = m.info().name;
        let result = tokio::time::timeout(Duration::from_secs(3), m.ready()).await;
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("timed out".to_owned()),
        };
        (name, outcome)
    });
    let results = futures_util::future::join_all(checks).await;
    let failing: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| {
            r.as_ref().err().map(|e| {
                tracing::warn!(module = %name, error = %e, "module not ready");
                name.clone()
            })
        })
        .collect();
    if failing.is_empty() {
        let modules = results
            .into_iter()
            .map(|(n, _)| (n, "up".to_owned()))
            .collect();
        HttpResponse::Ok().json(Readiness {
            status: "ready",
            modules,
        })
    } else {
        let p = Problem::unavailable(
            format!("not ready: {} (store unreachable)", failing.join(", ")),
            5,
        );
        p.to_response()
    }
}

/// The caller as the gateway sees it.
#[derive(Serialize, ToSchema)]
pub struct Me {
    /// The token's `sub`.
    subject: String,
    roles: Vec<Role>,
    email: Option<String>,
}

/// Who am I? Any authenticated caller.
#[utoipa::path(get, path = "/me", tag = "system", security(("bearer" = [])), responses(
    (status = 200, body = Me),
    (status = 401, body = Problem, content_type = "application/problem+json"),
))]
pub async fn me(principal: Principal) -> HttpResponse {
    HttpResponse::Ok().json(Me {
        subject: principal.subject,
        roles: principal.roles.into_iter().collect(),
        email: principal.email,
    })
}

#[derive(Serialize, ToSchema)]
pub struct ModuleList {
    items: Vec<ModuleInfo>,
}

/// The modules this process hosts and their stores (admin).
#[utoipa::path(get, path = "/system/modules", tag = "system", security(("bearer" = [])), responses(
    (status = 200, body = ModuleList),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
))]
pub async fn system_modules(
    principal: Principal,
    modules: web::Data<Modules>,
) -> Result<HttpResponse, Problem> {
    principal.require_any(&[Role::Admin])?;
    let items = modules.0.iter().map(|m| m.info()).collect();
    Ok(HttpResponse::Ok().json(ModuleList { items }))
}

/// `/` and `/swagger-ui` (no trailing slash) lead to Swagger UI.
pub async fn to_swagger_ui() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((actix_web::http::header::LOCATION, "/swagger-ui/"))
        .finish()
}

/// The redirects to Swagger UI (302, so nothing is cached for good).
pub fn redirect_routes(cfg: &mut web::ServiceConfig) {
    for path in ["/", "/swagger-ui"] {
        cfg.service(
            web::resource(path)
                .route(web::get().to(to_swagger_ui))
                .route(web::head().to(to_swagger_ui)),
        );
    }
}

/// Health endpoints, outside `/api/v1` and the gateway's auth.
pub fn health_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/health/live").route(web::get().to(live)))
        .service(web::resource("/health/ready").route(web::get().to(ready)));
}

/// The host's own `/api/v1` endpoints.
pub fn api_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/me").route(web::get().to(me)))
        .service(web::resource("/system/modules").route(web::get().to(system_modules)));
}
