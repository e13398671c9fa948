//! The idle scheduling class for background threads whose work can always wait.
//!
//! Why: on a small machine the requests' own threads (and the client's and the upstream's)
//! share the cores with the store's background work. The scheduler may wake one of them onto
//! the core a background thread is running on, even with another core idle, and it then waits
//! for that thread's slice to end: up to a few milliseconds, which at concurrency 1 is the
//! whole p99. A thread in `SCHED_IDLE` is preempted by any other thread that wakes on its core.
//!
//! Only for work nobody waits on while it runs: an unprivileged thread cannot leave the class
//! again, and under full load it gets almost no CPU. A WAL checkpoint qualifies (in `PASSIVE`
//! mode it blocks no reader or writer); the audit importer does not, since readers of the trail
//! wait for it and it holds SQLite's write lock while it appends.

use std::io;

/// Puts the calling thread in the idle scheduling class. Threads it starts afterwards inherit
/// the class: SQLite's connection thread, when the connection is opened from this one.
#[cfg(target_os = "linux")]
pub(crate) fn enter_idle_class() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads `param` and nothing else; pid 0 is the calling
    // thread on Linux.
    #[allow(unsafe_code)]
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere the thread keeps its class; only the tail latency on small machines differs.
#[cfg(not(target_os = "linux"))]
pub(crate) fn enter_idle_class() -> io::Result<()> {
    Ok(())
}
