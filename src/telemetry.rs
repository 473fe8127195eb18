//! Logs, traces and the metrics recorder.
//!
//! - Logs: `tracing` JSON lines by default, each carrying the fields of the
//!   spans it was written in (so every line of a request has its
//!   `request_id`; see [`json`]), written to stdout in batches every 10 ms
//!   (warnings and errors at once; see [`batch`]); `AGORA__LOG__FORMAT=pretty` for humans,
//!   coloured only when stdout is a terminal. Level from `RUST_LOG` (default
//!   `info,sqlx=warn`).
//! - Traces: OpenTelemetry OTLP/HTTP export when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   is set (Jaeger and Zipkin both accept OTLP); nothing is installed otherwise.
//! - Metrics: one Prometheus recorder per process, rendered by the admin listener,
//!   with the standard `process_*` series (CPU seconds, resident memory, open
//!   file descriptors, threads) and `agora_cpu_cores`, the CPUs this process may
//!   use, so that CPU utilisation is `rate(process_cpu_seconds_total) / agora_cpu_cores`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::settings::LogFormat;

pub mod batch;
pub mod json;
pub mod shards;

/// Flushes pending spans and log lines when dropped at shutdown.
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    _log_flusher: Option<batch::Flusher>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.tracer_provider.take().map(|p| p.shutdown()) {
            eprintln!("failed to flush traces: {e}");
        }
    }
}

/// Install the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) -> anyhow::Result<TelemetryGuard> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = level_filter(rust_log.as_deref());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty());
    let (fmt_layer, log_flusher) = match format {
        LogFormat::Json => {
            // Lines go out in batches (see `batch`): no system call per line.
            let (writer, flusher) = batch::Batched::new(std::io::stdout())?;
            writer.flush_on_panic();
            // The access line skips `tracing` when nothing else would read
            // its event and the filter's answer depends on the call site
            // only (see `json::AccessLine`).
            if endpoint.is_none() && per_call_site(rust_log.as_deref()) {
                let direct = writer.clone();
                json::write_access_lines_to(move |level, line| {
                    let _ = std::io::Write::write_all(&mut direct.line(level), line);
                });
            }
            (json::JsonLayer::new(writer).boxed(), Some(flusher))
        }
        LogFormat::Pretty => (
            tracing_subscriber::fmt::layer()
                .pretty()
                .with_ansi(colour(std::io::stdout().is_terminal()))
                .boxed(),
            None,
        ),
    };
    let (otel_layer, tracer_provider) = match endpoint {
        Some(_) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("agora")
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("agora");
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()?;
    Ok(TelemetryGuard {
        tracer_provider,
        _log_flusher: log_flusher,
    })
}

/// `RUST_LOG`'s level filter when it is unset, empty or unreadable.
const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// The filter for `RUST_LOG`: directives of targets and levels only (the
/// usual case, and the default) become a [`Targets`] filter, which decides
/// once per call site; span and field directives (`[span{field=x}]`) need an
/// [`EnvFilter`]. An `EnvFilter` also tracks every span: each span's
/// creation, entry, exit and close takes one read lock shared by all
/// threads, four or more per request, which the workers contended for on
/// `/health/live` (docs/performance.md).
fn level_filter(rust_log: Option<&str>) -> Box<dyn Layer<Registry> + Send + Sync> {
    let directives = directives(rust_log);
    match directives.parse::<Targets>() {
        Ok(targets) if per_call_site(rust_log) => targets.boxed(),
        _ => EnvFilter::try_new(directives)
            .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
            .boxed(),
    }
}

fn directives(rust_log: Option<&str>) -> &str {
    rust_log
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(DEFAULT_LOG_FILTER)
}

/// Whether [`level_filter`] is a [`Targets`] filter, which decides by an
/// event's target and level alone. `Targets` would read `[span]` as a
/// target's name and `t[{f}]` as a static field filter: anything with
/// brackets goes to `EnvFilter`.
fn per_call_site(rust_log: Option<&str>) -> bool {
    let directives = directives(rust_log);
    !directives.contains(['[', '{']) && directives.parse::<Targets>().is_ok()
}

/// Colour on a terminal, unless `NO_COLOR` is set (<https://no-color.org>);
/// never into a file or a pipe.
fn colour(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Quiet logs for tests; `TEST_LOG=1` prints them (pretty).
pub fn init_for_tests() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok() {
            let _ = tracing_subscriber::registry()
                .with(level_filter(std::env::var("RUST_LOG").ok().as_deref()))
                .with(tracing_subscriber::fmt::layer().with_test_writer())
                .try_init();
        }
    });
}

/// The process's Prometheus recorder, installed on first use. A process has
/// one `metrics` recorder; several `Application`s in one test process share it.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed: then ours just renders empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Render the metrics for a scrape, the process's own series refreshed first.
pub fn render_metrics() -> String {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    let collector = PROCESS.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        metrics::describe_gauge!(
            "agora_cpu_cores",
            "CPUs available to this process: the cgroup quota when one is set, else the core count"
        );
        c
    });
    collector.collect();
    metrics::gauge!("agora_cpu_cores").set(cpu_cores());
    shards::flush_all();
    metrics_handle().render()
}

/// The CPUs this process may use: a cgroup CPU quota (v2 `cpu.max`, v1
/// `cpu.cfs_quota_us`/`cpu.cfs_period_us`) when one is set, which may be a
/// fraction, else what the scheduler lets it run on.
pub fn cpu_cores() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    match cgroup_quota() {
        Some(q) if q > 0.0 => q.min(cores),
        _ => cores,
    }
}

fn cgroup_quota() -> Option<f64> {
    if let Ok(max) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        return parse_cpu_max(&max);
    }
    let quota: f64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let period: f64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// `cpu.max` holds `<quota> <period>` or `max <period>`.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The events `rust_log` lets through, of those the closure logs.
    fn passed(rust_log: Option<&str>, log: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> Layer<S> for Seen {
            fn on_event(
                &self,
                e: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let m = e.metadata();
                if let Ok(mut seen) = self.0.lock() {
                    seen.push(format!("{} {}", m.target(), m.level()));
                }
            }
        }
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(level_filter(rust_log))
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, log);
        seen.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    #[test]
    fn rust_log_filters_by_target_and_level_and_by_span_when_asked() {
        let log = || {
            tracing::info!(target: "agora::gateway", "kept");
            tracing::debug!(target: "agora::gateway", "dropped at info");
            tracing::info!(target: "sqlx::query", "dropped: sqlx=warn");
            tracing::warn!(target: "sqlx::query", "kept");
            tracing::info_span!(target: "agora", "picked").in_scope(|| {
                tracing::debug!(target: "agora::order", "kept only by a span directive");
            });
        };
        let by_default = ["agora::gateway INFO", "sqlx::query WARN"];
        assert_eq!(passed(None, log), by_default);
        assert_eq!(passed(Some("  "), log), by_default);
        assert_eq!(passed(Some("info,sqlx=warn[[["), log), by_default);
        assert_eq!(
            passed(Some("warn,agora::gateway=debug"), log),
            [
                "agora::gateway INFO",
                "agora::gateway DEBUG",
                "sqlx::query WARN"
            ]
        );
        assert_eq!(
            passed(Some("info,sqlx=warn,[picked]=debug"), log),
            [
                "agora::gateway INFO",
                "sqlx::query WARN",
                "agora::order DEBUG"
            ]
        );
    }

    #[test]
    fn a_cgroup_quota_is_read_as_cores_and_max_means_none() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("garbage"), None);
        assert!(cpu_cores() > 0.0);
    }
}
