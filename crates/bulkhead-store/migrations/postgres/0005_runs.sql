-- Agent runs: the version they used, their transcript and outcome. A run found "running" at
-- start was cut off by a crash and is marked failed.
CREATE TABLE runs (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    run_id        TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    agent_version BIGINT NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    input         TEXT    NOT NULL,
    output        TEXT,
    error_code    TEXT,
    error_message TEXT,
    transcript    TEXT    NOT NULL,
    steps         BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, run_id)
);

ALTER TABLE runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE runs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON runs TO bulkhead_tenant
    USING (tenant_id = current_setting('bulkhead.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
CREATE POLICY control_plane ON runs TO bulkhead_control USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON runs TO bulkhead_tenant, bulkhead_control;
