-- Consumed offsets and processed event ids of every journal consumer (see kafka_journal::offsets).
CREATE TABLE IF NOT EXISTS journal_offsets (
    consumer    TEXT        NOT NULL,
    topic       TEXT        NOT NULL,
    partition   INTEGER     NOT NULL CHECK (partition >= 0),
    next_offset BIGINT      NOT NULL CHECK (next_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

CREATE TABLE IF NOT EXISTS journal_processed_events (
    consumer     TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE IF NOT EXISTS journal_dead_letters (
    consumer      TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    partition     INTEGER     NOT NULL,
    record_offset BIGINT      NOT NULL,
    event_id      UUID,
    error         TEXT        NOT NULL,
    value         BYTEA       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition, record_offset)
);
