-- Ranges of a journal partition voided by a takeover through the spool (issue 22): a record
-- written under an epoch below `epoch` at an offset at or past `from_offset` takes effect in
-- no reader. Written in the takeover's transaction, before the new owner decides anything;
-- read by every reader in the transaction that applies a batch (kafka_journal::offsets,
-- `load_void_fences`). One row per takeover in fallback; rows are never removed (a reader
-- rebuilt from offset 0 needs them all), and there are few.
CREATE TABLE IF NOT EXISTS journal_void_fences (
    topic       TEXT        NOT NULL,
    partition   INT         NOT NULL,
    epoch       BIGINT      NOT NULL,
    from_offset BIGINT      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, epoch)
);
