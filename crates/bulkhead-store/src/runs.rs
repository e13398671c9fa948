//! Agent runs as they happen: created `running`, finished `completed` or `failed`.

use bulkhead_core::AgentName;
use bulkhead_core::audit::{AuditDraft, Outcome};
use bulkhead_core::timestamp::now_millis;
use serde_json::{Value, json};

use crate::backend::{Access, Scope, execute, fetch_all, fetch_optional};
use crate::remote::remote;
use crate::{AdminStore, StoreError, TenantStore, audit};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub thread_id: Option<String>,
    pub agent: String,
    pub agent_version: i64,
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub transcript: Value,
    pub steps: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The operating-system process that executed the run (absent on runs from before it
    /// was recorded).
    pub process_id: Option<i64>,
    /// `shared` or `dedicated`: whether that process was the shared pool or the tenant's
    /// own worker.
    pub isolation: Option<String>,
}

/// The process a run executes in, recorded on the run when it starts.
#[derive(Debug, Clone, Copy)]
pub struct RunProcess {
    pub id: u32,
    pub isolation: bulkhead_core::Isolation,
}

impl RunProcess {
    /// This process, serving at `isolation`.
    pub fn current(isolation: bulkhead_core::Isolation) -> Self {
        Self {
            id: std::process::id(),
            isolation,
        }
    }
}

/// A running run's transcript, steps and token use so far.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunProgress {
    pub transcript: Value,
    pub steps: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    run_id: String,
    thread_id: Option<String>,
    agent: String,
    agent_version: i64,
    status: String,
    input: String,
    output: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    transcript: String,
    steps: i64,
    input_tokens: i64,
    output_tokens: i64,
    created_at: i64,
    updated_at: i64,
    process_id: Option<i64>,
    isolation: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunEnd {
    pub output: Option<String>,
    /// `(code, message)` for a failed run.
    pub error: Option<(String, String)>,
    /// What the run produced up to its end.
    pub progress: RunProgress,
}

impl TenantStore<'_> {
    /// Records a run as started, before the first model call.
    pub async fn start_run(
        &self,
        run_id: &str,
        thread_id: Option<&str>,
        agent: &AgentName,
        agent_version: i64,
        input: &str,
        process: RunProcess,
    ) -> Result<(), StoreError> {
        // A worker's process is the one the control plane knows it by, not one it names.
        remote!(
            self,
            start_run,
            run_id,
            thread_id,
            agent,
            agent_version,
            input
        );
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let now = now_millis();
        execute!(
            &mut tx,
            "INSERT INTO runs (tenant_id, run_id, agent, agent_version, status, input, transcript, steps, \
             input_tokens, output_tokens, created_at, updated_at, thread_id, process_id, isolation) \
             VALUES ($1, $2, $3, $4, 'running', $5, '[]', 0, 0, 0, $6, $6, $7, $8, $9)",
            tenant.as_str(),
            run_id,
            agent.as_str(),
            agent_version,
            input,
            now,
            thread_id,
            i64::from(process.id),
            process.isolation.as_str(),
        )?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "run.started",
                resource: format!("run/{run_id}"),
                outcome: Outcome::Success,
                details: json!({
                    "agent": agent,
                    "agent_version": agent_version,
                    "process_id": process.id,
                    "isolation": process.isolation.as_str(),
                }),
            },
        )
        .await?;
        tx.commit().await
    }

    /// Saves what a running run has produced so far, after each step, so a run cut off by a
    /// crash keeps its transcript. Not audited: the model and tool calls of the step are.
    pub async fn record_run_progress(
        &self,
        run_id: &str,
        progress: &RunProgress,
    ) -> Result<(), StoreError> {
        remote!(self, record_run_progress, run_id, progress);
        let mut tx = self.begin(Access::Write).await?;
        execute!(
            &mut tx,
            "UPDATE runs SET transcript = $3, steps = $4, input_tokens = $5, output_tokens = $6, updated_at = $7 \
             WHERE tenant_id = $1 AND run_id = $2 AND status = 'running'",
            self.context().tenant_id().as_str(),
            run_id,
            progress.transcript.to_string(),
            progress.steps,
            progress.input_tokens,
            progress.output_tokens,
            now_millis(),
        )?;
        tx.commit().await
    }

    /// Records how a run ended.
    pub async fn finish_run(&self, run_id: &str, end: &RunEnd) -> Result<(), StoreError> {
        remote!(self, finish_run, run_id, end);
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let (status, code, message) = match &end.error {
            None => ("completed", None, None),
            Some((code, message)) => ("failed", Some(code.as_str()), Some(message.as_str())),
        };
        execute!(
            &mut tx,
            "UPDATE runs SET status = $3, output = $4, error_code = $5, error_message = $6, transcript = $7, \
             steps = $8, input_tokens = $9, output_tokens = $10, updated_at = $11 \
             WHERE tenant_id = $1 AND run_id = $2",
            tenant.as_str(),
            run_id,
            status,
            end.output.as_deref(),
            code,
            message,
            end.progress.transcript.to_string(),
            end.progress.steps,
            end.progress.input_tokens,
            end.progress.output_tokens,
            now_millis(),
        )?;
        audit::append(
            &mut tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: if end.error.is_none() {
                    "run.completed"
                } else {
                    "run.failed"
                },
                resource: format!("run/{run_id}"),
                outcome: if end.error.is_none() {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
                details: json!({"steps": end.progress.steps, "input_tokens": end.progress.input_tokens,
                    "output_tokens": end.progress.output_tokens, "error": code}),
            },
        )
        .await?;
        tx.commit().await
    }

    /// One of the tenant's runs; another tenant's is `None`, like a missing one.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        remote!(self, run, run_id);
        let mut tx = self.begin(Access::Read).await?;
        let row = fetch_optional!(
            &mut tx,
            RunRow,
            "SELECT run_id, thread_id, agent, agent_version, status, input, output, error_code, error_message, transcript, \
             steps, input_tokens, output_tokens, created_at, updated_at, process_id, isolation FROM runs WHERE tenant_id = $1 AND run_id = $2",
            self.context().tenant_id().as_str(),
            run_id,
        )?;
        tx.commit().await?;
        row.map(|r| {
            Ok(RunRecord {
                transcript: serde_json::from_str(&r.transcript)
                    .map_err(|e| StoreError::Corrupt(format!("transcript: {e}")))?,
                run_id: r.run_id,
                thread_id: r.thread_id,
                agent: r.agent,
                agent_version: r.agent_version,
                status: r.status,
                input: r.input,
                output: r.output,
                error_code: r.error_code,
                error_message: r.error_message,
                steps: r.steps,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                created_at: r.created_at,
                updated_at: r.updated_at,
                process_id: r.process_id,
                isolation: r.isolation,
            })
        })
        .transpose()
    }
}

