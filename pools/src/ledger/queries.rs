//! The ledger read side: a merchant's balances and a payment's entries.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A balance in one currency. `i128`: a sum of many 64-bit amounts (a merchant's pending
/// balance grows with every capture until a settlement) may pass `i64::MAX`; JSON carries
/// it as a plain integer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Amount {
    pub currency: String,
    pub amount: i128,
}

/// The merchant's balance of `account` per currency (credit − debit: money owed to it),
/// summed by PostgreSQL in NUMERIC and read exactly (casting the sum to BIGINT failed with
/// "bigint out of range" past `i64::MAX`).
pub async fn merchant_balance(
    pool: &PgPool,
    merchant_id: &str,
    account: &str,
) -> Result<Vec<Amount>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT currency, (COALESCE(sum(credit), 0) - COALESCE(sum(debit), 0))::TEXT FROM ledger_entries
         WHERE merchant_id = $1 AND account = $2 GROUP BY currency ORDER BY currency",
    )
    .bind(merchant_id)
    .bind(account)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(currency, amount)| {
            Ok(Amount {
                currency: currency.to_ascii_lowercase(),
                amount: crate::stored_sum(&amount)?,
            })
        })
        .collect()
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    pub posting_id: Uuid,
    pub transaction_id: String,
    pub account: String,
    pub currency: String,
    pub debit: i64,
    pub credit: i64,
}

/// Ledger entries of one payment of `merchant_id`; `None` if the payment is not theirs.
pub async fn payment_entries(
    pool: &PgPool,
    merchant_id: &str,
    payment_id: &str,
) -> Result<Option<Vec<EntryView>>, sqlx::Error> {
    let owner: Option<String> =
        sqlx::query_scalar("SELECT merchant_id FROM ledger_payments WHERE payment_id = $1")
            .bind(payment_id)
            .fetch_optional(pool)
            .await?;
    if owner.as_deref() != Some(merchant_id) {
        return Ok(None);
    }
    let rows: Vec<(Uuid, String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT posting_id, transaction_id, account, currency, debit, credit FROM ledger_entries
         WHERE payment_id = $1 ORDER BY created_at, transaction_id, posting_id",
    )
    .bind(payment_id)
    .fetch_all(pool)
    .await?;
    Ok(Some(
        rows.into_iter()
            .map(
                |(posting_id, transaction_id, account, currency, debit, credit)| EntryView {
                    posting_id,
                    transaction_id,
                    account,
                    currency: currency.to_ascii_lowercase(),
                    debit,
                    credit,
                },
            )
            .collect(),
    ))
}
