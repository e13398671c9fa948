//! Toolsets as tenants declare them (`PUT /v1/tools/{name}`), and the operations each offers.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::catalog;

/// What `PUT /v1/tools/{name}` takes. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolsetSpec {
    pub kind: ToolsetKind,
    /// The `[[endpoints]]` entry calls go to (its region applies; kind `tool`, or `mcp` for
    /// an MCP server).
    pub endpoint: String,
    /// Which of the tenant's credentials to present; defaults to the endpoint's connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// For `http`: the operations, each a REST call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<HttpOperation>,
    /// Operations (by name) that count as destructive for policies, besides those the
    /// connector marks so itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destructive: Vec<String>,
    /// For `mcp`: the server's path under the endpoint's base URL (default `/mcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Where an MCP server listens unless its toolset says otherwise.
pub const DEFAULT_MCP_PATH: &str = "/mcp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolsetKind {
    Http,
    Slack,
    Jira,
    Github,
    Mcp,
}

impl ToolsetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolsetKind::Http => "http",
            ToolsetKind::Slack => "slack",
            ToolsetKind::Jira => "jira",
            ToolsetKind::Github => "github",
            ToolsetKind::Mcp => "mcp",
        }
    }
}

/// A declared REST operation of an `http` toolset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpOperation {
    /// Lowercase letters, digits and `_`, starting with a letter.
    pub name: String,
    pub description: String,
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// Appended to the endpoint's base URL; `{name}` is replaced by that argument,
    /// percent-encoded. Other arguments go in the query (GET, DELETE) or the JSON body.
    pub path: String,
    /// JSON Schema of the arguments (an object schema).
    #[schema(value_type = Object)]
    pub arguments: Value,
    /// What an approver sees as the call's target: a template over the arguments such as
    /// `{project}`; defaults to the path template filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// How a call's arguments become the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyShape {
    /// The arguments not used in the path, as a JSON object (or query for GET and DELETE).
    Arguments,
    /// Jira's `{"fields": {...}}` issue shape.
    JiraIssue,
}

/// One operation a toolset offers, ready to call.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub name: String,
    pub description: String,
    pub method: String,
    pub path: String,
    pub parameters: Value,
    /// Template of the target shown to approvers and given to policies.
    pub target: String,
    /// The verb phrase of the approval line ("post a message to").
    pub action: String,
    pub destructive: bool,
    pub body: BodyShape,
    pub headers: Vec<(String, String)>,
}

/// Most operations one `http` toolset may declare.
pub const MAX_OPERATIONS: usize = 200;

/// A reason a toolset spec is refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

pub fn valid_operation_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl ToolsetSpec {
    /// Checks the spec on its own; the endpoint's existence and kind are checked by
    /// [`crate::Tools::validate`].
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(credential) = &self.credential {
            bulkhead_core::ConnectorName::try_from(credential.as_str())
                .map_err(|e| refuse("credential", e.to_string()))?;
        }
        if let Some(path) = &self.path {
            if self.kind != ToolsetKind::Mcp {
                return Err(refuse("path", "only an mcp toolset has a path"));
            }
            if !path.starts_with('/') || path.contains("..") || path.len() > 256 {
                return Err(refuse(
                    "path",
                    "must start with '/', at most 256 characters, no '..'",
                ));
            }
        }
        match self.kind {
            ToolsetKind::Http => {
                if self.operations.is_empty() || self.operations.len() > MAX_OPERATIONS {
                    return Err(refuse(
                        "operations",
                        format!("an http toolset declares 1 to {MAX_OPERATIONS} operations"),
                    ));
                }
                let mut seen = std::collections::BTreeSet::new();
                for (i, op) in self.operations.iter().enumerate() {
                    op.validate(&format!("operations[{i}]"))?;
                    if !seen.insert(op.name.as_str()) {
                        return Err(refuse(
                            format!("operations[{i}].name"),
                            format!("{:?} is declared twice", op.name),
                        ));
                    }
                }
            }
            _ if !self.operations.is_empty() => {
                return Err(refuse(
                    "operations",
                    format!("a {} toolset's operations are built in", self.kind.as_str()),
                ));
            }
            _ => {}
        }
        if self.kind != ToolsetKind::Mcp {
            let offered: Vec<String> = self.operations().into_iter().map(|o| o.name).collect();
            for name in &self.destructive {
                if !offered.contains(name) {
                    return Err(refuse(
                        "destructive",
                        format!("{name:?} is not an operation of this toolset"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The operations of a toolset whose operations are known without asking a server
    /// (all but `mcp`).
    pub fn operations(&self) -> Vec<Operation> {
        let mut operations = match self.kind {
            ToolsetKind::Http => self
                .operations
                .iter()
                .map(HttpOperation::operation)
                .collect(),
            ToolsetKind::Slack => catalog::slack(),
            ToolsetKind::Jira => catalog::jira(),
            ToolsetKind::Github => catalog::github(),
            ToolsetKind::Mcp => Vec::new(),
        };
        for op in &mut operations {
            op.destructive |= self.destructive.contains(&op.name);
        }
        operations
    }
}

impl HttpOperation {
    fn validate(&self, at: &str) -> Result<(), SpecError> {
        if !valid_operation_name(&self.name) {
            return Err(refuse(
                format!("{at}.name"),
                "lowercase letters, digits and '_', starting with a letter, at most 48",
            ));
        }
        if self.description.trim().is_empty() || self.description.len() > 1024 {
            return Err(refuse(format!("{at}.description"), "1 to 1024 characters"));
        }
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&self.method.as_str()) {
            return Err(refuse(
                format!("{at}.method"),
                "one of GET, POST, PUT, PATCH, DELETE",
            ));
        }
        if !self.path.starts_with('/') || self.path.contains("..") || self.path.len() > 512 {
            return Err(refuse(
                format!("{at}.path"),
                "must start with '/', at most 512 characters, no '..'",
            ));
        }
        if self.arguments.get("type") != Some(&json!("object")) {
            return Err(refuse(
                format!("{at}.arguments"),
                "must be a JSON Schema with \"type\": \"object\"",
            ));
        }
        jsonschema::validator_for(&self.arguments).map_err(|e| {
            refuse(
                format!("{at}.arguments"),
                format!("not a valid JSON Schema: {e}"),
            )
        })?;
        Ok(())
    }

    fn operation(&self) -> Operation {
        Operation {
            name: self.name.clone(),
            description: self.description.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            parameters: self.arguments.clone(),
            target: self.target.clone().unwrap_or_else(|| self.path.clone()),
            action: format!("call {}", self.method),
            destructive: self.method == "DELETE",
            body: BodyShape::Arguments,
            headers: Vec::new(),
        }
    }
}
