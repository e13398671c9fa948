-- Model aliases a tenant may use beyond the deployment's default list.
CREATE TABLE tenant_models (
    tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    alias     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, alias)
);

ALTER TABLE tenant_models ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_models FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_models TO bulkhead_tenant
    USING (tenant_id = current_setting('bulkhead.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
CREATE POLICY control_plane ON tenant_models TO bulkhead_control USING (true) WITH CHECK (true);
GRANT SELECT ON tenant_models TO bulkhead_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_models TO bulkhead_control;
