-- Usage is attributed to the agent that spent it ('' for plain gateway calls), so cost can be
-- shown per tenant, agent and model. SQLite cannot change a primary key: rebuild the table.
CREATE TABLE usage_daily_by_agent (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    day           TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    requests      INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day, model, agent)
) STRICT;
INSERT INTO usage_daily_by_agent
    SELECT tenant_id, day, model, '', requests, input_tokens, output_tokens FROM usage_daily;
DROP TABLE usage_daily;
ALTER TABLE usage_daily_by_agent RENAME TO usage_daily;

-- Tool calls per tenant, day, agent ('' for calls through /mcp) and tool (`toolset.operation`).
CREATE TABLE tool_usage_daily (
    tenant_id TEXT    NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    day       TEXT    NOT NULL,
    agent     TEXT    NOT NULL,
    tool      TEXT    NOT NULL,
    calls     INTEGER NOT NULL,
    failures  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day, agent, tool)
) STRICT;
