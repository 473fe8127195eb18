//! Typed settings: the embedded `config/default.toml`, then
//! `config/$AGORA_ENV.toml` when present, then `AGORA__SECTION__KEY` variables.
//!
//! [`Settings::load`] stops start-up with one line naming the bad key; secret
//! values (the HS256 secret, database URLs with passwords) never appear in
//! messages or logs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agora_kernel::InvalidSetting;
use agora_kernel::db::Backend;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
pub const DEFAULT_HS256_SECRET: &str = "agora-development-secret-change-me-0123456789";
pub const MODULES: [&str; 4] = ["order", "inventory", "payment", "notification"];

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// How SQLite databases reach the disk.
    pub sqlite: SqliteSettings,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub bus: BusSettings,
    /// The modules this process hosts, comma-separated; empty = an edge that
    /// hosts none and forwards every `/api/v1` request. See [`Settings::hosted`].
    pub modules: String,
    /// Where the modules this process does not host run.
    pub remote: RemoteSettings,
    /// Calls to other processes: time-outs, circuit breakers, health checks.
    pub upstream: UpstreamSettings,
    /// Canary and blue-green rollouts: the analysis' thresholds.
    pub rollout: crate::upstream::rollout::RolloutSettings,
    pub order: agora_order::Settings,
    pub inventory: agora_inventory::Settings,
    pub payment: agora_payment::Settings,
    pub notification: agora_notification::Settings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SqliteSettings {
    /// `normal` (default: a power cut may lose the last ~100 ms of commits,
    /// never corrupts) or `full` (every commit is synced before it returns).
    pub synchronous: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub addr: String,
    pub body_limit_bytes: usize,
    pub workers: usize,
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub addr: String,
}

/// `log.format`: `json` (the default) or `pretty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        agora_kernel::settings::one_of(&s, &[("json", Self::Json), ("pretty", Self::Pretty)])
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub algorithm: String,
    pub hs256_secret: SecretString,
    pub issuer: String,
    pub audience: String,
    pub public_key_pem: String,
    pub jwks_url: String,
    pub jwks_refresh_secs: u64,
    pub leeway_secs: u64,
    /// Serve with the public development secret on a non-loopback listener
    /// (demos only): `AGORA__AUTH__ALLOW_DEVELOPMENT_SECRET=true`.
    pub allow_development_secret: bool,
    /// With RS256/ES256/EdDSA user tokens: the key this process signs its
    /// calls to other processes with (HS256 uses the shared secret).
    #[serde(default = "empty_secret")]
    pub service_private_key_pem: SecretString,
    /// ... and the key it verifies other processes' calls with.
    #[serde(default)]
    pub service_public_key_pem: String,
}

fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub per_second: u32,
    pub burst: u32,
    pub evict_every_secs: u64,
    #[serde(default)]
    pub routes: Vec<RouteQuota>,
}

/// `[remote.<module>]`: the instances of a module another process hosts.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RemoteModule {
    /// Base URLs, comma-separated (`http://10.0.0.5:8080,http://10.0.0.6:8080`).
    #[serde(default)]
    pub urls: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RemoteSettings {
    #[serde(default)]
    pub order: RemoteModule,
    #[serde(default)]
    pub inventory: RemoteModule,
    #[serde(default)]
    pub payment: RemoteModule,
    #[serde(default)]
    pub notification: RemoteModule,
}

/// `[upstream]`: how this process calls modules in other processes.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamSettings {
    /// Time-out of one call (forwarded request: until the response head).
    pub timeout_ms: u64,
    /// Consecutive failed calls that open a remote module's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails fast before one trial call.
    pub breaker_open_secs: u64,
    /// How often each instance's `/health/ready` is checked.
    pub health_interval_ms: u64,
}

