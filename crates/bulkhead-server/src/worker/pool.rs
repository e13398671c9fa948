//! The control plane's side: starting, supervising, stopping and talking to dedicated
//! tenants' workers, one per tenant on this node.
//!
//! A worker starts on its tenant's first forwarded request (that wait is the cold start),
//! connects to a socket in its own directory, proves it is the child we spawned (its peer
//! process id), receives its tenant's data keys, and reports ready with what its sandbox
//! enforces. It is health-checked every `health_ms`, restarted with backoff (100 ms doubling
//! to 30 s) when it dies, and stopped when idle. A run in flight on a worker that dies is
//! marked failed with `worker_lost`: this process holds the run's id from the moment the
//! worker stored it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_core::config::WorkersConfig;
use bulkhead_core::timestamp::{now_millis, to_rfc3339};
use bulkhead_core::{Isolation, TenantContext, TenantId};
use bulkhead_store::remote::RemoteFailure;
use bulkhead_store::{RunProcess, Store, StoreError};
use bulkhead_vault::Vault;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use utoipa::ToSchema;

use crate::worker::frames::{
    Caller, FrameError, FromWorker, HttpCall, RunCall, SandboxReport, ToWorker, read_frame,
    write_frame,
};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that stayed up this long before dying starts its backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("this node already runs its cap of {0} dedicated workers")]
    Capacity(usize),
    #[error("the tenant's dedicated worker did not start: {0}")]
    Start(String),
    #[error("the tenant's dedicated worker stopped before answering")]
    Lost,
    #[error("this server was started without dedicated workers")]
    Disabled,
}

impl WorkerError {
    pub fn code(&self) -> &'static str {
        match self {
            WorkerError::Capacity(_) => "worker_capacity",
            WorkerError::Start(_) => "worker_unavailable",
            WorkerError::Lost => "worker_lost",
            WorkerError::Disabled => "worker_unavailable",
        }
    }
}

/// How the worker of a tenant is doing, for `/v1/whoami` and the admin API.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct WorkerView {
    /// `stopped`, `starting`, `running`, `restarting` or `failed`.
    pub state: String,
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    /// Spawn to ready, in milliseconds, at the last start.
    pub cold_start_ms: Option<u64>,
    /// Restarts after the worker died (not counting idle stops).
    pub restarts: u64,
    pub last_exit: Option<String>,
    /// Resident memory now, from `/proc`.
    pub rss_bytes: Option<u64>,
    /// Runs it is executing now.
    pub in_flight: usize,
    /// The data-key versions it was handed (the keys themselves never leave the worker).
    pub key_versions: Vec<i64>,
    /// Store calls the control plane answered for this worker since it started, and how
    /// many of them it refused (a call naming no request in flight on its channel).
    pub store_calls: u64,
    pub store_calls_refused: u64,
    #[schema(value_type = Object)]
    pub sandbox: Option<SandboxReport>,
}

/// How to start a worker: the binary and the arguments and environment it gets.
#[derive(Clone)]
pub struct WorkerLaunch {
    pub binary: PathBuf,
    /// Put before `worker` (the global options: configuration file, data directory, database).
    pub global_args: Vec<OsString>,
    /// The whole environment of the worker; the caller leaves out the KEK and admin token.
    pub env: Vec<(OsString, OsString)>,
    pub dir: PathBuf,
}

/// Every dedicated worker of this node. Cheap to clone.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    config: WorkersConfig,
    launch: WorkerLaunch,
    store: Store,
    vault: Vault,
    slots: Mutex<HashMap<TenantId, Arc<Slot>>>,
}

struct Slot {
    tenant: TenantId,
    /// Held while starting or stopping, so one tenant never gets two workers.
    lifecycle: tokio::sync::Mutex<()>,
    conn: Mutex<Option<Arc<Conn>>>,
    view: Mutex<WorkerView>,
    backoff: Mutex<Backoff>,
    /// Set while the tenant is not dedicated (any more): nothing restarts its worker.
    retired: AtomicBool,
}

