//! The `bulkhead` binary: `serve`, `demo`, and offline administration of tenants and keys on
//! the data directory or database. The only crate that uses `anyhow`.

mod bench;
mod bench_audit;
mod bench_knowledge;
mod cli_admin;
mod cli_audit;
mod cli_ingest;
mod demo;
mod placement;
mod sandbox;
mod seccomp;
mod serve;
mod serving;
mod settings;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// glibc's malloc and free were a seventh of the gateway's CPU under load (perf, 32
/// connections); mimalloc's thread-local free lists make the many small allocations of a
/// request (headers, JSON values, the audit line) cheaper. ARCHITECTURE.md, "Where the
/// gateway's time goes", has the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Multi-tenant runtime for AI agents"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where configuration and data come from; shared by every subcommand.
#[derive(clap::Args, Clone)]
pub struct GlobalArgs {
    /// Configuration file (default: ./bulkhead.toml if it exists).
    #[arg(long, global = true, env = "BULKHEAD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for the embedded database (default ./bulkhead-data).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://... (default: SQLite in the data directory).
    #[arg(long, global = true)]
    database: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(serve::ServeArgs),
    /// One dedicated tenant's worker process (started by `serve`, not by hand).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Provision two tenants and show that each key sees only its own tenant.
    Demo(demo::DemoArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(cli_admin::TenantCommand),
    /// Add files and folders to a tenant's knowledge base (skips unchanged files; resumable).
    Ingest(cli_ingest::IngestArgs),
    /// Manage tenant API keys.
    #[command(subcommand)]
    Key(cli_admin::KeyCommand),
    /// Manage a tenant's connector credentials (secrets are write-only).
    #[command(subcommand)]
    Credential(cli_admin::CredentialCommand),
    /// Rotate key-encryption and data keys.
    #[command(subcommand)]
    Keys(cli_admin::KeysCommand),
    /// Manage the platform admin token.
    #[command(subcommand)]
    AdminToken(cli_admin::AdminTokenCommand),
    /// Verify audit trails.
    #[command(subcommand)]
    Audit(cli_audit::AuditCommand),
    /// Measure end-to-end costs against the real store.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    keep_memory_off_huge_pages();
    // candle runs Q4_1 weights on a scalar code path; dequantised to f32 at load they go
    // through its SIMD matrix code, 2.5x faster for the local model at ~5x its memory
    // (about 550 MB instead of 100 MB for SmolLM2-135M). The switch is this variable, read
    // when the model loads. Set `CANDLE_DEQUANTIZE_ALL=0` to keep the quantised weights.
    if std::env::var_os("CANDLE_DEQUANTIZE_ALL").is_none() {
        // SAFETY: no other thread exists yet (the async runtime starts below), so nothing can
        // read the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
        }
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(&cli.global, args).await,
            Command::Worker(args) => worker::run(&cli.global, args).await,
            Command::Demo(args) => demo::run(&cli.global, args).await,
            Command::Tenant(command) => cli_admin::tenant(&cli.global, command).await,
            Command::Ingest(args) => cli_ingest::run(&cli.global, args).await,
            Command::Key(command) => cli_admin::key(&cli.global, command).await,
            Command::Credential(command) => cli_admin::credential(&cli.global, command).await,
            Command::Keys(command) => cli_admin::keys(&cli.global, command).await,
            Command::AdminToken(command) => cli_admin::admin_token(&cli.global, command).await,
            Command::Bench(command) => bench::run(&cli.global, command).await,
            Command::Audit(command) => cli_audit::run(&cli.global, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// mimalloc asks for transparent huge pages for its memory (`MADV_HUGEPAGE`), and the first
/// touch of a fresh one makes the kernel zero 2 MiB on whichever thread touched it: a
/// millisecond on a serving thread, in the middle of a request (ARCHITECTURE.md, 2026-12-06
/// ninth). So the process keeps to small pages unless the operator chose otherwise with
/// mimalloc's own `MIMALLOC_ALLOW_THP`. The local model, the one large heap, measured within
/// a few percent either way; idle memory is about 16 MiB less. Dedicated workers run this
/// binary too, and the setting is inherited across fork and exec besides.
fn keep_memory_off_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // A kernel without the prctl (before 3.15) keeps huge pages; nothing else differs.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}
