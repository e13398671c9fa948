-- Knowledge bases: documents, their chunks and embeddings, per tenant. `generation` counts
-- changes, so a process holding a knowledge base's index in memory can tell it is stale.
CREATE TABLE knowledge_bases (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    kb         TEXT    NOT NULL,
    embedder   TEXT    NOT NULL,
    dimensions INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    -- Chunk ids are handed out from this counter: never reused, so a stale id in a cached
    -- index cannot name a newer chunk.
    next_chunk_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kb)
) STRICT;

CREATE TABLE kb_documents (
    tenant_id    TEXT    NOT NULL,
    kb           TEXT    NOT NULL,
    doc_id       TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    metadata     TEXT    NOT NULL,
    content_hash TEXT    NOT NULL,
    bytes        INTEGER NOT NULL,
    chunks       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kb, doc_id),
    FOREIGN KEY (tenant_id, kb) REFERENCES knowledge_bases (tenant_id, kb) ON DELETE CASCADE
) STRICT;

-- `embedding` is the vector as little-endian f32s.
CREATE TABLE kb_chunks (
    tenant_id    TEXT    NOT NULL,
    kb           TEXT    NOT NULL,
    chunk_id     INTEGER NOT NULL,
    doc_id       TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    heading_path TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    embedding    BLOB    NOT NULL,
    PRIMARY KEY (tenant_id, kb, chunk_id),
    FOREIGN KEY (tenant_id, kb, doc_id) REFERENCES kb_documents (tenant_id, kb, doc_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX kb_chunks_by_document ON kb_chunks (tenant_id, kb, doc_id);
