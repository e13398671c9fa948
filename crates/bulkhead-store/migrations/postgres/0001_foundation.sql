-- Tenants, their credentials and the audit spine.
--
-- Isolation is enforced twice: every query binds tenant_id, and row-level security (ENABLED
-- and FORCED) filters by the transaction's bulkhead.tenant_id setting. The server's queries run
-- as one of two non-owner roles without BYPASSRLS, switched per transaction with
-- set_config('role', ...): bulkhead_tenant sees only the current tenant's rows; bulkhead_control
-- (the control plane) sees all. tenant_id comes first in every primary, unique and foreign key,
-- because uniqueness and foreign-key checks bypass row-level security.

DO $$
BEGIN
    CREATE ROLE bulkhead_tenant NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

DO $$
BEGIN
    CREATE ROLE bulkhead_control NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- The connecting (owner) role must be able to switch to both.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'bulkhead_tenant', 'MEMBER') THEN
        EXECUTE format('GRANT bulkhead_tenant TO %I', current_user);
    END IF;
    IF NOT pg_has_role(current_user, 'bulkhead_control', 'MEMBER') THEN
        EXECUTE format('GRANT bulkhead_control TO %I', current_user);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO bulkhead_tenant, bulkhead_control', current_schema());
END $$;

CREATE TABLE tenants (
    tenant_id  TEXT   NOT NULL PRIMARY KEY,
    name       TEXT   NOT NULL,
    region     TEXT   NOT NULL,
    isolation  TEXT   NOT NULL CHECK (isolation IN ('shared', 'dedicated')),
    status     TEXT   NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    tenant_id      TEXT   NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    key_id         TEXT   NOT NULL,
    name           TEXT   NOT NULL,
    role           TEXT   NOT NULL,
    secret_hash    TEXT   NOT NULL,
    display_prefix TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    PRIMARY KEY (tenant_id, key_id)
);

CREATE INDEX api_keys_by_key_id ON api_keys (key_id);

CREATE TABLE jwt_issuers (
    tenant_id    TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    issuer_id    TEXT    NOT NULL,
    issuer       TEXT    NOT NULL,
    audience     TEXT    NOT NULL,
    algorithms   TEXT    NOT NULL,
    jwks         TEXT,
    jwks_path    TEXT,
    tenant_claim TEXT    NOT NULL,
    roles_claim  TEXT    NOT NULL,
    require_nbf  BOOLEAN NOT NULL,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, issuer_id)
);

CREATE INDEX jwt_issuers_by_issuer ON jwt_issuers (issuer);

CREATE TABLE audit_heads (
    tenant_id TEXT   NOT NULL PRIMARY KEY,
    seq       BIGINT NOT NULL,
    hash      TEXT   NOT NULL
);

CREATE TABLE audit_events (
    tenant_id   TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    resource    TEXT   NOT NULL,
    outcome     TEXT   NOT NULL,
    request_id  TEXT,
    details     TEXT   NOT NULL,
    prev_hash   TEXT   NOT NULL,
    hash        TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE platform_settings (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
GRANT SELECT, INSERT, UPDATE ON platform_settings TO bulkhead_control;

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'api_keys', 'jwt_issuers', 'audit_heads', 'audit_events'] LOOP
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

-- The audit log is append-only for everyone the server acts as; a tenant cannot change its own
-- tenant record (only the control plane can).
REVOKE UPDATE, DELETE ON audit_events FROM bulkhead_tenant, bulkhead_control;
REVOKE INSERT, UPDATE, DELETE ON tenants FROM bulkhead_tenant;