#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
    not_before: Option<Instant>,
}

/// One live worker.
struct Conn {
    pid: u32,
    started: Instant,
    outbox: mpsc::UnboundedSender<ToWorker>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    last_used: Mutex<Instant>,
    kill: Mutex<Option<oneshot::Sender<()>>>,
    /// Set when the pool itself stops the worker, so its exit is not a crash.
    stopping: AtomicBool,
    store_calls: AtomicU64,
    store_calls_refused: AtomicU64,
    /// One permit per store call of this worker being answered (`STORE_CALLS_PER_WORKER`).
    store_call_slots: Arc<Semaphore>,
}

/// How many of one worker's store calls the control plane answers at once. The next call
/// waits for a slot before the channel is read any further, so a worker that floods calls
/// is slowed down by its own socket, and the shared database sees at most this many of its
/// calls (the connection pool's own limit still applies across all of them).
const STORE_CALLS_PER_WORKER: usize = 64;

struct Pending {
    answers: mpsc::UnboundedSender<FromWorker>,
    run_id: Option<String>,
    ctx: Option<TenantContext>,
}

impl Conn {
    fn request(
        &self,
        make: impl FnOnce(u64) -> ToWorker,
        ctx: Option<TenantContext>,
        run_id: Option<String>,
    ) -> Result<mpsc::UnboundedReceiver<FromWorker>, WorkerError> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (answers, receiver) = mpsc::unbounded_channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(
                id,
                Pending {
                    answers,
                    run_id,
                    ctx: ctx.clone(),
                },
            );
        }
        if ctx.is_some() {
            self.touch();
        }
        self.outbox.send(make(id)).map_err(|_| WorkerError::Lost)?;
        Ok(receiver)
    }

    /// Marks the worker as used now (for idle stops); health checks do not count.
    fn touch(&self) {
        if let Ok(mut used) = self.last_used.lock() {
            *used = Instant::now();
        }
    }

    fn in_flight(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn kill(&self) {
        if let Some(kill) = self.kill.lock().ok().and_then(|mut k| k.take()) {
            let _ = kill.send(());
        }
    }
}

impl Workers {
    pub fn new(config: WorkersConfig, launch: WorkerLaunch, store: Store, vault: Vault) -> Self {
        let workers = Self {
            inner: Arc::new(PoolInner {
                config,
                launch,
                store,
                vault,
                slots: Mutex::default(),
            }),
        };
        tokio::spawn(workers.clone().watch());
        workers
    }

    pub fn config(&self) -> &WorkersConfig {
        &self.inner.config
    }

    /// Forwards a run to the tenant's worker, starting it if needed; the receiver gets the
    /// run's frames, ending with `Done` or `Refused`.
    pub async fn run(
        &self,
        ctx: &TenantContext,
        call: RunCall,
    ) -> Result<mpsc::UnboundedReceiver<FromWorker>, WorkerError> {
        let call = Box::new(call);
        self.forward(ctx, None, |id| ToWorker::Run { id, call })
            .await
    }

    /// Forwards a request to the tenant's worker; the receiver gets `Head`, `Body` frames and
    /// `End`, or `Refused`.
    pub async fn http(
        &self,
        ctx: &TenantContext,
        call: HttpCall,
    ) -> Result<mpsc::UnboundedReceiver<FromWorker>, WorkerError> {
        let call = Box::new(call);
        self.forward(ctx, None, |id| ToWorker::Http { id, call })
            .await
    }

    /// Has the tenant's worker continue a paused run; the receiver gets `Done` or `Refused`.
    pub async fn resume(
        &self,
        ctx: &TenantContext,
        run_id: &str,
    ) -> Result<mpsc::UnboundedReceiver<FromWorker>, WorkerError> {
        let run_id = run_id.to_owned();
        let caller = Caller::of(ctx);
        self.forward(ctx, Some(run_id.clone()), |id| ToWorker::Resume {
            id,
            run_id,
            caller,
        })
        .await
    }

