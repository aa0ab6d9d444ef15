-- Dead letters keep what a replay needs to decode the record again, and when it was replayed
-- (`payrail dlq replay`); a replayed dead letter is never replayed twice.
ALTER TABLE journal_dead_letters
    ADD COLUMN IF NOT EXISTS event_type   TEXT,
    ADD COLUMN IF NOT EXISTS content_type TEXT,
    ADD COLUMN IF NOT EXISTS record_key   BYTEA,
    ADD COLUMN IF NOT EXISTS replayed_at  TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS journal_dead_letters_pending
    ON journal_dead_letters (consumer, created_at) WHERE replayed_at IS NULL;
