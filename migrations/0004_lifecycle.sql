-- Lifecycle: what the sweeper looks for (stale processing, lapsing authorizations, pending
-- refunds), and the PSP webhooks received (de-duplicated by the PSP's event id).
ALTER TABLE payment_snapshots ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'requires_payment_method';
ALTER TABLE payment_snapshots ADD COLUMN IF NOT EXISTS has_pending_refund BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS payment_snapshots_sweep ON payment_snapshots (partition, status, updated_at)
    WHERE status IN ('processing', 'requires_capture') OR has_pending_refund;

CREATE TABLE IF NOT EXISTS psp_webhook_events (
    channel      TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    event_type   TEXT        NOT NULL,
    payment_id   TEXT,
    processed    BOOLEAN     NOT NULL DEFAULT false,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, event_id)
);
