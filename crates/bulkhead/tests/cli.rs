//! The binary as an operator uses it: offline administration, `serve` with its configuration
//! layers, first-start admin token, and graceful shutdown on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary run in `dir`, with no configuration inherited from the caller's environment.
fn bare(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    command
        .current_dir(dir)
        .env_remove("BULKHEAD_ADMIN_TOKEN")
        .env_remove("BULKHEAD_DATABASE")
        .env_remove("BULKHEAD_DATA_DIR")
        .env_remove("BULKHEAD_CONFIG")
        .env_remove("MIMALLOC_ALLOW_THP")
        .env("RUST_LOG", "warn");
    command
}

fn bulkhead(data_dir: &Path) -> Command {
    let mut command = bare(data_dir);
    command.arg("--data-dir").arg(data_dir);
    command
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{:?} failed: {}{}",
        command,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn json(command: &mut Command) -> Value {
    serde_json::from_slice(&run(command).stdout).unwrap()
}

#[test]
fn tenants_and_keys_are_managed_offline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let created =
        json(bulkhead(d).args(["tenant", "create", "acme", "--name", "Acme Corp", "--json"]));
    assert_eq!(created["id"], "acme");
    assert_eq!(created["status"], "active");
    run(bulkhead(d).args([
        "tenant",
        "create",
        "globex",
        "--name",
        "Globex",
        "--isolation",
        "dedicated",
    ]));

    let table = String::from_utf8(run(bulkhead(d).args(["tenant", "list"])).stdout).unwrap();
    assert!(
        table.contains("ID") && table.contains("acme") && table.contains("dedicated"),
        "{table}"
    );
    let listed = json(bulkhead(d).args(["tenant", "list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let key = json(bulkhead(d).args([
        "key",
        "create",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--role",
        "developer",
        "--json",
    ]));
    assert!(key["key"].as_str().unwrap().starts_with("bhk_"));
    let keys = json(bulkhead(d).args(["key", "list", "--tenant", "acme", "--json"]));
    assert_eq!(keys[0]["id"], key["id"]);
    assert!(
        keys[0].get("key").is_none(),
        "the key is shown only at creation"
    );
    let revoked = json(bulkhead(d).args([
        "key",
        "revoke",
        "--tenant",
        "acme",
        key["id"].as_str().unwrap(),
        "--json",
    ]));
    assert!(revoked["revoked_at"].is_string());

    let suspended = json(bulkhead(d).args(["tenant", "suspend", "globex", "--json"]));
    assert_eq!(suspended["status"], "suspended");
    let shown = json(bulkhead(d).args(["tenant", "show", "globex", "--json"]));
    assert_eq!(shown["status"], "suspended");
    let receipt = json(bulkhead(d).args(["tenant", "delete", "globex", "--json"]));
    assert_eq!(receipt["tenant_id"], "globex");

    // Mistakes are clear errors with a non-zero exit, never panics.
    for args in [
        vec!["tenant", "create", "Bad_Id", "--name", "x"],
        vec!["tenant", "create", "acme", "--name", "again"],
        vec![
            "tenant", "create", "zeta", "--name", "x", "--region", "mars",
        ],
        vec!["tenant", "show", "nobody"],
        vec![
            "key", "create", "--tenant", "nobody", "--name", "k", "--role", "owner",
        ],
        vec![
            "key", "create", "--tenant", "acme", "--name", "k", "--role", "emperor",
        ],
    ] {
        let output = bulkhead(d).args(&args).output().unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
}

struct Server {
    child: Child,
    address: String,
    first_lines: Vec<String>,
}

/// A test that fails before `terminate` would otherwise leave its server running, using CPU
/// under every later test and benchmark on the machine.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `bulkhead serve` on port 0 and reads its stdout until it says where it listens.
fn serve(command: &mut Command) -> Server {
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut first_lines = Vec::new();
    let address = loop {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        if let Some(address) = line.strip_prefix("bulkhead listening on http://") {
            break address.to_owned();
        }
        first_lines.push(line);
    };
    Server {
        child,
        address,
        first_lines,
    }
}

/// A bare HTTP/1.1 GET: the binary's tests need no HTTP client crate.
fn get(address: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let auth = bearer
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {address}\r\n{auth}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

fn terminate(mut server: Server) -> std::process::ExitStatus {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_generates_the_admin_token_once_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = serve(&mut bulkhead(d));
    let printed = server.first_lines.join("\n");
    let token = server
        .first_lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("bha_"))
        .unwrap_or_else(|| panic!("no token printed: {printed}"))
        .to_owned();
    assert_eq!(get(&server.address, "/healthz", None).0, 200);
    assert_eq!(get(&server.address, "/readyz", None).0, 200);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        serving_threads(&server),
        cores,
        "one serving thread per core by default"
    );
    let (status, body) = get(&server.address, "/admin/v1/tenants", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        get(&server.address, "/admin/v1/tenants", Some("bha_wrong")).0,
        401
    );
    assert!(terminate(server).success(), "SIGTERM is a clean exit");

    // Stored hashed, never in clear, and not printed again on the next start.
    let db = std::fs::read(d.join("bulkhead.db")).unwrap();
    let wal = std::fs::read(d.join("bulkhead.db-wal")).unwrap_or_default();
    let needle = token.as_bytes();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the token is stored in clear"
        );
    }
    // Served from the shared multi-threaded runtime this time (`http_threads = 0`).
    let again = serve(bulkhead(d).env("BULKHEAD_HTTP_THREADS", "0"));
    assert!(
        again.first_lines.iter().all(|l| !l.contains("bha_")),
        "{:?}",
        again.first_lines
    );
    assert_eq!(serving_threads(&again), 0);
    assert_eq!(
        get(&again.address, "/admin/v1/tenants", Some(&token)).0,
        200
    );
    assert!(terminate(again).success());
}

