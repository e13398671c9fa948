use std::any::Any;
use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub database: &'static str,
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    state.store().ping().await.map_err(|error| {
        tracing::warn!(error = %error, "readiness check failed");
        ApiError::NotReady
    })?;
    let database = match state.store().kind() {
        bulkhead_store::BackendKind::Sqlite => "sqlite",
        bulkhead_store::BackendKind::Postgres => "postgres",
        bulkhead_store::BackendKind::ControlPlane => "control-plane",
    };
    Ok(Json(Readiness {
        status: "ready",
        database,
    }))
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        crate::openapi_document()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".to_owned())
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A panic is a bug; the caller still gets a problem document, not a dropped connection.
pub fn panic_response(_payload: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}

/// Prometheus metrics in the text exposition format: requests and latency by route,
/// rate-limit rejections by tenant (allowlisted tenants only, the rest as `other`), upstream
/// errors by endpoint. Needs the admin token (`authorization: Bearer` in the scrape config).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("admin_token" = [])),
    responses((status = 200, content_type = "text/plain", body = String, description = "Prometheus text format"),
        (status = 401, body = crate::error::Problem)))]
pub async fn metrics(_admin: crate::authn::Admin) -> axum::response::Response {
    use axum::response::IntoResponse;
    let text = crate::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
