-- Merchant pricing (fees), fixed per merchant so that replays compute the same fees.
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS fee_bps INTEGER NOT NULL DEFAULT 290 CHECK (fee_bps BETWEEN 0 AND 10000);
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS fee_fixed BIGINT NOT NULL DEFAULT 30 CHECK (fee_fixed >= 0);

-- Ledger pool: double-entry postings. One row per leg; legs of one transaction balance.
CREATE TABLE IF NOT EXISTS ledger_entries (
    posting_id     UUID        PRIMARY KEY,          -- uuid v5 of (source id, leg)
    transaction_id TEXT        NOT NULL,             -- event id or settlement id (+ purpose)
    account        TEXT        NOT NULL,             -- psp_clearing, merchant_pending, ...
    merchant_id    TEXT,                             -- for merchant accounts
    currency       TEXT        NOT NULL,
    debit          BIGINT      NOT NULL DEFAULT 0 CHECK (debit >= 0),
    credit         BIGINT      NOT NULL DEFAULT 0 CHECK (credit >= 0),
    payment_id     TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((debit = 0) <> (credit = 0))
);
CREATE INDEX IF NOT EXISTS ledger_entries_tx ON ledger_entries (transaction_id);
CREATE INDEX IF NOT EXISTS ledger_entries_merchant ON ledger_entries (merchant_id, account, currency);
CREATE INDEX IF NOT EXISTS ledger_entries_payment ON ledger_entries (payment_id);

-- Every transaction balances, checked by the database at commit.
CREATE OR REPLACE FUNCTION ledger_transaction_balances() RETURNS trigger AS $$
DECLARE
    imbalance BIGINT;
BEGIN
    SELECT COALESCE(sum(debit), 0) - COALESCE(sum(credit), 0) INTO imbalance
    FROM ledger_entries WHERE transaction_id = NEW.transaction_id AND currency = NEW.currency;
    IF imbalance <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance in %: debits - credits = %',
            NEW.transaction_id, NEW.currency, imbalance;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS ledger_entries_balance ON ledger_entries;
CREATE CONSTRAINT TRIGGER ledger_entries_balance AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balances();

-- What the ledger pool needs to know about payments and refunds (events carry ids only).
CREATE TABLE IF NOT EXISTS ledger_payments (
    payment_id  TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    currency    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_refunds (
    refund_id  TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount > 0)
);

-- Settlement pool: one item per money movement, batched by settlement runs.
CREATE TABLE IF NOT EXISTS settlement_payments (
    payment_id  TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    currency    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settlement_refunds (
    refund_id  TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount > 0)
);
CREATE TABLE IF NOT EXISTS settlement_items (
    event_id      UUID        PRIMARY KEY,
    merchant_id   TEXT        NOT NULL,
    currency      TEXT        NOT NULL,
    payment_id    TEXT        NOT NULL,
    kind          TEXT        NOT NULL CHECK (kind IN ('capture', 'refund')),
    gross         BIGINT      NOT NULL,   -- captured (+) or refunded (-) amount
    fee           BIGINT      NOT NULL,   -- platform fee (captures only)
    occurred_at   TIMESTAMPTZ NOT NULL,
    settlement_id TEXT
);
CREATE INDEX IF NOT EXISTS settlement_items_open ON settlement_items (merchant_id, currency) WHERE settlement_id IS NULL;

CREATE TABLE IF NOT EXISTS settlements (
    id           TEXT        PRIMARY KEY,
    merchant_id  TEXT        NOT NULL,
    currency     TEXT        NOT NULL,
    captured     BIGINT      NOT NULL,
    refunded     BIGINT      NOT NULL,
    fees         BIGINT      NOT NULL,
    net          BIGINT      NOT NULL,
    item_count   BIGINT      NOT NULL,
    cutoff       TIMESTAMPTZ NOT NULL,
    status       TEXT        NOT NULL CHECK (status IN ('created', 'paid')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at      TIMESTAMPTZ,
    emitted      BOOLEAN     NOT NULL DEFAULT false,   -- settlement.created journaled
    paid_emitted BOOLEAN     NOT NULL DEFAULT false,   -- settlement.paid journaled
    CHECK (net = captured - refunded - fees)
);
CREATE INDEX IF NOT EXISTS settlements_merchant ON settlements (merchant_id, created_at DESC);

-- Analytics, extended: per-payment dimensions and outcome counters.
CREATE TABLE IF NOT EXISTS analytics_payments (
    payment_id  TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    currency    TEXT NOT NULL,
    channel     TEXT NOT NULL,
    order_no    TEXT,
    amount      BIGINT NOT NULL,
    day         DATE NOT NULL
);
CREATE TABLE IF NOT EXISTS analytics_refunds (
    refund_id  TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    amount     BIGINT NOT NULL
);
ALTER TABLE analytics_merchant_daily ADD COLUMN IF NOT EXISTS succeeded_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE analytics_merchant_daily ADD COLUMN IF NOT EXISTS succeeded_amount BIGINT NOT NULL DEFAULT 0;
ALTER TABLE analytics_merchant_daily ADD COLUMN IF NOT EXISTS failed_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE analytics_merchant_daily ADD COLUMN IF NOT EXISTS failed_amount BIGINT NOT NULL DEFAULT 0;
ALTER TABLE analytics_merchant_daily ADD COLUMN IF NOT EXISTS refunded_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE analytics_merchant_daily ADD COLUMN IF NOT EXISTS refunded_amount BIGINT NOT NULL DEFAULT 0;
ALTER TABLE analytics_merchant_daily ADD COLUMN IF NOT EXISTS fees BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS analytics_channel_daily (
    channel          TEXT   NOT NULL,
    day              DATE   NOT NULL,
    currency         TEXT   NOT NULL,
    created_count    BIGINT NOT NULL DEFAULT 0,
    created_amount   BIGINT NOT NULL DEFAULT 0,
    succeeded_count  BIGINT NOT NULL DEFAULT 0,
    succeeded_amount BIGINT NOT NULL DEFAULT 0,
    failed_count     BIGINT NOT NULL DEFAULT 0,
    failed_amount    BIGINT NOT NULL DEFAULT 0,
    refunded_count   BIGINT NOT NULL DEFAULT 0,
    refunded_amount  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, day, currency)
);
CREATE TABLE IF NOT EXISTS analytics_completed_orders (
    merchant_id TEXT NOT NULL,
    day         DATE NOT NULL,
    currency    TEXT NOT NULL,
    order_no    TEXT NOT NULL,
    PRIMARY KEY (merchant_id, day, currency, order_no)
);
