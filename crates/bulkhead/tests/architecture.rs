//! Checks the crate boundaries that ARCHITECTURE.md states as invariants, over
//! `cargo metadata`'s resolved graph. Only normal dependencies count: tests may use an HTTP
//! client to talk to the server, the shipped code may not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

const SQL_DRIVERS: &[&str] = &[
    "sqlx",
    "sqlx-core",
    "sqlx-sqlite",
    "sqlx-postgres",
    "sqlx-mysql",
    "libsqlite3-sys",
    "rusqlite",
    "tokio-postgres",
    "postgres",
    "diesel",
    "sea-orm",
];
const HTTP_CLIENTS: &[&str] = &[
    "reqwest",
    "ureq",
    "isahc",
    "surf",
    "attohttpc",
    "curl",
    "awc",
    "hyper-tls",
    "hyper-rustls",
    // Not HTTP, but outbound all the same: the NATS client and the OTLP exporter.
    "async-nats",
    "opentelemetry-otlp",
];
const IO_CRATES: &[&str] = &["tokio", "axum", "hyper", "sqlx", "reqwest", "mio"];

struct Graph {
    /// Package id -> name.
    names: BTreeMap<String, String>,
    /// Package id -> ids of its normal (non-dev, non-build) dependencies.
    normal_deps: BTreeMap<String, Vec<String>>,
    members: Vec<String>,
}

fn graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let names = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let normal_deps = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|kind| kind["kind"].is_null())
                })
                .map(|dep| dep["pkg"].as_str().unwrap().to_owned())
                .collect();
            (node["id"].as_str().unwrap().to_owned(), deps)
        })
        .collect();
    let members = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    Graph {
        names,
        normal_deps,
        members,
    }
}

impl Graph {
    fn member(&self, name: &str) -> Option<&String> {
        self.members.iter().find(|id| self.names[*id] == name)
    }

    fn direct(&self, id: &str) -> BTreeSet<&str> {
        self.normal_deps[id]
            .iter()
            .map(|d| self.names[d].as_str())
            .collect()
    }

    /// Names reachable from `id` through normal dependencies, not entering `gate` (the one
    /// crate allowed to hold the dependency).
    fn reachable_avoiding(&self, id: &str, gate: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![id.to_owned()];
        let mut names = BTreeSet::new();
        while let Some(current) = stack.pop() {
            for dep in &self.normal_deps[&current] {
                let name = &self.names[dep];
                if name == gate || !seen.insert(dep.clone()) {
                    continue;
                }
                names.insert(name.clone());
                stack.push(dep.clone());
            }
        }
        names
    }

    fn assert_confined(&self, forbidden: &[&str], gate: &str) {
        for member in &self.members {
            let name = &self.names[member];
            if name == gate {
                continue;
            }
            let reached = self.reachable_avoiding(member, gate);
            let leaks: Vec<_> = forbidden.iter().filter(|f| reached.contains(**f)).collect();
            assert!(
                leaks.is_empty(),
                "{name} depends on {leaks:?} other than through {gate}; only {gate} may"
            );
        }
    }
}

#[test]
fn only_the_store_crate_depends_on_the_sql_driver() {
    let graph = graph();
    graph.assert_confined(SQL_DRIVERS, "bulkhead-store");
    let store = graph
        .member("bulkhead-store")
        .expect("the store crate exists");
    assert!(
        graph.direct(store).contains("sqlx"),
        "the check would pass vacuously"
    );
}

#[test]
fn only_the_egress_crate_has_a_network_client() {
    let graph = graph();
    graph.assert_confined(HTTP_CLIENTS, "bulkhead-egress");
}

/// hyper and hyper-util are also the server's HTTP stack, so they cannot be confined like the
/// client crates above: any crate reaching axum reaches them, their client features unified
/// in. What a crate's code can name is what it declares, so the check is on declarations: only
/// egress may declare them with a client feature.
#[test]
fn only_the_egress_crate_declares_hyper_s_client() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut egress_declares_it = false;
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        for dependency in package["dependencies"].as_array().unwrap() {
            let crate_name = dependency["name"].as_str().unwrap();
            let client = dependency["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| matches!(f.as_str(), Some("client" | "client-legacy")));
            let normal = dependency["kind"].is_null();
            if !(normal && client && matches!(crate_name, "hyper" | "hyper-util")) {
                continue;
            }
            if name == "bulkhead-egress" {
                egress_declares_it = true;
            } else {
                panic!("{name} declares {crate_name}'s client; only bulkhead-egress may");
            }
        }
    }
    assert!(egress_declares_it, "the check would pass vacuously");
}

#[test]
fn the_core_crate_does_no_io() {
    let graph = graph();
    let core = graph
        .member("bulkhead-core")
        .expect("the core crate exists");
    let reached = graph.reachable_avoiding(core, "");
    let io: Vec<_> = IO_CRATES.iter().filter(|c| reached.contains(**c)).collect();
    assert!(io.is_empty(), "bulkhead-core reaches {io:?}");
}

#[test]
fn the_checks_see_dev_dependencies_as_allowed() {
    // The server's tests use reqwest as a client; that must not count as the server having one,
    // and the graph must still know the server.
    let graph = graph();
    let server = graph
        .member("bulkhead-server")
        .expect("the server crate exists");
    assert!(
        !graph
            .reachable_avoiding(server, "bulkhead-egress")
            .contains("reqwest")
    );
    assert!(graph.direct(server).contains("bulkhead-store"));
}

#[test]
fn no_shipped_crate_depends_on_the_test_kit() {
    let graph = graph();
    for member in &graph.members {
        let name = &graph.names[member];
        if name == "bulkhead-testkit" {
            continue;
        }
        let reached = graph.reachable_avoiding(member, "");
        assert!(
            !reached.contains("bulkhead-testkit"),
            "{name} depends on bulkhead-testkit; only tests and benches may"
        );
    }
}
