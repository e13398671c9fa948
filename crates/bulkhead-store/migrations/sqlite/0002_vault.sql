-- The credential vault: one wrapped data key per tenant, and that tenant's encrypted secrets.

CREATE TABLE tenant_keys (
    tenant_id   TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    kek_id      TEXT    NOT NULL,
    dek_version INTEGER NOT NULL,
    wrapped_dek BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
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
