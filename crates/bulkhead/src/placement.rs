//! Which cores the process's threads run on: `http_cpus` for the serving threads,
//! `background_cpus` for everything else.
//!
//! Why: on the 2-core machine the gateway is measured on, waking a thread that sleeps on the
//! other core costs more than the gateway's own work on a request (ARCHITECTURE.md, "Where the
//! gateway's time goes"), and the audit importer's bursts delay whichever serving thread lands
//! on their core. Pinning keeps a serving thread where its connections' wake-ups arrive and the
//! background work off its core, as nginx's `worker_cpu_affinity` and HAProxy's `cpu-map` do.
//!
//! How: the serving threads pin themselves as they start. Every other thread that exists when
//! serving starts is pinned to the background cores, and a thread started later inherits the
//! cores of the thread that starts it (Linux's rule), so the shared runtime's new blocking
//! threads and the database's connections follow. The serving runtimes' own blocking threads
//! (long computation a request hands off) are moved to the background cores as they start.
//! A dedicated tenant's worker process pins itself to the background cores at its start.

use std::fmt::Write as _;

use bulkhead_core::config::Config;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("{setting}: core {core} is not one this process may run on (it may use {allowed})")]
    NotAllowed {
        setting: &'static str,
        core: usize,
        allowed: String,
    },
    #[error(
        "http_cpus pins the serving threads, but http_threads = 0 serves from the shared runtime"
    )]
    NoServingThreads,
    #[error(
        "http_cpus needs background_cpus too: name the cores for everything that is not serving"
    )]
    NoBackground,
    #[error("cannot list this process's threads in /proc/self/task: {0}")]
    ListThreads(std::io::Error),
    #[error("cannot {what}: {error}")]
    System {
        what: &'static str,
        error: nix::Error,
    },
}

/// The configured cores, checked against the ones this process may use.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    http: Vec<usize>,
    background: Option<CpuSet>,
    /// The cores the process had when the placement was read: where serving threads go when
    /// only `background_cpus` is named, instead of inheriting those from the thread that
    /// starts them.
    unpinned: Option<CpuSet>,
}

impl Placement {
    /// The configured placement, refused if it names a core this process may not run on.
    pub fn from_config(config: &Config) -> Result<Self, PlacementError> {
        Self::build(config, true)
    }

    /// The placement for a dedicated worker process. Its cores are not checked against the
    /// ones it may use now: it inherits those of whichever thread started it (a serving
    /// thread's one core, say), and its server checked the configuration at start.
    pub fn for_worker(config: &Config) -> Result<Self, PlacementError> {
        Self::build(config, false)
    }

    fn build(config: &Config, check_allowed: bool) -> Result<Self, PlacementError> {
        if config.http_cpus.is_empty() && config.background_cpus.is_empty() {
            return Ok(Self::default());
        }
        if !config.http_cpus.is_empty() {
            if config.background_cpus.is_empty() {
                return Err(PlacementError::NoBackground);
            }
            if config.http_threads == Some(0) {
                return Err(PlacementError::NoServingThreads);
            }
        }
        let allowed =
            sched_getaffinity(Pid::from_raw(0)).map_err(|error| PlacementError::System {
                what: "read the cores this process may use",
                error,
            })?;
        if check_allowed {
            for (setting, cores) in [
                ("http_cpus", &config.http_cpus),
                ("background_cpus", &config.background_cpus),
            ] {
                if let Some(&core) = cores
                    .iter()
                    .find(|&&core| !allowed.is_set(core).unwrap_or(false))
                {
                    return Err(PlacementError::NotAllowed {
                        setting,
                        core,
                        allowed: describe(&allowed),
                    });
                }
            }
        }
        let background = if config.background_cpus.is_empty() {
            None
        } else {
            Some(cpu_set(&config.background_cpus)?)
        };
        Ok(Self {
            http: config.http_cpus.clone(),
            background,
            unpinned: Some(allowed),
        })
    }

    /// How many serving threads `http_threads` unset means: one per core named, else one per
    /// core of the machine.
    pub fn default_http_threads(&self) -> usize {
        if self.http.is_empty() {
            crate::serving::default_threads()
        } else {
            self.http.len()
        }
    }

    /// Pins every thread the process has now to the background cores (none named: nothing
    /// changes). Threads they start later inherit them.
    pub fn pin_process(&self) -> Result<(), PlacementError> {
        let Some(background) = &self.background else {
            return Ok(());
        };
        let tasks = std::fs::read_dir("/proc/self/task").map_err(PlacementError::ListThreads)?;
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            match sched_setaffinity(Pid::from_raw(tid), background) {
                // A thread that ended since the listing needs no cores.
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(error) => {
                    return Err(PlacementError::System {
                        what: "pin a thread to the background cores",
                        error,
                    });
                }
            }
        }
        Ok(())
    }

    /// Pins the calling thread, serving thread number `index`, to its core.
    pub fn pin_serving_thread(&self, index: usize) -> Result<(), PlacementError> {
        if self.http.is_empty() {
            // Started by a thread on the background cores; serving is not theirs.
            return match (&self.background, &self.unpinned) {
                (Some(_), Some(unpinned)) => pin_current(unpinned, "unpin a serving thread"),
                _ => Ok(()),
            };
        }
        let core = self.http[index % self.http.len()];
        pin_current(&cpu_set(&[core])?, "pin a serving thread to its core")
    }

    /// Pins the calling thread to the background cores, if any are named. For the threads a
    /// serving runtime starts for blocking work.
    pub fn pin_background_thread(&self) -> Result<(), PlacementError> {
        match &self.background {
            Some(background) => pin_current(background, "pin a blocking thread"),
            None => Ok(()),
        }
    }
}

