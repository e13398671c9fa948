//! CPU time per run, against the tenant's `run_cpu_ms` budget.
//!
//! A run's future is polled on whichever runtime thread is free, so the process's CPU clock
//! says nothing about one run. Instead every poll of the run's future is timed with the
//! calling thread's own CPU clock (`CLOCK_THREAD_CPUTIME_ID`): what a run's own code spends is
//! its own, however many runs share the process.
//!
//! Local model generation is the exception. It runs on a blocking thread, and the math
//! library spreads each token over a thread pool whose CPU cannot be told apart per run.
//! Generations of one model run one at a time, so the process's CPU over a generation
//! (`CLOCK_PROCESS_CPUTIME_ID`) is charged to the run that asked for it: an over-estimate when
//! other work runs beside it, never an under-estimate, which is the safe side for a limit
//! meant to protect the neighbours. Not counted: work a run waits on but does not do (the
//! database's threads, the kernel's network stack).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// What one run has spent, shared by the threads that do its work.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    used_ns: Arc<AtomicU64>,
    budget_ns: u64,
}

impl CpuMeter {
    /// A meter with `budget` (zero: unlimited, only measured).
    pub fn new(budget: Duration) -> Self {
        Self {
            used_ns: Arc::default(),
            budget_ns: u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.used_ns.load(Ordering::Relaxed))
    }

    pub fn budget(&self) -> Option<Duration> {
        (self.budget_ns > 0).then(|| Duration::from_nanos(self.budget_ns))
    }

    /// Whether what was recorded plus `pending` (spent, not yet recorded) is over budget.
    pub fn exceeded_with(&self, pending: Duration) -> bool {
        let pending = u64::try_from(pending.as_nanos()).unwrap_or(u64::MAX);
        self.budget_ns > 0
            && self.used_ns.load(Ordering::Relaxed).saturating_add(pending) > self.budget_ns
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded_with(Duration::ZERO)
    }

    pub fn record(&self, spent: Duration) {
        let spent = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.used_ns.fetch_add(spent, Ordering::Relaxed);
    }
}

tokio::task_local! {
    static CURRENT: CpuMeter;
}

/// The meter of the run whose future is being polled on this task, if any.
pub fn current() -> Option<CpuMeter> {
    CURRENT.try_with(CpuMeter::clone).ok()
}

/// CPU time this thread has used so far; zero where the clock is unavailable (then nothing
/// is ever over budget, rather than everything).
pub fn thread_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// CPU time the whole process has used so far (zero where the clock is unavailable).
pub fn process_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// `future`, with the CPU time of each of its polls recorded in `meter`, and `meter` the
/// [`current`] one while it is polled.
pub fn metered<F: Future>(meter: CpuMeter, future: F) -> Metered<F> {
    Metered {
        future: Box::pin(future),
        meter,
    }
}

pub struct Metered<F> {
    future: Pin<Box<F>>,
    meter: CpuMeter,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = thread_time();
        let meter = self.meter.clone();
        let polled = CURRENT.sync_scope(meter, || self.future.as_mut().poll(cx));
        self.meter.record(thread_time().saturating_sub(started));
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(for_at_least: Duration) {
        let started = thread_time();
        let mut x = 0u64;
        while thread_time().saturating_sub(started) < for_at_least {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runs_polls_and_its_blocking_work_are_counted_and_its_waits_are_not() {
        let meter = CpuMeter::new(Duration::from_millis(30));
        let seen = metered(meter.clone(), async {
            spin(Duration::from_millis(10));
            // Waiting costs nothing.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let inner = current().unwrap();
            tokio::task::spawn_blocking(move || {
                let started = process_time();
                spin(Duration::from_millis(10));
                inner.record(process_time().saturating_sub(started));
            })
            .await
            .unwrap();
            current().unwrap().used()
        })
        .await;
        let used = meter.used();
        assert!(seen >= Duration::from_millis(20), "{seen:?}");
        // The 50 ms sleep is not in it (the blocking part may carry some of the runtime's
        // own work, charged on the safe side).
        assert!(
            used >= Duration::from_millis(20) && used < Duration::from_millis(60),
            "{used:?}"
        );
        assert!(!meter.exceeded());
        assert!(meter.exceeded_with(Duration::from_millis(15)));
        // Another run's meter is untouched; outside any run there is none.
        assert!(current().is_none());
        let unlimited = CpuMeter::new(Duration::ZERO);
        unlimited.record(Duration::from_secs(3600));
        assert!(!unlimited.exceeded() && unlimited.budget().is_none());
    }
}
