-- The spool's size per partition, kept with the partition's fallback row (whose lock already
-- serialises the partition's spool writers), so the spool.max_rows check costs a read of a
-- few rows instead of a count(*) over the whole spool per spooled command (which grew with
-- the spool and slowed a 60 s outage's node).
ALTER TABLE journal_fallback ADD COLUMN IF NOT EXISTS spooled_rows BIGINT NOT NULL DEFAULT 0;
UPDATE journal_fallback f
   SET spooled_rows = (SELECT count(*) FROM journal_spool s
                        WHERE s.topic = f.topic AND s.partition = f.partition);
