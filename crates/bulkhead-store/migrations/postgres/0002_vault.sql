-- The credential vault: one wrapped data key per tenant, and that tenant's encrypted secrets.

CREATE TABLE tenant_keys (
    tenant_id   TEXT   NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    kek_id      TEXT   NOT NULL,
    dek_version BIGINT NOT NULL,
    wrapped_dek BYTEA  NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE credentials (
    tenant_id   TEXT   NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    connector   TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    dek_version BIGINT NOT NULL,
    sealed      BYTEA  NOT NULL,
    fields      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, connector)
);

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_keys', 'credentials'] LOOP
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
