-- Snapshots shared between the nodes (issue 13): each node publishes the
-- snapshots of its projections here as well as in its data directory, and
-- a node whose data directory has none it can use starts from the newest
-- one here and replays only the log after it (docs/operations.md,
-- "Snapshots"). Derived data, never trusted: a starting node checks one
-- exactly as it checks its own files (the checksum, the format, the log's
-- record at the position and every tenant's chain head) and refuses it
-- with a warning otherwise. Only the newest few are kept.

CREATE TABLE keyledger.snapshots (
    position   bigint PRIMARY KEY CHECK (position > 0),
    -- Every tenant's chain head at the position, for people reading the
    -- table: {"<tenant>": [<seq>, "<hash, hex>"]} (a starting node reads
    -- the heads from the snapshot itself and checks them against the log).
    heads      jsonb NOT NULL,
    -- The length and SHA-256 of the snapshot file's bytes, split into
    -- keyledger.snapshot_chunks (a bytea value holds at most 1 GB).
    bytes      bigint NOT NULL CHECK (bytes > 0),
    checksum   bytea NOT NULL CHECK (octet_length(checksum) = 32),
    -- The node that published it (its --node-id).
    node       text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE keyledger.snapshot_chunks (
    position bigint NOT NULL
        REFERENCES keyledger.snapshots (position) ON DELETE CASCADE,
    chunk    integer NOT NULL CHECK (chunk >= 0),
    bytes    bytea NOT NULL,
    PRIMARY KEY (position, chunk)
);
