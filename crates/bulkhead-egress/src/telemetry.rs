//! The platform's spans to an OpenTelemetry collector: OTLP over HTTP with JSON, from the
//! SDK's batch thread with the blocking reqwest client. The destination is the operator's
//! (`[telemetry] otlp_endpoint`), never a tenant's; spans carry ids and statuses only.

use bulkhead_core::config::TelemetryConfig;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;

#[derive(Debug, thiserror::Error)]
#[error("invalid [telemetry] otlp_endpoint {endpoint}: {source}")]
pub struct TelemetryError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The tracer provider exporting to `otlp_endpoint`, or `None` when it is unset.
pub fn otlp_provider(
    config: &TelemetryConfig,
) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|source| TelemetryError {
            endpoint: endpoint.clone(),
            source,
        })?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}
