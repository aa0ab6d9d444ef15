-- API keys replaced by `POST /v1/merchants/{id}/roll_api_key` (issue 23). A roll moves the
-- merchant's current key hash here with the moment it stops working (`expires_at`; the
-- moment of the roll itself when the old key is refused at once) and puts the new key's
-- hash in `merchants`. A merchant rolled twice has two rows, each with its own expiry: a
-- key given a grace period keeps it whatever rolls follow. Rows stay after they expire, as
-- the record of the merchant's rolls (a key is 256 random bits: no row is ever reused).
CREATE TABLE IF NOT EXISTS rolled_api_keys (
    key_hash    TEXT        PRIMARY KEY,
    merchant_id TEXT        NOT NULL REFERENCES merchants (id),
    last4       TEXT        NOT NULL,
    rolled_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    CHECK (expires_at >= rolled_at)
);
CREATE INDEX IF NOT EXISTS rolled_api_keys_by_merchant ON rolled_api_keys (merchant_id, rolled_at);
