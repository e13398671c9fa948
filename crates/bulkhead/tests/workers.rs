//! Hard isolation on the real binary: a dedicated tenant's runs execute in its own worker
//! process (spawned by `bulkhead serve`), which was handed that tenant's data keys only and
//! confined itself; a worker killed mid-run fails that run clearly and comes back while a
//! shared tenant notices nothing; tiers switch under load without losing or repeating a run;
//! the node's cap on workers and idle stops hold.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_testkit::fake_llm::FakeLlm;
use bulkhead_testkit::fake_saas::FakeSaas;
use serde_json::{Value, json};

const ADMIN: &str = "bha_workers_admin_token_0123456789";

#[derive(Clone)]
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
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn tenant(&self, id: &str, isolation: &str, secret: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/admin/v1/tenants",
                ADMIN,
                Some(json!({"id": id, "name": id, "isolation": isolation})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/admin/v1/tenants/{id}/api-keys"),
                ADMIN,
                Some(json!({"name": "k", "role": "owner"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let key = body["key"].as_str().unwrap().to_owned();
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                "/v1/credentials/openai",
                &key,
                Some(json!({"secret": secret})),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                "/v1/agents/helper",
                &key,
                Some(json!({"model": "gpt", "system_prompt": "Help {{ tenant.name }}."})),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
        key
    }

    async fn run(&self, key: &str, input: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/agents/helper/runs",
            key,
            Some(json!({"input": input})),
        )
        .await
    }

    /// Approves `approval` as `approver`.
    async fn approve(&self, approval: &str, approver: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/approvals/{approval}/decision"),
                approver,
                Some(json!({"approve": true})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn worker(&self, tenant: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/admin/v1/tenants/{tenant}"),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["worker"].clone()
    }

    /// Polls the tenant's worker until `ready` says yes (at most 30 s).
    async fn wait_for_worker(&self, tenant: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let worker = self.worker(tenant).await;
            if ready(&worker) {
                return worker;
            }
            assert!(
                Instant::now() < deadline,
                "worker never got there: {worker}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `bulkhead serve` on `dir/bulkhead.toml`, stopped when dropped.
struct Serve {
    child: std::process::Child,
    pid: u64,
    client: Client,
    /// Kept open: serve's later output must not meet a closed pipe.
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Serve {
    fn start(dir: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .current_dir(dir)
            .env_remove("BULKHEAD_CONFIG")
            .env_remove("BULKHEAD_DATABASE")
            .env("BULKHEAD_ADMIN_TOKEN", ADMIN)
            .args(["--config", "bulkhead.toml", "--data-dir"])
            .arg(dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let address = loop {
            let line = stdout.next().expect("serve exited").unwrap();
            if let Some(address) = line.strip_prefix("bulkhead listening on http://") {
                break address.to_owned();
            }
        };
        Self {
            pid: u64::from(child.id()),
            child,
            client: Client {
                base: format!("http://{address}"),
                http: reqwest::Client::new(),
            },
            _stdout: stdout,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The configuration both tests start from: one region, the fake OpenAI-compatible upstream
/// as endpoint `fake`, and model `gpt` on it.
fn model_config(fake_base: &str) -> String {
    format!(
        "regions = [\"local\"]\n\n\
         [[endpoints]]\nname = \"fake\"\nbase_url = \"{fake_base}/v1\"\nregion = \"local\"\nkind = \"model\"\n\
         connector = \"openai\"\nauth = {{ scheme = \"bearer\" }}\ntimeout_ms = 60000\n\n\
         [[models]]\nalias = \"gpt\"\nprovider = \"openai\"\nendpoint = \"fake\"\n\n"
    )
}

fn proc_field(pid: u64, file: &str, prefix: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_tenants_run_in_their_own_confined_supervised_worker() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Pinned (`placement.rs`): the worker is background work and must land on those cores.
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cores: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap())
        .collect();
    let (serving_core, background_core) = (cores[cores.len() - 1], cores[0]);
    std::fs::write(
        dir.path().join("bulkhead.toml"),
        format!(
            "http_cpus = [{serving_core}]\nbackground_cpus = [{background_core}]\n\
             {}[workers]\nmax_workers = 1\nhealth_ms = 500\nidle_seconds = 4\n\n\
             [workers.tenants.acme]\nopen_files = 512\n",
            model_config(&fake.base)
        ),
    )
    .unwrap();
    let serve = Serve::start(dir.path());
    let (serve_pid, client) = (serve.pid, serve.client.clone());
    let acme = client.tenant("acme", "dedicated", "acme-secret").await;
    let globex = client.tenant("globex", "shared", "globex-secret").await;

    // Each run records the process that executed it; each used its own tenant's key.
    let started = Instant::now();
    let (status, acme_run) = client.run(&acme, "hello").await;
    let first_run = started.elapsed();
    assert_eq!(status, 200, "{acme_run}");
    assert_eq!(acme_run["status"], "completed", "{acme_run}");
    assert_eq!(acme_run["output"], "answered with Bearer acme-secret");
    assert_eq!(acme_run["isolation"], "dedicated");
    let worker_pid = acme_run["process_id"].as_u64().unwrap();
    assert_ne!(worker_pid, serve_pid);
    let (status, globex_run) = client.run(&globex, "hello").await;
    assert_eq!(status, 200, "{globex_run}");
    assert_eq!(globex_run["output"], "answered with Bearer globex-secret");
    assert_eq!(
        (
            globex_run["isolation"].as_str(),
            globex_run["process_id"].as_u64()
        ),
        (Some("shared"), Some(serve_pid))
    );

    // What the worker was given and what it kept.
    let worker = client.worker("acme").await;
    assert_eq!(worker["state"], "running", "{worker}");
    assert_eq!(worker["pid"].as_u64(), Some(worker_pid));
    assert_eq!(
        worker["key_versions"],
        json!([1]),
        "handed more than acme's one data key: {worker}"
    );
    // The run's reads and writes of the agent, the run, its thread and its audit events went
    // to the control plane over the channel (Stage 2), each for a request it had forwarded:
    // the worker has no database of its own.
    assert!(
        worker["store_calls"].as_u64().unwrap() >= 4,
        "the worker's run did not reach the store through the control plane: {worker}"
    );
    assert_eq!(worker["store_calls_refused"], 0, "{worker}");
    let sandbox = &worker["sandbox"];
    assert_eq!(sandbox["no_new_privs"], true, "{worker}");
    assert_eq!(
        proc_field(worker_pid, "status", "NoNewPrivs:"),
        "NoNewPrivs:\t1"
    );
    // The seccomp deny-list is on every thread (mode 2: filter), and the worker could not
    // read process memory with it on; without it, a same-user process could read the
    // control plane's (the KEK) or a sibling worker's.
    assert_eq!(sandbox["seccomp"], "enforced", "{sandbox}");
    assert_eq!(sandbox["process_memory_readable"], false, "{sandbox}");
    assert_eq!(proc_field(worker_pid, "status", "Seccomp:"), "Seccomp:\t2");
    let worker_threads = std::fs::read_dir(format!("/proc/{worker_pid}/task")).unwrap();
    for thread in worker_threads {
        let status = std::fs::read_to_string(thread.unwrap().path().join("status")).unwrap();
        assert!(
            status.lines().any(|l| l == "Seccomp:\t2"),
            "a worker thread runs unfiltered: {status}"
        );
        assert!(
            status
                .lines()
                .any(|l| l == format!("Cpus_allowed_list:\t{background_core}")),
            "a worker thread is not on the background core: {status}"
        );
    }
    // acme's own limit, not the node's default of 1024.
    assert!(
        proc_field(worker_pid, "limits", "Max open files").contains("512"),
        "{sandbox}"
    );
    let environ = std::fs::read(format!("/proc/{worker_pid}/environ")).unwrap();
    assert!(
        !environ.windows(ADMIN.len()).any(|w| w == ADMIN.as_bytes()),
        "the worker inherited the admin token"
    );
    // The worker has no database: no descriptor of the database's files, and (where the
    // kernel confines files) it cannot open them either. Every tenant's rows are in there.
    let database_descriptors: Vec<_> = std::fs::read_dir(format!("/proc/{worker_pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("bulkhead.db"))
        .collect();
    assert!(
        database_descriptors.is_empty(),
        "the worker holds the database open: {database_descriptors:?}"
    );
    let serve_descriptors = std::fs::read_dir(format!("/proc/{serve_pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("bulkhead.db"))
        .count();
    assert!(
        serve_descriptors > 0,
        "the check above looks for the wrong file name"
    );
    if sandbox["landlock"] != "unsupported" {
        assert_eq!(sandbox["kek_file_readable"], false, "{sandbox}");
        assert_eq!(sandbox["database_readable"], false, "{sandbox}");
    } else {
        eprintln!(
            "landlock is {} on this kernel; the KEK file check is skipped",
            sandbox["landlock"]
        );
    }
    eprintln!(
        "figures: first dedicated run (cold start included) {} ms; worker cold start {} ms; worker RSS {} KiB",
        first_run.as_millis(),
        worker["cold_start_ms"],
        worker["rss_bytes"].as_u64().unwrap_or_default() / 1024
    );
    let (_, whoami) = client
        .call(reqwest::Method::GET, "/v1/whoami", &acme, None)
        .await;
    assert_eq!(
        whoami["worker"]["pid"].as_u64(),
        Some(worker_pid),
        "{whoami}"
    );
    let (_, whoami) = client
        .call(reqwest::Method::GET, "/v1/whoami", &globex, None)
        .await;
    assert!(whoami.get("worker").is_none(), "{whoami}");

    // The node's cap: a second dedicated tenant gets a clear refusal, not the shared process.
    let initech = client
        .tenant("initech", "dedicated", "initech-secret")
        .await;
    let (status, problem) = client.run(&initech, "hello").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (503, Some("worker_capacity")),
        "{problem}"
    );

    // kill -9 in the middle of a run: that run fails with worker_lost, the worker comes back,
    // and the shared tenant's runs meanwhile all succeed.
    let before = client.runs_started_in(&acme, worker_pid).await;
    let stalled = {
        let (client, acme) = (client.clone(), acme.clone());
        tokio::spawn(async move { client.run(&acme, "stall").await })
    };
    client
        .wait_for_worker("acme", |w| w["in_flight"].as_u64() == Some(1))
        .await;
    client
        .wait_for_runs_started(&acme, worker_pid, before + 1)
        .await;
    let neighbour = {
        let (client, globex) = (client.clone(), globex.clone());
        tokio::spawn(async move {
            let mut outputs = Vec::new();
            for _ in 0..20 {
                let (status, run) = client.run(&globex, "hello").await;
                outputs.push((status, run["status"].clone()));
            }
            outputs
        })
    };
    Command::new("kill")
        .args(["-9", &worker_pid.to_string()])
        .status()
        .unwrap();
    let (status, lost) = stalled.await.unwrap();
    assert_eq!(status, 200, "{lost}");
    assert_eq!(
        (lost["status"].as_str(), lost["error_code"].as_str()),
        (Some("failed"), Some("worker_lost")),
        "{lost}"
    );
    let (_, stored) = client
        .call(
            reqwest::Method::GET,
            &format!("/v1/runs/{}", lost["id"].as_str().unwrap()),
            &acme,
            None,
        )
        .await;
    assert_eq!(stored["error_code"], "worker_lost");
    for (status, state) in neighbour.await.unwrap() {
        assert_eq!((status, state.as_str()), (200, Some("completed")));
    }
    let back = client
        .wait_for_worker("acme", |w| {
            w["state"] == "running" && w["pid"].as_u64().is_some_and(|p| p != worker_pid)
        })
        .await;
    assert_eq!(back["restarts"], 1, "{back}");
    let (status, run) = client.run(&acme, "hello").await;
    assert_eq!(
        (status, run["status"].as_str()),
        (200, Some("completed")),
        "{run}"
    );
    assert_eq!(run["process_id"], back["pid"]);

    // Switching tiers under load: every request gets exactly one completed run, on one side.
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (client, acme) = (client.clone(), acme.clone());
            tokio::spawn(async move {
                let mut runs = Vec::new();
                for _ in 0..15 {
                    let (status, run) = client.run(&acme, "hello").await;
                    assert_eq!(status, 200, "{run}");
                    runs.push(run);
                }
                runs
            })
        })
        .collect();
    for tier in ["shared", "dedicated", "shared"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (status, body) = client
            .call(
                reqwest::Method::PATCH,
                "/admin/v1/tenants/acme",
                ADMIN,
                Some(json!({"isolation": tier})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["isolation"], tier);
    }
    let mut ids = HashSet::new();
    let mut sides = HashSet::new();
    for task in load {
        for run in task.await.unwrap() {
            assert_eq!(run["status"], "completed", "{run}");
            assert!(
                ids.insert(run["id"].as_str().unwrap().to_owned()),
                "a run answered twice"
            );
            sides.insert(run["isolation"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 45);
    assert!(
        sides.contains("shared"),
        "no run moved to the shared side: {sides:?}"
    );
    let (_, whoami) = client
        .call(reqwest::Method::GET, "/v1/whoami", &acme, None)
        .await;
    assert_eq!(whoami["isolation"], "shared");
    let worker = client.worker("acme").await;
    assert!(
        worker.is_null(),
        "a shared tenant shows no worker: {worker}"
    );

    // Idle stop, then a cold start on the next request.
    client
        .call(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/acme",
            ADMIN,
            Some(json!({"isolation": "dedicated"})),
        )
        .await;
    let (_, run) = client.run(&acme, "hello").await;
    assert_eq!(run["isolation"], "dedicated", "{run}");
    client
        .wait_for_worker("acme", |w| w["state"] == "stopped")
        .await;
    let (_, run) = client.run(&acme, "hello").await;
    assert_eq!(
        (run["status"].as_str(), run["isolation"].as_str()),
        (Some("completed"), Some("dedicated")),
        "{run}"
    );

    drop(serve);
}

impl Client {
    /// A gateway call: status, body and the worker that served it, if one did.
    async fn chat(&self, key: &str, body: Value) -> (u16, String, Option<u64>) {
        self.served(
            reqwest::Method::POST,
            "/v1/chat/completions",
            key,
            Some(body),
        )
        .await
    }

    /// How many runs the tenant's trail says process `pid` started.
    async fn runs_started_in(&self, key: &str, pid: u64) -> usize {
        let (_, started) = self
            .call(
                reqwest::Method::GET,
                "/v1/audit?action=run.started&limit=1000",
                key,
                None,
            )
            .await;
        started["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["details"]["process_id"].as_u64() == Some(pid))
            .count()
    }

    async fn wait_for_runs_started(&self, key: &str, pid: u64, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.runs_started_in(key, pid).await < count {
            assert!(
                Instant::now() < deadline,
                "process {pid} never started run {count}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Like `call`, also answering which worker process served it (`x-bulkhead-served-by`).
    async fn served(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (u16, String, Option<u64>) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if path == "/mcp" {
            request = request
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18");
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let served_by = response
            .headers()
            .get("x-bulkhead-served-by")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        (status, response.text().await.unwrap(), served_by)
    }
}

/// The assistant's words in a `chat.completion`.
fn answer(text: &str) -> Value {
    json_of(text)["choices"][0]["message"]["content"].clone()
}

fn json_of(text: &str) -> Value {
    // An MCP answer may come as one server-sent event.
    let body = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .map_or(text, str::trim);
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_tenants_gateway_mcp_knowledge_previews_and_approvals_are_served_by_its_worker()
{
    let fake = FakeLlm::start().await.unwrap();
    let saas = FakeSaas::start(&[("xoxb-acme", "T_ACME")]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bulkhead.toml"),
        format!(
            "{}[[endpoints]]\nname = \"slack\"\nbase_url = \"{}\"\nregion = \"local\"\nkind = \"tool\"\n\
             connector = \"slack\"\nauth = {{ scheme = \"bearer\" }}\ntimeout_ms = 5000\n\n\
             [[embedders]]\nalias = \"local\"\nprovider = \"local\"\npath = \"{}\"\n\n\
             [tools]\napproval_sweep_ms = 200\n\n\
             [workers]\nhealth_ms = 500\n",
            model_config(&fake.base),
            saas.base,
            bulkhead_testkit::models_dir()
                .join("all-minilm-l6-v2")
                .display()
        ),
    )
    .unwrap();
    let serve = Serve::start(dir.path());
    let client = serve.client.clone();
    let acme = client.tenant("acme", "dedicated", "acme-secret").await;
    let globex = client.tenant("globex", "shared", "globex-secret").await;
    use reqwest::Method;

    // The plain gateway: acme's model key is decrypted and used in acme's worker only.
    let chat = json!({"model": "gpt", "messages": [{"role": "user", "content": "hello"}]});
    let (status, text, served_by) = client.chat(&acme, chat.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(answer(&text), "answered with Bearer acme-secret", "{text}");
    let worker_pid = served_by.expect("the gateway call was not served by a worker");
    assert_ne!(worker_pid, serve.pid);
    assert_eq!(
        client.worker("acme").await["pid"].as_u64(),
        Some(worker_pid)
    );
    // Another dedicated tenant's identical call goes to its own worker, never acme's.
    let initech = client
        .tenant("initech", "dedicated", "initech-secret")
        .await;
    let (status, text, served_by) = client.chat(&initech, chat.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(answer(&text), "answered with Bearer initech-secret");
    let initech_pid = served_by.expect("initech's call was not served by a worker");
    assert!(
        initech_pid != worker_pid && initech_pid != serve.pid,
        "initech shares a process: {initech_pid}"
    );
    let (_, whoami) = client.call(Method::GET, "/v1/whoami", &initech, None).await;
    assert_eq!(whoami["worker"]["pid"].as_u64(), Some(initech_pid));
    // The shared tenant's identical call is served by the shared process.
    let (status, text, served_by) = client.chat(&globex, chat.clone()).await;
    assert_eq!((status, served_by), (200, None), "{text}");
    assert_eq!(answer(&text), "answered with Bearer globex-secret");
    // Streamed, the worker's server-sent events are relayed as they come.
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let (status, text, served_by) = client.chat(&acme, streamed).await;
    assert_eq!((status, served_by), (200, Some(worker_pid)), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The hosted agent through the gateway: its run records the worker.
    let agent_chat =
        json!({"model": "agent/helper", "messages": [{"role": "user", "content": "hello"}]});
    let (status, text, served_by) = client.chat(&acme, agent_chat.clone()).await;
    assert_eq!((status, served_by), (200, Some(worker_pid)), "{text}");
    let run_id = json_of(&text)["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("chatcmpl-")
        .to_owned();
    let (_, run) = client
        .call(Method::GET, &format!("/v1/runs/{run_id}"), &acme, None)
        .await;
    assert_eq!(
        (run["process_id"].as_u64(), run["isolation"].as_str()),
        (Some(worker_pid), Some("dedicated")),
        "{run}"
    );

    // Knowledge: the worker embeds acme's documents and answers its searches.
    let (status, text, served_by) = client
        .served(
            Method::POST,
            "/v1/knowledge/docs/documents",
            &acme,
            Some(json!({"id": "handbook", "title": "Handbook",
                        "text": "Refunds are paid within 30 days. Ask for canary-acme-77."})),
        )
        .await;
    assert_eq!((status, served_by), (201, Some(worker_pid)), "{text}");
    let (status, text, served_by) = client
        .served(
            Method::GET,
            "/v1/knowledge/docs/search?q=canary-acme-77&k=1",
            &acme,
            None,
        )
        .await;
    assert_eq!((status, served_by), (200, Some(worker_pid)), "{text}");
    assert!(
        json_of(&text)["passages"][0]["text"]
            .as_str()
            .unwrap()
            .contains("canary-acme-77"),
        "{text}"
    );
    // Reading records is not agent work: the shared process answers, and sees the same data.
    let (status, text, served_by) = client
        .served(Method::GET, "/v1/knowledge/docs/documents", &acme, None)
        .await;
    assert_eq!((status, served_by), (200, None), "{text}");
    // Another tenant's search of the same name finds nothing of acme's.
    let (status, _, _) = client
        .served(
            Method::GET,
            "/v1/knowledge/docs/search?q=canary-acme-77&k=1",
            &globex,
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Prompt rendering.
    let (status, text, served_by) = client
        .served(
            Method::POST,
            "/v1/agents/helper/prompt-preview",
            &acme,
            Some(json!({"input": "hi"})),
        )
        .await;
    assert_eq!((status, served_by), (200, Some(worker_pid)), "{text}");
    assert_eq!(json_of(&text)["system_prompt"], "Help acme.");

    // Tools: acme's Slack token is decrypted in its worker for /mcp calls and for a run
    // resumed after an approval.
    client
        .call(
            Method::PUT,
            "/v1/credentials/slack",
            &acme,
            Some(json!({"secret": "xoxb-acme"})),
        )
        .await;
    let (status, body) = client
        .call(
            Method::PUT,
            "/v1/tools/slack",
            &acme,
            Some(json!({"kind": "slack", "endpoint": "slack"})),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    let rpc = |id: u64, method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let (status, text, served_by) = client
        .served(
            Method::POST,
            "/mcp",
            &acme,
            Some(rpc(
                1,
                "tools/call",
                json!({"name": "slack__list_channels", "arguments": {}}),
            )),
        )
        .await;
    assert_eq!((status, served_by), (200, Some(worker_pid)), "{text}");
    assert_eq!(json_of(&text)["result"]["isError"], false, "{text}");
    assert_eq!(saas.requests().len(), 1);
    // The worker counted its gateway calls and its tool call with the control plane (it has
    // no database to write them to), in acme's usage only.
    let (status, usage) = client.call(Method::GET, "/v1/usage", &acme, None).await;
    assert_eq!(status, 200, "{usage}");
    let gpt = usage["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["model"] == "gpt" && line["agent"] == "")
        .unwrap_or_else(|| panic!("no plain gateway usage for acme: {usage}"));
    assert!(gpt["requests"].as_u64().unwrap() >= 1, "{usage}");
    assert_eq!(
        usage["tool_calls"][0]["tool"], "slack.list_channels",
        "{usage}"
    );
    let (status, body) = client
        .call(
            Method::PUT,
            "/v1/policies/all",
            &acme,
            Some(json!({"text": r#"permit(principal, action == Bulkhead::Action::"needs_approval", resource);"#})),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) = client
        .call(
            Method::PUT,
            "/v1/agents/poster",
            &acme,
            Some(json!({"model": "scripted", "system_prompt": "Post.", "tools": ["slack"], "max_steps": 2,
                        "script": [{"tool_call": {"name": "slack__post_message",
                                                  "arguments": {"channel": "#general", "text": "hi"}}},
                                   {"reply": "done"}]})),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, paused) = client
        .call(
            Method::POST,
            "/v1/agents/poster/runs",
            &acme,
            Some(json!({"input": "go"})),
        )
        .await;
    assert_eq!(
        (status, paused["status"].as_str()),
        (200, Some("awaiting_approval")),
        "{paused}"
    );
    let (_, pending) = client
        .call(Method::GET, "/v1/approvals?status=pending", &acme, None)
        .await;
    let approval = pending[0]["id"].as_str().unwrap();
    let (status, approver) = client
        .call(
            Method::POST,
            "/admin/v1/tenants/acme/api-keys",
            ADMIN,
            Some(json!({"name": "approver", "role": "approver"})),
        )
        .await;
    assert_eq!(status, 201, "{approver}");
    client
        .approve(approval, approver["key"].as_str().unwrap())
        .await;
    let run_path = format!("/v1/runs/{}", paused["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        let (_, run) = client.call(Method::GET, &run_path, &acme, None).await;
        if run["status"] == "completed" || run["status"] == "failed" {
            break run;
        }
        assert!(Instant::now() < deadline, "never resumed: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resumed["status"], "completed", "{resumed}");
    assert_eq!(
        resumed["process_id"].as_u64(),
        Some(worker_pid),
        "the approved call was made outside acme's worker: {resumed}"
    );
    let posts = saas.requests();
    assert_eq!(posts.len(), 2, "{posts:?}");
    // An approval of an MCP call is consumed in the worker by the same principal's retry,
    // which the control plane checks against the request it forwarded.
    let post = |id: u64| {
        rpc(
            id,
            "tools/call",
            json!({"name": "slack__post_message", "arguments": {"channel": "#ops", "text": "mcp"}}),
        )
    };
    let (status, text, served_by) = client
        .served(Method::POST, "/mcp", &acme, Some(post(2)))
        .await;
    assert_eq!((status, served_by), (200, Some(worker_pid)), "{text}");
    assert!(text.contains("approval_required"), "{text}");
    let (_, pending) = client
        .call(Method::GET, "/v1/approvals?status=pending", &acme, None)
        .await;
    let mcp_approval = pending[0]["id"].as_str().unwrap();
    client
        .approve(mcp_approval, approver["key"].as_str().unwrap())
        .await;
    let (status, text, served_by) = client
        .served(Method::POST, "/mcp", &acme, Some(post(3)))
        .await;
    assert_eq!((status, served_by), (200, Some(worker_pid)), "{text}");
    assert_eq!(json_of(&text)["result"]["isError"], false, "{text}");
    assert_eq!(saas.requests().len(), 3);
    // Every store call the worker made on these paths (the approval's request, its
    // consumption, the paused run's claim) named a request the control plane had forwarded.
    let worker = client.worker("acme").await;
    assert!(worker["store_calls"].as_u64().unwrap() > 0, "{worker}");
    assert_eq!(worker["store_calls_refused"], 0, "{worker}");

    // A worker killed under a gateway call: the call gets a clear 503, the agent run it
    // started is failed, and the worker comes back.
    let before = client.runs_started_in(&acme, worker_pid).await;
    let mut stalled_chat = agent_chat.clone();
    stalled_chat["messages"][0]["content"] = json!("stall");
    let stalled = {
        let (client, acme) = (client.clone(), acme.clone());
        tokio::spawn(async move { client.chat(&acme, stalled_chat).await })
    };
    // Killed once the gateway call's run exists in the worker.
    client
        .wait_for_runs_started(&acme, worker_pid, before + 1)
        .await;
    Command::new("kill")
        .args(["-9", &worker_pid.to_string()])
        .status()
        .unwrap();
    let (status, text, _) = stalled.await.unwrap();
    assert_eq!(status, 503, "{text}");
    assert_eq!(json_of(&text)["code"], "worker_lost", "{text}");
    let (_, failures) = client
        .call(Method::GET, "/v1/audit?action=run.failed", &acme, None)
        .await;
    let lost: Vec<&Value> = failures["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["details"]["code"] == "worker_lost")
        .collect();
    assert_eq!(lost.len(), 1, "{failures}");
    assert_eq!(lost[0]["details"]["process_id"].as_u64(), Some(worker_pid));
    let back = client
        .wait_for_worker("acme", |w| {
            w["state"] == "running" && w["pid"].as_u64().is_some_and(|p| p != worker_pid)
        })
        .await;
    let (status, text, served_by) = client.chat(&acme, chat).await;
    assert_eq!((status, served_by), (200, back["pid"].as_u64()), "{text}");
    drop(serve);
}
