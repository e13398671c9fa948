//! The audit outbox (SQLite): audit events that go with no stored change (outbound calls,
//! refusals) are acknowledged once appended to a file, and imported into their tenants'
//! chains by a background task moments later.
//!
//! Why: on SQLite an awaited audit transaction was most of what the gateway added to a call
//! (five hand-offs to the database's one writer thread per event). The guarantee does not
//! change: with `synchronous = NORMAL` a SQLite commit reaches the WAL file with a `write`
//! and no fsync, so it survives a crash of the process but not a power cut; one `write` of
//! the event to this file, under the same lock that orders the file, gives exactly that.
//! PostgreSQL keeps the group commit (`events.rs`), whose commit is the server's durable one.
//!
//! How:
//! - Each process that opens the store with the outbox on appends to a file of its own next
//!   to the database (`<db>.audit-outbox.<pid>-<millis>-<n>`), held under an exclusive
//!   `flock` for as long as the process lives. One line of JSON per event; file order is
//!   acknowledgement order, and the importer keeps it.
//! - The importer reads complete lines past its offset, appends them to the chains and
//!   records the new offset in `audit_outbox_files` in the same transaction, so a crash
//!   between the two neither loses nor repeats an event.
//! - Opening the store imports every outbox file whose lock it can take (its process is
//!   gone) before anything is served, then deletes it.
//! - Reads of the audit trail wait for the import of everything this process acknowledged
//!   before them (`settle`), so a caller reads its own events as before.
//! - The importer of the process that wrote the events takes them from memory, handed over
//!   under the file's lock as they are appended, rather than parse its own lines back: the
//!   parse was a tenth of a gateway request's instructions. The file stays what makes an
//!   event durable; whatever the memory cannot vouch for (an import that failed, too many
//!   events waiting, a file just sealed) is read from the file as before.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bulkhead_core::TenantId;
use bulkhead_core::timestamp::now_millis;
use tokio::sync::{Notify, watch};

use crate::StoreError;
use crate::audit::{self, PendingEvent};
use crate::backend::{Access, Backend, Scope, execute, fetch_optional};

/// A file imported this far is replaced by a fresh one (unless [`StoreOptions`] says
/// otherwise).
///
/// [`StoreOptions`]: crate::StoreOptions
pub(crate) const ROTATE_BYTES: u64 = 8 << 20;
/// How long the importer waits after a failed import before it tries again.
const RETRY: Duration = Duration::from_secs(1);
/// How long the importer lets events gather before it imports them, unless a reader is
/// waiting. One transaction per event would cost the CPU the outbox saves the request path:
/// at 2,500 requests a second one at a time, this turns 50 transactions into one.
const GATHER: Duration = Duration::from_millis(20);
/// At most this many appended events wait in memory for the importer; past it (an import
/// failing for long) they are read back from the file instead.
const MAX_HANDED: usize = 16_384;

/// An appended event, as handed over in memory to this process's importer.
type Handed = (TenantId, PendingEvent);

/// One line of an outbox file: the tenant beside the event's own fields.
#[derive(serde::Serialize)]
struct Line<'a> {
    tenant: &'a TenantId,
    #[serde(flatten)]
    event: &'a PendingEvent,
}

/// A [`Line`] as the importer reads it, its fields spelled out: `#[serde(flatten)]` parses
/// through an intermediate buffer, and the importer reads every event the process audits.
#[derive(serde::Deserialize)]
struct ReadLine {
    tenant: TenantId,
    occurred_at: i64,
    actor: String,
    action: String,
    resource: String,
    outcome: bulkhead_core::audit::Outcome,
    request_id: Option<String>,
    trace_id: Option<String>,
    details: serde_json::Value,
}

impl ReadLine {
    fn into_event(self) -> (TenantId, PendingEvent) {
        let event = PendingEvent {
            occurred_at: self.occurred_at,
            actor: self.actor,
            action: self.action,
            resource: self.resource,
            outcome: self.outcome,
            request_id: self.request_id,
            trace_id: self.trace_id,
            details: self.details,
        };
        (self.tenant, event)
    }
}

#[derive(Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
    /// The importer stops when the last clone of this is dropped.
    _alive: Arc<watch::Sender<()>>,
}

struct Shared {
    dir: PathBuf,
    prefix: String,
    current: Mutex<Current>,
    wake: Notify,
    /// A reader is waiting in [`Outbox::settle`]: import now, without gathering.
    urgent: Notify,
    /// A file imported this far is replaced by a fresh one.
    rotate_bytes: u64,
    /// Bytes imported so far, over every file this process wrote.
    imported: watch::Sender<u64>,
}