fn pin_current(cores: &CpuSet, what: &'static str) -> Result<(), PlacementError> {
    sched_setaffinity(Pid::from_raw(0), cores)
        .map_err(|error| PlacementError::System { what, error })
}

fn cpu_set(cores: &[usize]) -> Result<CpuSet, PlacementError> {
    let mut set = CpuSet::new();
    for &core in cores {
        set.set(core).map_err(|error| PlacementError::System {
            what: "name a core past the largest this system supports",
            error,
        })?;
    }
    Ok(set)
}

/// `0, 1, 3`: the cores in `set`, for an error message.
fn describe(set: &CpuSet) -> String {
    let mut out = String::new();
    for core in (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{core}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(http: &[usize], background: &[usize]) -> Config {
        Config {
            http_cpus: http.to_vec(),
            background_cpus: background.to_vec(),
            ..Config::default()
        }
    }

    fn current_cores() -> Vec<usize> {
        let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect()
    }

    #[test]
    fn a_core_this_process_may_not_use_is_refused_by_name() {
        let unusable = CpuSet::count() - 1;
        let usable = current_cores()[0];
        let error = Placement::from_config(&config(&[unusable], &[usable])).unwrap_err();
        assert!(
            matches!(error, PlacementError::NotAllowed { setting: "http_cpus", core, .. } if core == unusable),
            "{error}"
        );
        let allowed = describe(&sched_getaffinity(Pid::from_raw(0)).unwrap());
        assert!(
            error
                .to_string()
                .ends_with(&format!("(it may use {allowed})")),
            "{error}"
        );
        let error = Placement::from_config(&config(&[], &[unusable])).unwrap_err();
        assert!(matches!(
            error,
            PlacementError::NotAllowed {
                setting: "background_cpus",
                ..
            }
        ));
    }

    #[test]
    fn serving_cores_need_background_cores_and_serving_threads() {
        assert!(matches!(
            Placement::from_config(&config(&[current_cores()[0]], &[])),
            Err(PlacementError::NoBackground)
        ));
        let usable = current_cores()[0];
        let mut shared_runtime = config(&[usable], &[usable]);
        shared_runtime.http_threads = Some(0);
        assert!(matches!(
            Placement::from_config(&shared_runtime),
            Err(PlacementError::NoServingThreads)
        ));
        let placement = Placement::from_config(&config(&[usable], &[usable])).unwrap();
        assert_eq!(placement.default_http_threads(), 1);
    }

    #[test]
    fn threads_land_on_the_cores_named() {
        let allowed = current_cores();
        let serving_core = *allowed.last().unwrap();
        let background_core = allowed[0];
        let placement =
            Placement::from_config(&config(&[serving_core], &[background_core])).unwrap();
        // In threads of their own, so the test harness's threads keep their cores.
        let serving = std::thread::spawn({
            let placement = placement.clone();
            move || {
                placement.pin_serving_thread(7).unwrap();
                // A thread it starts inherits its core.
                std::thread::spawn(current_cores).join().unwrap()
            }
        })
        .join()
        .unwrap();
        assert_eq!(serving, vec![serving_core]);
        let blocking = std::thread::spawn(move || {
            placement.pin_background_thread().unwrap();
            current_cores()
        })
        .join()
        .unwrap();
        assert_eq!(blocking, vec![background_core]);
    }

    #[test]
    fn with_only_background_cores_named_serving_threads_keep_the_process_cores() {
        let cores = current_cores();
        let placement = Placement::from_config(&config(&[], &[cores[0]])).unwrap();
        assert_eq!(
            placement.default_http_threads(),
            crate::serving::default_threads()
        );
        let serving = std::thread::spawn(move || {
            // Started, as in `serve`, by a thread already on the background cores.
            placement.pin_background_thread().unwrap();
            std::thread::spawn(move || {
                placement.pin_serving_thread(0).unwrap();
                current_cores()
            })
            .join()
            .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(serving, cores);
    }

    #[test]
    fn a_worker_takes_cores_its_starter_did_not_have() {
        let cores = current_cores();
        let (first, last) = (cores[0], cores[cores.len() - 1]);
        std::thread::spawn(move || {
            // As a worker started from a serving thread pinned to one core.
            pin_current(&cpu_set(&[first]).unwrap(), "pin").unwrap();
            let named = config(&[], &[last]);
            assert_eq!(Placement::from_config(&named).is_err(), first != last);
            let worker = Placement::for_worker(&named).unwrap();
            worker.pin_background_thread().unwrap();
            assert_eq!(current_cores(), vec![last]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn nothing_named_changes_nothing() {
        let before = current_cores();
        let placement = Placement::from_config(&Config::default()).unwrap();
        placement.pin_process().unwrap();
        placement.pin_serving_thread(0).unwrap();
        placement.pin_background_thread().unwrap();
        assert_eq!(current_cores(), before);
        assert_eq!(
            placement.default_http_threads(),
            crate::serving::default_threads()
        );
    }
}
