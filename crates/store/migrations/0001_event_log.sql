-- keyledger's event log in PostgreSQL: the same three structures as the
-- redb file (records by position, the per-tenant chain, the tenant heads).
--
-- Applied by PgLog on open, in one transaction, under an advisory lock, and
-- recorded in keyledger.schema_migrations. Never edit an applied migration:
-- add the next numbered file instead (PgLog refuses a database whose
-- recorded checksum differs from the file's).

-- One row per event. `position` is the global position: 1-based and
-- contiguous because appends are serialized (docs/adr/0004) and each takes
-- max(position) + 1, so no sequence (and no gap after a rollback).
CREATE TABLE keyledger.events (
    position  bigint PRIMARY KEY CHECK (position > 0),
    -- Tenant ids are ASCII; the "C" collation sorts them bytewise, as
    -- every other backend does.
    tenant    text COLLATE "C" NOT NULL,
    seq       bigint NOT NULL CHECK (seq > 0),
    prev_hash bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash      bytea NOT NULL CHECK (octet_length(hash) = 32),
    -- The envelope encoding of the event (crates/store/src/envelope.rs).
    payload   bytea NOT NULL,
    UNIQUE (tenant, seq)
);

-- Each tenant's last sequence number and hash, kept apart from the events
-- so a cut-off tail shows when the chain is verified.
CREATE TABLE keyledger.tenant_heads (
    tenant text COLLATE "C" PRIMARY KEY,
    seq    bigint NOT NULL CHECK (seq > 0),
    hash   bytea NOT NULL CHECK (octet_length(hash) = 32)
);
