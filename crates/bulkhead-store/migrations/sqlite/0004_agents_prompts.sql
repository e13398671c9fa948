-- Agents (every change a new version; runs will record the version they used) and each
-- tenant's prompt snippet library.

CREATE TABLE agents (
    tenant_id       TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    current_version INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) STRICT;

CREATE TABLE agent_versions (
    tenant_id  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    spec       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name, version),
    FOREIGN KEY (tenant_id, name) REFERENCES agents (tenant_id, name) ON DELETE CASCADE
) STRICT;

CREATE TABLE prompts (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    template   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) STRICT;
