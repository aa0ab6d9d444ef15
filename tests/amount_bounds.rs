//! Sums of money at the bound of 64 bits (issue 23), against the real PostgreSQL: the
//! analytics rollups keep exact totals past `i64::MAX` (their amount columns are
//! `NUMERIC(38,0)`, read as `i128`), and a settlement run whose items add up past
//! `i64::MAX` closes them into several settlements, each exact, instead of overflowing.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

mod common;

// The tests, grouped by the sums they read; they share the helpers below.
#[path = "amount_bounds/ledger.rs"]
mod ledger;
#[path = "amount_bounds/rollups.rs"]
mod rollups;
#[path = "amount_bounds/settlement_runs.rs"]
mod settlement_runs;

use common::*;
use sqlx::PgPool;
use uuid::Uuid;

const MERCHANT: &str = "mer_bounds";

/// An open settlement item straight in the table, as the settlement pool records it.
async fn settlement_item(pool: &PgPool, merchant: &str, gross: i64, fee: i64) {
    sqlx::query(
        "INSERT INTO settlement_items (event_id, merchant_id, currency, payment_id, kind, gross, fee, occurred_at)
         VALUES ($1, $2, 'EUR', $3, $4, $5, $6, now() - interval '1 minute')",
    )
    .bind(Uuid::now_v7())
    .bind(merchant)
    .bind(format!("pay_{}", Uuid::now_v7().simple()))
    .bind(if gross >= 0 { "capture" } else { "refund" })
    .bind(gross)
    .bind(fee)
    .execute(pool)
    .await
    .expect("settlement item");
}
