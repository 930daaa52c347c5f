-- The per-key index (issue 13): every record under each key its event
-- names (keyledger_core::touched_keys: both keys of a rotation), written in
-- the append's own statement, so it always reflects exactly the log. A
-- key's history and a point-in-time state read a key's records through it
-- instead of scanning the tenant's trail.
CREATE TABLE keyledger.key_events (
    tenant   text COLLATE "C" NOT NULL,
    -- The key id's 128 bits, big-endian: bytea sorts them as numbers.
    key_id   bytea NOT NULL CHECK (octet_length(key_id) = 16),
    seq      bigint NOT NULL CHECK (seq > 0),
    position bigint NOT NULL CHECK (position > 0),
    PRIMARY KEY (tenant, key_id, seq)
);

-- Records appended before this migration have no entries yet: the first
-- node to connect fills them in (decoding the events takes Rust), in one
-- transaction, and sets `upto` to 0. Until then it is the last position
-- that needs them.
CREATE TABLE keyledger.key_index_backfill (
    upto bigint NOT NULL CHECK (upto >= 0)
);
INSERT INTO keyledger.key_index_backfill (upto)
    SELECT coalesce(max(position), 0) FROM keyledger.events;
