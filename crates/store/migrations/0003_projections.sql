-- Projections for analysts (issue 13): tables the nodes keep from the log,
-- exactly as of keyledger.projections.position, and read-only views over
-- them in the schema keyledger_read (docs/operations.md, "SQL for analysts").
-- They are derived data: every row follows from the events, in order, and a
-- node rebuilds them from position 0 when the position says so.

CREATE TABLE keyledger.projections (
    name       text PRIMARY KEY,
    position   bigint NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO keyledger.projections (name, position) VALUES ('analytics', 0);

-- Microseconds since the epoch (the log's time) as timestamptz, exactly.
CREATE FUNCTION keyledger.from_micros(bigint) RETURNS timestamptz
    IMMUTABLE STRICT LANGUAGE sql
    AS $$ SELECT timestamptz 'epoch' + $1 * interval '1 microsecond' $$;

-- Every key of every tenant, revoked ones included: its current state.
CREATE TABLE keyledger.keys (
    key_id        text PRIMARY KEY,
    tenant        text NOT NULL,
    owner         text NOT NULL,
    name          text NOT NULL,
    description   text,
    created_at    timestamptz NOT NULL,
    created_by    text NOT NULL,
    expires_at    timestamptz,
    scopes        text NOT NULL,
    masked        text NOT NULL,
    rotated_from  text,
    rotated_to    text,
    revoked_at    timestamptz,
    revoked_by    text,
    revoke_reason text,
    last_used_at  timestamptz,
    -- The key's metadata, a JSON object (NULL: none).
    meta          jsonb,
    -- Its credits (all NULL: unlimited uses). credits_remaining is the
    -- log's: what no node has reserved yet (a node spends its reserved
    -- block in memory); credits_epoch is the tenant sequence number of the
    -- event that started the current credit epoch.
    credits_remaining bigint,
    credits_epoch     bigint,
    refill_amount     bigint,
    refill_interval   text,
    refill_day        smallint,
    -- Its named rate limits: [{"name", "limit", "duration_ms"}].
    limits        jsonb NOT NULL DEFAULT '[]',
    -- The position of the last event that changed the row.
    position      bigint NOT NULL
);
CREATE INDEX keys_by_tenant ON keyledger.keys (tenant, created_at, key_id);
CREATE INDEX keys_by_owner ON keyledger.keys (tenant, owner);

-- Verifications per key per UTC day, by outcome: kept forever.
CREATE TABLE keyledger.usage_daily (
    tenant             text NOT NULL,
    key_id             text NOT NULL,
    day                date NOT NULL,
    valid              bigint NOT NULL DEFAULT 0,
    revoked            bigint NOT NULL DEFAULT 0,
    expired            bigint NOT NULL DEFAULT 0,
    insufficient_scope bigint NOT NULL DEFAULT 0,
    usage_exceeded     bigint NOT NULL DEFAULT 0,
    rate_limited       bigint NOT NULL DEFAULT 0,
    -- The sum of the costs of the valid uses (0 for a key without credits).
    credits_spent      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, key_id, day)
);
CREATE INDEX usage_daily_by_day ON keyledger.usage_daily (tenant, day);

CREATE SCHEMA IF NOT EXISTS keyledger_read;

CREATE VIEW keyledger_read.keys AS
SELECT tenant, key_id, owner, name, description, created_at, created_by,
       expires_at, scopes, masked, rotated_from, rotated_to, revoked_at,
       revoked_by, revoke_reason, last_used_at, meta, credits_remaining,
       refill_amount, refill_interval, refill_day, limits,
       CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
            WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'
            ELSE 'active' END AS status
FROM keyledger.keys;

CREATE VIEW keyledger_read.usage_daily AS
SELECT tenant, key_id, day, valid, revoked, expired, insufficient_scope,
       usage_exceeded, rate_limited, credits_spent,
       valid + revoked + expired + insufficient_scope + usage_exceeded
         + rate_limited AS total
FROM keyledger.usage_daily;

-- How far the projections are behind the log.
CREATE VIEW keyledger_read.freshness AS
SELECT p.position AS projected_position,
       (SELECT coalesce(max(position), 0) FROM keyledger.events) AS log_head,
       p.updated_at
FROM keyledger.projections p WHERE p.name = 'analytics';
