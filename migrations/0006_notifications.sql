-- Notification pool: the merchant's webhook secret, the outbox of webhooks and e-mails, every
-- delivery attempt, and the payment state the pool folds from the journal to render bodies.

-- Stored as is: the node must sign with it (see docs/DECISIONS.md). Merchants created before
-- this migration get a random one (gen_random_uuid uses the server's strong random source).
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS webhook_secret TEXT;
UPDATE merchants
   SET webhook_secret = 'whsec_' || replace(gen_random_uuid()::text, '-', '')
                                 || replace(gen_random_uuid()::text, '-', '')
 WHERE webhook_secret IS NULL;
ALTER TABLE merchants ALTER COLUMN webhook_secret SET NOT NULL;

-- One row per (event, channel). status: pending (not tried yet, or resent), failed (last
-- attempt failed, retry scheduled), delivered, dead (every attempt failed; published to
-- <namespace>notification.dlq once dlq_published_at is set).
CREATE TABLE IF NOT EXISTS notifications (
    id               TEXT        PRIMARY KEY,
    channel          TEXT        NOT NULL CHECK (channel IN ('webhook', 'email')),
    merchant_id      TEXT        NOT NULL,
    -- NULL for notifications that belong to no payment (e.g. settlement events, later).
    payment_id       TEXT,
    event_id         UUID        NOT NULL,
    event_type       TEXT        NOT NULL,
    sequence         BIGINT      NOT NULL,
    -- webhook: the JSON body sent; email: {to, subject, text}.
    payload          JSONB       NOT NULL,
    status           TEXT        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
    attempts         INTEGER     NOT NULL DEFAULT 0,
    -- attempts made before the last resend; the retry schedule counts from here.
    round_start      INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- a delivery task holds the row until then (crash-safe claim across nodes).
    locked_until     TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    dlq_published_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (event_id, channel)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS notifications_order ON notifications (payment_id, channel, sequence);
CREATE INDEX IF NOT EXISTS notifications_merchant ON notifications (merchant_id, created_at);
CREATE INDEX IF NOT EXISTS notifications_dlq ON notifications (updated_at)
    WHERE status = 'dead' AND dlq_published_at IS NULL;

CREATE TABLE IF NOT EXISTS notification_attempts (
    notification_id TEXT        NOT NULL REFERENCES notifications (id),
    attempt         INTEGER     NOT NULL CHECK (attempt >= 1),
    channel         TEXT        NOT NULL,
    attempted_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    http_status     INTEGER,
    error           TEXT,
    duration_ms     BIGINT      NOT NULL,
    PRIMARY KEY (notification_id, attempt)
);

-- The pool's own fold of each payment's events, so a notification shows the payment as of
-- its event (not as of whatever another projector has applied).
CREATE TABLE IF NOT EXISTS notification_payment_states (
    payment_id  TEXT        PRIMARY KEY,
    merchant_id TEXT        NOT NULL,
    sequence    BIGINT      NOT NULL,
    state       JSONB       NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
