//! `bulkhead demo`: two customer organisations on one runtime, driven through the real HTTP
//! application: their own keys, credentials, knowledge bases and agents on the offline `local`
//! model and embedder, each answer drawn from its own tenant's data, cross-tenant attempts refused, usage
//! per tenant, and verified audit chains.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bulkhead_core::audit::verify_chain;
use bulkhead_core::config::{EmbedderConfig, EmbedderProvider, ModelConfig, ProviderKind};
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
    /// Where `scripts/fetch-models` put the offline models.
    #[arg(long, env = "BULKHEAD_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
}

const LOCAL_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const LOCAL_EMBEDDER_DIR: &str = "all-minilm-l6-v2";

/// What each demo tenant is and knows: its documents reach its own agent only.
struct DemoTenant {
    id: &'static str,
    name: &'static str,
    region: &'static str,
    /// Its policy documents: (id, text), one knowledge-base document each.
    documents: [(&'static str, &'static str); 3],
}

const TENANTS: [DemoTenant; 2] = [
    DemoTenant {
        id: "acme",
        name: "Acme Corp",
        region: "eu-central",
        documents: [
            ("returns", "Orders can be returned within 30 days."),
            (
                "hours",
                "Support hours: 9:00 to 17:00 CET, Monday to Friday.",
            ),
            ("shipping", "Shipping within the EU is free."),
        ],
    },
    DemoTenant {
        id: "globex",
        name: "Globex Inc",
        region: "us-east",
        documents: [
            ("returns", "Orders can be returned within 90 days."),
            ("hours", "Support hours: 8:00 to 20:00 EST, every day."),
            ("shipping", "Shipping costs 5 dollars."),
        ],
    },
];

