-- Analytics read model: created payments per merchant, UTC day and currency.
CREATE TABLE IF NOT EXISTS analytics_merchant_daily (
    merchant_id    TEXT    NOT NULL,
    day            DATE    NOT NULL,
    currency       TEXT    NOT NULL,
    created_count  BIGINT  NOT NULL DEFAULT 0 CHECK (created_count >= 0),
    created_amount BIGINT  NOT NULL DEFAULT 0 CHECK (created_amount >= 0),
    PRIMARY KEY (merchant_id, day, currency)
);
