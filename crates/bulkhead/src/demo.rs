//! `bulkhead demo`: provisions two tenants through the real HTTP application and shows, step
//! by step, that each tenant's key sees only its own tenant.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bulkhead_core::audit::verify_chain;
use bulkhead_core::{TenantId, auth::generate_admin_token};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{GlobalArgs, serve, settings};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep serving on this address after the walkthrough, so you can try the API yourself.
    #[arg(long)]
    serve: Option<SocketAddr>,
}

struct Walkthrough {
    app: axum::Router,
    out: std::io::Stdout,
}

impl Walkthrough {
    /// Sends one request through the full middleware stack and prints it with its answer.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        bearer: &str,
        extra_header: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("authorization", format!("Bearer {bearer}"));
        if let Some((name, value)) = extra_header {
            request = request.header(name, value);
        }
        let request = match &body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))?,
            None => request.body(Body::empty())?,
        };
        let response = self.app.clone().oneshot(request).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let header_note = extra_header
            .map(|(n, v)| format!(" [{n}: {v}]"))
            .unwrap_or_default();
        writeln!(self.out, "  {method} {path}{header_note} -> {status}")?;
        Ok((status, value))
    }

    fn say(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.out, "{line}")?;
        Ok(())
    }
}

fn expect(status: StatusCode, wanted: StatusCode, what: &str) -> anyhow::Result<()> {
    if status != wanted {
        bail!("{what}: expected {wanted}, got {status}");
    }
    Ok(())
}

fn field<'a>(value: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    value[name]
        .as_str()
        .with_context(|| format!("response has no {name}: {value}"))
}