struct Current {
    name: String,
    file: Arc<File>,
    written: u64,
    /// Bytes written so far, over every file this process wrote.
    written_total: u64,
    generation: u64,
    /// The events appended to `file` from offset `handed_from` on, in file order, while
    /// `handed_whole`; past [`MAX_HANDED`] the later ones are not kept.
    handed: Vec<Handed>,
    handed_whole: bool,
    handed_from: u64,
}

/// What the importer takes from memory under the lock: the events of exactly the range it
/// imports next, or events it cannot use.
enum Taken {
    Exact(Vec<Handed>),
    /// Dropped by the importer once the lock is released: freeing thousands of events under it
    /// would hold up every append for milliseconds.
    Unusable(Vec<Handed>),
}

impl Taken {
    /// The events for the importer to append, if any; called once the lock is released.
    fn exact(self) -> Option<Vec<Handed>> {
        match self {
            Self::Exact(events) => Some(events),
            Self::Unusable(events) => {
                drop(events);
                None
            }
        }
    }
}

impl Current {
    /// Keeps an appended event for the importer while memory still holds every one since
    /// `handed_from`. Past the cap it keeps nothing more, and frees nothing either: this runs
    /// on a serving thread, so the events already held wait for the importer to drop them.
    fn hand_over(&mut self, tenant: &TenantId, event: PendingEvent) {
        if self.handed_whole && self.handed.len() < MAX_HANDED {
            self.handed.push((tenant.clone(), event));
        } else {
            self.handed_whole = false;
        }
    }

    /// The events of `file` from `offset` to `written`, if memory holds exactly those; the
    /// hand-over starts again from `written` either way.
    fn take_handed(&mut self, offset: u64) -> Taken {
        let (taken, whole, from) = self.restart_hand_over();
        if whole && from == offset {
            Taken::Exact(taken)
        } else {
            Taken::Unusable(taken)
        }
    }

    /// Starts the hand-over again, empty and whole, from `written`; answers the events it held,
    /// whether they were all of them, and the offset they started at.
    ///
    /// The fresh vector has room for as many events as the last one held, so the appends on
    /// the serving threads do not grow it: growing copies every event held so far and, at a
    /// few hundred events, takes memory the allocator maps fresh, which the kernel zeroes on
    /// first touch (a 2 MiB huge page was a millisecond on the serving thread).
    fn restart_hand_over(&mut self) -> (Vec<Handed>, bool, u64) {
        let room = self.handed.len();
        (
            std::mem::replace(&mut self.handed, Vec::with_capacity(room)),
            std::mem::replace(&mut self.handed_whole, true),
            std::mem::replace(&mut self.handed_from, self.written),
        )
    }
}

impl Outbox {
    /// Starts this process's own file and its importer. [`import_left_behind`] first.
    pub(crate) async fn open(
        database: &Path,
        backend: Backend,
        rotate_bytes: u64,
    ) -> Result<Self, StoreError> {
        let (dir, prefix) = location(database)?;
        let (name, file) = create_file(&dir, &prefix, 0)?;
        let (imported, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            dir,
            prefix,
            current: Mutex::new(Current {
                name,
                file: Arc::new(file),
                written: 0,
                written_total: 0,
                generation: 0,
                handed: Vec::new(),
                handed_whole: true,
                handed_from: 0,
            }),
            wake: Notify::new(),
            urgent: Notify::new(),
            rotate_bytes,
            imported,
        });
        let (alive, stopped) = watch::channel(());
        tokio::spawn(import_loop(shared.clone(), backend, stopped));
        Ok(Self {
            shared,
            _alive: Arc::new(alive),
        })
    }

    /// Appends one event; acknowledged (as durable as a SQLite commit) when this returns.
    pub(crate) fn append(&self, tenant: &TenantId, event: PendingEvent) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(&Line {
            tenant,
            event: &event,
        })
        .map_err(|e| StoreError::EventWriter(format!("cannot encode an audit event: {e}")))?;
        line.push(b'\n');
        {
            let mut current = self
                .shared
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // One write of the whole line: `write_all` on a regular file is one `write` unless
            // the disk is full, and then the error is the caller's.
            (&*current.file).write_all(&line).map_err(|e| {
                StoreError::EventWriter(format!("cannot append to the audit outbox: {e}"))
            })?;
            current.written += line.len() as u64;
            current.written_total += line.len() as u64;
            current.hand_over(tenant, event);
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Returns once every event this process acknowledged before the call is in its chain.
    pub(crate) async fn settle(&self) -> Result<(), StoreError> {
        let target = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .written_total;
        let mut imported = self.shared.imported.subscribe();
        if *imported.borrow() >= target {
            return Ok(());
        }
        self.shared.urgent.notify_one();
        imported
            .wait_for(|done| *done >= target)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::EventWriter("the audit importer has stopped".into()))
    }
}

