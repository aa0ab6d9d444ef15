-- Payments are listed newest first by creation time. Ids no longer sort by time: a create
-- made under an Idempotency-Key gets an id derived from (merchant, key) (UUIDv5), so every
-- retry of that key converges on one payment.
CREATE INDEX IF NOT EXISTS payment_snapshots_merchant_created
    ON payment_snapshots (merchant_id, created_at DESC, payment_id DESC);
