//! Calling a REST operation (declared `http`, or a built-in Slack, Jira or GitHub one) through
//! egress: arguments checked against the operation's schema, placed in the path, query or
//! body, the tenant's credential added by egress, and the answer read back for the model.

use bulkhead_core::ConnectorName;
use bulkhead_egress::{Method, OutboundRequest, TenantEgress};
use serde_json::{Map, Value, json};

use crate::ToolError;
use crate::spec::{BodyShape, Operation, ToolsetKind};

/// Most bytes of an answer handed to the model; the rest is cut with a note.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// Checks `arguments` against `schema`, naming every failure.
pub fn check_arguments(schema: &Value, arguments: &Value) -> Result<(), ToolError> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| ToolError::InvalidArguments(format!("the tool's schema is invalid: {e}")))?;
    let errors: Vec<String> = validator
        .iter_errors(arguments)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ToolError::InvalidArguments(errors.join("; ")))
    }
}

/// `template` with each `{name}` replaced by that argument as text; a missing one stays.
pub fn fill_template(template: &str, arguments: &Value) -> String {
    let mut out = template.to_owned();
    if let Some(map) = arguments.as_object() {
        for (key, value) in map {
            out = out.replace(&format!("{{{key}}}"), &as_text(value));
        }
    }
    out
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters, so an argument cannot
/// add a path segment, a query parameter or a fragment.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Builds the request for `op` from checked arguments.
pub fn build_request(op: &Operation, arguments: &Value) -> Result<OutboundRequest, ToolError> {
    let mut rest: Map<String, Value> = arguments.as_object().cloned().unwrap_or_default();
    let mut path = String::new();
    let mut template = op.path.as_str();
    while let Some(start) = template.find('{') {
        let end = template[start..]
            .find('}')
            .map(|e| start + e)
            .ok_or_else(|| ToolError::InvalidArguments("unclosed '{' in the path".into()))?;
        let name = &template[start + 1..end];
        let value = rest.remove(name).ok_or_else(|| {
            ToolError::InvalidArguments(format!("missing argument {name:?} for the path"))
        })?;
        path.push_str(&template[..start]);
        path.push_str(&percent_encode(&as_text(&value)));
        template = &template[end + 1..];
    }
    path.push_str(template);
    let method = Method::from_bytes(op.method.as_bytes())
        .map_err(|_| ToolError::InvalidArguments(format!("bad method {}", op.method)))?;
    let in_query = matches!(method, Method::GET | Method::DELETE);
    let body = match op.body {
        BodyShape::JiraIssue => {
            let text = |key: &str| rest.get(key).cloned().unwrap_or(Value::Null);
            let mut fields = json!({
                "project": {"key": text("project")},
                "summary": text("summary"),
                "issuetype": {"name": rest.get("issue_type").cloned().unwrap_or_else(|| json!("Task"))},
            });
            if let Some(description) = rest.get("description") {
                fields["description"] = description.clone();
            }
            Some(json!({ "fields": fields }))
        }
        BodyShape::Arguments if in_query => {
            let query: Vec<String> = rest
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(&as_text(v))))
                .collect();
            if !query.is_empty() {
                path.push('?');
                path.push_str(&query.join("&"));
            }
            None
        }
        BodyShape::Arguments => Some(Value::Object(rest)),
    };
    let mut request = match body {
        Some(body) => OutboundRequest::post_json(path, &body),
        None => OutboundRequest::get(path),
    };
    request.method = method;
    request.headers.extend(op.headers.iter().cloned());
    Ok(request)
}

/// Calls `op` and answers what the model gets back: the response body (capped), or an error
/// naming the upstream's status or error.
pub async fn call(
    egress: &TenantEgress<'_>,
    endpoint: &str,
    credential: Option<ConnectorName>,
    kind: ToolsetKind,
    op: &Operation,
    arguments: &Value,
) -> Result<String, ToolError> {
    let request = build_request(op, arguments)?.with_credential(credential);
    let response = egress.send(endpoint, request).await?;
    let text = String::from_utf8_lossy(&response.body).into_owned();
    if response.status >= 400 {
        return Err(ToolError::Upstream {
            status: response.status,
            message: clip(&text, 512),
        });
    }
    // Slack answers 200 with `"ok": false` for its errors.
    if kind == ToolsetKind::Slack {
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if parsed.get("ok") != Some(&Value::Bool(true)) {
            return Err(ToolError::Upstream {
                status: response.status,
                message: parsed
                    .get("error")
                    .map(as_text)
                    .unwrap_or_else(|| clip(&text, 512)),
            });
        }
    }
    Ok(clip(&text, MAX_RESULT_BYTES))
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut at {max} bytes]", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;

    #[test]
    fn path_arguments_are_encoded_and_cannot_escape() {
        let op = &catalog::github()[1];
        let request = build_request(
            op,
            &json!({"owner": "a/../b", "repo": "r?x=1", "issue_number": 7, "body": "hi"}),
        )
        .unwrap();
        assert_eq!(
            request.path,
            "/repos/a%2F..%2Fb/r%3Fx%3D1/issues/7/comments"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(request.body.as_deref().unwrap()).unwrap(),
            json!({"body": "hi"})
        );
    }

    #[test]
    fn get_arguments_go_to_the_query_and_jira_gets_its_shape() {
        let list = &catalog::slack()[1];
        let request = build_request(list, &json!({"limit": 5, "types": "a,b"})).unwrap();
        assert_eq!(request.path, "/api/conversations.list?limit=5&types=a%2Cb");
        assert!(request.body.is_none());
        let create = &catalog::jira()[0];
        let request = build_request(create, &json!({"project": "OPS", "summary": "Down"})).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(request.body.as_deref().unwrap()).unwrap(),
            json!({"fields": {"project": {"key": "OPS"}, "summary": "Down", "issuetype": {"name": "Task"}}})
        );
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let post = &catalog::slack()[0];
        check_arguments(&post.parameters, &json!({"channel": "#x", "text": "hi"})).unwrap();
        let error =
            check_arguments(&post.parameters, &json!({"channel": 5, "extra": true})).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("text") && message.contains("/channel"),
            "{message}"
        );
        assert_eq!(
            fill_template(
                "{owner}/{repo}#{n}",
                &json!({"owner": "o", "repo": "r", "n": 3})
            ),
            "o/r#3"
        );
    }
}
