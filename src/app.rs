//! The composition root: settings → stores → modules → gateway → servers.
//!
//! [`Application::build`] binds both listeners (port 0 picks free ports, as the
//! tests do) and starts nothing yet; [`Application::run_until_stopped`] serves,
//! runs the modules' background tasks, and on SIGINT/SIGTERM (or
//! [`Application::stop_token`]) stops accepting, drains in-flight requests,
//! stops the tasks and closes the pools.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, HttpServer, web};
use agora_kernel::{BackgroundTask, EventBus, InMemoryBus, Module};
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use utoipa_swagger_ui::SwaggerUi;

use crate::adapters;
use crate::api::{self, Modules};
use crate::gateway::auth::{self, Authenticator};
use crate::gateway::errors;
use crate::gateway::observe::{self, RouteModules};
use crate::gateway::rate_limit::{self, RateLimits};
use crate::settings::{Settings, redact_url};
use crate::upstream::Upstreams;
use crate::upstream::progressive::Routed;
use crate::upstream::rollout::Rollouts;
use crate::{openapi, telemetry};

pub struct Application {
    port: u16,
    admin_port: u16,
    server: Server,
    admin: Server,
    modules: Arc<Vec<Arc<dyn Module>>>,
    tasks: Vec<BackgroundTask>,
    stop: CancellationToken,
    shutdown_timeout: Duration,
}

/// The `/api/v1` path prefixes a module serves.
pub fn routes_of(module: &str) -> &'static [&'static str] {
    match module {
        "order" => agora_order::ROUTES,
        "inventory" => agora_inventory::ROUTES,
        "payment" => agora_payment::ROUTES,
        _ => agora_notification::ROUTES,
    }
}

/// Build the modules this process hosts, each on its own database. The order
/// module's ports go to inventory and payment wherever they run: their
/// services in this process, or their HTTP clients through the upstream pools.
async fn build_modules(
    settings: &Settings,
    bus: Arc<dyn EventBus>,
    upstreams: &Arc<Upstreams>,
) -> anyhow::Result<Vec<Arc<dyn Module>>> {
    let hosted = settings.hosted();
    if !hosted.is_empty() {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "failed to create the data directory {}",
                settings.data_dir.display()
            )
        })?;
    }
    let url = |m: &str| settings.database_url(m);
    // What every hosted module is built with: its own database, the one bus.
    let wiring = |m: &str| agora_kernel::Wiring::new(url(m), bus.clone());
    for m in &hosted {
        tracing::info!(module = m, database = %redact_url(&url(m)), "connecting module store");
    }
    for pool in upstreams.pools() {
        let urls: Vec<&str> = pool.instances().iter().map(|i| i.url.as_str()).collect();
        tracing::info!(module = pool.module, instances = ?urls, "module hosted elsewhere");
    }
    let remote = |module: &'static str| {
        upstreams
            .transport(module)
            .with_context(|| format!("no transport to the {module} module"))
    };
    let route = |module: &'static str| {
        upstreams
            .route(module)
            .cloned()
            .with_context(|| format!("no route to the {module} module"))
    };
    let mut modules: Vec<Arc<dyn Module>> = Vec::new();
    let inventory: Arc<dyn agora_inventory::InventoryApi> = if settings.hosts("inventory") {
        let m = agora_inventory::InventoryModule::build(&settings.inventory, wiring("inventory"))
            .await
            .context("inventory module")?;
        let local: Arc<dyn agora_inventory::InventoryApi> = Arc::new(m.api());
        modules.push(Arc::new(m));
        // Its route may send a share of the calls to remote instances (a
        // canary of a gradual extraction).
        Arc::new(Routed {
            local,
            remote: Arc::new(agora_inventory::RemoteInventory::new(remote("inventory")?)),
            route: route("inventory")?,
        })
    } else {
        Arc::new(agora_inventory::RemoteInventory::new(remote("inventory")?))
    };
    let payment: Arc<dyn agora_payment::PaymentApi> = if settings.hosts("payment") {
        let m = agora_payment::PaymentModule::build(&settings.payment, wiring("payment"))
            .await
            .context("payment module")?;
        let local: Arc<dyn agora_payment::PaymentApi> = Arc::new(m.api());
        modules.push(Arc::new(m));
        Arc::new(Routed {
            local,
            remote: Arc::new(agora_payment::RemotePayments::new(remote("payment")?)),
            route: route("payment")?,
        })
    } else {
        Arc::new(agora_payment::RemotePayments::new(remote("payment")?))
    };
    if settings.hosts("notification") {
        let m = agora_notification::NotificationModule::build(
            &settings.notification,
            wiring("notification"),
        )
        .await
        .context("notification module")?;
        modules.push(Arc::new(m));
    }
    if settings.hosts("order") {
        // The order module reaches inventory and payment only through its own ports.
        let stock = Arc::new(adapters::InventoryPorts(inventory));
        let ports = agora_order::OrderPorts {
            catalogue: stock.clone(),
            stock,
            payments: Arc::new(adapters::PaymentPorts(payment)),
        };
        let m = agora_order::OrderModule::build(&settings.order, wiring("order"), ports)
            .await
            .context("order module")?;
        modules.insert(0, Arc::new(m));
    }
    Ok(modules)
}

