-- Token usage per tenant, day (UTC) and model: what the gateway and agent runs consumed.
CREATE TABLE usage_daily (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    day           TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    requests      INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day, model)
) STRICT;
