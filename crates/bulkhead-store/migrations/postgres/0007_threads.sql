-- Conversation threads: per tenant and end user. A run with a thread id continues it.
CREATE TABLE threads (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    thread_id  TEXT    NOT NULL,
    end_user   TEXT    NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, thread_id)
);

CREATE TABLE thread_messages (
    tenant_id  TEXT    NOT NULL,
    thread_id  TEXT    NOT NULL,
    seq        BIGINT NOT NULL,
    role       TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, thread_id, seq),
    FOREIGN KEY (tenant_id, thread_id) REFERENCES threads (tenant_id, thread_id) ON DELETE CASCADE
);

ALTER TABLE runs ADD COLUMN thread_id TEXT;

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['threads', 'thread_messages'] LOOP
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
