-- How far each audit outbox file (outbox.rs) has been imported into the chains, written in
-- the same transaction as the events it imports. Control-plane bookkeeping, no tenant's data.
CREATE TABLE audit_outbox_files (
    file TEXT PRIMARY KEY,
    imported_bytes INTEGER NOT NULL
);
