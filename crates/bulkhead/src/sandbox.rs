//! What a dedicated worker takes away from itself before it serves (Linux).
//!
//! `no_new_privs`, then a landlock ruleset: read-only on the system directories, its binary
//! and the model files; read-write on its own directory; nothing else (the database, another
//! worker's directory and the key-encryption key file included: a worker's store calls go to
//! the control plane). Where the kernel
//! has no landlock the worker says so in one log line and in its start report. Then
//! `RLIMIT_AS` and `RLIMIT_NOFILE`. Last, the seccomp deny-list (`seccomp.rs`): no reading
//! another process's memory, no running programs. The report is checked from inside: after
//! confining, the worker tries to read the KEK file, the SQLite database and another
//! process's memory (its own, through the call that would reach another's) and reports
//! whether it could.

use std::path::{Path, PathBuf};

use bulkhead_server::worker::frames::SandboxReport;
use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};

pub struct Confinement<'a> {
    pub own_dir: &'a Path,
    /// The SQLite database, which the worker must not be able to open.
    pub database_file: Option<&'a Path>,
    pub model_files: &'a [PathBuf],
    pub kek_file: Option<&'a Path>,
    pub memory_mib: u64,
    pub open_files: u64,
}

const READ_ONLY_SYSTEM: &[&str] = &[
    "/usr", "/lib", "/lib64", "/bin", "/etc", "/proc", "/sys", "/dev",
];

pub fn confine(what: &Confinement<'_>) -> SandboxReport {
    let no_new_privs = nix::sys::prctl::set_no_new_privs().is_ok();
    let landlock = match landlock_rules(what) {
        Ok(RulesetStatus::FullyEnforced) => "enforced",
        Ok(RulesetStatus::PartiallyEnforced) => "partial",
        Ok(RulesetStatus::NotEnforced) => {
            tracing::warn!(
                "this kernel has no landlock: the worker's files are not confined beyond their permissions"
            );
            "unsupported"
        }
        Err(error) => {
            tracing::warn!(%error, "landlock ruleset not applied: the worker's files are not confined beyond their permissions");
            "unsupported"
        }
    };
    let memory_limit_bytes = (what.memory_mib > 0)
        .then(|| what.memory_mib * 1024 * 1024)
        .filter(|bytes| set_limit(nix::sys::resource::Resource::RLIMIT_AS, *bytes));
    let open_files_limit = Some(what.open_files)
        .filter(|n| set_limit(nix::sys::resource::Resource::RLIMIT_NOFILE, *n));
    let seccomp = match no_new_privs
        .then(|| crate::seccomp::deny_escapes(crate::seccomp::Threads::All))
    {
        Some(Ok(())) => "enforced",
        Some(Err(error)) => {
            tracing::warn!(%error, "no seccomp filter: the worker can still read other processes' memory where the kernel lets the same user");
            "unsupported"
        }
        None => {
            tracing::warn!("no seccomp filter without no_new_privs");
            "unsupported"
        }
    };
    SandboxReport {
        no_new_privs,
        landlock: landlock.to_owned(),
        seccomp: seccomp.to_owned(),
        process_memory_readable: crate::seccomp::process_memory_readable(),
        kek_file_readable: readable(what.kek_file),
        database_readable: readable(what.database_file),
        memory_limit_bytes,
        open_files_limit,
    }
}

/// Whether a file that exists can be opened; `None` for no file.
fn readable(path: Option<&Path>) -> Option<bool> {
    path.filter(|path| path.exists())
        .map(|path| std::fs::File::open(path).is_ok())
}

fn set_limit(resource: nix::sys::resource::Resource, value: u64) -> bool {
    match nix::sys::resource::setrlimit(resource, value, value) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(?resource, value, %error, "cannot set a resource limit");
            false
        }
    }
}

fn landlock_rules(what: &Confinement<'_>) -> Result<RulesetStatus, landlock::RulesetError> {
    let abi = ABI::V3;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .create()?;
    let mut readable: Vec<PathBuf> = READ_ONLY_SYSTEM.iter().map(PathBuf::from).collect();
    readable.extend(std::env::current_exe().ok());
    readable.extend(what.model_files.iter().cloned());
    for path in readable.iter().filter(|p| p.exists()) {
        if let Ok(fd) = PathFd::new(path) {
            ruleset = ruleset.add_rule(PathBeneath::new(fd, read))?;
        }
    }
    if let Ok(fd) = PathFd::new(what.own_dir) {
        ruleset = ruleset.add_rule(PathBeneath::new(fd, all))?;
    }
    Ok(ruleset.restrict_self()?.ruleset)
}
