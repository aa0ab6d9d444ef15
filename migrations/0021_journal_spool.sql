-- The fallback spool (DESIGN "Journal unavailable: fallback"): while a partition is in
-- fallback its events are written here, in order, before the reply, and appended to the
-- journal when it returns. See kafka_journal::spool.

-- One row per partition in fallback: when it began, the journal's high watermark then (a
-- pool applies the partition's spooled events only after the journal below it), and the
-- next spool sequence.
CREATE TABLE IF NOT EXISTS journal_fallback (
    topic                    TEXT        NOT NULL,
    partition                INTEGER     NOT NULL CHECK (partition >= 0),
    began_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    high_watermark_at_start  BIGINT,
    next_sequence            BIGINT      NOT NULL DEFAULT 1 CHECK (next_sequence >= 1),
    PRIMARY KEY (topic, partition)
);

CREATE TABLE IF NOT EXISTS journal_spool (
    topic        TEXT        NOT NULL,
    partition    INTEGER     NOT NULL CHECK (partition >= 0),
    sequence     BIGINT      NOT NULL CHECK (sequence >= 1),
    record_key   TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    event_type   TEXT        NOT NULL,
    schema_version TEXT      NOT NULL,
    content_type TEXT        NOT NULL,
    value        BYTEA       NOT NULL,
    spooled_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, sequence)
);
CREATE UNIQUE INDEX IF NOT EXISTS journal_spool_event ON journal_spool (event_id);
