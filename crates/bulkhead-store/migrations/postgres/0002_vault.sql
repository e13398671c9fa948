-- The credential vault: each tenant's wrapped data keys and its sealed secrets.

-- Every live version of a tenant's data key. The highest version seals new secrets; older
-- versions live only while a key rotation is re-sealing the secrets that still use them.
CREATE TABLE tenant_keys (
    tenant_id   TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    dek_version BIGINT  NOT NULL,
    kek_id      TEXT    NOT NULL,
    wrapped_dek BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, dek_version)
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
