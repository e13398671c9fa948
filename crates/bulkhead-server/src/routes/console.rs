//! The approvals console: server-rendered pages where a tenant's approvers see pending tool
//! calls (who acts, for which tenant, doing what, with which exact arguments) and approve or
//! deny them.
//!
//! Sign-in takes a tenant API key or JWT once and opens a session: a random cookie
//! (`HttpOnly`, `SameSite=Strict`, path `/console`), stored only as its SHA-256, lasting
//! at most 8 hours and never longer than the JWT it came from. Each request re-checks it: a
//! key's session ends with the key (revocation, role change) and a suspended tenant's at
//! once. Every form carries the session's CSRF token, compared in constant time. Pages are
//! rendered with auto-escaping and sent with a strict Content-Security-Policy (no script at
//! all), `no-store` and no framing.

use std::sync::OnceLock;

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use bulkhead_core::auth::{SessionPrincipal, StoredSession, authenticate_session, hash_secret};
use bulkhead_core::timestamp::now_millis;
use bulkhead_core::{Principal, Role, TenantContext};
use minijinja::{Environment, context};
use serde::Deserialize;

use crate::AppState;
use crate::authn::{Refusal, authenticate, request_id};
use crate::error::ApiError;
use crate::routes::approvals::{DECIDERS, approval_view, decide_approval};

const COOKIE: &str = "bulkhead_console";
const SESSION_MILLIS: i64 = 8 * 60 * 60 * 1000;

const LAYOUT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}Bulkhead approvals{% endblock %}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#1d2330}
.approval{border:1px solid #c9ced8;border-radius:6px;padding:1rem;margin:1rem 0}
.line{font-weight:600} pre{background:#f3f5f8;padding:.6rem;overflow:auto}
.notice{background:#eef6ee;border:1px solid #9c9;padding:.5rem 1rem}
.error{background:#fbeeee;border:1px solid #d99;padding:.5rem 1rem}
form.inline{display:inline} button{margin-right:.5rem} code{background:#f3f5f8;padding:0 .2rem}
</style></head><body>{% block body %}{% endblock %}</body></html>"#;

const SIGN_IN: &str = r#"{% extends "layout.html" %}{% block body %}
<h1>Bulkhead approvals</h1>
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
<form method="post" action="/console/sign-in">
<p><label for="credential">Your organisation's API key or JWT</label><br>
<input id="credential" name="credential" type="password" size="60" autocomplete="off" required></p>
<p><button id="sign-in" type="submit">Sign in</button></p>
</form>
<p>The key or token is checked once and not kept; the session lasts at most 8 hours.</p>
{% endblock %}"#;

const APPROVALS: &str = r#"{% extends "layout.html" %}{% block title %}Approvals · {{ tenant_name }}{% endblock %}{% block body %}
<h1>Pending approvals for {{ tenant_name }} (<code>{{ tenant_id }}</code>)</h1>
<p>Signed in as <code>{{ principal }}</code>.
<form class="inline" method="post" action="/console/sign-out"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit" id="sign-out">Sign out</button></form></p>
{% if notice %}<p class="notice" id="notice">{{ notice }}</p>{% endif %}
{% if not can_decide %}<p class="error">You may see these calls but not decide them: that needs the approver role.</p>{% endif %}
{% for a in approvals %}
<div class="approval" id="approval-{{ a.id }}">
<p class="line">{{ a.line }}</p>
<p>Tool <code>{{ a.tool }}</code>, requested {{ a.created_at }}, expires {{ a.expires_at }}.</p>
<pre class="arguments">{{ a.arguments_pretty }}</pre>
{% if can_decide %}
<form method="post" action="/console/approvals/{{ a.id }}/decision">
<input type="hidden" name="csrf" value="{{ csrf }}">
<p><label>Reason <input name="reason" size="50"></label></p>
<button type="submit" name="decision" value="approve" class="approve">Approve</button>
<button type="submit" name="decision" value="deny" class="deny">Deny</button>
</form>
{% endif %}
</div>
{% else %}
<p id="empty">Nothing is waiting for a decision.</p>
{% endfor %}
{% endblock %}"#;

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // PANIC SAFETY: constant templates, parsed in every test run of the console.
        #[allow(clippy::expect_used)]
        {
            env.add_template("layout.html", LAYOUT)
                .expect("the layout parses");
            env.add_template("sign_in.html", SIGN_IN)
                .expect("the sign-in page parses");
            env.add_template("approvals.html", APPROVALS)
                .expect("the approvals page parses");
        }
        env
    })
}

fn page(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let html = templates()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "console page failed to render");
            "Something went wrong".to_owned()
        });
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn sign_in_page(status: StatusCode, error: Option<&str>) -> Response {
    page(status, "sign_in.html", context! { error => error })
}

