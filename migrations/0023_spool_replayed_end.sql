-- The journal's end after the last replayed batch of a fallback. Rows are removed from the
-- spool once replayed, so a pool fed over HTTP must have applied the journal up to here
-- before it takes a later spooled event (the removed rows come before it, in the journal).
ALTER TABLE journal_fallback ADD COLUMN IF NOT EXISTS replayed_end BIGINT;

-- The lowest journal offset copied into the spool when the fallback began: every record this
-- node journaled from there up to the high watermark was copied (offsets absent from the
-- log aside), so a pool at or past it can catch up from the copies, skipping gaps.
ALTER TABLE journal_fallback ADD COLUMN IF NOT EXISTS copied_from BIGINT;
