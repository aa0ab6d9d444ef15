-- Merchants. API keys are stored only as SHA-256 hashes; the key itself is shown once.
CREATE TABLE IF NOT EXISTS merchants (
    id            TEXT        PRIMARY KEY,
    name          TEXT        NOT NULL,
    api_key_hash  TEXT        NOT NULL UNIQUE,
    api_key_last4 TEXT        NOT NULL,
    webhook_url   TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Latest state of each payment, projected from the journal by the partition owner.
-- A payment actor is rebuilt from its row (plus the journal tail the projector has not
-- applied yet, which the node waits for).
CREATE TABLE IF NOT EXISTS payment_snapshots (
    payment_id   TEXT        PRIMARY KEY,
    merchant_id  TEXT        NOT NULL,
    partition    INTEGER     NOT NULL,
    sequence     BIGINT      NOT NULL CHECK (sequence >= 1),
    state        JSONB       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payment_snapshots_merchant ON payment_snapshots (merchant_id, payment_id);

-- Idempotency keys of creates, with the first response, per merchant.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    merchant_id         TEXT        NOT NULL,
    idempotency_key     TEXT        NOT NULL,
    request_fingerprint TEXT        NOT NULL,
    payment_id          TEXT        NOT NULL,
    response            JSONB       NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, idempotency_key)
);
