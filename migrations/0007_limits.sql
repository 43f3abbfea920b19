-- Fleet-wide limits, hot-reloaded into the queue's budgets. A budget name may end in `:*` to set
-- the default for every budget under that prefix (`c:tenant:hubspot:*`). Rows with
-- source = 'default' are crm-fleet's documented-quota seeds; operators add or override rows
-- (source = 'operator'), which win.
CREATE TABLE limits (
    budget      text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('concurrency', 'rate', 'weight')),
    count       integer NOT NULL CHECK (count > 0),
    period_ms   bigint CHECK (period_ms IS NULL OR period_ms > 0),   -- rate only
    burst       integer CHECK (burst IS NULL OR burst > 0),          -- rate only
    source      text NOT NULL DEFAULT 'operator' CHECK (source IN ('default', 'operator')),
    note        text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
