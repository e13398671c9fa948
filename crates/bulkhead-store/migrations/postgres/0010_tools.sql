-- Tools: each tenant's toolsets (connectors it declared), its Cedar policies, and the tool
-- calls waiting for a person's approval. A run waiting for one is `awaiting_approval`.
CREATE TABLE toolsets (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    version    BIGINT NOT NULL,
    spec       TEXT    NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE tenant_policies (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    version    BIGINT NOT NULL,
    text       TEXT    NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- Counts changes to a tenant's policies, so a process holding them parsed can tell it is stale
-- with one single-row read.
CREATE TABLE policy_heads (
    tenant_id  TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    generation BIGINT NOT NULL
);

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
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    decided_at   BIGINT,
    -- A call approved outside a run (through the MCP gateway) is made once, when its caller
    -- retries it; this records that it was.
    consumed_at  BIGINT,
    PRIMARY KEY (tenant_id, approval_id)
);
CREATE INDEX approvals_by_status ON approvals (tenant_id, status, created_at);
CREATE INDEX approvals_expiring ON approvals (status, expires_at);

ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('running', 'awaiting_approval', 'completed', 'failed'));

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['toolsets', 'tenant_policies', 'policy_heads', 'approvals'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO bulkhead_tenant '
            'USING (tenant_id = current_setting(''bulkhead.tenant_id'', true)) '
            'WITH CHECK (tenant_id = current_setting(''bulkhead.tenant_id'', true))', t);
        EXECUTE format('CREATE POLICY control_plane ON %I TO bulkhead_control USING (true) WITH CHECK (true)', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO bulkhead_tenant, bulkhead_control', t);
    END LOOP;
END $$;
