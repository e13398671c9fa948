//! One error type for every handler, rendered as RFC 9457 `application/problem+json` with a
//! stable `code`. Internal causes go to the log, never into the body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bulkhead_core::Role;
use bulkhead_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid credential is required")]
    Unauthenticated,
    #[error("this needs one of the roles {0:?}")]
    Forbidden(&'static [Role]),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is not valid JSON: {0}")]
    MalformedBody(String),
    #[error("{detail}")]
    InvalidField { field: String, detail: String },
    #[error("{detail}")]
    Template {
        field: &'static str,
        detail: String,
        line: Option<usize>,
    },
    #[error("unknown field {field:?}")]
    UnknownField { field: String },
    #[error("missing field {field:?}")]
    MissingField { field: String },
    #[error("invalid query parameter: {0}")]
    InvalidQuery(String),
    #[error("the database is not reachable")]
    NotReady,
    /// The tenant's request rate is above its limit; retry after this many seconds.
    #[error(
        "this organisation is sending requests faster than its limit; retry in {retry_after} s"
    )]
    RateLimited { retry_after: u64 },
    /// A failure with its own stable code (an embedder, a provider, egress), answered with
    /// the status [`status_for_code`] gives it.
    #[error("{detail}")]
    Failed { code: &'static str, detail: String },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::InvalidField {
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidField { .. }
            | ApiError::Template { .. }
            | ApiError::UnknownField { .. }
            | ApiError::MissingField { .. }
            | ApiError::InvalidQuery(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Failed { code, .. } => status_for_code(code),
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code. Clients match on this, so never change one.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MalformedBody(_) => "malformed_body",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::Template { .. } => "template_error",
            ApiError::UnknownField { .. } => "unknown_field",
            ApiError::MissingField { .. } => "missing_field",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::NotReady => "not_ready",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Failed { code, .. } => code,
            ApiError::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => "Unauthenticated",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound => "Not found",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::Conflict(_) => "Conflict",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::UnsupportedMediaType => "Unsupported media type",
            ApiError::MalformedBody(_) => "Malformed body",
            ApiError::InvalidField { .. }
            | ApiError::Template { .. }
            | ApiError::UnknownField { .. }
            | ApiError::MissingField { .. }
            | ApiError::InvalidQuery(_) => "Invalid input",
            ApiError::NotReady => "Not ready",
            ApiError::RateLimited { .. } => "Too many requests",
            ApiError::Failed { .. } => "Request failed",
            ApiError::Internal(_) => "Internal error",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::InvalidField { field, .. }
            | ApiError::UnknownField { field }
            | ApiError::MissingField { field } => Some(field),
            ApiError::Template { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The problem document (RFC 9457) every error answers with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:bulkhead:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable error code.
    pub code: &'static str,
    /// The request field at fault, for input errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The template line at fault, for `template_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            // Never show an internal cause: it may name tables, paths or worse.
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, source = ?cause.source(), "request failed");
                "Something went wrong".to_owned()
            }
            other => other.to_string(),
        };
        let problem = Problem {
            kind: format!("urn:bulkhead:problem:{}", self.code()),
            title: self.title(),
            status: status.as_u16(),
            detail,
            code: self.code(),
            field: self.field().map(str::to_owned),
            line: match &self {
                ApiError::Template { line, .. } => *line,
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::RateLimited { retry_after } = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<bulkhead_vault::VaultError> for ApiError {
    fn from(error: bulkhead_vault::VaultError) -> Self {
        use bulkhead_vault::VaultError;
        match error {
            VaultError::Store(error) => error.into(),
            VaultError::FieldsNotObject => ApiError::invalid("fields", "must be a JSON object"),
            VaultError::Contended => {
                ApiError::Conflict("the credential kept changing; retry".into())
            }
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

/// The status a failure code answers with: the client's own mistakes are 4xx, the failures
/// of what Bulkhead depends on 502, 503 or 504.
pub(crate) fn status_for_code(code: &str) -> StatusCode {
    match code {
        "model_not_found" | "agent_not_found" | "not_found" => StatusCode::NOT_FOUND,
        "model_not_allowed" | "residency_violation" => StatusCode::FORBIDDEN,
        "invalid_request" | "provider_bad_request" | "missing_credential" | "template_error" => {
            StatusCode::BAD_REQUEST
        }
        "document_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "provider_rate_limited" | "budget_exhausted" | "too_many_runs" => {
            StatusCode::TOO_MANY_REQUESTS
        }
        "embedder_unavailable" | "worker_capacity" | "worker_unavailable" | "worker_lost" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "upstream_timeout" => StatusCode::GATEWAY_TIMEOUT,
        "internal" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    }
}

impl From<crate::worker::WorkerError> for ApiError {
    fn from(error: crate::worker::WorkerError) -> Self {
        ApiError::Failed {
            code: error.code(),
            detail: error.to_string(),
        }
    }
}

/// The error a dedicated worker refused a request with, by its stable code. Codes this
/// process does not know become `internal` (their detail goes to the log, not the body).
pub(crate) fn relayed(code: &str, detail: String) -> ApiError {
    const PASSED_ON: &[&str] = &[
        "budget_exhausted",
        "too_many_runs",
        "worker_lost",
        "worker_capacity",
        "worker_unavailable",
    ];
    match code {
        "not_found" => ApiError::NotFound,
        "unauthenticated" => ApiError::Unauthenticated,
        _ => match PASSED_ON.iter().find(|known| **known == code) {
            Some(known) => ApiError::Failed {
                code: known,
                detail,
            },
            None => ApiError::Internal(format!("dedicated worker: {code}: {detail}").into()),
        },
    }
}

impl From<bulkhead_runtime::quotas::QuotaError> for ApiError {
    fn from(error: bulkhead_runtime::quotas::QuotaError) -> Self {
        match error {
            bulkhead_runtime::quotas::QuotaError::Store(e) => e.into(),
            other => ApiError::Failed {
                code: other.code(),
                detail: other.to_string(),
            },
        }
    }
}

impl From<bulkhead_knowledge::KnowledgeError> for ApiError {
    fn from(error: bulkhead_knowledge::KnowledgeError) -> Self {
        use bulkhead_knowledge::KnowledgeError;
        match error {
            KnowledgeError::Invalid { field, message } => ApiError::invalid(field, message),
            KnowledgeError::NotFound => ApiError::NotFound,
            KnowledgeError::Store(e) => e.into(),
            other => ApiError::Failed {
                code: other.code(),
                detail: other.to_string(),
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::NotFound(_) => ApiError::NotFound,
            other => ApiError::Internal(Box::new(other)),
        }
    }
}
