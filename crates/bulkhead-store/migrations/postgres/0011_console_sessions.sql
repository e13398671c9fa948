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
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_hash)
);
CREATE UNIQUE INDEX console_sessions_by_hash ON console_sessions (session_hash);

ALTER TABLE console_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE console_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON console_sessions TO bulkhead_tenant
    USING (tenant_id = current_setting('bulkhead.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true));
CREATE POLICY control_plane ON console_sessions TO bulkhead_control USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON console_sessions TO bulkhead_tenant, bulkhead_control;
