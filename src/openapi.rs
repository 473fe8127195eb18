//! The OpenAPI document: the host's own paths merged with every module's
//! fragment, with bearer auth declared so Swagger UI's Authorize works.
//! `openapi/openapi.json` is this document, checked in; a test fails when it drifts
//! (regenerate with `cargo run -- openapi > openapi/openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A JWT; in development mint one with `cargo run -- token --sub alice --role customer`"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "agora", description = "An e-commerce backend: a modular monolith designed for later extraction. Every error is RFC 9457 application/problem+json."),
    paths(api::live, api::ready),
    components(schemas(agora_kernel::Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "system", description = "The caller and the hosted modules"),
    )
)]
struct HostDoc;

#[derive(OpenApi)]
#[openapi(paths(api::me, api::system_modules))]
struct HostApiV1;

/// The whole document.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = HostDoc::openapi();
    let mut v1 = HostApiV1::openapi();
    for module in [
        agora_order::openapi(),
        agora_inventory::openapi(),
        agora_payment::openapi(),
        agora_notification::openapi(),
    ] {
        v1.merge(module);
    }
    doc.merge(v1.nest_paths("/api/v1"));
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

trait NestPaths {
    fn nest_paths(self, prefix: &str) -> Self;
}

impl NestPaths for utoipa::openapi::OpenApi {
    fn nest_paths(mut self, prefix: &str) -> Self {
        let paths = std::mem::take(&mut self.paths.paths);
        self.paths.paths = paths
            .into_iter()
            .map(|(p, item)| (format!("{prefix}{p}"), item))
            .collect();
        self
    }
}

/// Pretty JSON, as checked in.
pub fn spec_json() -> String {
    spec()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