    async fn forward(
        &self,
        ctx: &TenantContext,
        run_id: Option<String>,
        make: impl FnOnce(u64) -> ToWorker,
    ) -> Result<mpsc::UnboundedReceiver<FromWorker>, WorkerError> {
        let slot = self.slot(ctx.tenant_id());
        slot.retired.store(false, Ordering::SeqCst);
        let conn = self.ensure_running(&slot).await?;
        conn.request(make, Some(ctx.clone()), run_id)
    }

    /// The worker of `tenant`, as it is now; `None` if it never had one on this node.
    pub fn view(&self, tenant: &TenantId) -> Option<WorkerView> {
        let slot = self.inner.slots.lock().ok()?.get(tenant).cloned()?;
        let mut view = slot.view.lock().ok()?.clone();
        if let Some(conn) = slot.conn.lock().ok().and_then(|c| c.clone()) {
            view.in_flight = conn.in_flight();
            view.rss_bytes = rss_bytes(conn.pid);
            view.store_calls = conn.store_calls.load(Ordering::Relaxed);
            view.store_calls_refused = conn.store_calls_refused.load(Ordering::Relaxed);
        }
        Some(view)
    }

    /// Stops the tenant's worker after what it is running has finished (its tenant is no
    /// longer dedicated); waits at most `drain_seconds`, then kills it.
    pub async fn retire(&self, tenant: &TenantId) {
        let Some(slot) = self
            .inner
            .slots
            .lock()
            .ok()
            .and_then(|s| s.get(tenant).cloned())
        else {
            return;
        };
        slot.retired.store(true, Ordering::SeqCst);
        let _guard = slot.lifecycle.lock().await;
        self.stop(&slot, Duration::from_secs(self.inner.config.drain_seconds))
            .await;
    }

    /// How many workers run now.
    pub fn running(&self) -> usize {
        self.inner
            .slots
            .lock()
            .map(|slots| {
                slots
                    .values()
                    .filter(|s| s.conn.lock().map(|c| c.is_some()).unwrap_or(false))
                    .count()
            })
            .unwrap_or(0)
    }