/// The event bus the settings name: in process, or NATS JetStream.
async fn build_bus(settings: &Settings) -> anyhow::Result<Arc<dyn EventBus>> {
    let Some(url) = settings.bus.url() else {
        return Ok(Arc::new(InMemoryBus::with_policy(settings.bus.policy())));
    };
    let config = agora_kernel::events::jetstream::JetStreamConfig {
        namespace: settings.bus.namespace.clone(),
        streams: crate::settings::MODULES
            .iter()
            .map(|m| (*m).to_owned())
            .collect(),
        policy: settings.bus.policy(),
    };
    let bus = agora_kernel::events::jetstream::JetStreamBus::connect(url, config)
        .await
        .context("invalid setting AGORA__BUS__URL (bus.url)")?;
    Ok(Arc::new(bus))
}

impl Application {
    /// Connect the modules' stores and bind both listeners.
    ///
    /// # Errors
    /// A store that cannot be reached or migrated, an address in use, a bad key.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        telemetry::metrics_handle();
        settings.check_serving_secret()?;
        if settings.uses_default_secret() {
            tracing::warn!(
                "USING THE DEVELOPMENT JWT SECRET: anyone can mint tokens for this instance. \
                 Set AGORA__AUTH__HS256_SECRET, or RS256/ES256/EdDSA with AGORA__AUTH__PUBLIC_KEY_PEM or AGORA__AUTH__JWKS_URL"
            );
        }
        let authenticator = Arc::new(Authenticator::from_settings(&settings.auth).await?);
        let limits = Arc::new(RateLimits::from_settings(&settings.rate_limit));
        let bus = build_bus(&settings).await?;
        let upstreams = Upstreams::from_settings(&settings)?;
        let modules = Arc::new(build_modules(&settings, bus.clone(), &upstreams).await?);

