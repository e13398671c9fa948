-- Conversation threads: per tenant and end user. A run with a thread id continues it.
CREATE TABLE threads (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    thread_id  TEXT    NOT NULL,
    end_user   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, thread_id)
) STRICT;

CREATE TABLE thread_messages (
    tenant_id  TEXT    NOT NULL,
    thread_id  TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    role       TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, thread_id, seq),
    FOREIGN KEY (tenant_id, thread_id) REFERENCES threads (tenant_id, thread_id) ON DELETE CASCADE
) STRICT;

ALTER TABLE runs ADD COLUMN thread_id TEXT;