    fn slot(&self, tenant: &TenantId) -> Arc<Slot> {
        let mut slots = match self.inner.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    tenant: tenant.clone(),
                    lifecycle: tokio::sync::Mutex::new(()),
                    conn: Mutex::new(None),
                    view: Mutex::new(WorkerView {
                        state: "stopped".into(),
                        ..WorkerView::default()
                    }),
                    backoff: Mutex::default(),
                    retired: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// The slot's live worker, started if needed. Boxed because a worker's end restarts it
    /// from a spawned task, and the compiler cannot see through that cycle that it is `Send`.
    fn ensure_running<'a>(
        &'a self,
        slot: &'a Arc<Slot>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Arc<Conn>, WorkerError>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(conn) = current(slot) {
                return Ok(conn);
            }
            let _guard = slot.lifecycle.lock().await;
            if let Some(conn) = current(slot) {
                return Ok(conn);
            }
            let not_before = slot.backoff.lock().ok().and_then(|b| b.not_before);
            if let Some(at) = not_before {
                tokio::time::sleep_until(at.into()).await;
            }
            if self.running() >= self.inner.config.max_workers {
                return Err(WorkerError::Capacity(self.inner.config.max_workers));
            }
            set_state(slot, "starting");
            match self.start(slot).await {
                Ok(conn) => Ok(conn),
                Err(error) => {
                    set_state(slot, "failed");
                    if let Ok(mut view) = slot.view.lock() {
                        view.last_exit = Some(error.to_string());
                    }
                    self.note_failure(slot, Duration::ZERO);
                    Err(error)
                }
            }
        })
    }

    async fn start(&self, slot: &Arc<Slot>) -> Result<Arc<Conn>, WorkerError> {
        let fail =
            |what: &str, e: &dyn std::fmt::Display| WorkerError::Start(format!("{what}: {e}"));
        let began = Instant::now();
        let tenant = &slot.tenant;
        let dir = self.inner.launch.dir.join(tenant.as_str());
        private_dir(&self.inner.launch.dir).map_err(|e| fail("worker directory", &e))?;
        private_dir(&dir).map_err(|e| fail("worker directory", &e))?;
        let socket = dir.join("control.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|e| fail("socket", &e))?;
        let mut command = tokio::process::Command::new(&self.inner.launch.binary);
        command
            .args(&self.inner.launch.global_args)
            .arg("worker")
            .arg("--tenant")
            .arg(tenant.as_str())
            .arg("--socket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .env_clear()
            .envs(self.inner.launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| fail("spawn", &e))?;
        let pid = child.id().unwrap_or_default();
        let timeout = Duration::from_millis(self.inner.config.start_timeout_ms);
        let handshake = async {
            let (mut stream, _) = listener.accept().await.map_err(|e| fail("accept", &e))?;
            // Only the child we spawned may take this tenant's keys.
            let peer = stream
                .peer_cred()
                .map_err(|e| fail("peer credentials", &e))?;
            if peer.pid().and_then(|p| u32::try_from(p).ok()) != Some(pid) {
                return Err(WorkerError::Start(format!(
                    "a process other than the worker ({:?}, expected {pid}) connected",
                    peer.pid()
                )));
            }
            let _ = std::fs::remove_file(&socket);
            let ctx = self.runtime_context(tenant).await?;
            let keys = self
                .inner
                .vault
                .hand_over(&self.inner.store.tenant(&ctx))
                .await
                .map_err(|e| fail("data keys", &e))?;
            let start = ToWorker::Start {
                tenant: tenant.to_string(),
                keys: keys
                    .iter()
                    .map(bulkhead_vault::HandedKey::to_wire)
                    .collect(),
            };
            write_frame(&mut stream, &start)
                .await
                .map_err(|e| fail("start frame", &e))?;
            drop(start);
            match read_frame::<_, FromWorker>(&mut stream).await {
                Ok(FromWorker::Ready {
                    pid: reported,
                    key_versions,
                    sandbox,
                    ..
                }) if reported == pid => Ok((stream, key_versions, sandbox)),
                Ok(other) => Err(fail("handshake", &format!("unexpected {other:?}"))),
                Err(error) => Err(fail("handshake", &error)),
            }
        };
        let (stream, key_versions, sandbox) = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(error)) => {
                let _ = child.start_kill();
                return Err(error);
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(WorkerError::Start(format!(
                    "not ready within {} ms",
                    timeout.as_millis()
                )));
            }
        };
        let cold_start = began.elapsed();
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<ToWorker>();
        let (kill, killed) = oneshot::channel();
        let conn = Arc::new(Conn {
            pid,
            started: Instant::now(),
            outbox,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            last_used: Mutex::new(Instant::now()),
            kill: Mutex::new(Some(kill)),
            stopping: AtomicBool::new(false),
            store_calls: AtomicU64::new(0),
            store_calls_refused: AtomicU64::new(0),
            store_call_slots: Arc::new(Semaphore::new(STORE_CALLS_PER_WORKER)),
        });
        let (reader, mut writer) = stream.into_split();
        tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if write_frame(&mut writer, &frame).await.is_err() {
                    break;
                }
            }
        });
        let reading = read_frames(conn.clone(), self.inner.store.clone(), reader);
        {
            let pool = self.clone();
            let slot = slot.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                let kill_now = tokio::select! {
                    () = reading => false,
                    _ = killed => true,
                };
                if kill_now {
                    let _ = child.start_kill();
                }
                // The channel is gone: make sure the process is too, then learn how it ended.
                let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await
                {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                };
                let exit = match status {
                    Ok(status) => status.to_string(),
                    Err(error) => error.to_string(),
                };
                pool.ended(&slot, &conn, exit).await;
            });
        }
        if let Ok(mut current) = slot.conn.lock() {
            *current = Some(conn.clone());
        }
        if let Ok(mut view) = slot.view.lock() {
            view.state = "running".into();
            view.pid = Some(pid);
            view.started_at = Some(to_rfc3339(now_millis()));
            view.cold_start_ms = u64::try_from(cold_start.as_millis()).ok();
            view.key_versions = key_versions;
            view.sandbox = Some(sandbox);
        }
        tracing::info!(tenant.id = %tenant, pid, cold_start_ms = cold_start.as_millis() as u64, "dedicated worker ready");
        Ok(conn)
    }

    /// A worker's channel closed and its process exited.
    async fn ended(&self, slot: &Arc<Slot>, conn: &Arc<Conn>, exit: String) {
        if let Ok(mut current) = slot.conn.lock()
            && current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            *current = None;
        }
        let planned = conn.stopping.load(Ordering::SeqCst);
        self.fail_lost_runs(&slot.tenant, conn.pid, &exit).await;
        let pending: Vec<(u64, Pending)> = conn
            .pending
            .lock()
            .map(|mut p| p.drain().collect())
            .unwrap_or_default();
        for (id, pending) in pending {
            let answer = match (&pending.run_id, &pending.ctx) {
                // Failed above if it had not ended: the caller reads how it ended.
                (Some(run_id), Some(_)) => FromWorker::Done {
                    id,
                    run_id: run_id.clone(),
                },
                _ => {
                    FromWorker::refused(id, WorkerError::Lost.code(), WorkerError::Lost.to_string())
                }
            };
            let _ = pending.answers.send(answer);
        }
        if let Ok(mut view) = slot.view.lock() {
            view.last_exit = Some(exit.clone());
            view.pid = None;
            view.state = if planned { "stopped" } else { "restarting" }.into();
        }
        if planned {
            tracing::info!(tenant.id = %slot.tenant, pid = conn.pid, %exit, "dedicated worker stopped");
            return;
        }
        tracing::warn!(tenant.id = %slot.tenant, pid = conn.pid, %exit, "dedicated worker died; restarting");
        let wait = self.note_failure(slot, conn.started.elapsed());
        if let Ok(mut view) = slot.view.lock() {
            view.restarts += 1;
        }
        let pool = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if slot.retired.load(Ordering::SeqCst) {
                return;
            }
            if let Err(error) = pool.ensure_running(&slot).await {
                tracing::warn!(tenant.id = %slot.tenant, %error, "dedicated worker did not restart; the next request tries again");
            }
        });
    }

    /// Fails every run the dead worker left `running`, whatever request started it (a run, a
    /// gateway call running an agent, a resumed approval): they are found by the process id
    /// each run records.
    async fn fail_lost_runs(&self, tenant: &TenantId, pid: u32, exit: &str) {
        let message = format!("the tenant's dedicated worker (pid {pid}) exited: {exit}");
        let failed = match self.runtime_context(tenant).await {
            Ok(ctx) => {
                self.inner
                    .store
                    .tenant(&ctx)
                    .fail_runs_of_process(pid, "worker_lost", &message)
                    .await
            }
            Err(error) => {
                tracing::error!(tenant.id = %tenant, %error, "cannot mark a lost worker's runs failed");
                return;
            }
        };
        match failed {
            Ok(runs) if !runs.is_empty() => {
                tracing::warn!(tenant.id = %tenant, pid, runs = ?runs, "runs lost with their worker marked failed");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(tenant.id = %tenant, %error, "cannot mark a lost worker's runs failed");
            }
        }
    }

    /// Records a failure and returns how long to wait before the next start.
    fn note_failure(&self, slot: &Slot, lived: Duration) -> Duration {
        let Ok(mut backoff) = slot.backoff.lock() else {
            return MAX_BACKOFF;
        };
        let wait = match backoff.next {
            Some(next) if lived < STABLE_AFTER => next,
            _ => FIRST_BACKOFF,
        };
        backoff.next = Some((wait * 2).min(MAX_BACKOFF));
        backoff.not_before = Some(Instant::now() + wait);
        wait
    }

    /// Drains and stops the slot's worker (the lifecycle lock is held by the caller).
    async fn stop(&self, slot: &Slot, patience: Duration) {
        let Some(conn) = current(slot) else {
            return;
        };
        conn.stopping.store(true, Ordering::SeqCst);
        let drained = match conn.request(|id| ToWorker::Drain { id }, None, None) {
            Ok(mut answers) => tokio::time::timeout(patience, answers.recv())
                .await
                .is_ok_and(|a| matches!(a, Some(FromWorker::Drained { .. }))),
            Err(_) => false,
        };
        if !drained {
            tracing::warn!(tenant.id = %slot.tenant, pid = conn.pid, "worker did not drain in time; killing it");
            conn.kill();
        }
        // Wait for the exit to be seen, so a start that follows finds no live worker.
        let deadline = Instant::now() + Duration::from_secs(5);
        while current(slot).is_some_and(|c| Arc::ptr_eq(&c, &conn)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn runtime_context(&self, tenant: &TenantId) -> Result<TenantContext, WorkerError> {
        let record = self
            .inner
            .store
            .admin()
            .get_tenant(tenant)
            .await
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        record
            .as_ref()
            .ok_or_else(|| WorkerError::Start("the tenant is gone".into()))
            .and_then(|t| {
                bulkhead_core::auth::runtime_context(t)
                    .map_err(|e| WorkerError::Start(e.to_string()))
            })
    }

    /// Health checks and idle stops, until the process ends.
    async fn watch(self) {
        let every = Duration::from_millis(self.inner.config.health_ms.max(50));
        let idle = Duration::from_secs(self.inner.config.idle_seconds);
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            let slots: Vec<Arc<Slot>> = self
                .inner
                .slots
                .lock()
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default();
            for slot in slots {
                let Some(conn) = current(&slot) else {
                    continue;
                };
                let idle_for = conn
                    .last_used
                    .lock()
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                if !idle.is_zero() && idle_for >= idle && conn.in_flight() == 0 {
                    let pool = self.clone();
                    tokio::spawn(async move {
                        let _guard = slot.lifecycle.lock().await;
                        tracing::info!(tenant.id = %slot.tenant, "stopping an idle dedicated worker");
                        pool.stop(&slot, Duration::from_secs(pool.inner.config.drain_seconds))
                            .await;
                    });
                    continue;
                }
                tokio::spawn(async move {
                    let healthy = match conn.request(|id| ToWorker::Health { id }, None, None) {
                        Ok(mut answers) => tokio::time::timeout(every, answers.recv())
                            .await
                            .is_ok_and(|a| matches!(a, Some(FromWorker::Healthy { .. }))),
                        Err(_) => false,
                    };
                    if !healthy && !conn.stopping.load(Ordering::SeqCst) {
                        tracing::warn!(tenant.id = %slot.tenant, pid = conn.pid, "dedicated worker failed its health check; killing it");
                        conn.kill();
                    }
                });
            }
        }
    }
}

