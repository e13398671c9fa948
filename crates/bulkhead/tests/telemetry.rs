//! What `bulkhead serve` tells the operator about each request, checked on the real binary:
//! its JSON log lines, the spans it exports over OTLP (to a local collector) and its
//! Prometheus metrics each carry the right tenant, join the caller's trace, and hold no
//! secret (neither a stored credential, nor an API key, nor the admin token).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_testkit::fake_saas::FakeSaas;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "bha_telemetry_admin_token_0123456789";
const CANARY: &str = "sk-canary-7f3a9c";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
        traceparent: Option<&str>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

/// The `tenant.id` of a span's attributes in OTLP/JSON.
fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_spans_and_metrics_name_the_right_tenant_and_hold_no_secret() {
    let collector = FakeSaas::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bulkhead.toml"),
        format!(
            "[log]\nformat = \"json\"\nfilter = \"info\"\n\n\
             [telemetry]\notlp_endpoint = \"{}/echo/otlp\"\nservice_name = \"bulkhead-test\"\n\n\
             [metrics]\ntenant_labels = [\"acme\"]\n",
            collector.base
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("BULKHEAD_CONFIG")
        .env_remove("BULKHEAD_DATABASE")
        .env("BULKHEAD_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        sink.lock().unwrap().push_str(&all);
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = stdout.next().expect("serve exited").unwrap();
        if let Some(address) = line.strip_prefix("bulkhead listening on http://") {
            break address.to_owned();
        }
    };
    let client = Client {
        base: format!("http://{address}"),
        http: reqwest::Client::new(),
    };

    let mut keys = Vec::new();
    for tenant in ["acme", "globex"] {
        let (status, body) = client
            .call(
                reqwest::Method::POST,
                "/admin/v1/tenants",
                ADMIN_TOKEN,
                Some(json!({"id": tenant, "name": format!("{tenant} org")})),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = client
            .call(
                reqwest::Method::POST,
                &format!("/admin/v1/tenants/{tenant}/api-keys"),
                ADMIN_TOKEN,
                Some(json!({"name": "k", "role": "owner"})),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let key: Value = serde_json::from_str(&body).unwrap();
        keys.push(key["key"].as_str().unwrap().to_owned());
    }
    let (acme, globex) = (keys[0].clone(), keys[1].clone());
    let (status, body) = client
        .call(
            reqwest::Method::PUT,
            "/v1/credentials/openai",
            &acme,
            Some(json!({"secret": CANARY})),
            Some(&format!("00-{TRACE}-{CALLER_SPAN}-01")),
        )
        .await;
    assert!(status < 300, "{body}");
    for key in [&acme, &globex] {
        assert_eq!(
            client
                .call(reqwest::Method::GET, "/v1/whoami", key, None, None)
                .await
                .0,
            200
        );
    }
    let (_, audit) = client
        .call(
            reqwest::Method::GET,
            "/v1/audit?action=credential.",
            &acme,
            None,
            None,
        )
        .await;
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit["events"][0]["trace_id"], TRACE, "{audit}");

    // Metrics: acme by name (allowlisted), globex only as `other`.
    let (status, metrics) = client
        .call(reqwest::Method::GET, "/metrics", ADMIN_TOKEN, None, None)
        .await;
    assert_eq!(status, 200);
    let requests = |tenant: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("bulkhead_tenant_requests_total")
                    && l.contains(&format!("tenant=\"{tenant}\""))
                    && l.contains("status=\"2xx\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(requests("acme") >= 3.0, "{metrics}");
    assert!(requests("other") >= 1.0, "{metrics}");
    assert!(
        !metrics.contains("globex"),
        "a tenant outside the allowlist is a label"
    );

    // SIGTERM: the server stops and flushes its spans.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap();
    let logs = logs.lock().unwrap().clone();

    // Log lines: one JSON object each, the request's span carrying its tenant.
    let finished: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "request finished")
        .collect();
    let whoami = |tenant: &str| {
        finished
            .iter()
            .any(|l| l["span"]["path"] == "/v1/whoami" && l["span"]["tenant.id"] == tenant)
    };
    assert!(whoami("acme") && whoami("globex"), "{logs}");
    let traced = finished
        .iter()
        .find(|l| l["span"]["path"] == "/v1/credentials/openai")
        .unwrap();
    assert_eq!(traced["span"]["trace_id"], TRACE);
    assert_eq!(traced["span"]["tenant.id"], "acme");

    // Spans, as the collector received them.
    let exports: Vec<Value> = collector
        .requests()
        .into_iter()
        .filter(|r| r.path == "/echo/otlp/v1/traces")
        .map(|r| r.body)
        .collect();
    assert!(!exports.is_empty(), "no spans reached the collector");
    let spans: Vec<Value> = exports
        .iter()
        .flat_map(|e| e["resourceSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
        .collect();
    let credential = spans
        .iter()
        .find(|s| attribute(s, "path") == Some("/v1/credentials/openai"))
        .expect("the credential request's span");
    assert_eq!(credential["traceId"], TRACE, "{credential}");
    assert_eq!(credential["parentSpanId"], CALLER_SPAN);
    assert_eq!(attribute(credential, "tenant.id"), Some("acme"));
    let tenants: Vec<Option<&str>> = spans
        .iter()
        .filter(|s| attribute(s, "path") == Some("/v1/whoami"))
        .map(|s| attribute(s, "tenant.id"))
        .collect();
    assert!(tenants.contains(&Some("acme")) && tenants.contains(&Some("globex")));
    assert!(exports[0].to_string().contains("bulkhead-test"));

    // Nothing secret anywhere the operator looks.
    let exported = serde_json::to_string(&exports).unwrap();
    for secret in [CANARY, ADMIN_TOKEN, acme.as_str(), globex.as_str()] {
        assert!(!logs.contains(secret), "a secret reached the logs");
        assert!(!exported.contains(secret), "a secret reached the spans");
        assert!(!metrics.contains(secret), "a secret reached the metrics");
    }
}