pub async fn run(global: &GlobalArgs, args: DemoArgs) -> anyhow::Result<()> {
    // A fresh, throwaway data directory unless the caller points at one.
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut global = global.clone();
    if global.data_dir.is_none() && global.database.is_none() {
        global.data_dir = Some(scratch.path().to_path_buf());
    }
    let mut config = settings::load(&global)?;
    let token = generate_admin_token();
    config.admin_token = Some(token.clone());
    let store = settings::open_store(&config).await?;
    let (hash, _) = serve::admin_token_hash(&config, &store).await?;
    let state = serve::app_state(&config, &store, hash).await?;
    let app = bulkhead_server::app(state);
    let admin = token.expose_secret().to_owned();
    let mut w = Walkthrough {
        app: app.clone(),
        out: std::io::stdout(),
    };

    w.say("Bulkhead demo: two tenants, one key each, and nothing crosses between them.")?;
    w.say(&format!(
        "Database: {}\n",
        settings::redact_url(&settings::database_url(&config)?)
    ))?;

    w.say("1. The platform operator creates two tenants (admin token):")?;
    let mut keys = Vec::new();
    for (id, name) in [("acme", "Acme Corp"), ("globex", "Globex Inc")] {
        let (status, _) = w
            .call(
                Method::POST,
                "/admin/v1/tenants",
                &admin,
                None,
                Some(json!({"id": id, "name": name, "isolation": "shared"})),
            )
            .await?;
        expect(status, StatusCode::CREATED, "create tenant")?;
    }
    w.say("\n2. ...and gives each an owner API key (shown once, stored hashed):")?;
    for id in ["acme", "globex"] {
        let (status, body) = w
            .call(
                Method::POST,
                &format!("/admin/v1/tenants/{id}/api-keys"),
                &admin,
                None,
                Some(json!({"name": "demo", "role": "owner"})),
            )
            .await?;
        expect(status, StatusCode::CREATED, "create key")?;
        let key = field(&body, "key")?.to_owned();
        let key_id = field(&body, "id")?.to_owned();
        w.say(&format!("     {id}: {}...", &key[..key.len().min(24)]))?;
        keys.push((id, key, key_id));
    }
    let (acme_key, acme_key_id) = (keys[0].1.clone(), keys[0].2.clone());
    let (globex_key, globex_key_id) = (keys[1].1.clone(), keys[1].2.clone());

    w.say("\n3. Each key authenticates as its own tenant, and only that one:")?;
    for (id, key, _) in &keys {
        let (status, body) = w.call(Method::GET, "/v1/whoami", key, None, None).await?;
        expect(status, StatusCode::OK, "whoami")?;
        let seen = field(&body, "tenant_id")?;
        w.say(&format!(
            "     {id}'s key -> tenant {seen}, principal {}",
            field(&body, "principal")?
        ))?;
        if seen != *id {
            bail!("{id}'s key authenticated as {seen}");
        }
    }

    w.say(
        "\n4. Acme tries to read Globex's key by id: the same 404 as for a key that never existed:",
    )?;
    let (status, body) = w
        .call(
            Method::GET,
            &format!("/v1/api-keys/{globex_key_id}"),
            &acme_key,
            None,
            None,
        )
        .await?;
    expect(status, StatusCode::NOT_FOUND, "cross-tenant read")?;
    w.say(&format!("     code: {}", field(&body, "code")?))?;
    let (status, _) = w
        .call(
            Method::GET,
            &format!("/v1/api-keys/{acme_key_id}"),
            &acme_key,
            None,
            None,
        )
        .await?;
    expect(status, StatusCode::OK, "own key read")?;

    w.say("\n5. Acme sends `X-Tenant-ID: globex`: headers never choose the tenant:")?;
    let (status, body) = w
        .call(
            Method::GET,
            "/v1/whoami",
            &acme_key,
            Some(("x-tenant-id", "globex")),
            None,
        )
        .await?;
    expect(status, StatusCode::OK, "whoami with header")?;
    w.say(&format!("     still tenant {}", field(&body, "tenant_id")?))?;
    if field(&body, "tenant_id")? != "acme" {
        bail!("a header changed the tenant");
    }

    w.say("\n6. Each tenant stores a secret (write-only), a prompt snippet and an agent, and runs it:")?;
    let mut runs = Vec::new();
    for (id, key, motto) in [
        ("acme", &acme_key, "Acme builds rockets."),
        ("globex", &globex_key, "Globex sells globes."),
    ] {
        let secret = format!("sk-demo-{id}-0123456789");
        let (status, body) = w
            .call(
                Method::PUT,
                "/v1/credentials/openai",
                key,
                None,
                Some(
                    json!({"secret": secret, "fields": {"base_url": "https://api.openai.com/v1"}}),
                ),
            )
            .await?;
        expect(status, StatusCode::CREATED, "store credential")?;
        if body.to_string().contains(&secret) {
            bail!("a credential was echoed back");
        }
        let (status, _) = w
            .call(
                Method::PUT,
                "/v1/prompts/motto",
                key,
                None,
                Some(json!({"template": motto})),
            )
            .await?;
        expect(status, StatusCode::CREATED, "store snippet")?;
        let agent = json!({
            "model": "scripted",
            "system_prompt": "You work for {{ tenant.name }}. {% include 'motto' %}",
            "script": [
                {"tool_call": {"name": "lookup", "arguments": {"q": "orders"}}},
                {"reply": format!("Hello from {id}'s agent.")}
            ],
        });
        let (status, _) = w
            .call(Method::PUT, "/v1/agents/helper", key, None, Some(agent))
            .await?;
        expect(status, StatusCode::CREATED, "define agent")?;
        let (status, run) = w
            .call(
                Method::POST,
                "/v1/agents/helper/runs",
                key,
                None,
                Some(json!({"input": "What do we do? {{ tenant.id }}"})),
            )
            .await?;
        expect(status, StatusCode::OK, "run agent")?;
        w.say(&format!(
            "     {id}: run {} {} in {} steps; system prompt {:?}; answer {:?}",
            field(&run, "id")?,
            field(&run, "status")?,
            run["steps"],
            run["transcript"][0]["content"].as_str().unwrap_or_default(),
            field(&run, "output")?,
        ))?;
        runs.push(field(&run, "id")?.to_owned());
    }
    w.say("     (the scripted model is a demo aid that replays the agent's script; input like {{ tenant.id }} stays text)")?;
    let (status, body) = w
        .call(
            Method::GET,
            &format!("/v1/runs/{}", runs[0]),
            &globex_key,
            None,
            None,
        )
        .await?;
    expect(status, StatusCode::NOT_FOUND, "cross-tenant run read")?;
    w.say(&format!(
        "     globex asks for acme's run: {}",
        field(&body, "code")?
    ))?;

    w.say("\n7. The operator suspends Globex; its key stops working on the very next request:")?;
    let (status, _) = w
        .call(
            Method::PATCH,
            "/admin/v1/tenants/globex",
            &admin,
            None,
            Some(json!({"status": "suspended"})),
        )
        .await?;
    expect(status, StatusCode::OK, "suspend")?;
    let (status, body) = w
        .call(Method::GET, "/v1/whoami", &globex_key, None, None)
        .await?;
    expect(status, StatusCode::UNAUTHORIZED, "suspended tenant")?;
    w.say(&format!("     code: {}", field(&body, "code")?))?;

    w.say("\n8. Every change above is in its tenant's hash-chained audit trail:")?;
    for id in ["acme", "globex"] {
        let tenant = TenantId::try_from(id)?;
        let events = store.admin().audit_events(&tenant, 0, 1000).await?;
        let head = verify_chain(&tenant, &events)?;
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for action in actions {
            *counts.entry(action).or_default() += 1;
        }
        w.say(&format!(
            "     {id}: {} events {:?}, chain verified, head {}",
            head.events,
            counts,
            &head.head_hash[..16]
        ))?;
    }

    match args.serve {
        None => {
            w.say("\nDemo complete. Run `bulkhead demo --serve 127.0.0.1:8080` to keep it running and try it with curl.")?;
        }
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            let address = listener.local_addr()?;
            w.say(&format!("\nServing on http://{address} until Ctrl-C. Try:"))?;
            w.say(&format!(
                "  curl -s http://{address}/v1/whoami -H 'authorization: Bearer {acme_key}'"
            ))?;
            w.say(&format!(
                "  curl -s http://{address}/admin/v1/tenants -H 'authorization: Bearer {admin}'"
            ))?;
            w.out.flush()?;
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
    }
    store.close().await;
    Ok(())
}
