-- The head of the log: one row, locked FOR UPDATE by every append transaction. Holding it
-- while positions, versions and hashes are assigned and until COMMIT makes commit order equal
-- position order and keeps positions dense, whichever node appends.
CREATE TABLE ledger_head (
    id                   smallint PRIMARY KEY CHECK (id = 1),
    last_position        bigint   NOT NULL CHECK (last_position >= 0),
    last_hash            bytea    NOT NULL CHECK (octet_length(last_hash) = 32),
    -- recorded_at of the last record; NULL while the log is empty. New records never get an
    -- earlier time, whatever the clocks of the nodes say.
    last_recorded_micros bigint
);

INSERT INTO ledger_head (id, last_position, last_hash, last_recorded_micros)
VALUES (1, 0, decode(repeat('00', 32), 'hex'), NULL);
