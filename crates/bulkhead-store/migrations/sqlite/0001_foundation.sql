-- Tenants, their credentials and the audit spine. Every tenant table is keyed by tenant_id
-- first, as on PostgreSQL, so the two backends hold the same shapes.

CREATE TABLE tenants (
    tenant_id  TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    region     TEXT    NOT NULL,
    isolation  TEXT    NOT NULL CHECK (isolation IN ('shared', 'dedicated')),
    status     TEXT    NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    tenant_id      TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    key_id         TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    role           TEXT    NOT NULL,
    secret_hash    TEXT    NOT NULL,
    display_prefix TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    PRIMARY KEY (tenant_id, key_id)
) STRICT;

-- Authentication finds a key by its generated id before it knows the tenant.
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
    require_nbf  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, issuer_id)
) STRICT;

CREATE INDEX jwt_issuers_by_issuer ON jwt_issuers (issuer);

-- Audit rows outlive their tenant (no foreign key), so a deletion stays on the record.
CREATE TABLE audit_heads (
    tenant_id TEXT    NOT NULL PRIMARY KEY,
    seq       INTEGER NOT NULL,
    hash      TEXT    NOT NULL
) STRICT;

CREATE TABLE audit_events (
    tenant_id   TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    resource    TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    request_id  TEXT,
    details     TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) STRICT;

-- Platform-wide settings, such as the admin token's hash. Not tenant data.
CREATE TABLE platform_settings (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
