-- The W3C trace an event was recorded under, to go from an audit event to its spans. Hashed
-- into the chain when present; events written before this column have none, and their
-- hashes are unchanged.
ALTER TABLE audit_events ADD COLUMN trace_id TEXT;

-- How far each tenant's chain has been published to the audit stream (NATS JetStream):
-- events up to published_seq were acknowledged by the stream. The publisher reads forward
-- from here, so the events table itself is the outbox and nothing is written twice.
CREATE TABLE audit_stream_cursors (
    tenant_id     TEXT   NOT NULL PRIMARY KEY,
    published_seq INTEGER NOT NULL
) STRICT;