/// A supervisor may stop the server as soon as it reads the address. The signal handlers are
/// in place by then, so that is a drain and a clean exit, not the signal's default action.
#[test]
fn a_sigterm_as_soon_as_the_address_is_printed_is_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let server = serve(&mut bulkhead(dir.path()));
        assert!(terminate(server).success(), "SIGTERM right after start");
    }
}

/// The server keeps its memory off transparent huge pages, whose zeroing on first touch
/// stalled serving threads for a millisecond, unless the operator chose with mimalloc's own
/// `MIMALLOC_ALLOW_THP`.
#[cfg(target_os = "linux")]
#[test]
fn memory_stays_off_huge_pages_unless_the_operator_chooses() {
    fn huge_pages_allowed(server: &Server) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("THP_enabled:"))
            .map(|value| value.trim().to_owned())
            .expect("no THP_enabled in /proc/PID/status")
    }
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&mut bulkhead(dir.path()));
    assert_eq!(get(&server.address, "/readyz", None).0, 200);
    assert_eq!(huge_pages_allowed(&server), "0");
    assert!(terminate(server).success());

    let chosen = serve(bulkhead(dir.path()).env("MIMALLOC_ALLOW_THP", "1"));
    assert_eq!(get(&chosen.address, "/readyz", None).0, 200);
    assert_eq!(huge_pages_allowed(&chosen), "1");
    assert!(terminate(chosen).success());
}

/// The server's threads named as serving threads (`serving.rs`).
fn serving_threads(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("bulkhead-http-"))
        .count()
}