fn current(slot: &Slot) -> Option<Arc<Conn>> {
    slot.conn.lock().ok().and_then(|c| c.clone())
}

fn set_state(slot: &Slot, state: &str) {
    if let Ok(mut view) = slot.view.lock() {
        view.state = state.to_owned();
    }
}

/// Reads a worker's frames until its channel closes: answers go to the requests they answer,
/// store calls are answered on tasks of their own, at most `STORE_CALLS_PER_WORKER` at once.
async fn read_frames(conn: Arc<Conn>, store: Store, mut reader: impl tokio::io::AsyncRead + Unpin) {
    loop {
        match read_frame::<_, FromWorker>(&mut reader).await {
            Ok(FromWorker::Store {
                call,
                request,
                method,
                args,
            }) => {
                // Looked up now, in the order of the frames: a call sent before its request's
                // last frame finds the request in flight, however late it is answered.
                let ctx = context_of_request(&conn, &request);
                let Ok(slot) = conn.store_call_slots.clone().acquire_owned().await else {
                    break;
                };
                let (conn, store) = (conn.clone(), store.clone());
                tokio::spawn(async move {
                    let answer = answer_store_call(&conn, &store, ctx, &method, args).await;
                    drop(slot);
                    let _ = conn.outbox.send(ToWorker::StoreAnswer { call, answer });
                });
            }
            Ok(frame) => dispatch(&conn, frame),
            Err(FrameError::Closed) => break,
            Err(error) => {
                tracing::warn!(%error, "unreadable frame from a worker; dropping it");
                break;
            }
        }
    }
}

