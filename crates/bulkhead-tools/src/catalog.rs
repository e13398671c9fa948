//! The built-in connectors' operations, in the request shapes of their public APIs:
//! Slack Web API (`chat.postMessage`, `conversations.list`), Jira Cloud REST (create issue,
//! search by JQL) and GitHub REST (create an issue, comment on one).

use serde_json::json;

use crate::spec::{BodyShape, Operation};

fn operation(
    name: &str,
    description: &str,
    method: &str,
    path: &str,
    parameters: serde_json::Value,
    target: &str,
    action: &str,
) -> Operation {
    Operation {
        name: name.into(),
        description: description.into(),
        method: method.into(),
        path: path.into(),
        parameters,
        target: target.into(),
        action: action.into(),
        destructive: false,
        body: BodyShape::Arguments,
        headers: Vec::new(),
    }
}

/// Slack's Web API; the endpoint's base URL is `https://slack.com` and the credential a bot
/// token (`xoxb-...`) sent as a bearer token.
pub fn slack() -> Vec<Operation> {
    vec![
        operation(
            "post_message",
            "Post a message to a Slack channel (chat.postMessage).",
            "POST",
            "/api/chat.postMessage",
            json!({
                "type": "object",
                "properties": {
                    "channel": {"type": "string", "minLength": 1, "description": "Channel id or name, such as #incidents"},
                    "text": {"type": "string", "minLength": 1, "maxLength": 40000},
                    "thread_ts": {"type": "string", "description": "Reply in this thread"}
                },
                "required": ["channel", "text"],
                "additionalProperties": false
            }),
            "{channel}",
            "post a message to",
        ),
        operation(
            "list_channels",
            "List the workspace's channels (conversations.list).",
            "GET",
            "/api/conversations.list",
            json!({
                "type": "object",
                "properties": {
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "cursor": {"type": "string"},
                    "types": {"type": "string", "description": "Such as public_channel,private_channel"}
                },
                "additionalProperties": false
            }),
            "channels",
            "list",
        ),
    ]
}

/// Jira Cloud's REST API; base URL `https://<site>.atlassian.net`, credential an API token
/// with the account's email as `username` (HTTP Basic).
pub fn jira() -> Vec<Operation> {
    let mut create = operation(
        "create_issue",
        "Create a Jira issue in a project.",
        "POST",
        "/rest/api/2/issue",
        json!({
            "type": "object",
            "properties": {
                "project": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]{0,9}$", "description": "Project key, such as OPS"},
                "summary": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": {"type": "string", "maxLength": 32000},
                "issue_type": {"type": "string", "description": "Defaults to Task"}
            },
            "required": ["project", "summary"],
            "additionalProperties": false
        }),
        "{project}",
        "create an issue in",
    );
    create.body = BodyShape::JiraIssue;
    vec![
        create,
        operation(
            "search_issues",
            "Search Jira issues with JQL.",
            "GET",
            "/rest/api/3/search/jql",
            json!({
                "type": "object",
                "properties": {
                    "jql": {"type": "string", "minLength": 1, "maxLength": 2000},
                    "maxResults": {"type": "integer", "minimum": 1, "maximum": 100},
                    "fields": {"type": "string", "description": "Comma-separated, such as summary,status"}
                },
                "required": ["jql"],
                "additionalProperties": false
            }),
            "{jql}",
            "search issues with",
        ),
    ]
}

/// GitHub's REST API; base URL `https://api.github.com`, credential a token sent as a bearer.
pub fn github() -> Vec<Operation> {
    let headers = vec![
        (
            "accept".to_owned(),
            "application/vnd.github+json".to_owned(),
        ),
        ("x-github-api-version".to_owned(), "2022-11-28".to_owned()),
        ("user-agent".to_owned(), "bulkhead".to_owned()),
    ];
    let repo = json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"});
    let mut ops = vec![
        operation(
            "create_issue",
            "Open an issue in a GitHub repository.",
            "POST",
            "/repos/{owner}/{repo}/issues",
            json!({
                "type": "object",
                "properties": {
                    "owner": repo, "repo": repo,
                    "title": {"type": "string", "minLength": 1, "maxLength": 256},
                    "body": {"type": "string", "maxLength": 65536},
                    "labels": {"type": "array", "items": {"type": "string"}, "maxItems": 20}
                },
                "required": ["owner", "repo", "title"],
                "additionalProperties": false
            }),
            "{owner}/{repo}",
            "open an issue in",
        ),
        operation(
            "comment",
            "Comment on a GitHub issue or pull request.",
            "POST",
            "/repos/{owner}/{repo}/issues/{issue_number}/comments",
            json!({
                "type": "object",
                "properties": {
                    "owner": repo, "repo": repo,
                    "issue_number": {"type": "integer", "minimum": 1},
                    "body": {"type": "string", "minLength": 1, "maxLength": 65536}
                },
                "required": ["owner", "repo", "issue_number", "body"],
                "additionalProperties": false
            }),
            "{owner}/{repo}#{issue_number}",
            "comment on",
        ),
    ];
    for op in &mut ops {
        op.headers = headers.clone();
    }
    ops
}
