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

ALTER TABLE knowledge_bases ENABLE ROW LEVEL SECURITY;
ALTER TABLE knowledge_bases FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON knowledge_bases TO bulkhead_tenant
    USING (tenant_id = current_setting('bulkhead.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
CREATE POLICY control_plane ON knowledge_bases TO bulkhead_control USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON knowledge_bases TO bulkhead_tenant, bulkhead_control;

ALTER TABLE kb_documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE kb_documents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kb_documents TO bulkhead_tenant
    USING (tenant_id = current_setting('bulkhead.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
CREATE POLICY control_plane ON kb_documents TO bulkhead_control USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON kb_documents TO bulkhead_tenant, bulkhead_control;

ALTER TABLE kb_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE kb_chunks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kb_chunks TO bulkhead_tenant
    USING (tenant_id = current_setting('bulkhead.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
CREATE POLICY control_plane ON kb_chunks TO bulkhead_control USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON kb_chunks TO bulkhead_tenant, bulkhead_control;
