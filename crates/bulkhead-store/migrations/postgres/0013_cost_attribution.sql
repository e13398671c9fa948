-- Usage is attributed to the agent that spent it ('' for plain gateway calls), so cost can be
-- shown per tenant, agent and model.
ALTER TABLE usage_daily ADD COLUMN agent TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_pkey;
ALTER TABLE usage_daily ADD PRIMARY KEY (tenant_id, day, model, agent);

-- Tool calls per tenant, day, agent ('' for calls through /mcp) and tool (`toolset.operation`).
CREATE TABLE tool_usage_daily (
    tenant_id TEXT   NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    day       TEXT   NOT NULL,
    agent     TEXT   NOT NULL,
    tool      TEXT   NOT NULL,
    calls     BIGINT NOT NULL,
    failures  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, agent, tool)
);

ALTER TABLE tool_usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_usage_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tool_usage_daily TO bulkhead_tenant
    USING (tenant_id = current_setting('bulkhead.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
CREATE POLICY control_plane ON tool_usage_daily TO bulkhead_control USING (true) WITH CHECK (true);
-- Tenants read their usage; only the meter (control plane) writes it.
GRANT SELECT ON tool_usage_daily TO bulkhead_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE ON tool_usage_daily TO bulkhead_control;
