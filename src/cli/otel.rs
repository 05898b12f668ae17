//! OpenTelemetry export of plexus's spans over OTLP/HTTP.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set —
//! the standard variables, so an existing collector configuration works unchanged
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` too). Protocol from `OTEL_EXPORTER_OTLP_PROTOCOL`:
//! `http/protobuf` (default) or `http/json`; gRPC is not built in (it would pull in a second
//! HTTP/2 stack for one exporter).
//!
//! What is exported: plexus's own spans at info level — one `stage` span per stage for the
//! run, one `batch` span per batch a stage processes, one `sink_batch` per batch a sink
//! writes. Their fields are names and counts, never record content, so no patient data
//! leaves through traces.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct OtelGuard(SdkTracerProvider);

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("warning: exporting the last traces failed: {e}");
        }
    }
}

/// True when the environment asks for trace export.
pub fn requested() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync + 'static>;

/// The tracing layer that exports to OTLP, when requested.
pub fn layer<S>() -> anyhow::Result<Option<(BoxedLayer<S>, OtelGuard)>>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !requested() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("plexus");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("plexus");
    // Only plexus's own spans: dependencies' (hyper, rdkafka, DataFusion) would drown them.
    let filter = Targets::new().with_target("plexus", tracing::Level::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter);
    Ok(Some((Box::new(layer), OtelGuard(provider))))
}
