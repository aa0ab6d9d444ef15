-- Epoch fencing (cluster): every record carries the epoch of its writer's partition lease.
-- A spooled record keeps the epoch it was acknowledged under, so its replay is fenced like
-- the direct append it stands for.
ALTER TABLE journal_spool ADD COLUMN IF NOT EXISTS owner_epoch BIGINT NOT NULL DEFAULT 0;

-- The highest owner epoch a consumer has seen in a partition, stored with its position: a
-- consumer that restarts keeps ignoring records of superseded owners.
ALTER TABLE journal_offsets ADD COLUMN IF NOT EXISTS owner_epoch BIGINT NOT NULL DEFAULT 0;
