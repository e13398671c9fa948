//! The worker's system-call filter (Linux, seccomp-bpf): a deny-list, not an allow-list.
//!
//! Why these calls: every process of a node runs as the same user, and the kernel here has no
//! Yama, so without a filter a compromised worker could `ptrace` or `process_vm_readv` the
//! control plane (which holds the key-encryption key) or a sibling worker (another tenant's
//! data keys) and read their memory. The rest are the usual ways out of a sandbox: running
//! another program, namespaces and mounts, kernel modules, and the exploit primitives (bpf,
//! userfaultfd, io_uring, perf events) that a worker never needs. Each answers `EPERM`; the
//! worker keeps running.
//!
//! Why not an allow-list: tokio, rustls, reqwest, sqlx and candle together reach a wide and
//! version-dependent set of calls, and a missed one kills the worker in production on a path
//! no test took. The deny-list closes the calls that cross the process boundary, which is
//! what hard isolation promises. (`clone` with namespace flags is not filtered: `unshare` and
//! `setns` are, and a namespace without them grants nothing over other processes' memory.)

use nix::libc;

/// What the filter refuses, by name for the report and the log.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const DENIED: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filters are not built for this architecture")]
    UnsupportedArch,
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    #[error("the kernel refused the seccomp filter: {0}")]
    Apply(String),
}

/// Which threads a filter covers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Every thread of the process, present and future (`SECCOMP_FILTER_FLAG_TSYNC`): what
    /// the worker needs, since its runtime's threads already run.
    All,
    /// The calling thread and those it starts later; tests filter one thread of their own.
    #[cfg_attr(not(test), allow(dead_code))]
    Current,
}

/// Installs the deny-list. `no_new_privs` must already be set (the kernel requires it of an
/// unprivileged process).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn deny_escapes(threads: Threads) -> Result<(), SeccompError> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|_| SeccompError::UnsupportedArch)?;
    let rules = DENIED
        .iter()
        .map(|(_, number)| (*number, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| SeccompError::Build(e.to_string()))?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?;
    match threads {
        Threads::All => seccompiler::apply_filter_all_threads(&program),
        Threads::Current => seccompiler::apply_filter(&program),
    }
    .map_err(|e| SeccompError::Apply(e.to_string()))?;
    let names: Vec<&str> = DENIED.iter().map(|(name, _)| *name).collect();
    tracing::debug!(refused = %names.join(" "), "seccomp filter installed");
    Ok(())
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn deny_escapes(_threads: Threads) -> Result<(), SeccompError> {
    Err(SeccompError::UnsupportedArch)
}

/// Whether this thread can still read a process's memory through `process_vm_readv`: tried
/// on its own memory, which the kernel always allows unless a filter refuses the call. The
/// worker reports it after confining itself; it must be `false`.
pub fn process_memory_readable() -> bool {
    let source = [0x5au8; 16];
    let mut target = [0u8; 16];
    let local = [libc::iovec {
        iov_base: target.as_mut_ptr().cast(),
        iov_len: target.len(),
    }];
    let remote = [libc::iovec {
        iov_base: source.as_ptr().cast_mut().cast(),
        iov_len: source.len(),
    }];
    // SAFETY: both iovecs point at live buffers of the stated length owned by this frame;
    // the call only writes into `target`.
    #[allow(unsafe_code)]
    let copied =
        unsafe { libc::process_vm_readv(libc::getpid(), local.as_ptr(), 1, remote.as_ptr(), 1, 0) };
    copied == 16 && target == source
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    #[test]
    fn the_filter_refuses_reading_process_memory_and_running_programs_on_its_thread() {
        assert!(
            process_memory_readable(),
            "process_vm_readv must work unfiltered, or the check proves nothing"
        );
        // A thread of its own: the filter stays there and the test harness keeps its calls.
        let filtered = std::thread::spawn(|| {
            nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
            deny_escapes(Threads::Current).expect("filter applied");
            let memory = process_memory_readable();
            let exec = std::process::Command::new("/bin/true").status();
            (memory, exec.map_err(|e| e.raw_os_error()))
        })
        .join()
        .expect("the filtered thread ran");
        assert!(!filtered.0, "process_vm_readv still works");
        assert_eq!(
            filtered.1.err(),
            Some(Some(libc::EPERM)),
            "a filtered thread started a program"
        );
        // Other threads are untouched.
        assert!(process_memory_readable());
    }
}