#[test]
fn configuration_layers_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("custom.toml");
    std::fs::write(
        &config,
        "admin_token = \"from-the-config-file-0123\"\nregions = [\"eu-west\", \"us-east\"]\nmax_body_bytes = 2048\n",
    )
    .unwrap();

    // The file sets the token and regions.
    let server = serve(bulkhead(d).arg("--config").arg(&config));
    assert_eq!(
        get(
            &server.address,
            "/admin/v1/tenants",
            Some("from-the-config-file-0123")
        )
        .0,
        200
    );
    assert!(terminate(server).success());

    // The environment overrides the file.
    let server = serve(
        bulkhead(d)
            .arg("--config")
            .arg(&config)
            .env("BULKHEAD_ADMIN_TOKEN", "from-the-environment-0123"),
    );
    assert_eq!(
        get(
            &server.address,
            "/admin/v1/tenants",
            Some("from-the-environment-0123")
        )
        .0,
        200
    );
    assert_eq!(
        get(
            &server.address,
            "/admin/v1/tenants",
            Some("from-the-config-file-0123")
        )
        .0,
        401
    );
    assert!(terminate(server).success());

    // The file names a data directory; the environment overrides it; a flag overrides both.
    let file_dir = d.join("from-file");
    let env_dir = d.join("from-env");
    let flag_dir = d.join("from-flag");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nregions = [\"eu-west\", \"us-east\"]\n",
            file_dir.display().to_string()
        ),
    )
    .unwrap();
    let create = |command: &mut Command, id: &str| {
        run(command
            .arg("--config")
            .arg(&config)
            .args(["tenant", "create", id, "--name", "A", "--region", "us-east"]));
    };
    create(&mut bare(d), "one");
    create(bare(d).env("BULKHEAD_DATA_DIR", &env_dir), "two");
    create(
        bare(d)
            .env("BULKHEAD_DATA_DIR", &env_dir)
            .arg("--data-dir")
            .arg(&flag_dir),
        "three",
    );
    for (dir, id) in [(&file_dir, "one"), (&env_dir, "two"), (&flag_dir, "three")] {
        let listed = json(
            bare(d)
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(dir)
                .args(["tenant", "list", "--json"]),
        );
        let ids: Vec<_> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, [id], "{}", dir.display());
    }

    // Bad configuration is a clear error.
    std::fs::write(&config, "listen = \"not an address\"\n").unwrap();
    let output = bulkhead(d)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid configuration"));
    std::fs::write(&config, "typo_setting = 1\n").unwrap();
    let output = bulkhead(d)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("typo_setting"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = bulkhead(d)
        .arg("--config")
        .arg(d.join("missing.toml"))
        .arg("serve")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
}