/// `[bus]`: where integration events travel.
#[derive(Debug, Clone, Deserialize)]
pub struct BusSettings {
    /// Empty = the in-process bus; `nats://host:port` = NATS JetStream.
    pub url: SecretString,
    /// Prefix of every stream, subject and durable consumer agora creates.
    pub namespace: String,
    /// Deliveries of an event a subscriber keeps failing before it is dead-lettered.
    pub max_deliver: u32,
    /// Back-off before a redelivery: doubles from `retry_base_ms` up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

impl BusSettings {
    pub fn url(&self) -> Option<&str> {
        Some(self.url.expose_secret().trim()).filter(|u| !u.is_empty())
    }

    pub fn policy(&self) -> agora_kernel::DeliveryPolicy {
        agora_kernel::DeliveryPolicy {
            max_deliver: self.max_deliver,
            retry_base: std::time::Duration::from_millis(self.retry_base_ms),
            retry_max: std::time::Duration::from_millis(self.retry_max_ms),
        }
    }
}

/// A per-route quota override.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteQuota {
    pub method: String,
    /// The route pattern as registered, e.g. `/api/v1/orders/{id}`.
    pub route: String,
    pub per_second: u32,
    pub burst: u32,
}

/// A setting that stops start-up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

pub use agora_kernel::settings::env_name;

fn invalid(key: &str, why: impl std::fmt::Display) -> SettingsError {
    SettingsError(agora_kernel::settings::message(key, why))
}

impl From<InvalidSetting> for SettingsError {
    fn from(e: InvalidSetting) -> Self {
        Self(e.to_string())
    }
}