fn outbox_error(path: &Path, message: impl std::fmt::Display) -> StoreError {
    StoreError::EventWriter(format!("audit outbox {}: {message}", path.display()))
}

fn create_file(dir: &Path, prefix: &str, generation: u64) -> Result<(String, File), StoreError> {
    let name = format!(
        "{prefix}{}-{}-{generation}",
        std::process::id(),
        now_millis()
    );
    let path = dir.join(&name);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .read(true)
        .open(&path)
        .map_err(|e| outbox_error(&path, e))?;
    file.try_lock()
        .map_err(|e| outbox_error(&path, format!("cannot lock: {e}")))?;
    Ok((name, file))
}

/// The directory the outbox files of `database` live in, and the start of their names.
fn location(database: &Path) -> Result<(PathBuf, String), StoreError> {
    let dir = database
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let file_name = database
        .file_name()
        .ok_or_else(|| outbox_error(database, "the database path names no file"))?;
    Ok((
        dir,
        format!("{}.audit-outbox.", file_name.to_string_lossy()),
    ))
}

/// Imports and deletes every outbox file of `database` that no live process holds. Every
/// process that opens the database does this, outbox or not, so the CLI reading a trail after
/// a crash sees the events the crashed server acknowledged.
pub(crate) async fn import_left_behind(
    database: &Path,
    backend: &Backend,
) -> Result<(), StoreError> {
    let (dir, prefix) = location(database)?;
    let (dir, prefix) = (dir.as_path(), prefix.as_str());
    let entries = std::fs::read_dir(dir).map_err(|e| outbox_error(dir, e))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // its process is alive and imports it itself
        }
        let mut offset = imported_offset(backend, &name).await?;
        let length = file.metadata().map_err(|e| outbox_error(&path, e))?.len();
        let imported = import(backend, &file, &name, offset, length).await?;
        offset += imported;
        if offset < length {
            tracing::warn!(file = %path.display(), bytes = length - offset,
                "an audit outbox ends in an incomplete line (cut by a power loss?); it is dropped");
        }
        tracing::info!(file = %path.display(), bytes = imported, "imported an audit outbox left by a stopped process");
        std::fs::remove_file(&path).map_err(|e| outbox_error(&path, e))?;
        forget_file(backend, &name).await?;
    }
    Ok(())
}

async fn import_loop(shared: Arc<Shared>, backend: Backend, mut stopped: watch::Receiver<()>) {
    let mut offset = 0u64;
    let mut imported_total = 0u64;
    let mut imported = |bytes: u64| {
        imported_total += bytes;
        shared.imported.send_replace(imported_total);
    };
    loop {
        let stopping = tokio::select! {
            _ = shared.urgent.notified() => false,
            _ = shared.wake.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep(GATHER) => false,
                    _ = shared.urgent.notified() => false,
                    changed = stopped.changed() => changed.is_err(),
                }
            }
            changed = stopped.changed() => changed.is_err(),
        };
        // One import per wake-up, of all that gathered. Events appended during it left a
        // wake-up behind and gather for the next; importing again at once until caught up
        // would, under steady traffic, import them one or two at a time.
        let (name, file, written, handed) = {
            let mut current = shared
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let handed = current.take_handed(offset);
            (
                current.name.clone(),
                current.file.clone(),
                current.written,
                handed,
            )
        };
        let bytes =
            import_until_done(&backend, &file, &name, offset, written, handed.exact()).await;
        offset += bytes;
        imported(bytes);
        if offset >= shared.rotate_bytes
            && let Some((old_name, old_file, old_end)) = switch_file(&shared)
        {
            // The sealed file's last lines, then it is gone; the new file starts at 0.
            let bytes =
                import_until_done(&backend, &old_file, &old_name, offset, old_end, None).await;
            imported(bytes);
            offset = 0;
            let path = shared.dir.join(&old_name);
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(%error, file = %path.display(), "cannot delete an imported audit outbox");
            }
            if let Err(error) = forget_file(&backend, &old_name).await {
                tracing::warn!(%error, "cannot forget an imported audit outbox's offset");
            }
        }
        if stopping {
            return;
        }
    }
}