        let stop = CancellationToken::new();
        let mut tasks: Vec<BackgroundTask> =
            modules.iter().flat_map(|m| m.background_tasks()).collect();
        // After the modules subscribed: the bus's consumers run beside them.
        tasks.extend(bus.background_tasks());
        {
            let upstreams = upstreams.clone();
            tasks.push(BackgroundTask::new("upstream-health", move |t| {
                upstreams.check_health(t)
            }));
        }
        let rollouts = Arc::new(Rollouts::new(
            settings.rollout.clone(),
            upstreams.routes().clone(),
            Arc::new(crate::upstream::HttpSmoke(upstreams.clone())),
            tokio::runtime::Handle::current(),
        ));
        {
            let limits = limits.clone();
            let every = Duration::from_secs(settings.rate_limit.evict_every_secs);
            tasks.push(BackgroundTask::new("rate-limit-eviction", move |t| {
                rate_limit::evict_periodically(limits, every, t)
            }));
        }
        if authenticator.uses_jwks() {
            let auth = authenticator.clone();
            let every = Duration::from_secs(settings.auth.jwks_refresh_secs);
            tasks.push(BackgroundTask::new("jwks-refresh", move |t| {
                auth::refresh_jwks(auth, every, t)
            }));
        }
        tasks.push(BackgroundTask::new("metrics-upkeep", |t: CancellationToken| async move {
            loop {
                tokio::select! {
                    () = t.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(5)) => telemetry::metrics_handle().run_upkeep(),
                }
            }
        }));

        let route_modules: Vec<(String, String)> = crate::settings::MODULES
            .iter()
            .flat_map(|m| {
                routes_of(m)
                    .iter()
                    .map(|r| ((*r).to_owned(), (*m).to_owned()))
            })
            .collect();
        let topology = web::Data::new(api::Topology::new(&modules, &upstreams));
        let upstreams_data = web::Data::from(upstreams.clone());
        let spec = openapi::spec();
        let body_limit = settings.http.body_limit_bytes;
        let authenticator = web::Data::from(authenticator);
        let admin_auth = authenticator.clone();
        let limits = web::Data::from(limits);
        let modules_data = web::Data::new(Modules(modules.clone()));
        let bus_data = web::Data::new(api::Bus(bus.clone()));
        let route_modules = web::Data::new(RouteModules(route_modules));

        let listener = TcpListener::bind(settings.http_addr()?).with_context(|| {
            format!(
                "failed to bind the API listener to {} (AGORA__HTTP__ADDR)",
                settings.http.addr
            )
        })?;
        let port = listener.local_addr()?.port();
        let factory_modules = modules.clone();
        let remote_modules: Vec<&'static str> = upstreams.pools().map(|p| p.module).collect();
        let mut server = HttpServer::new(move || {
            let modules = factory_modules.clone();
            let remote_modules = remote_modules.clone();
            App::new()
                .configure(agora_kernel::http::extractors(body_limit))
                .app_data(authenticator.clone())
                .app_data(limits.clone())
                .app_data(modules_data.clone())
                .app_data(bus_data.clone())
                .app_data(topology.clone())
                .app_data(upstreams_data.clone())
                .app_data(route_modules.clone())
                .app_data(observe::RouteCache::default())
                .wrap(from_fn(errors::problems))
                .wrap(from_fn(observe::observe))
                .configure(api::health_routes)
                .configure(api::redirect_routes)
                .service(
                    web::scope("/api/v1")
                        .wrap(from_fn(crate::upstream::progressive::divert))
                        .wrap(from_fn(rate_limit::limit))
                        .wrap(from_fn(auth::authenticate))
                        .configure(api::api_routes)
                        .configure(move |cfg| {
                            for m in modules.iter() {
                                m.configure(cfg);
                            }
                            // Every process answers the whole surface: the
                            // routes of modules hosted elsewhere are forwarded.
                            for module in remote_modules.iter().copied() {
                                for prefix in routes_of(module) {
                                    cfg.service(web::scope(prefix).default_service(web::to(
                                        move |req: actix_web::HttpRequest,
                                              payload: web::Payload,
                                              up: web::Data<Upstreams>| async move {
                                            up.forward(module, req, payload.into_inner()).await
                                        },
                                    )));
                                }
                            }
                        }),
                )
                // After the API: actix tries services in order, and Swagger
                // UI's tail pattern is a regex every API request would run.
                .service(
                    SwaggerUi::new("/swagger-ui/{_:.*}")
                        .url("/api-docs/openapi.json", spec.clone()),
                )
                .default_service(web::to(errors::not_found))
        })
        .disable_signals()
        .shutdown_timeout(settings.http.shutdown_timeout_secs);
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        let server = server.listen(listener)?.run();

        let admin_listener = TcpListener::bind(settings.admin_addr()?).with_context(|| {
            format!(
                "failed to bind the admin listener to {} (AGORA__ADMIN__ADDR)",
                settings.admin.addr
            )
        })?;
        let admin_port = admin_listener.local_addr()?.port();
        let rollouts_data = web::Data::from(rollouts);
        let admin = HttpServer::new(move || {
            App::new()
                .configure(agora_kernel::http::extractors(body_limit))
                .app_data(admin_auth.clone())
                .app_data(rollouts_data.clone())
                .wrap(from_fn(errors::problems))
                .route(
                    "/metrics",
                    web::get().to(move || async move {
                        HttpResponse::Ok()
                            .content_type("text/plain; version=0.0.4")
                            .body(telemetry::render_metrics())
                    }),
                )
                .configure(crate::upstream::admin::routes)
                .default_service(web::to(errors::not_found))
        })
        .disable_signals()
        .workers(1)
        .listen(admin_listener)?
        .run();

        Ok(Self {
            port,
            admin_port,
            server,
            admin,
            modules,
            tasks,
            stop,
            shutdown_timeout: Duration::from_secs(settings.http.shutdown_timeout_secs),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Cancel this token to stop the application as SIGTERM would.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serve until SIGINT/SIGTERM or the stop token, then shut down gracefully.
    ///
    /// # Errors
    /// A server that failed while serving.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            server,
            admin,
            modules,
            tasks,
            stop,
            shutdown_timeout,
            ..
        } = self;
        let server_handle = server.handle();
        let admin_handle = admin.handle();
        let server_task = tokio::spawn(server);
        let admin_task = tokio::spawn(admin);

        let tasks_token = CancellationToken::new();
        let mut running = Vec::new();
        for task in tasks {
            let name = task.name.clone();
            tracing::debug!(task = %name, "starting background task");
            running.push((name, tokio::spawn((task.run)(tasks_token.clone()))));
        }

        let signal_stop = stop.clone();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            signal_stop.cancel();
        });
        stop.cancelled().await;
        signals.abort();

        tracing::info!("shutting down: no new connections, draining in-flight requests");
        server_handle.stop(true).await;
        admin_handle.stop(true).await;
        let _ = server_task.await;
        let _ = admin_task.await;

        tasks_token.cancel();
        for (name, handle) in running {
            match tokio::time::timeout(shutdown_timeout, handle).await {
                Ok(_) => tracing::debug!(task = %name, "background task stopped"),
                Err(_) => tracing::warn!(task = %name, "background task did not stop in time"),
            }
        }
        for m in modules.iter() {
            m.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
