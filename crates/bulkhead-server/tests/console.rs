//! The approvals console end to end in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs), driven over the W3C WebDriver protocol: an
//! approver signs in with a key, sees the exact call, approves it, and the paused run
//! finishes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulkhead_core::config::{AuthScheme, EndpointConfig, EndpointKind, ToolsConfig};
use bulkhead_core::{ConnectorName, RegionName};
use bulkhead_testkit::fake_saas::FakeSaas;
use common::{Backend, TestServer, put_agent, put_credential};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session behind its own chromedriver.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (.ci/run installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client.get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // As this machine's notes say: without the background-networking flags Chromium
        // keeps trying to reach Google's hosts, which the closed network refuses.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let created: Value = client
            .post(format!("{base}/session"))
            .json(
                &json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        // A click that submits a form returns before the next page has loaded; finding an
        // element then waits for it (up to 5 s) instead of failing on the old page.
        client
            .post(format!("{base}/session/{session}/timeouts"))
            .json(&json!({"implicit": 5_000}))
            .send()
            .await
            .unwrap();
        Self {
            driver,
            base,
            session,
            client,
            _profile: profile,
        }
    }

    async fn command(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method.clone(), url);
        if method == Method::POST {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        if reply["value"]["error"].is_string() {
            panic!("WebDriver {path}: {reply}");
        }
        reply["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(Method::POST, "/url", json!({"url": url}))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    async fn count(&self, css: &str) -> usize {
        self.command(
            Method::POST,
            "/elements",
            json!({"using": "css selector", "value": css}),
        )
        .await
        .as_array()
        .unwrap()
        .len()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            Method::POST,
            &format!("/element/{element}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(
            Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.command(
            Method::GET,
            &format!("/element/{element}/text"),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }

    async fn cookie(&self, name: &str) -> String {
        self.command(Method::GET, &format!("/cookie/{name}"), Value::Null)
            .await["value"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn quit(mut self) {
        let _ = self
            .client
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn slack_endpoint(base: &str) -> EndpointConfig {
    EndpointConfig {
        name: "slack".into(),
        base_url: base.into(),
        region: RegionName::try_from("eu-west").unwrap(),
        kind: EndpointKind::Tool,
        connector: Some(ConnectorName::try_from("slack").unwrap()),
        auth: AuthScheme::Bearer {},
        timeout_ms: 5_000,
        max_retries: 0,
    }
}

#[tokio::test]
async fn an_approver_approves_in_chromium_and_the_run_resumes() {
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME")]).await.unwrap();
    let server = TestServer::start_with_tools(
        Backend::Sqlite,
        &[slack_endpoint(&saas.base)],
        ToolsConfig::default(),
    )
    .await;
    server.create_tenant("acme").await;
    let (owner, _) = server.create_key("acme", "owner").await;
    let (approver, _) = server.create_key("acme", "approver").await;
    let (viewer_dev, _) = server.create_key("acme", "developer").await;
    put_credential(&server, &owner, "slack", "xoxb-acme").await;
    let (status, body) = server
        .send(
            server
                .request(Method::PUT, "/v1/tools/slack", Some(&owner))
                .json(&json!({"kind": "slack", "endpoint": "slack"})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let (status, body) = server
        .send(server.request(Method::PUT, "/v1/policies/incidents", Some(&owner)).json(&json!({"text":
            r##"permit(principal, action == Bulkhead::Action::"needs_approval", resource) when { context.target like "#incidents*" };"##})))
        .await;
    assert!(status.is_success(), "{body}");
    put_agent(&server, &owner, "triage", json!({"model": "scripted", "system_prompt": "Act for {{ tenant.name }}.",
        "tools": ["slack"], "script": [
            {"tool_call": {"name": "slack__post_message", "arguments": {"channel": "#incidents", "text": "<b>checkout</b> is down"}}},
            {"reply": "posted"}]})).await;
    let (_, run) = server
        .send(
            server
                .request(Method::POST, "/v1/agents/triage/runs", Some(&owner))
                .json(&json!({"input": "go"})),
        )
        .await;
    assert_eq!(run["status"], "awaiting_approval", "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();

    let browser = Browser::start().await;
    let console = format!("{}/console/approvals", server.base);
    browser.open(&console).await;
    // A wrong key is refused with a message, and no session is opened.
    browser.type_into("#credential", "bhk_wrong_key").await;
    browser.click("#sign-in").await;
    assert!(browser.text("#error").await.contains("not accepted"));
    browser.type_into("#credential", &approver).await;
    browser.click("#sign-in").await;
    let line = browser.text(".approval .line").await;
    assert_eq!(
        line,
        "Agent `triage` acting as `acme org` (`acme`) wants to `post a message to` `#incidents`"
    );
    // The exact arguments, shown as text (the markup in them is not rendered).
    let arguments = browser.text(".approval .arguments").await;
    assert!(
        arguments.contains("\"text\": \"<b>checkout</b> is down\""),
        "{arguments}"
    );
    assert_eq!(saas.requests().len(), 0);

    // The session cookie alone cannot decide: a form without the CSRF token is refused.
    let cookie = browser.cookie("bulkhead_console").await;
    let approval_id = server
        .tenant_get("/v1/approvals?status=pending", &approver)
        .await
        .1[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = server
        .client
        .post(format!(
            "{}/console/approvals/{approval_id}/decision",
            server.base
        ))
        .header("cookie", format!("bulkhead_console={cookie}"))
        .form(&[("decision", "approve"), ("csrf", "guessed")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    browser.click(".approval button.approve").await;
    assert!(browser.text("#notice").await.contains("approved"));
    assert_eq!(browser.count(".approval").await, 0);
    let mut finished = Value::Null;
    for _ in 0..100 {
        let (_, run) = server
            .tenant_get(&format!("/v1/runs/{run_id}"), &owner)
            .await;
        if run["status"] == "completed" {
            finished = run;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(finished["output"], "posted", "{finished}");
    let posted = saas.requests();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].credential, "Bearer xoxb-acme");
    let (_, approval) = server
        .tenant_get(&format!("/v1/approvals/{approval_id}"), &owner)
        .await;
    assert_eq!(approval["status"], "approved");
    assert!(
        approval["decided_by"].as_str().unwrap().starts_with("key:"),
        "{approval}"
    );

    // Signing out ends the session: the cookie no longer opens the page.
    browser.click("#sign-out").await;
    assert_eq!(browser.count("#credential").await, 1);
    let page = server
        .client
        .get(&console)
        .header("cookie", format!("bulkhead_console={cookie}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"credential\""));
    browser.quit().await;

    // A developer may look but has no buttons; the page is never framed or cached.
    let signed_in = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = signed_in
        .post(format!("{}/console/sign-in", server.base))
        .form(&[("credential", viewer_dev.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let session = set_cookie.split(';').next().unwrap().to_owned();
    let page = signed_in
        .get(&console)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("needs the approver role"), "{html}");
    server.finish().await;
}

/// A platform JWT (the test issuer's RS256 key) with the approver role for `tenant`,
/// expiring `lifetime` seconds from now.
fn approver_jwt(tenant: &str, lifetime: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"iss": common::PLATFORM_ISS, "aud": common::AUDIENCE, "sub": "ada",
        "exp": now + lifetime, "nbf": now - 10, "iat": now, "tenant_id": tenant, "roles": ["approver"]});
    let pem = common::fixture_text("rsa_a.pem");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-a".into());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn a_jwt_opens_a_session_that_ends_with_the_token_and_a_revoked_key_ends_its_session() {
    let server = TestServer::start_with_tools(Backend::Sqlite, &[], ToolsConfig::default()).await;
    server.create_tenant("acme").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let console = format!("{}/console/approvals", server.base);
    let sign_in = |credential: String| {
        let client = client.clone();
        let url = format!("{}/console/sign-in", server.base);
        async move {
            let response = client
                .post(url)
                .form(&[("credential", credential)])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            let cookie = response.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .to_owned();
            let max_age: i64 = cookie
                .split("Max-Age=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (cookie.split(';').next().unwrap().to_owned(), max_age)
        }
    };
    let page = |cookie: String| {
        let client = client.clone();
        let url = console.clone();
        async move {
            client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    // A JWT's session lasts no longer than the token.
    let (session, max_age) = sign_in(approver_jwt("acme", 2)).await;
    assert!(max_age <= 2, "{max_age}");
    let html = page(session.clone()).await;
    assert!(
        html.contains("Pending approvals for acme org") && html.contains("user:ada@"),
        "{html}"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        page(session).await.contains("id=\"credential\""),
        "the session outlived its token"
    );

    // A key's session ends when the key is revoked.
    let (key, key_id) = server.create_key("acme", "approver").await;
    let (session, _) = sign_in(key).await;
    assert!(
        page(session.clone())
            .await
            .contains("Pending approvals for acme org")
    );
    let (status, _) = server
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/acme/api-keys/{key_id}"),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    assert!(
        page(session).await.contains("id=\"credential\""),
        "the session outlived its key"
    );
    server.finish().await;
}