/// The signed-in session of a console request, if its cookie is a live session.
pub struct ConsoleSession {
    ctx: TenantContext,
    csrf: String,
    session_hash: String,
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl FromRequestParts<AppState> for Option<ConsoleSession> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = cookie_value(&parts.headers) else {
            return Ok(None);
        };
        let session_hash = hash_secret(&token);
        let admin = state.store().admin();
        let Some((session, csrf)) = admin.session_for_auth(&session_hash).await? else {
            return Ok(None);
        };
        let key = match &session.principal {
            SessionPrincipal::ApiKey(id) => admin.api_key_for_auth(id).await?,
            SessionPrincipal::User { .. } => None,
        };
        let tenant = match &key {
            Some((_, tenant)) => Some(tenant.clone()),
            None => admin.get_tenant(&session.tenant_id).await?,
        };
        match authenticate_session(
            Some(&session),
            key.as_ref().map(|(k, _)| k),
            tenant.as_ref(),
            now_millis(),
            request_id(parts),
        ) {
            Ok(ctx) => Ok(Some(ConsoleSession {
                ctx,
                csrf,
                session_hash,
            })),
            Err(reason) => {
                tracing::info!(%reason, "console session refused");
                Ok(None)
            }
        }
    }
}

fn csrf_matches(session: &ConsoleSession, presented: &str) -> bool {
    // Compares digests in constant time.
    bulkhead_core::auth::secret_matches(presented, &hash_secret(&session.csrf))
}

#[derive(Debug, Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
}

/// The pending approvals of the signed-in tenant, with approve and deny buttons for
/// approvers; the sign-in form without a session.
#[utoipa::path(get, path = "/console/approvals", tag = "console",
    params(("notice" = Option<String>, Query, description = "A message to show (after a decision)")),
    responses((status = 200, content_type = "text/html", body = String, description = "The page")))]