impl TenantStore<'_> {
    /// Marks the run failed with `code` if it is still `running`: for a run whose process died
    /// under it, seen by the process that forwarded it. Returns whether it was running; a run
    /// that ended on its own in the meantime is left as it ended.
    pub async fn fail_running_run(
        &self,
        run_id: &str,
        code: &str,
        message: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(Access::Write).await?;
        let failed = self
            .fail_if_running(
                &mut tx,
                run_id,
                code,
                message,
                json!({"code": code, "message": message}),
            )
            .await?;
        tx.commit().await?;
        Ok(failed)
    }

    /// Fails `run_id` if it is still `running`, with its `run.failed` event; whether it was.
    async fn fail_if_running(
        &self,
        tx: &mut crate::backend::Tx,
        run_id: &str,
        code: &str,
        message: &str,
        details: Value,
    ) -> Result<bool, StoreError> {
        let tenant = self.context().tenant_id();
        let failed = execute!(
            &mut *tx,
            "UPDATE runs SET status = 'failed', error_code = $3, error_message = $4, updated_at = $5 \
             WHERE tenant_id = $1 AND run_id = $2 AND status = 'running'",
            tenant.as_str(),
            run_id,
            code,
            message,
            now_millis(),
        )?;
        if failed == 0 {
            return Ok(false);
        }
        audit::append(
            tx,
            tenant,
            &self.origin(),
            AuditDraft {
                action: "run.failed",
                resource: format!("run/{run_id}"),
                outcome: Outcome::Failure,
                details,
            },
        )
        .await?;
        Ok(true)
    }

    /// Marks failed with `code` every run of this tenant still `running` in process `pid`: a
    /// dedicated worker died, and these were in it, however they reached it (a run, a
    /// gateway call running an agent, a resumed approval). Returns the runs it failed.
    pub async fn fail_runs_of_process(
        &self,
        pid: u32,
        code: &str,
        message: &str,
    ) -> Result<Vec<String>, StoreError> {
        let tenant = self.context().tenant_id();
        let mut tx = self.begin(Access::Write).await?;
        let runs: Vec<(String,)> = fetch_all!(
            &mut tx,
            (String,),
            "SELECT run_id FROM runs WHERE tenant_id = $1 AND process_id = $2 AND status = 'running' \
             ORDER BY run_id",
            tenant.as_str(),
            i64::from(pid),
        )?;
        for (run_id,) in &runs {
            let details = json!({"code": code, "message": message, "process_id": pid});
            self.fail_if_running(&mut tx, run_id, code, message, details)
                .await?;
        }
        tx.commit().await?;
        Ok(runs.into_iter().map(|(run_id,)| run_id).collect())
    }
}

impl AdminStore<'_> {
    /// Marks every run still `running` as failed: called at start, when no run of this
    /// process can be in flight, so these were cut off by a crash. Returns how many.
    pub async fn fail_interrupted_runs(&self) -> Result<u64, StoreError> {
        let mut tx = self
            .backend()
            .begin(Access::Write, Scope::ControlPlane)
            .await?;
        let failed = execute!(
            &mut tx,
            "UPDATE runs SET status = 'failed', error_code = 'interrupted', \
             error_message = 'the server stopped while the run was in progress', updated_at = $1 \
             WHERE status = 'running'",
            now_millis(),
        )?;
        tx.commit().await?;
        Ok(failed)
    }
}
