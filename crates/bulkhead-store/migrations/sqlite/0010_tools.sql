-- Tools: each tenant's toolsets (connectors it declared), its Cedar policies, and the tool
-- calls waiting for a person's approval. A run waiting for one is `awaiting_approval`.
CREATE TABLE toolsets (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    spec       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) STRICT;

CREATE TABLE tenant_policies (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    text       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) STRICT;

-- Counts changes to a tenant's policies, so a process holding them parsed can tell it is stale
-- with one single-row read.
CREATE TABLE policy_heads (
    tenant_id  TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    generation INTEGER NOT NULL
) STRICT;

-- `run_id` is empty for a call made through the MCP gateway, which has no run to pause.
CREATE TABLE approvals (
    tenant_id    TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    approval_id  TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    agent        TEXT    NOT NULL,
    tool         TEXT    NOT NULL,
    tool_call_id TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    target       TEXT    NOT NULL,
    arguments    TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    decided_by   TEXT,
    reason       TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    decided_at   INTEGER,
    -- A call approved outside a run (through the MCP gateway) is made once, when its caller
    -- retries it; this records that it was.
    consumed_at  INTEGER,
    PRIMARY KEY (tenant_id, approval_id)
) STRICT;
CREATE INDEX approvals_by_status ON approvals (tenant_id, status, created_at);
CREATE INDEX approvals_expiring ON approvals (status, expires_at);

-- SQLite cannot alter a CHECK constraint: rebuild `runs` with the new status. Nothing
-- references `runs`, so it can be dropped inside the migration's transaction.
CREATE TABLE runs_new (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    run_id        TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    agent_version INTEGER NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('running', 'awaiting_approval', 'completed', 'failed')),
    input         TEXT    NOT NULL,
    output        TEXT,
    error_code    TEXT,
    error_message TEXT,
    transcript    TEXT    NOT NULL,
    steps         INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    thread_id     TEXT,
    PRIMARY KEY (tenant_id, run_id)
) STRICT;
INSERT INTO runs_new (tenant_id, run_id, agent, agent_version, status, input, output, error_code,
    error_message, transcript, steps, input_tokens, output_tokens, created_at, updated_at, thread_id)
SELECT tenant_id, run_id, agent, agent_version, status, input, output, error_code,
    error_message, transcript, steps, input_tokens, output_tokens, created_at, updated_at, thread_id
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
