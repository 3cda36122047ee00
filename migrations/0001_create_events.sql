-- The log: one row per record, with the same envelope as the file store's record format
-- (events/src/codec.rs). The record's bytes are rebuilt from these columns on every read
-- and their SHA-256 compared with `hash`, so a row altered here is refused, never served.
CREATE TABLE ledger_events (
    -- Global position: dense from 1, in commit order (see ledger_head).
    position           bigint      PRIMARY KEY CHECK (position > 0),
    stream_id          text        NOT NULL CHECK (octet_length(stream_id) BETWEEN 1 AND 255),
    stream_version     bigint      NOT NULL CHECK (stream_version > 0),
    event_id           uuid        NOT NULL UNIQUE,
    event_type         text        NOT NULL CHECK (octet_length(event_type) BETWEEN 1 AND 255),
    schema_version     integer     NOT NULL CHECK (schema_version BETWEEN 0 AND 65535),
    -- The exact instant the hash covers, in microseconds since 1970-01-01 UTC ...
    recorded_at_micros bigint      NOT NULL,
    -- ... and the same instant for people writing SQL.
    recorded_at        timestamptz NOT NULL,
    actor_kind         text        NOT NULL CHECK (actor_kind IN ('operator', 'terminal', 'system')),
    actor_name         text        NOT NULL,
    correlation_id     uuid        NOT NULL,
    -- The postcard payload at schema_version: what the hash covers.
    payload            bytea       NOT NULL,
    -- The event's fields as JSON (the catalogue's JSON form), for auditors' queries only.
    -- Never read back by the store: the payload is the truth.
    data               jsonb       NOT NULL,
    prev_hash          bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash               bytea       NOT NULL CHECK (octet_length(hash) = 32),
    CONSTRAINT ledger_events_stream_version_key UNIQUE (stream_id, stream_version)
);

COMMENT ON TABLE ledger_events IS
    'license-ledger event log; append-only, hash-chained (hash = SHA-256 of the record, see events/src/codec.rs)';
