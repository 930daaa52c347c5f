-- The keyledger nodes sharing this log: what each has applied to its
-- projections and when it last said so. A revocation can wait until every
-- node seen recently has applied it (EventLog::min_applied_live).
CREATE TABLE keyledger.nodes (
    node       text PRIMARY KEY,
    applied    bigint NOT NULL CHECK (applied >= 0),
    seen_at    timestamptz NOT NULL
);
