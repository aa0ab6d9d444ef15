-- The format of a merchant's webhooks (issue 26): `payrail` (payrail's event objects,
-- `Payrail-Signature`) or `stripe` (Stripe event objects, `Stripe-Signature`, for a merchant
-- whose integration verifies with a Stripe SDK's `construct_event`). Chosen at creation.
ALTER TABLE merchants
    ADD COLUMN IF NOT EXISTS webhook_api TEXT NOT NULL DEFAULT 'payrail'
    CHECK (webhook_api IN ('payrail', 'stripe'));
