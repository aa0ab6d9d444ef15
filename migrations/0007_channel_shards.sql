-- The channel rollup had one row per (channel, day, currency): every partition worker of the
-- analytics pool updated the same hot row, so their transactions queued on its row lock and
-- the pool lagged under load. Each journal partition now owns its own row (`shard` = the
-- partition); readers sum the shards.
ALTER TABLE analytics_channel_daily ADD COLUMN IF NOT EXISTS shard INT NOT NULL DEFAULT 0;
ALTER TABLE analytics_channel_daily DROP CONSTRAINT IF EXISTS analytics_channel_daily_pkey;
ALTER TABLE analytics_channel_daily ADD PRIMARY KEY (channel, day, currency, shard);