impl Settings {
    /// Load from the process environment and the working directory.
    pub fn load() -> Result<Settings, SettingsError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(Path::new("config"), &env)
    }

    /// Load with an explicit config folder and environment (tests use this).
    pub fn load_from(
        config_dir: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(name) = env.get("AGORA_ENV").filter(|n| !n.is_empty()) {
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(SettingsError(format!(
                    "invalid AGORA_ENV `{name}`: letters, digits, - and _ only"
                )));
            }
            let path = config_dir.join(format!("{name}.toml"));
            if path.exists() {
                builder =
                    builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
            }
        }
        let agora_env: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("AGORA__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("AGORA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("rollout.steps")
                .source(Some(agora_env)),
        );
        let raw = builder.build().map_err(describe)?;
        let settings: Settings = raw.try_deserialize().map_err(describe)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that deserialisation cannot express.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let http = parse_addr("http.addr", &self.http.addr)?;
        let admin = parse_addr("admin.addr", &self.admin.addr)?;
        if http.port() != 0 && http == admin {
            return Err(SettingsError(format!(
                "invalid settings {} and {}: the API and admin listeners cannot share {http}",
                env_name("http.addr"),
                env_name("admin.addr")
            )));
        }
        agora_kernel::settings::at_least_one(&[
            ("http.body_limit_bytes", self.http.body_limit_bytes as u64),
            (
                "rate_limit.per_second",
                u64::from(self.rate_limit.per_second),
            ),
            ("rate_limit.burst", u64::from(self.rate_limit.burst)),
            (
                "rate_limit.evict_every_secs",
                self.rate_limit.evict_every_secs,
            ),
        ])?;
        for (i, r) in self.rate_limit.routes.iter().enumerate() {
            if r.per_second == 0 || r.burst == 0 || !r.route.starts_with('/') || r.method.is_empty()
            {
                return Err(SettingsError(format!(
                    "invalid setting rate_limit.routes[{i}]: needs a method, a route starting with /, and per_second and burst of at least 1"
                )));
            }
        }
        self.inventory.validate()?;
        self.order.validate(agora_inventory::MAX_TTL_SECS)?;
        self.validate_auth()?;
        self.validate_placement()?;
        self.validate_databases()?;
        self.validate_bus()?;
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), SettingsError> {
        let a = &self.auth;
        if a.issuer.is_empty() {
            return Err(invalid("auth.issuer", "must not be empty"));
        }
        if a.audience.is_empty() {
            return Err(invalid("auth.audience", "must not be empty"));
        }
        match a.algorithm.as_str() {
            "HS256" => {
                if a.hs256_secret.expose_secret().len() < 32 {
                    return Err(invalid(
                        "auth.hs256_secret",
                        "must be at least 32 bytes long",
                    ));
                }
            }
            "RS256" | "ES256" | "EdDSA" => {
                if a.public_key_pem.trim().is_empty() == a.jwks_url.trim().is_empty() {
                    return Err(SettingsError(format!(
                        "invalid settings {} / {}: algorithm {} needs exactly one of them",
                        env_name("auth.public_key_pem"),
                        env_name("auth.jwks_url"),
                        a.algorithm
                    )));
                }
                let url = a.jwks_url.trim();
                if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid("auth.jwks_url", "must be an http(s) URL"));
                }
            }
            other => {
                return Err(invalid(
                    "auth.algorithm",
                    format!("`{other}` is not supported (HS256, RS256, ES256 or EdDSA)"),
                ));
            }
        }
        if a.jwks_refresh_secs == 0 {
            return Err(invalid("auth.jwks_refresh_secs", "must be at least 1"));
        }
        // Processes that call each other sign and verify service tokens:
        // HS256 uses the shared secret; the other algorithms need a key pair.
        let split = crate::settings::MODULES
            .iter()
            .any(|m| !self.remote_urls(m).is_empty());
        if split && a.algorithm != "HS256" {
            if a.service_private_key_pem.expose_secret().trim().is_empty() {
                return Err(invalid(
                    "auth.service_private_key_pem",
                    format!(
                        "modules in other processes are called with service tokens; with {} they are signed with this key",
                        a.algorithm
                    ),
                ));
            }
            if a.service_public_key_pem.trim().is_empty() {
                return Err(invalid(
                    "auth.service_public_key_pem",
                    "the other processes' service tokens are verified with this key",
                ));
            }
        }
        Ok(())
    }

    fn validate_placement(&self) -> Result<(), SettingsError> {
        let hosted = self.hosted_checked()?;
        for module in MODULES {
            let key = format!("remote.{module}.urls");
            let urls = self.remote_urls(module);
            for url in &urls {
                let ok = (url.starts_with("http://") || url.starts_with("https://"))
                    && url.len() > "https://".len()
                    && !url.contains(char::is_whitespace);
                if !ok {
                    return Err(invalid(&key, format!("`{url}` is not an http(s) base URL")));
                }
            }
            let modules = env_name("modules");
            let misplaced = match (hosted.contains(&module), urls.is_empty()) {
                (false, true) => Some(format!(
                    "the {module} module is neither hosted here ({modules}) nor given the URLs of the processes that host it"
                )),
                (true, false) => Some(format!(
                    "the {module} module is hosted by this process ({modules}); remote URLs are for the modules it does not host"
                )),
                _ => None,
            };
            if let Some(why) = misplaced {
                return Err(invalid(&key, why));
            }
        }
        let some = !hosted.is_empty() && hosted.len() < MODULES.len();
        if some && self.bus.url().is_none() {
            return Err(invalid(
                "bus.url",
                "this process hosts only some of the modules, so their events must cross processes: set a NATS JetStream URL",
            ));
        }
        let r = &self.rollout;
        let steps_ok = !r.steps.is_empty()
            && r.steps.windows(2).all(|w| w[0] < w[1])
            && r.steps.first().is_some_and(|f| *f >= 1)
            && r.steps.last() == Some(&100);
        if !steps_ok {
            return Err(invalid(
                "rollout.steps",
                "ascending weights in percent, 1 to 100, ending with 100",
            ));
        }
        for (key, value) in [
            ("rollout.step_secs", r.step_secs),
            ("rollout.min_samples", r.min_samples),
            ("rollout.rollback_min_samples", r.rollback_min_samples),
            ("rollout.evaluate_every_ms", r.evaluate_every_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("rollout.promote_max_error_rate", r.promote_max_error_rate),
            ("rollout.rollback_error_rate", r.rollback_error_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(key, "a fraction from 0 to 1 (0.01 is 1 %)"));
            }
        }
        if r.promote_max_error_rate > r.rollback_error_rate
            || r.promote_max_p99_ms > r.rollback_p99_ms
        {
            return Err(invalid(
                "rollout.promote_max_error_rate",
                "the promote thresholds must not exceed the rollback thresholds",
            ));
        }
        let t = &self.upstream;
        for (key, value) in [
            ("upstream.timeout_ms", t.timeout_ms),
            ("upstream.breaker_open_secs", t.breaker_open_secs),
            ("upstream.health_interval_ms", t.health_interval_ms),
            ("upstream.breaker_failures", u64::from(t.breaker_failures)),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    fn hosted_checked(&self) -> Result<Vec<&'static str>, SettingsError> {
        let mut hosted = Vec::new();
        for name in self
            .modules
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let Some(m) = MODULES.iter().find(|m| **m == name) else {
                return Err(invalid(
                    "modules",
                    format!("unknown module `{name}` (order, inventory, payment, notification)"),
                ));
            };
            if !hosted.contains(m) {
                hosted.push(*m);
            }
        }
        Ok(hosted)
    }

    /// The modules this process hosts, in agora's order.
    pub fn hosted(&self) -> Vec<&'static str> {
        let listed = self.hosted_checked().unwrap_or_default();
        MODULES
            .iter()
            .copied()
            .filter(|m| listed.contains(m))
            .collect()
    }

    pub fn hosts(&self, module: &str) -> bool {
        self.hosted().contains(&module)
    }

    /// The base URLs of the processes hosting `module` (no trailing `/`).
    pub fn remote_urls(&self, module: &str) -> Vec<String> {
        let r = match module {
            "order" => &self.remote.order,
            "inventory" => &self.remote.inventory,
            "payment" => &self.remote.payment,
            _ => &self.remote.notification,
        };
        r.urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    fn validate_bus(&self) -> Result<(), SettingsError> {
        let b = &self.bus;
        if let Some(url) = b.url()
            && !url
                .split(',')
                .all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://"))
        {
            return Err(invalid(
                "bus.url",
                "must be empty (in-process bus) or nats://host:port (NATS JetStream)",
            ));
        }
        if !agora_kernel::events::jetstream::valid_name(&b.namespace) {
            return Err(invalid(
                "bus.namespace",
                "must be 1 to 64 letters, digits, _ or -",
            ));
        }
        agora_kernel::settings::at_least_one(&[
            ("bus.max_deliver", u64::from(b.max_deliver)),
            ("bus.retry_base_ms", b.retry_base_ms),
        ])?;
        if b.retry_max_ms < b.retry_base_ms {
            return Err(invalid(
                "bus.retry_max_ms",
                "must be at least bus.retry_base_ms",
            ));
        }
        Ok(())
    }

    fn validate_databases(&self) -> Result<(), SettingsError> {
        if agora_kernel::sqlite::Synchronous::parse(&self.sqlite.synchronous).is_none() {
            return Err(invalid("sqlite.synchronous", "must be normal or full"));
        }
        let mut seen: Vec<(&str, String)> = Vec::new();
        // Only the hosted modules' stores are this process's business.
        for module in self.hosted() {
            let url = self.database_url(module);
            let key = format!("{module}.database_url");
            let backend = Backend::of_url(&url).ok_or_else(|| {
                invalid(&key, "must start with sqlite:, postgres:// or mongodb://")
            })?;
            let allowed = match module {
                "inventory" => matches!(backend, Backend::Sqlite | Backend::Mongo),
                _ => matches!(backend, Backend::Sqlite | Backend::Postgres),
            };
            if !allowed {
                let expected = if module == "inventory" {
                    "sqlite: or mongodb://"
                } else {
                    "sqlite: or postgres://"
                };
                return Err(invalid(
                    &key,
                    format!("the {module} module stores its data in {expected}"),
                ));
            }
            let identity = database_identity(&url);
            if let Some((other, _)) = seen.iter().find(|(_, id)| *id == identity) {
                return Err(SettingsError(format!(
                    "invalid settings {} and {}: modules `{other}` and `{module}` must not share a database",
                    env_name(&format!("{other}.database_url")),
                    env_name(&key)
                )));
            }
            seen.push((module, identity));
        }
        Ok(())
    }

    /// The module's database URL, defaulting to `sqlite://<data_dir>/<module>.db`.
    pub fn database_url(&self, module: &str) -> String {
        let configured = match module {
            "order" => &self.order.database_url,
            "inventory" => &self.inventory.database_url,
            "payment" => &self.payment.database_url,
            _ => &self.notification.database_url,
        }
        .expose_secret()
        .trim()
        .to_owned();
        let url = if configured.is_empty() {
            format!("sqlite://{}/{module}.db", self.data_dir.display())
        } else {
            configured
        };
        // `sqlite.synchronous = "full"` applies to every SQLite URL that does
        // not choose for itself.
        let full = self.sqlite.synchronous.eq_ignore_ascii_case("full");
        if full && url.starts_with("sqlite:") && !url.contains("synchronous=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}synchronous=full")
        } else {
            url
        }
    }

    pub fn http_addr(&self) -> Result<SocketAddr, SettingsError> {
        parse_addr("http.addr", &self.http.addr)
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, SettingsError> {
        parse_addr("admin.addr", &self.admin.addr)
    }

    pub fn uses_default_secret(&self) -> bool {
        self.auth.algorithm == "HS256"
            && self.auth.hs256_secret.expose_secret() == DEFAULT_HS256_SECRET
    }

    /// Serving with the development secret (public: it is in this repository)
    /// on anything but a loopback address would let anyone mint admin tokens;
    /// refused unless `auth.allow_development_secret` says it is a demo.
    ///
    /// # Errors
    /// One line naming `AGORA__AUTH__HS256_SECRET` and the way out.
    pub fn check_serving_secret(&self) -> Result<(), SettingsError> {
        let addr = self.http_addr()?;
        if !self.uses_default_secret()
            || addr.ip().is_loopback()
            || self.auth.allow_development_secret
        {
            return Ok(());
        }
        Err(SettingsError(format!(
            "refusing to serve on {addr} with the public development JWT secret (anyone could mint admin tokens): set {} to a secret of 32+ bytes, or use RS256/ES256/EdDSA; {}=true allows it for a demo",
            env_name("auth.hs256_secret"),
            env_name("auth.allow_development_secret"),
        )))
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, SettingsError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an IP address and port such as 127.0.0.1:8080"),
        )
    })
}

