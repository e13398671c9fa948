//! Extractors whose rejections are [`ApiError`]s, so every bad request gets a problem document
//! naming the field at fault.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Input types use `#[serde(deny_unknown_fields)]`, so a misspelt field is an
/// error rather than silently ignored.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_rejection(&rejection, limit))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The configured body limit, placed in request extensions so errors can state it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

fn body_rejection(rejection: &BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::MalformedBody(rejection.body_text())
    }
}

/// Parses a request body that must be a JSON object. serde would otherwise accept an array
/// for a struct, filling fields by position, which no client means.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(ApiError::MalformedBody("the body is empty".into())),
        Some(b'{') => {}
        Some(_) => return Err(ApiError::invalid(".", "the body must be a JSON object")),
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        input_error(&path, &inner)
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    Ok(value)
}

fn input_error(path: &str, error: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = error.to_string();
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedBody(message),
        Category::Data => {
            let at_root = path == "." || path.is_empty();
            let quoted = message.split('`').nth(1).map(str::to_owned);
            // serde_path_to_error already ends the path with an unknown field's name, while a
            // missing field is reported at its parent object.
            match quoted {
                Some(name) if message.starts_with("unknown field") => ApiError::UnknownField {
                    field: if at_root { name } else { path.to_owned() },
                },
                Some(name) if message.starts_with("missing field") => ApiError::MissingField {
                    field: if at_root {
                        name
                    } else {
                        format!("{path}.{name}")
                    },
                },
                _ => ApiError::InvalidField {
                    field: if path.is_empty() {
                        ".".into()
                    } else {
                        path.to_owned()
                    },
                    detail: message
                        .split(" at line ")
                        .next()
                        .unwrap_or(&message)
                        .to_owned(),
                },
            }
        }
    }
}

/// Query parameters, rejected as a problem document.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::InvalidQuery(e.body_text()))
    }
}

/// Path parameters. A path that does not parse names nothing that could exist, so it is a 404.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|_| ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Input {
        id: String,
        nested: Option<Nested>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        count: u32,
    }

    fn field_of(body: &str) -> (&'static str, Option<String>) {
        match parse_json::<Input>(body.as_bytes()) {
            Ok(_) => ("ok", None),
            Err(e) => {
                let code = e.code();
                let field = match e {
                    ApiError::InvalidField { field, .. }
                    | ApiError::UnknownField { field }
                    | ApiError::MissingField { field } => Some(field),
                    _ => None,
                };
                (code, field)
            }
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"id":"a"}"#), ("ok", None));
        assert_eq!(
            field_of(r#"{"id":"a","extra":1}"#),
            ("unknown_field", Some("extra".into()))
        );
        assert_eq!(field_of(r#"{}"#), ("missing_field", Some("id".into())));
        assert_eq!(
            field_of(r#"{"id":5}"#),
            ("invalid_field", Some("id".into()))
        );
        assert_eq!(
            field_of(r#"{"id":"a","nested":{"count":-1}}"#),
            ("invalid_field", Some("nested.count".into()))
        );
        assert_eq!(
            field_of(r#"{"id":"a","nested":{"count":1,"x":2}}"#),
            ("unknown_field", Some("nested.x".into()))
        );
        assert_eq!(field_of(r#"{"id":"a""#).0, "malformed_body");
        assert_eq!(field_of(r#"{"id":"a"} trailing"#).0, "malformed_body");
        assert_eq!(
            field_of(r#"["a", null]"#),
            ("invalid_field", Some(".".into()))
        );
        assert_eq!(field_of("  ").0, "malformed_body");
    }
}
