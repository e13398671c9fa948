-- The credential vault: each tenant's wrapped data keys and its sealed secrets.

-- Every live version of a tenant's data key. The highest version seals new secrets; older
-- versions live only while a key rotation is re-sealing the secrets that still use them.
CREATE TABLE tenant_keys (
    tenant_id   TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    dek_version INTEGER NOT NULL,
    kek_id      TEXT    NOT NULL,
    wrapped_dek BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, dek_version)
) STRICT;

CREATE TABLE credentials (
    tenant_id   TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    connector   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    dek_version INTEGER NOT NULL,
    sealed      BLOB    NOT NULL,
    fields      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, connector)
) STRICT;