/// What makes two database URLs the same database: for SQLite the file's
/// absolute path; otherwise host, port and database name, ignoring credentials
/// and options.
pub fn database_identity(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or(path);
        if path == ":memory:" || path.is_empty() {
            return format!("sqlite-memory:{url}");
        }
        let p = Path::new(path);
        let absolute = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        };
        let normal: PathBuf = absolute.components().fold(PathBuf::new(), |mut acc, c| {
            match c {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    acc.pop();
                }
                other => acc.push(other),
            }
            acc
        });
        return format!("sqlite:{}", normal.display());
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let scheme = if scheme == "postgresql" {
        "postgres"
    } else {
        scheme
    };
    let rest = rest.split('?').next().unwrap_or(rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (hosts, db) = rest.split_once('/').unwrap_or((rest, ""));
    let default_port = if scheme == "postgres" {
        ":5432"
    } else {
        ":27017"
    };
    let mut hosts: Vec<String> = hosts
        .split(',')
        .map(|h| {
            let h = h.to_ascii_lowercase().replace("localhost", "127.0.0.1");
            if h.contains(':') {
                h
            } else {
                format!("{h}{default_port}")
            }
        })
        .collect();
    hosts.sort();
    format!(
        "{scheme}://{}/{}",
        hosts.join(","),
        db.trim_end_matches('/')
    )
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// serde's messages name the key as "... for key `section.key`": lead with it.
fn keyed(message: &str) -> SettingsError {
    match message.rsplit_once(" for key `") {
        Some((why, key)) => invalid(key.trim_end_matches('`'), why),
        None => SettingsError(format!("invalid settings: {message}")),
    }
}

/// Turn a `config` error into one line naming the key, never echoing a value.
fn describe(e: config::ConfigError) -> SettingsError {
    match e {
        config::ConfigError::Type {
            key: Some(key),
            expected,
            ..
        } => invalid(&key, format!("expected {expected}")),
        config::ConfigError::Type {
            key: None,
            expected,
            ..
        } => SettingsError(format!("invalid setting: expected {expected}")),
        config::ConfigError::NotFound(key) => {
            SettingsError(format!("missing setting {} ({key})", env_name(&key)))
        }
        config::ConfigError::Message(m) => keyed(&m),
        other => keyed(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_from(Path::new("/nonexistent"), &env)
    }

    /// Why these variables are refused (empty when they load).
    fn refused(pairs: &[(&str, &str)]) -> String {
        load(pairs).err().map(|e| e.0).unwrap_or_default()
    }

    #[test]
    fn the_defaults_load_and_point_each_module_at_its_own_sqlite_file() {
        let s = load(&[]).map_err(|e| e.0);
        let s = s.as_ref().map_err(|e| e.clone());
        assert!(s.is_ok(), "{s:?}");
        if let Ok(s) = s {
            assert_eq!(s.http.addr, "127.0.0.1:8080");
            assert_eq!(s.database_url("order"), "sqlite://./data/order.db");
            assert!(s.uses_default_secret());
        }
    }

    #[test]
    fn sqlite_synchronous_full_reaches_every_sqlite_url_and_nothing_else_is_accepted() {
        let s = load(&[
            ("AGORA__SQLITE__SYNCHRONOUS", "full"),
            ("AGORA__DATA_DIR", "/tmp/x"),
            ("AGORA__ORDER__DATABASE_URL", "sqlite:///tmp/o.db?mode=rwc"),
        ])
        .map_err(|e| e.0);
        assert_eq!(
            s.as_ref()
                .map(|s| s.database_url("payment"))
                .ok()
                .as_deref(),
            Some("sqlite:///tmp/x/payment.db?synchronous=full")
        );
        assert_eq!(
            s.map(|s| s.database_url("order")).ok().as_deref(),
            Some("sqlite:///tmp/o.db?mode=rwc&synchronous=full")
        );
        let e = load(&[("AGORA__SQLITE__SYNCHRONOUS", "off")])
            .map(|_| ())
            .map_err(|e| e.0);
        assert!(
            e.as_ref()
                .is_err_and(|e| e.contains("AGORA__SQLITE__SYNCHRONOUS")),
            "{e:?}"
        );
    }

    #[test]
    fn environment_variables_override_nested_keys() {
        let s = load(&[
            ("AGORA__RATE_LIMIT__PER_SECOND", "7"),
            ("AGORA__DATA_DIR", "/tmp/x"),
        ]);
        let s = s.map_err(|e| e.0);
        assert_eq!(s.as_ref().map(|s| s.rate_limit.per_second).ok(), Some(7));
        assert_eq!(
            s.map(|s| s.database_url("payment")).ok().as_deref(),
            Some("sqlite:///tmp/x/payment.db")
        );
    }

    #[test]
    fn a_refused_value_names_the_key_to_change() {
        for (why, var, value, named) in [
            (
                "a bad value",
                "AGORA__RATE_LIMIT__PER_SECOND",
                "lots",
                "AGORA__RATE_LIMIT__PER_SECOND",
            ),
            (
                "a bad value",
                "AGORA__HTTP__ADDR",
                "nowhere",
                "AGORA__HTTP__ADDR",
            ),
            (
                "a module on the wrong kind of store",
                "AGORA__ORDER__DATABASE_URL",
                "mongodb://127.0.0.1/orders",
                "AGORA__ORDER__DATABASE_URL",
            ),
            (
                "a production algorithm needs a key source",
                "AGORA__AUTH__ALGORITHM",
                "RS256",
                "AGORA__AUTH__PUBLIC_KEY_PEM",
            ),
            (
                "an unknown algorithm",
                "AGORA__AUTH__ALGORITHM",
                "none",
                "AGORA__AUTH__ALGORITHM",
            ),
            (
                "the bus speaks NATS only",
                "AGORA__BUS__URL",
                "http://127.0.0.1:4222",
                "AGORA__BUS__URL",
            ),
            (
                "a namespace is one subject token",
                "AGORA__BUS__NAMESPACE",
                "a.b",
                "AGORA__BUS__NAMESPACE",
            ),
        ] {
            let e = refused(&[(var, value)]);
            assert!(
                e.contains(named),
                "{why} ({var}={value}) must name {named}: {e}"
            );
        }
    }

    #[test]
    fn an_unknown_enum_value_names_the_allowed_ones() {
        let e = refused(&[("AGORA__LOG__FORMAT", "fancy")]);
        assert_eq!(
            e,
            "invalid setting AGORA__LOG__FORMAT (log.format): must be json or pretty, not `fancy`"
        );
        let e = refused(&[("AGORA__PAYMENT__PROVIDER", "stripe")]);
        assert_eq!(
            e,
            "invalid setting AGORA__PAYMENT__PROVIDER (payment.provider): must be simulated or http, not `stripe`"
        );
        let s = load(&[
            ("AGORA__LOG__FORMAT", "pretty"),
            ("AGORA__PAYMENT__PROVIDER", "simulated"),
        ]);
        assert_eq!(s.map(|s| s.log.format).ok(), Some(LogFormat::Pretty));
    }

    #[test]
    fn a_short_secret_is_refused_without_being_echoed() {
        let e = refused(&[("AGORA__AUTH__HS256_SECRET", "hunter2")]);
        assert!(e.contains("AGORA__AUTH__HS256_SECRET"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn two_modules_on_one_database_are_refused() {
        let e = refused(&[
            (
                "AGORA__ORDER__DATABASE_URL",
                "postgres://u:pw@localhost/shop",
            ),
            (
                "AGORA__PAYMENT__DATABASE_URL",
                "postgres://127.0.0.1:5432/shop?sslmode=disable",
            ),
        ]);
        assert!(
            e.contains("AGORA__ORDER__DATABASE_URL") && e.contains("AGORA__PAYMENT__DATABASE_URL"),
            "{e}"
        );
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn the_bus_defaults_to_in_process_and_takes_nats() {
        let s = load(&[]).map_err(|e| e.0);
        assert_eq!(s.as_ref().ok().map(|s| s.bus.url().is_none()), Some(true));
        assert_eq!(
            s.as_ref().ok().map(|s| s.bus.namespace.as_str()),
            Some("agora")
        );
        let ok = load(&[("AGORA__BUS__URL", "nats://127.0.0.1:4222")]).map_err(|e| e.0);
        assert_eq!(
            ok.ok().and_then(|s| s.bus.url().map(str::to_owned)),
            Some("nats://127.0.0.1:4222".to_owned())
        );
    }

    #[test]
    fn the_development_secret_is_refused_off_loopback_unless_allowed() {
        let refusal = |pairs: &[(&str, &str)]| {
            load(pairs)
                .map_err(|e| e.0)
                .and_then(|s| s.check_serving_secret().map_err(|e| e.0))
                .err()
        };
        assert_eq!(refusal(&[]), None, "127.0.0.1 is loopback");
        assert_eq!(refusal(&[("AGORA__HTTP__ADDR", "[::1]:8080")]), None);
        let e = refusal(&[("AGORA__HTTP__ADDR", "0.0.0.0:8080")]).unwrap_or_default();
        assert!(e.contains("AGORA__AUTH__HS256_SECRET"), "{e}");
        assert!(e.contains("AGORA__AUTH__ALLOW_DEVELOPMENT_SECRET"), "{e}");
        assert!(!e.contains(DEFAULT_HS256_SECRET), "{e}");
        assert!(refusal(&[("AGORA__HTTP__ADDR", "192.168.1.5:8080")]).is_some());
        assert_eq!(
            refusal(&[
                ("AGORA__HTTP__ADDR", "0.0.0.0:8080"),
                ("AGORA__AUTH__ALLOW_DEVELOPMENT_SECRET", "true"),
            ]),
            None
        );
        assert_eq!(
            refusal(&[
                ("AGORA__HTTP__ADDR", "0.0.0.0:8080"),
                (
                    "AGORA__AUTH__HS256_SECRET",
                    "a-real-secret-of-at-least-32-bytes-long"
                ),
            ]),
            None
        );
    }

    #[test]
    fn placement_defaults_to_every_module_here_and_refuses_gaps_and_unknown_names() {
        let s = load(&[]).map_err(|e| e.0);
        assert_eq!(
            s.as_ref().ok().map(Settings::hosted),
            Some(MODULES.to_vec())
        );
        // The variables set, and the names the refusal must mention.
        type Refusal<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let refusals: [Refusal; 5] = [
            (
                &[("AGORA__MODULES", "order,shipping")],
                &["AGORA__MODULES", "shipping"],
            ),
            // Order needs payment somewhere: here or remote.
            (
                &[
                    ("AGORA__MODULES", "order,notification"),
                    ("AGORA__BUS__URL", "nats://127.0.0.1:4222"),
                    ("AGORA__REMOTE__INVENTORY__URLS", "http://10.0.0.5:8080"),
                ],
                &["AGORA__REMOTE__PAYMENT__URLS"],
            ),
            // A split deployment needs a shared bus.
            (
                &[
                    ("AGORA__MODULES", "order,notification"),
                    ("AGORA__REMOTE__INVENTORY__URLS", "http://b:8080"),
                    ("AGORA__REMOTE__PAYMENT__URLS", "http://b:8080"),
                ],
                &["AGORA__BUS__URL"],
            ),
            // A module hosted here is not also remote.
            (
                &[("AGORA__REMOTE__ORDER__URLS", "http://x:1")],
                &["AGORA__REMOTE__ORDER__URLS"],
            ),
            (
                &[
                    ("AGORA__MODULES", ""),
                    ("AGORA__REMOTE__ORDER__URLS", "ftp://x"),
                ],
                &["AGORA__REMOTE__ORDER__URLS"],
            ),
        ];
        for (env, named) in refusals {
            let e = refused(env);
            assert!(named.iter().all(|n| e.contains(n)), "{env:?}: {e}");
        }
        let split = load(&[
            ("AGORA__MODULES", "payment"),
            ("AGORA__BUS__URL", "nats://127.0.0.1:4222"),
            ("AGORA__REMOTE__ORDER__URLS", "http://a:8080/"),
            (
                "AGORA__REMOTE__INVENTORY__URLS",
                "http://b:8080, http://c:8080",
            ),
            ("AGORA__REMOTE__NOTIFICATION__URLS", "http://a:8080"),
        ])
        .map_err(|e| e.0);
        let split = split.as_ref().ok();
        assert_eq!(split.map(Settings::hosted), Some(vec!["payment"]));
        assert_eq!(
            split.map(|s| s.remote_urls("inventory")),
            Some(vec!["http://b:8080".to_owned(), "http://c:8080".to_owned()])
        );
        assert_eq!(
            split.map(|s| s.remote_urls("order")),
            Some(vec!["http://a:8080".to_owned()])
        );
        // An edge hosts nothing, publishes nothing: no broker needed.
        let edge = load(&[
            ("AGORA__MODULES", ""),
            ("AGORA__REMOTE__ORDER__URLS", "http://a:8080"),
            ("AGORA__REMOTE__INVENTORY__URLS", "http://a:8080"),
            ("AGORA__REMOTE__PAYMENT__URLS", "http://a:8080"),
            ("AGORA__REMOTE__NOTIFICATION__URLS", "http://a:8080"),
        ])
        .map_err(|e| e.0);
        assert_eq!(edge.ok().map(|s| s.hosted().is_empty()), Some(true));
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact_url("sqlite://./data/order.db"),
            "sqlite://./data/order.db"
        );
    }
}