const QUESTION: &str = "How many days do I have to return an order?";

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

    /// Posts a run with `Accept: text/event-stream` and prints the answer as it streams;
    /// answers the finished run.
    async fn run_streamed(
        &mut self,
        path: &str,
        bearer: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        use futures_util::StreamExt;
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("authorization", format!("Bearer {bearer}"))
            .header("accept", "text/event-stream")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))?;
        let response = self.app.clone().oneshot(request).await?;
        expect(response.status(), StatusCode::OK, "streamed run")?;
        let mut body = response.into_body().into_data_stream();
        let mut buffer = String::new();
        let mut finished = Value::Null;
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let name = event
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or_default();
                let data = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or("null");
                let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                match name {
                    "message.delta" => {
                        write!(self.out, "{}", data["text"].as_str().unwrap_or_default())?;
                        self.out.flush()?;
                    }
                    "run.completed" | "run.failed" => finished = data,
                    _ => {}
                }
            }
        }
        writeln!(self.out)?;
        Ok(finished)
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
    let model_path = args.models_dir.join(LOCAL_MODEL_FILE);
    let embedder_dir = args.models_dir.join(LOCAL_EMBEDDER_DIR);
    for needed in [&model_path, &embedder_dir.join("model.safetensors")] {
        if !needed.exists() {
            bail!(
                "the local model {} is missing: run scripts/fetch-models first (or pass --models-dir)",
                needed.display()
            );
        }
    }
    if !config.models.iter().any(|m| m.alias == "local") {
        config.models.push(ModelConfig {
            alias: "local".into(),
            provider: ProviderKind::Local,
            endpoint: String::new(),
            upstream_model: None,
            path: Some(model_path),
            input_usd_per_million: 0.0,
            output_usd_per_million: 0.0,
        });
    }
    if !config.embedders.iter().any(|e| e.alias == "local") {
        config.embedders.push(EmbedderConfig {
            alias: "local".into(),
            provider: EmbedderProvider::Local,
            endpoint: String::new(),
            upstream_model: None,
            dimensions: None,
            path: Some(embedder_dir),
        });
    }
    config.knowledge.default_embedder = "local".into();
    for tenant in &TENANTS {
        let region = bulkhead_core::RegionName::try_from(tenant.region)?;
        if !config.regions.contains(&region) {
            config.regions.push(region);
        }
    }
    let token = generate_admin_token();
    config.admin_token = Some(token.clone());
    let store = settings::open_store(&config, config.audit.outbox).await?;
    let (hash, _) = serve::admin_token_hash(&config, &store).await?;
    let state = serve::app_state(&config, &store, hash).await?;
    let app = bulkhead_server::app(state);
    let admin = token.expose_secret().to_owned();
    let mut w = Walkthrough {
        app: app.clone(),
        out: std::io::stdout(),
    };

    w.say("Bulkhead demo: two customer organisations share one runtime, and nothing crosses between them.")?;
    w.say(&format!(
        "Database: {}. Model: `local`, SmolLM2-135M-Instruct run in this process, offline.\n",
        settings::redact_url(&settings::database_url(&config)?)
    ))?;

    w.say("1. The platform operator creates two tenants, each in its home region, with an owner API key:")?;
    let mut keys = Vec::new();
    for tenant in &TENANTS {
        let (status, _) = w
            .call(
                Method::POST,
                "/admin/v1/tenants",
                &admin,
                None,
                Some(json!({"id": tenant.id, "name": tenant.name, "region": tenant.region, "isolation": "shared"})),
            )
            .await?;
        expect(status, StatusCode::CREATED, "create tenant")?;
        let (status, body) = w
            .call(
                Method::POST,
                &format!("/admin/v1/tenants/{}/api-keys", tenant.id),
                &admin,
                None,
                Some(json!({"name": "demo", "role": "owner"})),
            )
            .await?;
        expect(status, StatusCode::CREATED, "create key")?;
        let key = field(&body, "key")?.to_owned();
        w.say(&format!(
            "     {} ({}): key {}... (shown once, stored hashed)",
            tenant.name,
            tenant.region,
            &key[..key.len().min(20)]
        ))?;
        keys.push(key);
    }

    w.say("\n2. Each key authenticates as its own tenant; a header naming another tenant changes nothing:")?;
    for (tenant, key) in TENANTS.iter().zip(&keys) {
        let (status, body) = w.call(Method::GET, "/v1/whoami", key, None, None).await?;
        expect(status, StatusCode::OK, "whoami")?;
        let seen = field(&body, "tenant_id")?;
        w.say(&format!(
            "     {}'s key -> tenant {seen}, region {}",
            tenant.id,
            field(&body, "region")?
        ))?;
        if seen != tenant.id {
            bail!("{}'s key authenticated as {seen}", tenant.id);
        }
    }
    let (status, body) = w
        .call(
            Method::GET,
            "/v1/whoami",
            &keys[0],
            Some(("x-tenant-id", "globex")),
            None,
        )
        .await?;
    expect(status, StatusCode::OK, "whoami with header")?;
    w.say(&format!("     still tenant {}", field(&body, "tenant_id")?))?;
    if field(&body, "tenant_id")? != "acme" {
        bail!("a header changed the tenant");
    }

    w.say("\n3. Each tenant stores its own data: a write-only credential, its policy documents in a knowledge base (embedded on this node) and a support agent that retrieves from it:")?;
    for (tenant, key) in TENANTS.iter().zip(&keys) {
        let secret = format!("sk-demo-{}-0123456789", tenant.id);
        let (status, body) = w
            .call(
                Method::PUT,
                "/v1/credentials/crm",
                key,
                None,
                Some(json!({"secret": secret})),
            )
            .await?;
        expect(status, StatusCode::CREATED, "store credential")?;
        if body.to_string().contains(&secret) {
            bail!("a credential was echoed back");
        }
        for (id, text) in &tenant.documents {
            let (status, _) = w
                .call(
                    Method::POST,
                    "/v1/knowledge/policies/documents",
                    key,
                    None,
                    Some(json!({"id": id, "title": id, "text": text})),
                )
                .await?;
            expect(status, StatusCode::CREATED, "store a document")?;
        }
        let agent = json!({
            "model": "local",
            "system_prompt": "You are the support assistant of {{ tenant.name }}. Answer the customer in one sentence, using only these facts:\n{% for passage in context %}{{ passage }}\n{% endfor %}",
            "knowledge_bases": ["policies"],
            "memory": true,
            "max_output_tokens": 48,
        });
        let (status, _) = w
            .call(Method::PUT, "/v1/agents/support", key, None, Some(agent))
            .await?;
        expect(status, StatusCode::CREATED, "define agent")?;
    }

    w.say("\n4. The same question to each tenant's agent; the answers stream as the model writes them:")?;
    let mut finished_runs = Vec::new();
    for (tenant, key) in TENANTS.iter().zip(&keys) {
        w.say(&format!("     [{}] customer: {QUESTION}", tenant.id))?;
        write!(w.out, "     [{}] agent:    ", tenant.id)?;
        let run = w
            .run_streamed(
                "/v1/agents/support/runs",
                key,
                json!({"input": QUESTION, "end_user": "customer-1"}),
            )
            .await?;
        if run["status"] != "completed" {
            bail!("{}'s run failed: {run}", tenant.id);
        }
        let prompt = run["transcript"][0]["content"].as_str().unwrap_or_default();
        let others_leaked = TENANTS.iter().filter(|t| t.id != tenant.id).any(|t| {
            prompt.contains(t.name) || t.documents.iter().any(|(_, d)| prompt.contains(d))
        });
        if others_leaked || !prompt.contains(tenant.documents[0].1) {
            bail!(
                "{}'s prompt does not hold exactly its own documents: {prompt}",
                tenant.id
            );
        }
        w.say(&format!(
            "     (run {}: the prompt held {}'s documents and no other tenant's; {} tokens in, {} out)",
            field(&run, "id")?, tenant.name, run["input_tokens"], run["output_tokens"]
        ))?;
        finished_runs.push(run);
    }

    w.say("\n5. Globex tries Acme's run and Acme's conversation by id: the same 404 as for ids that never existed:")?;
    let acme_run = field(&finished_runs[0], "id")?.to_owned();
    let acme_thread = field(&finished_runs[0], "thread_id")?.to_owned();
    let (status, body) = w
        .call(
            Method::GET,
            &format!("/v1/runs/{acme_run}"),
            &keys[1],
            None,
            None,
        )
        .await?;
    expect(status, StatusCode::NOT_FOUND, "cross-tenant run read")?;
    w.say(&format!(
        "     globex asks for acme's run: {}",
        field(&body, "code")?
    ))?;
    let (status, body) = w
        .call(Method::POST, "/v1/agents/support/runs", &keys[1], None,
            Some(json!({"input": "And shipping?", "thread_id": acme_thread, "end_user": "customer-1"})))
        .await?;
    expect(status, StatusCode::NOT_FOUND, "cross-tenant thread")?;
    w.say(&format!(
        "     globex continues acme's conversation: {}",
        field(&body, "code")?
    ))?;
    // A search for Acme's exact words, from Globex: only Globex's own documents can answer.
    let (status, found) = w
        .call(
            Method::GET,
            "/v1/knowledge/policies/search?q=returned%20within%2030%20days&k=3",
            &keys[1],
            None,
            None,
        )
        .await?;
    expect(status, StatusCode::OK, "knowledge search")?;
    let passages: Vec<&str> = found["passages"]
        .as_array()
        .map(|list| list.iter().filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default();
    if passages
        .iter()
        .any(|p| TENANTS[0].documents.iter().any(|(_, d)| p == d))
    {
        bail!("globex's search returned acme's document: {found}");
    }
    w.say(&format!(
        "     globex searches its knowledge base for acme's words \"returned within 30 days\": {:?} (its own)",
        passages.first().copied().unwrap_or_default()
    ))?;

    w.say("\n6. An outside framework reaches the same agent through the OpenAI-compatible gateway, with Acme's key:")?;
    let (status, completion) = w
        .call(Method::POST, "/v1/chat/completions", &keys[0], None,
            Some(json!({"model": "agent/support", "messages": [{"role": "user", "content": "When is support open?"}]})))
        .await?;
    expect(status, StatusCode::OK, "gateway")?;
    w.say(&format!(
        "     {}: {:?}",
        completion["object"].as_str().unwrap_or_default(),
        completion["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
    ))?;

    w.say("\n7. Each tenant's usage, metered per model:")?;
    for (tenant, key) in TENANTS.iter().zip(&keys) {
        let (status, usage) = w.call(Method::GET, "/v1/usage", key, None, None).await?;
        expect(status, StatusCode::OK, "usage")?;
        w.say(&format!(
            "     {}: requests {}, tokens in {}, tokens out {}",
            tenant.id, usage["requests"], usage["input_tokens"], usage["output_tokens"]
        ))?;
    }

    w.say("\n8. The operator suspends Globex; its key stops working on the very next request:")?;
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
        .call(Method::GET, "/v1/whoami", &keys[1], None, None)
        .await?;
    expect(status, StatusCode::UNAUTHORIZED, "suspended tenant")?;
    w.say(&format!("     code: {}", field(&body, "code")?))?;

    w.say("\n9. Every change above is in its tenant's hash-chained audit trail:")?;
    for tenant in &TENANTS {
        let id = TenantId::try_from(tenant.id)?;
        let events = store.admin().audit_events(&id, 0, 1000).await?;
        let head = verify_chain(&id, &events)?;
        w.say(&format!(
            "     {}: {} events, chain verified, head {}",
            tenant.id,
            head.events,
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
            let acme_key = &keys[0];
            w.say(&format!("\nServing on http://{address} until Ctrl-C. Try:"))?;
            w.say(&format!(
                "  curl -s http://{address}/v1/whoami -H 'authorization: Bearer {acme_key}'"
            ))?;
            w.say(&format!(
                "  curl -sN http://{address}/v1/agents/support/runs -H 'authorization: Bearer {acme_key}' \\\n       -H 'accept: text/event-stream' -H 'content-type: application/json' -d '{{\"input\":\"When is support open?\"}}'"
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