/// Answers a worker's store call in the context the control plane authenticated for the
/// request it serves (`ctx`, found among the requests in flight on *this* worker's channel
/// when the call was read): a worker can name neither a tenant nor a caller, only a request
/// it was given.
async fn answer_store_call(
    conn: &Conn,
    store: &Store,
    ctx: Option<TenantContext>,
    method: &str,
    args: serde_json::Value,
) -> Result<serde_json::Value, RemoteFailure> {
    conn.store_calls.fetch_add(1, Ordering::Relaxed);
    let Some(ctx) = ctx else {
        conn.store_calls_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            pid = conn.pid,
            method,
            "a worker's store call names no request in flight on its channel; refused"
        );
        return Err(RemoteFailure::from(&StoreError::NotFound(
            "request in flight on this channel",
        )));
    };
    let process = RunProcess {
        id: conn.pid,
        isolation: Isolation::Dedicated,
    };
    bulkhead_store::remote::answer(&store.tenant(&ctx), process, method, args)
        .await
        .map_err(|error| RemoteFailure::from(&error))
}

fn context_of_request(conn: &Conn, request: &str) -> Option<TenantContext> {
    let pending = conn.pending.lock().ok()?;
    pending
        .values()
        .filter_map(|entry| entry.ctx.as_ref())
        .find(|ctx| ctx.request_id().as_str() == request)
        .cloned()
}

