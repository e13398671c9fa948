-- Agents (every change a new version; runs will record the version they used) and each
-- tenant's prompt snippet library.

CREATE TABLE agents (
    tenant_id       TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    current_version BIGINT  NOT NULL,
    deleted         BOOLEAN NOT NULL DEFAULT false,
    updated_at      BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE agent_versions (
    tenant_id  TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    spec       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, name) REFERENCES agents (tenant_id, name) ON DELETE CASCADE
);

CREATE TABLE prompts (
    tenant_id  TEXT   NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    template   TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['agents', 'agent_versions', 'prompts'] LOOP
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
