-- Model aliases a tenant may use beyond the deployment's default list.
CREATE TABLE tenant_models (
    tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    alias     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, alias)
) STRICT;
