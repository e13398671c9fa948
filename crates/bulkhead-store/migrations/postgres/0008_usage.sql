-- Token usage per tenant, day (UTC) and model: what the gateway and agent runs consumed.
CREATE TABLE usage_daily (
    tenant_id     TEXT   NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    day           TEXT   NOT NULL,
    model         TEXT   NOT NULL,
    requests      BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, model)
);

ALTER TABLE usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_daily TO bulkhead_tenant
    USING (tenant_id = current_setting('bulkhead.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
CREATE POLICY control_plane ON usage_daily TO bulkhead_control USING (true) WITH CHECK (true);
-- Tenants read their usage; only the meter (control plane) writes it.
GRANT SELECT ON usage_daily TO bulkhead_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_daily TO bulkhead_control;