pub async fn approvals_page(
    State(state): State<AppState>,
    session: Option<ConsoleSession>,
    axum::extract::Query(query): axum::extract::Query<NoticeQuery>,
) -> Result<Response, ApiError> {
    let Some(session) = session else {
        return Ok(sign_in_page(StatusCode::OK, None));
    };
    let ctx = &session.ctx;
    let records = state
        .store()
        .tenant(ctx)
        .approvals(Some("pending"), 200)
        .await?;
    let approvals: Vec<minijinja::Value> = records
        .into_iter()
        .map(|r| {
            let view = approval_view(ctx.tenant_name(), ctx.tenant_id().as_str(), r);
            context! {
                id => view.id,
                line => view.line,
                tool => view.tool,
                created_at => view.created_at,
                expires_at => view.expires_at,
                arguments_pretty => serde_json::to_string_pretty(&view.arguments).unwrap_or_default(),
            }
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "approvals.html",
        context! {
            tenant_name => ctx.tenant_name(),
            tenant_id => ctx.tenant_id().as_str(),
            principal => ctx.principal().to_string(),
            csrf => session.csrf,
            can_decide => ctx.has_any_role(DECIDERS),
            approvals => approvals,
            notice => query.notice.filter(|n| n.len() <= 200),
        },
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignInForm {
    credential: String,
}

fn session_cookie(value: &str, max_age_seconds: i64, secure: bool) -> HeaderValue {
    let cookie = format!(
        "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether the cookie must be `Secure`: always, unless the browser reached this server on a
/// loopback address over plain HTTP (development, tests).
fn secure_cookie(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    !matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

/// Checks a tenant API key or JWT and opens a console session.
#[utoipa::path(post, path = "/console/sign-in", tag = "console",
    request_body(content = SignInForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Signed in; on to the approvals"),
        (status = 401, content_type = "text/html", body = String, description = "The sign-in page again, with the reason")))]
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, ApiError> {
    let header = format!("Bearer {}", form.credential.trim());
    let (ctx, jwt_expiry) =
        match authenticate(&state, Some(&header), bulkhead_core::RequestId::generate()).await {
            Ok(found) => found,
            Err(Refusal::Api(error)) => return Err(error),
            Err(Refusal::Auth(reason)) => {
                tracing::info!(%reason, "console sign-in refused");
                return Ok(sign_in_page(
                    StatusCode::UNAUTHORIZED,
                    Some("That key or token was not accepted."),
                ));
            }
        };
    if !ctx.has_any_role(&[Role::Owner, Role::Admin, Role::Approver, Role::Developer]) {
        return Ok(sign_in_page(
            StatusCode::FORBIDDEN,
            Some("This credential may not use the approvals console."),
        ));
    }
    let now = now_millis();
    let until = now + SESSION_MILLIS;
    let session = StoredSession {
        tenant_id: ctx.tenant_id().clone(),
        principal: match ctx.principal() {
            Principal::ApiKey(id) => SessionPrincipal::ApiKey(id.clone()),
            Principal::User { issuer, subject } => SessionPrincipal::User {
                issuer: issuer.clone(),
                subject: subject.clone(),
            },
            Principal::Operator | Principal::Runtime => {
                return Ok(sign_in_page(
                    StatusCode::FORBIDDEN,
                    Some("This credential may not use the approvals console."),
                ));
            }
        },
        roles: ctx.roles().clone(),
        expires_at: jwt_expiry.map_or(until, |exp| exp.saturating_mul(1000).min(until)),
    };
    let token = bulkhead_core::ids::new_session_token();
    let csrf = bulkhead_core::ids::new_csrf_token();
    state
        .store()
        .tenant(&ctx)
        .create_console_session(&hash_secret(&token), &session, &csrf)
        .await?;
    let max_age = (session.expires_at - now) / 1000;
    let mut response = Redirect::to("/console/approvals").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&token, max_age, secure_cookie(&headers)),
    );
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DecisionForm {
    csrf: String,
    /// `approve` or `deny`.
    decision: String,
    #[serde(default)]
    reason: String,
}

/// Approves or denies one pending call from the console (approver role, same tenant, with
/// the session's CSRF token).
#[utoipa::path(post, path = "/console/approvals/{id}/decision", tag = "console",
    params(("id" = String, Path, description = "Approval id")),
    request_body(content = DecisionForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Decided; back to the list"),
        (status = 403, content_type = "text/html", body = String, description = "No session, a bad CSRF token, or not an approver")))]
pub async fn decide(
    State(state): State<AppState>,
    session: Option<ConsoleSession>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Form(form): Form<DecisionForm>,
) -> Result<Response, ApiError> {
    let Some(session) = session else {
        return Ok(sign_in_page(
            StatusCode::FORBIDDEN,
            Some("Please sign in again."),
        ));
    };
    if !csrf_matches(&session, &form.csrf) {
        return Ok(sign_in_page(
            StatusCode::FORBIDDEN,
            Some("This form has expired; please reload the page."),
        ));
    }
    if !session.ctx.has_any_role(DECIDERS) {
        return Ok(sign_in_page(
            StatusCode::FORBIDDEN,
            Some("Deciding needs the approver role."),
        ));
    }
    let approve = match form.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(ApiError::invalid("decision", "approve or deny")),
    };
    let notice = match decide_approval(&state, &session.ctx, &id, approve, &form.reason).await {
        Ok(record) => format!("{} {}: {}", record.approval_id, record.status, record.tool),
        Err(ApiError::Conflict(message)) => message,
        Err(error) => return Err(error),
    };
    let query = bulkhead_tools::http::percent_encode(&notice);
    Ok(Redirect::to(&format!("/console/approvals?notice={query}")).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignOutForm {
    csrf: String,
}

/// Ends the console session.
#[utoipa::path(post, path = "/console/sign-out", tag = "console",
    request_body(content = SignOutForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Signed out")))]
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    session: Option<ConsoleSession>,
    Form(form): Form<SignOutForm>,
) -> Result<Response, ApiError> {
    if let Some(session) = session.filter(|s| csrf_matches(s, &form.csrf)) {
        state
            .store()
            .tenant(&session.ctx)
            .delete_console_session(&session.session_hash)
            .await?;
    }
    let mut response = Redirect::to("/console/approvals").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie("", 0, secure_cookie(&headers)),
    );
    Ok(response)
}
