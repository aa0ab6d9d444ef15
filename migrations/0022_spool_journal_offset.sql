-- A spooled row copied from the journal when its partition entered fallback (records the
-- node had journaled but a local consumer had not applied yet) keeps its journal offset,
-- so a pool that lagged when the journal failed can catch up from the spool during the
-- outage, in offset order, before it applies the partition's fallback events. NULL for
-- events that were never journaled before they were spooled.
ALTER TABLE journal_spool ADD COLUMN IF NOT EXISTS journal_offset BIGINT;
