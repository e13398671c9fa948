-- Agent runs: the version they used, their transcript and outcome. A run found "running" at
-- start was cut off by a crash and is marked failed.
CREATE TABLE runs (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    run_id        TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    agent_version INTEGER NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
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
    PRIMARY KEY (tenant_id, run_id)
) STRICT;