#[test]
fn the_demo_shows_isolation_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("demo")
        .arg("--models-dir")
        .arg(bulkhead_testkit::models_dir())
        .current_dir(dir.path())
        .env_remove("BULKHEAD_DATABASE"));
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "acme's key -> tenant acme, region eu-central",
        "globex's key -> tenant globex, region us-east",
        "still tenant acme",
        "the prompt held Acme Corp's documents and no other tenant's",
        "the prompt held Globex Inc's documents and no other tenant's",
        "globex asks for acme's run: not_found",
        "globex continues acme's conversation: not_found",
        "\"Orders can be returned within 90 days.\" (its own)",
        "chat.completion:",
        "acme: requests 2,",
        "globex: requests 1,",
        "chain verified",
        "Demo complete",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The local model is greedy: each tenant's answer comes from its own documents.
    let answer = |tenant: &str| {
        text.lines()
            .find(|l| l.contains(&format!("[{tenant}] agent:")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(answer("acme").contains("30"), "{text}");
    assert!(answer("globex").contains("90"), "{text}");
    assert!(
        !text.contains("sk-demo-"),
        "a credential was printed: {text}"
    );
}

#[test]
fn the_demo_says_how_to_get_the_model_when_it_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["demo", "--models-dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("run scripts/fetch-models"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bulkhead.example.toml");
    let listed = json(
        bulkhead(dir.path())
            .arg("--config")
            .arg(&example)
            .args(["tenant", "list", "--json"]),
    );
    assert_eq!(listed, Value::Array(vec![]));
    // Its commented-out platform issuer block is valid too once filled in.
    let text = std::fs::read_to_string(&example).unwrap();
    let jwks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/jwt/jwks_a.json");
    let enabled = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("[auth.platform_issuer]")
                    || [
                        "issuer",
                        "audience",
                        "algorithms",
                        "tenant_claim",
                        "roles_claim",
                        "require_nbf",
                    ]
                    .iter()
                    .any(|k| rest.starts_with(&format!("{k} "))) =>
            {
                rest.to_owned()
            }
            Some(rest) if rest.starts_with("jwks_path") => {
                format!("jwks_path = {:?}", jwks.display().to_string())
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(enabled.contains("\n[auth.platform_issuer]"), "{enabled}");
    let config = dir.path().join("enabled.toml");
    std::fs::write(&config, enabled).unwrap();
    let server = serve(
        bulkhead(dir.path())
            .arg("--config")
            .arg(&config)
            .env("BULKHEAD_ADMIN_TOKEN", "an-admin-token-for-tests"),
    );
    assert_eq!(get(&server.address, "/healthz", None).0, 200);
    assert!(terminate(server).success());
}

#[test]
fn the_cli_and_a_running_server_write_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = serve(bulkhead(d).env("BULKHEAD_ADMIN_TOKEN", "an-admin-token-for-tests"));
    run(bulkhead(d).args(["tenant", "create", "shared", "--name", "X"]));
    // Several processes write at once, some reading before they write (suspend and reactivate
    // read the tenant first); SQLite's write lock is taken up front and waited for.
    let writers: Vec<_> = (0..12)
        .map(|i| {
            let args: Vec<String> = match i % 3 {
                0 => vec![
                    "tenant".into(),
                    "create".into(),
                    format!("cli-{}", i / 3),
                    "--name".into(),
                    "X".into(),
                ],
                1 => vec!["tenant".into(), "suspend".into(), "shared".into()],
                _ => vec!["tenant".into(), "reactivate".into(), "shared".into()],
            };
            bulkhead(d)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for writer in writers {
        let output = writer.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (status, body) = get(
        &server.address,
        "/admin/v1/tenants",
        Some("an-admin-token-for-tests"),
    );
    assert_eq!(status, 200);
    for i in 0..4 {
        assert!(body.contains(&format!("cli-{i}")), "{body}");
    }
    assert!(terminate(server).success());
}

fn http(address: &str, method: &str, path: &str, bearer: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {bearer}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn credentials_are_set_from_stdin_and_no_secret_reaches_disk_or_logs() {
    const CANARY: &str = "canary-3d1f0a9e-7c6b-4a5d-9e8f-1b2c3d4e5f60";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(bulkhead(d).args(["tenant", "create", "acme", "--name", "Acme"]));

    // The CLI reads the secret from standard input, never from argv.
    let mut child = bulkhead(d)
        .args([
            "credential",
            "set",
            "--tenant",
            "acme",
            "openai",
            "--field",
            "base_url=http://127.0.0.1:9",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{CANARY}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let record: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(record["version"], 1);
    assert_eq!(record["fields"]["base_url"], "http://127.0.0.1:9");
    let file = d.join("secret.txt");
    std::fs::write(&file, format!("{CANARY}-file\n")).unwrap();
    let record = json(
        bulkhead(d)
            .args([
                "credential",
                "set",
                "--tenant",
                "acme",
                "openai",
                "--json",
                "--secret-file",
            ])
            .arg(&file),
    );
    assert_eq!(record["version"], 2);
    let listed = json(bulkhead(d).args(["credential", "list", "--tenant", "acme", "--json"]));
    assert_eq!(listed[0]["connector"], "openai");
    let empty = bulkhead(d)
        .args(["credential", "set", "--tenant", "acme", "x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty"));

    // The server, logging at debug level, takes a secret over HTTP.
    let mut command = bulkhead(d);
    command
        .env("BULKHEAD_ADMIN_TOKEN", "an-admin-token-for-tests")
        .env("RUST_LOG", "debug");
    let mut server = serve(&mut command);
    let (_, key) = http(
        &server.address,
        "POST",
        "/admin/v1/tenants/acme/api-keys",
        "an-admin-token-for-tests",
        r#"{"name":"k","role":"owner"}"#,
    );
    let key: Value = serde_json::from_str(&key).unwrap();
    let key = key["key"].as_str().unwrap();
    let (status, body) = http(
        &server.address,
        "PUT",
        "/v1/credentials/slack",
        key,
        &format!(r#"{{"secret":"{CANARY}-http"}}"#),
    );
    assert_eq!(status, 201, "{body}");
    assert!(!body.contains(CANARY));
    let (status, body) = http(
        &server.address,
        "PUT",
        "/v1/credentials/slack",
        key,
        &format!(r#"{{"secret":"{CANARY}","oops":1}}"#),
    );
    assert_eq!(status, 422);
    assert!(!body.contains(CANARY), "{body}");
    let mut stderr = server.child.stderr.take().unwrap();
    assert!(terminate(server).success());
    let mut logs = String::new();
    stderr.read_to_string(&mut logs).unwrap();
    assert!(
        logs.contains("request finished"),
        "debug logs were captured: {logs}"
    );
    assert!(!logs.contains(CANARY), "a secret reached the logs");
    assert!(!logs.contains(key), "an API key reached the logs");

    for name in ["bulkhead.db", "bulkhead.db-wal"] {
        let bytes = std::fs::read(d.join(name)).unwrap_or_default();
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "canary in {name}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("master.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the key-encryption key file is private"
    );
}

/// Starts `args`, kills it with SIGKILL after `after`, and says whether it was still running.
fn kill_midway(command: &mut Command, after: Duration) -> bool {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

#[test]
fn key_rotations_killed_midway_finish_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(bulkhead(d).args(["tenant", "create", "acme", "--name", "Acme"]));
    run(bulkhead(d).args(["tenant", "create", "globex", "--name", "Globex"]));
    for i in 0..60 {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        let file = d.join("s.txt");
        std::fs::write(&file, format!("secret-{i}")).unwrap();
        run(bulkhead(d)
            .args([
                "credential",
                "set",
                "--tenant",
                tenant,
                &format!("c{i}"),
                "--secret-file",
            ])
            .arg(&file));
    }
    let check = |tenant: &str| {
        String::from_utf8(run(bulkhead(d).args(["credential", "check", "--tenant", tenant])).stdout)
            .unwrap()
    };
    assert!(check("acme").contains("30 of 30"));

    // Data key: killed at several points; every secret opens between and after the runs.
    let mut interrupted = 0;
    for delay_ms in [5, 40, 120] {
        if kill_midway(
            bulkhead(d).args(["keys", "rotate-dek", "--tenant", "acme"]),
            Duration::from_millis(delay_ms),
        ) {
            interrupted += 1;
        }
        assert!(
            check("acme").contains("30 of 30"),
            "after a kill at {delay_ms} ms"
        );
    }
    let finished =
        String::from_utf8(run(bulkhead(d).args(["keys", "rotate-dek", "--tenant", "acme"])).stdout)
            .unwrap();
    assert!(finished.contains("data key of acme"), "{finished}");
    assert!(check("acme").contains("30 of 30"));
    assert!(check("globex").contains("30 of 30"));
    eprintln!("rotate-dek was interrupted {interrupted} of 3 times");

    // Key-encryption key: the same.
    let kek_before = std::fs::read_to_string(d.join("master.key")).unwrap();
    kill_midway(
        bulkhead(d).args(["keys", "rotate-kek"]),
        Duration::from_millis(20),
    );
    assert!(check("acme").contains("30 of 30"));
    assert!(check("globex").contains("30 of 30"));
    let out = String::from_utf8(run(bulkhead(d).args(["keys", "rotate-kek"])).stdout).unwrap();
    assert!(out.contains("re-wrapped"), "{out}");
    let kek_after = std::fs::read_to_string(d.join("master.key")).unwrap();
    assert_ne!(kek_before, kek_after);
    assert!(
        kek_after.lines().count() >= 2,
        "old keys stay for unwrapping"
    );
    assert!(check("acme").contains("30 of 30"));
    assert!(check("globex").contains("30 of 30"));
    // Run again with nothing pending: a new KEK, everything re-wrapped, everything opens.
    run(bulkhead(d).args(["keys", "rotate-kek"]));
    assert!(check("globex").contains("30 of 30"));
}

#[test]
fn endpoints_are_validated_and_cannot_carry_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("bulkhead.toml");
    let base = "regions = [\"eu-west\"]\n[[endpoints]]\nname = \"openai\"\nregion = \"eu-west\"\nkind = \"model\"\nconnector = \"openai\"\n";
    // A credential in the config file is not a setting: tenant secrets live only in the vault.
    for (extra, complaint) in [
        (
            "base_url = \"https://api.openai.com/v1\"\napi_key = \"sk-live-123\"\n",
            "api_key",
        ),
        (
            "base_url = \"https://api.openai.com/v1\"\nauth = { scheme = \"bearer\", token = \"sk-live-123\" }\n",
            "token",
        ),
        (
            "base_url = \"https://user:sk-live-123@api.openai.com/v1\"\n",
            "must not carry",
        ),
        ("base_url = \"not a url\"\n", "base_url"),
    ] {
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let output = output_within(
            bulkhead(d)
                .arg("--config")
                .arg(&config)
                .args(["serve", "--listen", "127.0.0.1:0"]),
            30,
        );
        assert!(!output.status.success(), "{extra}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(complaint), "{extra}: {stderr}");
        assert!(
            !stderr.contains("sk-live-123"),
            "the error echoes the secret: {stderr}"
        );
    }
    std::fs::write(&config, format!("{base}base_url = \"https://api.openai.com/v1\"\nauth = {{ scheme = \"header\", name = \"x-api-key\" }}\n")).unwrap();
    let server = serve(
        bulkhead(d)
            .arg("--config")
            .arg(&config)
            .env("BULKHEAD_ADMIN_TOKEN", "an-admin-token-for-tests"),
    );
    assert_eq!(get(&server.address, "/healthz", None).0, 200);
    assert!(terminate(server).success());
}

/// Runs a command that must exit by itself; a server that started instead is killed and the
/// test fails, rather than hanging.
fn output_within(command: &mut Command, seconds: u64) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not exit within {seconds} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The summary line of an ingest run, as numbers: (created, replaced, unchanged, failed,
/// skipped).
fn ingest_counts(output: &Output) -> (u32, u32, u32, u32, u32) {
    let text = String::from_utf8_lossy(&output.stderr);
    let line = text
        .lines()
        .find(|l| l.starts_with("ingested "))
        .unwrap_or_else(|| panic!("no summary in {text}"));
    let count = |label: &str| -> u32 {
        let before = line.split(&format!(" {label}")).next().unwrap();
        before
            .rsplit([' ', ':'])
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{label} in {line}"))
    };
    (
        count("created"),
        count("replaced"),
        count("unchanged"),
        count("failed"),
        count("skipped"),
    )
}

#[test]
fn ingest_skips_unchanged_files_and_resumes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("bulkhead.toml"),
        format!(
            "[[embedders]]\nalias = \"local\"\nprovider = \"local\"\npath = {:?}\n",
            bulkhead_testkit::local_embedder()
        ),
    )
    .unwrap();
    let docs = d.join("docs");
    std::fs::create_dir_all(docs.join("guides")).unwrap();
    std::fs::create_dir_all(docs.join(".git")).unwrap();
    for i in 0..40 {
        let body = format!(
            "# Guide {i}\n\nStep one of guide {i}: open the console.\n\n## Details\n\n{}",
            "Every step is written down so that anyone can follow it. ".repeat(20)
        );
        std::fs::write(docs.join("guides").join(format!("g{i:02}.md")), body).unwrap();
    }
    std::fs::write(
        docs.join("index.html"),
        "<title>Index</title><h1>Index</h1><p>All guides.</p>",
    )
    .unwrap();
    std::fs::write(docs.join("logo.png"), [0x89, 0x50]).unwrap();
    std::fs::write(docs.join(".git").join("HEAD.txt"), "not a document").unwrap();
    let with_config = |command: &mut Command| {
        command.env("BULKHEAD_CONFIG", d.join("bulkhead.toml"));
    };
    run(bulkhead(d).args(["tenant", "create", "acme", "--name", "Acme"]));
    let ingest = || {
        let mut command = bulkhead(d);
        with_config(&mut command);
        command
            .args(["ingest", "--tenant", "acme", "--kb", "handbook"])
            .arg(&docs);
        command
    };

    // Killed partway: what finished stays; the next run embeds only the rest.
    let interrupted = kill_midway(&mut ingest(), Duration::from_millis(2500));
    let resumed = run(&mut ingest());
    let (created, replaced, unchanged, failed, skipped) = ingest_counts(&resumed);
    assert_eq!(created + unchanged, 41, "{resumed:?}");
    assert_eq!((replaced, failed, skipped), (0, 0, 1));
    eprintln!("killed midway: {interrupted}; {unchanged} files were already in when resumed");

    // Again: nothing to do.
    assert_eq!(ingest_counts(&run(&mut ingest())), (0, 0, 41, 0, 1));

    // One file changed: only it is replaced.
    std::fs::write(
        docs.join("guides").join("g07.md"),
        "# Guide 7\n\nRewritten.",
    )
    .unwrap();
    assert_eq!(ingest_counts(&run(&mut ingest())), (0, 1, 40, 0, 1));

    // Bad input is a clear error, not a panic.
    let mut missing = ingest();
    missing.arg(d.join("nope"));
    let output = missing.output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read"),
        "{output:?}"
    );
    let mut unknown = bulkhead(d);
    with_config(&mut unknown);
    let output = unknown
        .args(["ingest", "--tenant", "nobody", "--kb", "handbook"])
        .arg(&docs)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("no tenant nobody"));
}

#[test]
fn audit_trails_verify_in_the_database_and_as_exports_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(bulkhead(d).args(["tenant", "create", "acme", "--name", "Acme"]));
    for name in ["ci", "ops", "audit"] {
        run(bulkhead(d).args([
            "key", "create", "--tenant", "acme", "--name", name, "--role", "viewer",
        ]));
    }
    let verified =
        String::from_utf8(run(bulkhead(d).args(["audit", "verify", "--tenant", "acme"])).stdout)
            .unwrap();
    assert!(
        verified.starts_with("ok: 4 events, last seq 4, head hash "),
        "{verified}"
    );
    let export = run(bulkhead(d).args(["audit", "export", "--tenant", "acme"])).stdout;
    let lines: Vec<String> = String::from_utf8(export)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 4);
    let last: Value = serde_json::from_str(&lines[3]).unwrap();
    assert!(
        verified
            .trim_end()
            .ends_with(last["hash"].as_str().unwrap()),
        "{verified}"
    );
    let file = d.join("export.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let from_file =
        String::from_utf8(run(bulkhead(d).args(["audit", "verify", "--file"]).arg(&file)).stdout)
            .unwrap();
    assert_eq!(from_file, verified);

    let edited = lines[1].replace("\"actor\":\"cli\"", "\"actor\":\"someone\"");
    assert_ne!(edited, lines[1]);
    for (name, tampered, expect) in [
        (
            "edited",
            vec![lines[0].clone(), edited, lines[2].clone(), lines[3].clone()],
            "edited",
        ),
        (
            "deleted",
            vec![lines[0].clone(), lines[2].clone(), lines[3].clone()],
            "missing",
        ),
        (
            "reordered",
            vec![
                lines[0].clone(),
                lines[2].clone(),
                lines[1].clone(),
                lines[3].clone(),
            ],
            "follows",
        ),
    ] {
        std::fs::write(&file, tampered.join("\n")).unwrap();
        let output = bulkhead(d)
            .args(["audit", "verify", "--file"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name} passed");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{name}: {stderr}");
    }
    let output = bulkhead(d)
        .args(["audit", "verify", "--tenant", "nobody"])
        .output()
        .unwrap();
    assert!(!output.status.success());
}

/// Each thread of `pid`: its name and the cores it may run on, as `/proc` lists them (`0-1`).
fn thread_cores(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let path = task.unwrap().path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let cores = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
                .trim()
                .to_owned();
            Some((name.trim().to_owned(), cores))
        })
        .collect()
}

#[test]
fn serving_and_background_threads_run_on_the_cores_named() {
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cores: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap())
        .collect();
    let (serving, background) = (cores[cores.len() - 1], cores[0]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = serve(
        bulkhead(d)
            .env("BULKHEAD_HTTP_CPUS", format!("[{serving}]"))
            .env("BULKHEAD_BACKGROUND_CPUS", format!("[{background}]")),
    );
    assert_eq!(get(&server.address, "/healthz", None).0, 200);
    let threads = thread_cores(server.child.id());
    let on = |named: &dyn Fn(&str) -> bool| -> Vec<&String> {
        threads
            .iter()
            .filter(|(name, _)| named(name))
            .map(|(_, cores)| cores)
            .collect()
    };
    assert_eq!(
        on(&|name| name.starts_with("bulkhead-http-")),
        vec![&serving.to_string()],
        "one serving thread per core named, on it: {threads:?}"
    );
    for background_thread in ["bulkhead", "tokio-rt-worker"] {
        let placed = on(&|name| name == background_thread);
        assert!(!placed.is_empty(), "{threads:?}");
        assert!(
            placed.iter().all(|c| **c == background.to_string()),
            "{background_thread} threads on the background core: {threads:?}"
        );
    }
    assert!(terminate(server).success());

    // Cores the process may not use, or serving cores with nowhere named for the rest, stop
    // the start with the setting named.
    let refused = |cores: &[(&str, usize)], says: &str| {
        let mut command = bulkhead(d);
        for (setting, core) in cores {
            command.env(setting, format!("[{core}]"));
        }
        let output = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{cores:?} started");
        assert!(stderr.contains(says), "{stderr}");
    };
    let unusable = nix::sched::CpuSet::count() - 1;
    refused(
        &[
            ("BULKHEAD_HTTP_CPUS", unusable),
            ("BULKHEAD_BACKGROUND_CPUS", background),
        ],
        &format!("http_cpus: core {unusable} is not one this process may run on"),
    );
    refused(
        &[("BULKHEAD_HTTP_CPUS", serving)],
        "http_cpus needs background_cpus",
    );
}
