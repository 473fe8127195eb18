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

/// Where every module runs, as this process sees it.
pub struct Topology {
    entries: Vec<ModuleEntry>,
}

/// One module of the system and where it runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModuleEntry {
    /// `order`, `inventory`, `payment` or `notification`.
    pub name: String,
    /// `local` (hosted by this process) or `remote`.
    #[schema(example = "local")]
    pub placement: &'static str,
    /// `sqlite`, `postgres` or `mongodb` (local modules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Path prefixes under `/api/v1` that the module serves.
    pub routes: Vec<String>,
    /// The base URLs of the processes hosting it (remote modules).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceEntry>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstanceEntry {
    pub url: String,
}

impl Topology {
    pub fn new(local: &[Arc<dyn Module>], upstreams: &crate::upstream::Upstreams) -> Self {
        let mut entries: Vec<ModuleEntry> = local
            .iter()
            .map(|m| {
                let info: ModuleInfo = m.info();
                ModuleEntry {
                    name: info.name,
                    placement: "local",
                    store: Some(info.store),
                    routes: info.routes,
                    instances: Vec::new(),
                }
            })
            .collect();
        entries.extend(upstreams.pools().map(|p| {
            ModuleEntry {
                name: p.module.to_owned(),
                placement: "remote",
                store: None,
                routes: crate::app::routes_of(p.module)
                    .iter()
                    .map(|r| (*r).to_owned())
                    .collect(),
                instances: p
                    .instances()
                    .iter()
                    .map(|i| InstanceEntry { url: i.url.clone() })
                    .collect(),
            }
        }));
        let order = |name: &str| {
            crate::settings::MODULES
                .iter()
                .position(|m| *m == name)
                .unwrap_or(usize::MAX)
        };
        entries.sort_by_key(|e| order(&e.name));
        Self { entries }
    }
}

/// The event bus, for readiness.
#[derive(Clone)]
pub struct Bus(pub Arc<dyn agora_kernel::EventBus>);

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
    /// The event bus: `memory` (in process) or `jetstream`, and `up`.
    bus: BusReadiness,
    /// Modules hosted elsewhere: instance URL → `up` or why not. Listed, not
    /// judged: another process being down does not make this one unready.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    remote: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

#[derive(Serialize, ToSchema)]
pub struct BusReadiness {
    /// `memory` or `jetstream`.
    kind: &'static str,
    /// `up`
    status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", security(()), responses((status = 200, body = Liveness)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "up" })
}

/// Every module's store and the event bus are reachable (503 naming what fails otherwise).
#[utoipa::path(get, path = "/health/ready", tag = "health", security(()), responses(
    (status = 200, body = Readiness),
    (status = 503, body = Problem, content_type = "application/problem+json"),
))]
pub async fn ready(
    modules: web::Data<Modules>,
    bus: web::Data<Bus>,
    upstreams: web::Data<crate::upstream::Upstreams>,
) -> HttpResponse {
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
    let bus_check = async {
        match tokio::time::timeout(Duration::from_secs(3), bus.0.ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let (results, bus_result) =
        futures_util::join!(futures_util::future::join_all(checks), bus_check);
    // Remote instances as the health checker last saw them.
    let mut remote: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        Default::default();
    for route in upstreams.routes().values() {
        for pool in route.pools() {
            for i in pool.instances() {
                let state = if i.is_healthy() {
                    "up"
                } else {
                    "unhealthy (failing /health/ready)"
                };
                remote
                    .entry(route.module.to_owned())
                    .or_default()
                    .insert(i.url.clone(), state.to_owned());
            }
        }
    }
    let mut failing: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| {
            r.as_ref().err().map(|e| {
                tracing::warn!(module = %name, error = %e, "module not ready");
                format!("{name} (store unreachable)")
            })
        })
        .collect();
    if let Err(e) = &bus_result {
        tracing::warn!(bus = bus.0.kind(), error = %e, "event bus not ready");
        failing.push(format!("event bus ({e})"));
    }
    if failing.is_empty() {
        let modules = results
            .into_iter()
            .map(|(n, _)| (n, "up".to_owned()))
            .collect();
        HttpResponse::Ok().json(Readiness {
            status: "ready",
            modules,
            bus: BusReadiness {
                kind: bus.0.kind(),
                status: "up",
            },
            remote,
        })
    } else {
        let p = Problem::unavailable(format!("not ready: {}", failing.join(", ")), 5);
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
    items: Vec<ModuleEntry>,
}

/// Every module and where it runs: `local` ones with their store, `remote`
/// ones with the instances this process calls (admin).
#[utoipa::path(get, path = "/system/modules", tag = "system", security(("bearer" = [])), responses(
    (status = 200, body = ModuleList),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 403, body = Problem, content_type = "application/problem+json"),
))]
pub async fn system_modules(
    principal: Principal,
    topology: web::Data<Topology>,
) -> Result<HttpResponse, Problem> {
    principal.require_any(&[Role::Admin])?;
    Ok(HttpResponse::Ok().json(ModuleList {
        items: topology.entries.clone(),
    }))
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
