-- The analytics rollups' amounts are sums of many payments: at BIGINT a busy merchant's or
-- channel's day could pass i64::MAX, and then every upsert into the row failed with "bigint
-- out of range" (the analytics pool retried its batch forever), as did the readers'
-- `sum(...)::BIGINT` across shards. NUMERIC(38,0) holds every sum of 64-bit amounts a
-- rollup can reach; its values fit i128, which the readers parse them into (read as text:
-- no floats). Counts stay BIGINT (one per payment). The CHECK on created_amount keeps
-- meaning the same (never negative) on the wider type. Changing a column to the type it
-- already has is a no-op, so this can run again.
ALTER TABLE analytics_merchant_daily
    ALTER COLUMN created_amount   TYPE NUMERIC(38,0),
    ALTER COLUMN succeeded_amount TYPE NUMERIC(38,0),
    ALTER COLUMN failed_amount    TYPE NUMERIC(38,0),
    ALTER COLUMN refunded_amount  TYPE NUMERIC(38,0),
    ALTER COLUMN fees             TYPE NUMERIC(38,0);
ALTER TABLE analytics_channel_daily
    ALTER COLUMN created_amount   TYPE NUMERIC(38,0),
    ALTER COLUMN succeeded_amount TYPE NUMERIC(38,0),
    ALTER COLUMN failed_amount    TYPE NUMERIC(38,0),
    ALTER COLUMN refunded_amount  TYPE NUMERIC(38,0);
