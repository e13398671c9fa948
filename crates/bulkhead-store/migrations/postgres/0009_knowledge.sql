-- Knowledge bases: documents, their chunks and embeddings, per tenant. `generation` counts
-- changes, so a process holding a knowledge base's index in memory can tell it is stale.
CREATE TABLE knowledge_bases (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    kb         TEXT    NOT NULL,
    embedder   TEXT    NOT NULL,
    dimensions BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    -- Chunk ids are handed out from this counter: never reused, so a stale id in a cached
    -- index cannot name a newer chunk.
    next_chunk_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, kb)
);

CREATE TABLE kb_documents (
    tenant_id    TEXT    NOT NULL,
    kb           TEXT    NOT NULL,
    doc_id       TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    metadata     TEXT    NOT NULL,
    content_hash TEXT    NOT NULL,
    bytes        BIGINT NOT NULL,
    chunks       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, kb, doc_id),
    FOREIGN KEY (tenant_id, kb) REFERENCES knowledge_bases (tenant_id, kb) ON DELETE CASCADE
);

-- `embedding` is the vector as little-endian f32s.
CREATE TABLE kb_chunks (
    tenant_id    TEXT    NOT NULL,
    kb           TEXT    NOT NULL,
    chunk_id     BIGINT NOT NULL,
    doc_id       TEXT    NOT NULL,
    position     BIGINT NOT NULL,
    heading_path TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    embedding    BYTEA   NOT NULL,
    PRIMARY KEY (tenant_id, kb, chunk_id),
    FOREIGN KEY (tenant_id, kb, doc_id) REFERENCES kb_documents (tenant_id, kb, doc_id) ON DELETE CASCADE
);
CREATE INDEX kb_chunks_by_document ON kb_chunks (tenant_id, kb, doc_id);

-- Row-level security as on every tenant table.
DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['knowledge_bases', 'kb_documents', 'kb_chunks'] LOOP
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