/// Routes a worker's frame to the request it answers.
fn dispatch(conn: &Conn, frame: FromWorker) {
    let Some(id) = frame.request_id() else {
        return;
    };
    let Ok(mut pending) = conn.pending.lock() else {
        return;
    };
    if let FromWorker::RunStarted { run_id, .. } = &frame
        && let Some(entry) = pending.get_mut(&id)
    {
        entry.run_id = Some(run_id.clone());
    }
    let last = frame.is_final();
    let entry = if last { pending.remove(&id) } else { None };
    match (entry, pending.get(&id)) {
        (Some(entry), _) => {
            if entry.ctx.is_some() {
                conn.touch();
            }
            let _ = entry.answers.send(frame);
        }
        (None, Some(entry)) => {
            let _ = entry.answers.send(frame);
        }
        (None, None) => {}
    }
}

#[cfg(unix)]
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Resident set size of a process, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_core::{RegionName, Tenant, TenantStatus};

    /// A worker's connection with one request of `tenant` in flight; the receiver stands in
    /// for the worker's end of the channel.
    fn conn_serving(tenant: &str) -> (Conn, TenantContext, mpsc::UnboundedReceiver<ToWorker>) {
        let record = Tenant {
            id: TenantId::try_from(tenant).unwrap(),
            name: tenant.to_uppercase(),
            region: RegionName::try_from("local").unwrap(),
            allowed_regions: Vec::new(),
            isolation: Isolation::Dedicated,
            status: TenantStatus::Active,
            created_at: 0,
            updated_at: 0,
        };
        let ctx = bulkhead_core::auth::runtime_context(&record).unwrap();
        let (outbox, worker_end) = mpsc::unbounded_channel();
        let conn = Conn {
            pid: 1,
            started: Instant::now(),
            outbox,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            last_used: Mutex::new(Instant::now()),
            kill: Mutex::new(None),
            stopping: AtomicBool::new(false),
            store_calls: AtomicU64::new(0),
            store_calls_refused: AtomicU64::new(0),
            store_call_slots: Arc::new(Semaphore::new(STORE_CALLS_PER_WORKER)),
        };
        let _answers = conn
            .request(|id| ToWorker::Health { id }, Some(ctx.clone()), None)
            .unwrap();
        (conn, ctx, worker_end)
    }

    #[test]
    fn a_store_call_is_answered_only_for_a_request_in_flight_on_the_same_channel() {
        let (acme, acme_request, _acme_worker) = conn_serving("acme");
        let (globex, globex_request, _globex_worker) = conn_serving("globex");
        let found = context_of_request(&acme, acme_request.request_id().as_str()).unwrap();
        assert_eq!(found.tenant_id().as_str(), "acme");
        // Globex's request, named on acme's channel (a compromised acme worker that learned
        // it), finds nothing: the tenant of a call is the channel's.
        assert!(context_of_request(&acme, globex_request.request_id().as_str()).is_none());
        assert!(context_of_request(&globex, acme_request.request_id().as_str()).is_none());
        assert!(context_of_request(&acme, "made-up").is_none());
        // A request that has been answered is no longer in flight.
        acme.pending.lock().unwrap().clear();
        assert!(context_of_request(&acme, acme_request.request_id().as_str()).is_none());
    }

    #[tokio::test]
    async fn a_worker_with_every_store_call_slot_taken_is_not_read_further() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db.sqlite"), &Default::default())
            .await
            .unwrap();
        let (conn, ctx, mut worker_end) = conn_serving("acme");
        // The request in flight, as the worker received it.
        assert!(matches!(
            worker_end.recv().await,
            Some(ToWorker::Health { .. })
        ));
        let conn = Arc::new(conn);
        let (mut worker, control_plane) = tokio::io::duplex(64 * 1024);
        tokio::spawn(read_frames(conn.clone(), store, control_plane));
        let slots = conn
            .store_call_slots
            .clone()
            .acquire_many_owned(STORE_CALLS_PER_WORKER as u32)
            .await
            .unwrap();
        let store_call = FromWorker::Store {
            call: 7,
            request: ctx.request_id().as_str().to_owned(),
            method: "tenant".into(),
            args: serde_json::json!([]),
        };
        write_frame(&mut worker, &store_call).await.unwrap();
        // The request's last frame, behind the call: not read while no slot is free.
        let request_id = *conn.pending.lock().unwrap().keys().next().unwrap();
        let last = FromWorker::Healthy {
            id: request_id,
            in_flight: 0,
        };
        write_frame(&mut worker, &last).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            conn.pending.lock().unwrap().len(),
            1,
            "read past a full set of slots"
        );
        assert_eq!(conn.store_calls.load(Ordering::Relaxed), 0);
        drop(slots);
        // Answered (the call was looked up while its request was in flight), then the last
        // frame is read.
        let answer = tokio::time::timeout(Duration::from_secs(10), worker_end.recv())
            .await
            .unwrap()
            .unwrap();
        match answer {
            ToWorker::StoreAnswer { call: 7, answer } => assert!(answer.is_ok(), "{answer:?}"),
            other => panic!("expected the call's answer, got {other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while !conn.pending.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(conn.store_calls_refused.load(Ordering::Relaxed), 0);
    }
}
