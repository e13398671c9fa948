-- Console sessions: a signed-in browser's cookie, stored as its SHA-256. Looked up before the
-- tenant is known (like API keys), so keyed by tenant first with an index on the hash.
CREATE TABLE console_sessions (
    tenant_id    TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    session_hash TEXT    NOT NULL,
    -- 'key' (api_key_id set) or 'user' (issuer, subject and roles from the JWT).
    principal    TEXT    NOT NULL CHECK (principal IN ('key', 'user')),
    api_key_id   TEXT,
    issuer       TEXT,
    subject      TEXT,
    roles        TEXT    NOT NULL,
    -- Echoed in every form; a POST without it is refused (with SameSite=Strict cookies).
    csrf_token   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, session_hash)
) STRICT;
CREATE UNIQUE INDEX console_sessions_by_hash ON console_sessions (session_hash);