/// [`import`], retried until it succeeds: an acknowledged event is never given up on.
/// `handed`, the events of `offset..end` from memory, is tried first; a retry reads the file.
async fn import_until_done(
    backend: &Backend,
    file: &File,
    name: &str,
    offset: u64,
    end: u64,
    handed: Option<Vec<Handed>>,
) -> u64 {
    if offset >= end {
        return 0;
    }
    let mut handed = handed;
    loop {
        let attempt = match handed.take() {
            Some(events) => commit(backend, name, offset, end - offset, events).await,
            None => import(backend, file, name, offset, end).await,
        };
        match attempt {
            Ok(bytes) => return bytes,
            Err(error) => {
                tracing::warn!(%error, "importing audit events failed; they stay in the outbox and are retried");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Seals the current file and sends later appends to a fresh one; answers the sealed file
/// and its final length, for the importer to finish and delete. `None` if no new file
/// could be made (the current one keeps growing, and the next import tries again).
///
/// A crash before the sealed file is finished leaves both files; the next start imports
/// them in name order, which is creation order, so each tenant's events keep their order.
fn switch_file(shared: &Shared) -> Option<(String, Arc<File>, u64)> {
    let mut current = shared
        .current
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match create_file(&shared.dir, &shared.prefix, current.generation + 1) {
        Ok((name, file)) => {
            let old_name = std::mem::replace(&mut current.name, name);
            let old_file = std::mem::replace(&mut current.file, Arc::new(file));
            let old_end = std::mem::replace(&mut current.written, 0);
            current.generation += 1;
            // What was handed over since the importer last took it belongs to the sealed
            // file, whose tail the importer reads from the file; the new file's starts at 0.
            let (unusable, _, _) = current.restart_hand_over();
            // Appends go on before the events handed over since the last import are freed.
            drop(current);
            drop(unusable);
            Some((old_name, old_file, old_end))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot start a fresh audit outbox; the current one keeps growing");
            None
        }
    }
}

/// Imports the complete lines of `file` in `offset..end` in one transaction that also records
/// how far the file is imported; returns the bytes consumed.
async fn import(
    backend: &Backend,
    file: &File,
    name: &str,
    offset: u64,
    end: u64,
) -> Result<u64, StoreError> {
    let length = usize::try_from(end.saturating_sub(offset))
        .map_err(|_| StoreError::EventWriter("audit outbox too large".into()))?;
    let mut bytes = vec![0; length];
    file.read_exact_at(&mut bytes, offset).map_err(|e| {
        StoreError::EventWriter(format!("cannot read the audit outbox {name}: {e}"))
    })?;
    let Some(last_newline) = bytes.iter().rposition(|b| *b == b'\n') else {
        return Ok(0);
    };
    let complete = &bytes[..=last_newline];
    let events = complete
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|line| match serde_json::from_slice::<ReadLine>(line) {
            Ok(line) => Some(line.into_event()),
            // Only this module writes these files; a line that does not parse was damaged on
            // disk, and holding back every later event for it would be worse than skipping it.
            Err(error) => {
                tracing::error!(%error, file = name, "an audit outbox line is damaged and skipped");
                None
            }
        });
    commit(backend, name, offset, complete.len() as u64, events).await
}

/// Appends `events`, the `consumed` bytes of file `name` from `offset` on, to their chains, in
/// one transaction that also records how far the file is imported; returns `consumed`.
async fn commit(
    backend: &Backend,
    name: &str,
    offset: u64,
    consumed: u64,
    events: impl IntoIterator<Item = (TenantId, PendingEvent)>,
) -> Result<u64, StoreError> {
    let mut tx = backend.begin(Access::Write, Scope::ControlPlane).await?;
    audit::append_batch(&mut tx, events).await?;
    let imported = i64::try_from(offset + consumed)
        .map_err(|_| StoreError::EventWriter("audit outbox offset overflows".into()))?;
    execute!(
        &mut tx,
        "INSERT INTO audit_outbox_files (file, imported_bytes) VALUES ($1, $2) \
         ON CONFLICT (file) DO UPDATE SET imported_bytes = excluded.imported_bytes",
        name,
        imported,
    )?;
    tx.commit().await?;
    Ok(consumed)
}

async fn imported_offset(backend: &Backend, name: &str) -> Result<u64, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        imported_bytes: i64,
    }
    let mut tx = backend.begin(Access::Read, Scope::ControlPlane).await?;
    let row = fetch_optional!(
        &mut tx,
        Row,
        "SELECT imported_bytes FROM audit_outbox_files WHERE file = $1",
        name,
    )?;
    tx.commit().await?;
    Ok(row.map_or(0, |row| u64::try_from(row.imported_bytes).unwrap_or(0)))
}

async fn forget_file(backend: &Backend, name: &str) -> Result<(), StoreError> {
    let mut tx = backend.begin(Access::Write, Scope::ControlPlane).await?;
    execute!(
        &mut tx,
        "DELETE FROM audit_outbox_files WHERE file = $1",
        name
    )?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> (TenantId, PendingEvent) {
        let event = PendingEvent {
            occurred_at: n,
            actor: "key:k1".into(),
            action: "egress.call".into(),
            resource: "endpoint/openai".into(),
            outcome: bulkhead_core::audit::Outcome::Success,
            request_id: None,
            trace_id: None,
            details: serde_json::json!({}),
        };
        (TenantId::try_from("acme").unwrap(), event)
    }

    fn current() -> Current {
        Current {
            name: String::from("f"),
            file: Arc::new(tempfile::tempfile().unwrap()),
            written: 0,
            written_total: 0,
            generation: 0,
            handed: Vec::new(),
            handed_whole: true,
            handed_from: 0,
        }
    }

    fn hand_over(current: &mut Current, n: i64) {
        let (tenant, event) = event(n);
        current.hand_over(&tenant, event);
        current.written += 100;
    }

    #[test]
    fn after_a_take_the_next_imports_worth_of_appends_does_not_grow_the_hand_over() {
        let mut current = current();
        (0..300).for_each(|n| hand_over(&mut current, n));
        let taken = current.take_handed(0).exact().unwrap();
        assert_eq!(taken.len(), 300);
        let room = current.handed.as_ptr();
        (300..600).for_each(|n| hand_over(&mut current, n));
        assert_eq!(
            current.handed.as_ptr(),
            room,
            "an append moved the hand-over to a larger allocation"
        );
        assert_eq!(current.handed.len(), 300);
    }

    #[test]
    fn the_importer_takes_from_memory_only_what_matches_the_file() {
        let mut current = current();
        (1..=3).for_each(|n| hand_over(&mut current, n));
        let taken = current.take_handed(0).exact().unwrap();
        assert_eq!(taken.len(), 3);
        assert_eq!(taken[2].1.occurred_at, 3);
        assert_eq!(
            current.handed_from, 300,
            "the hand-over goes on from the snapshot"
        );

        // Events handed from 300 on, but the importer stands elsewhere (its last import was of
        // the file, and shorter): nothing from memory, and the hand-over starts again.
        hand_over(&mut current, 4);
        assert!(matches!(current.take_handed(250), Taken::Unusable(events) if events.len() == 1));
        assert_eq!(current.handed_from, 400);
        assert!(
            current
                .take_handed(400)
                .exact()
                .is_some_and(|e| e.is_empty())
        );
    }

    #[test]
    fn past_the_cap_an_append_frees_nothing_and_the_importer_reads_the_file() {
        let mut current = current();
        (0..MAX_HANDED as i64).for_each(|n| hand_over(&mut current, n));
        let held = current.handed.as_ptr();
        hand_over(&mut current, -1);
        hand_over(&mut current, -2);
        // The events already held stay where they were: freeing them is the importer's work,
        // not that of the serving thread whose append found the cap.
        assert!(!current.handed_whole);
        assert_eq!(current.handed.len(), MAX_HANDED);
        assert_eq!(current.handed.as_ptr(), held);

        match current.take_handed(0) {
            Taken::Unusable(events) => assert_eq!(events.len(), MAX_HANDED),
            Taken::Exact(_) => panic!("memory no longer holds every event; the file must be read"),
        }
        // The hand-over starts again, whole, from where the file ends.
        assert!(current.handed_whole);
        hand_over(&mut current, 1);
        let resumed = current.take_handed((MAX_HANDED as u64 + 2) * 100);
        assert!(resumed.exact().is_some_and(|e| e.len() == 1));
    }

    #[test]
    fn a_written_line_reads_back_as_the_same_event() {
        let tenant = TenantId::try_from("acme").unwrap();
        let event = PendingEvent {
            occurred_at: 1_700_000_000_000,
            actor: "key:k1".into(),
            action: "egress.call".into(),
            resource: "endpoint/openai".into(),
            outcome: bulkhead_core::audit::Outcome::Success,
            request_id: Some("req-1".into()),
            trace_id: None,
            details: serde_json::json!({"status": 200, "path": "/chat/completions"}),
        };
        let written = serde_json::to_vec(&Line {
            tenant: &tenant,
            event: &event,
        })
        .unwrap();
        let (read_tenant, read) = serde_json::from_slice::<ReadLine>(&written)
            .unwrap()
            .into_event();
        assert_eq!(read_tenant, tenant);
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&event).unwrap()
        );
    }
}
