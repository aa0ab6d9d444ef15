//! The ledger pool (`payrail.ledger`): double-entry postings per currency.
//!
//! | event              | debit                         | credit                                         |
//! |--------------------|-------------------------------|------------------------------------------------|
//! | `payment.succeeded`| `psp_clearing` C              | `merchant_pending` C − F, `platform_fee_revenue` F |
//! | `refund.succeeded` | `merchant_pending` R          | `psp_clearing` R                                |
//! | settlement run     | `merchant_pending` net        | `merchant_available` net                        |
//! | settlement paid    | `merchant_available` net      | `payouts` net                                   |
//!
//! C = captured, F = the merchant's fee on C, R = refunded. Fees are not returned on
//! refunds. Every transaction balances (asserted in [`LedgerTransaction::new`] and by a
//! deferred constraint trigger in PostgreSQL); posting ids are UUIDv5 of (source id, leg),
//! so a redelivered event posts nothing twice.

use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use payrail_payment::PaymentEvent;
use sqlx::PgConnection;
use uuid::Uuid;
mod queries;
pub use queries::{merchant_balance, payment_entries, Amount, EntryView};

pub const LEDGER_GROUP: &str = "payrail.ledger";

pub const PSP_CLEARING: &str = "psp_clearing";
pub const MERCHANT_PENDING: &str = "merchant_pending";
pub const MERCHANT_AVAILABLE: &str = "merchant_available";
pub const PLATFORM_FEES: &str = "platform_fee_revenue";
pub const PAYOUTS: &str = "payouts";

/// Namespace of posting ids (UUIDv5).
const POSTING_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_9b3d_4e55_8a61_0c7d_2b9e_4f13);

/// A merchant's pricing: `bps` basis points of the amount plus `fixed` minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    pub bps: i64,
    pub fixed: i64,
}

/// The platform fee on a captured `amount`: bps rounded half up, plus the fixed part,
/// never more than the amount itself. Integer arithmetic only.
pub fn platform_fee(amount: i64, pricing: Pricing) -> i64 {
    if amount <= 0 {
        return 0;
    }
    let variable = (amount as i128 * pricing.bps as i128 + 5_000) / 10_000;
    let fee = variable + pricing.fixed as i128;
    fee.clamp(0, amount as i128) as i64
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub account: &'static str,
    pub merchant_id: Option<String>,
    pub debit: i64,
    pub credit: i64,
}

impl Leg {
    pub fn debit(account: &'static str, merchant_id: Option<&str>, amount: i64) -> Self {
        Self {
            account,
            merchant_id: merchant_id.map(str::to_string),
            debit: amount,
            credit: 0,
        }
    }
    pub fn credit(account: &'static str, merchant_id: Option<&str>, amount: i64) -> Self {
        Self {
            account,
            merchant_id: merchant_id.map(str::to_string),
            debit: 0,
            credit: amount,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger transaction {id} does not balance: debits {debits}, credits {credits}")]
pub struct Unbalanced {
    pub id: String,
    pub debits: i64,
    pub credits: i64,
}

/// A balanced set of legs in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerTransaction {
    pub id: String,
    pub currency: String,
    pub payment_id: Option<String>,
    pub legs: Vec<Leg>,
}

impl LedgerTransaction {
    /// Builds a transaction; zero legs are dropped; refuses one that does not balance or
    /// has a negative or two-sided leg.
    pub fn new(
        id: String,
        currency: &str,
        payment_id: Option<&str>,
        legs: Vec<Leg>,
    ) -> Result<Self, Unbalanced> {
        let legs: Vec<Leg> = legs
            .into_iter()
            .filter(|l| l.debit != 0 || l.credit != 0)
            .collect();
        let debits: i64 = legs.iter().map(|l| l.debit).sum();
        let credits: i64 = legs.iter().map(|l| l.credit).sum();
        let well_formed = legs
            .iter()
            .all(|l| l.debit >= 0 && l.credit >= 0 && (l.debit == 0) != (l.credit == 0));
        if debits != credits || !well_formed {
            return Err(Unbalanced {
                id,
                debits,
                credits,
            });
        }
        Ok(Self {
            id,
            currency: currency.to_string(),
            payment_id: payment_id.map(str::to_string),
            legs,
        })
    }

    /// Inserts the legs; posting ids derive from (`source`, leg index), so posting the same
    /// transaction twice inserts nothing the second time.
    pub async fn post(&self, conn: &mut PgConnection, source: &str) -> Result<(), sqlx::Error> {
        for (index, leg) in self.legs.iter().enumerate() {
            let posting_id =
                Uuid::new_v5(&POSTING_NAMESPACE, format!("{source}:{index}").as_bytes());
            sqlx::query(
                "INSERT INTO ledger_entries (posting_id, transaction_id, account, merchant_id, currency, debit, credit, payment_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (posting_id) DO NOTHING",
            )
            .bind(posting_id)
            .bind(&self.id)
            .bind(leg.account)
            .bind(&leg.merchant_id)
            .bind(&self.currency)
            .bind(leg.debit)
            .bind(leg.credit)
            .bind(&self.payment_id)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The capture transaction of a payment.
pub fn capture_transaction(
    event_id: Uuid,
    merchant_id: &str,
    payment_id: &str,
    currency: &str,
    captured: i64,
    fee: i64,
) -> Result<LedgerTransaction, Unbalanced> {
    LedgerTransaction::new(
        event_id.to_string(),
        currency,
        Some(payment_id),
        vec![
            Leg::debit(PSP_CLEARING, None, captured),
            Leg::credit(MERCHANT_PENDING, Some(merchant_id), captured - fee),
            Leg::credit(PLATFORM_FEES, None, fee),
        ],
    )
}

/// The refund transaction of a payment.
pub fn refund_transaction(
    event_id: Uuid,
    merchant_id: &str,
    payment_id: &str,
    currency: &str,
    refunded: i64,
) -> Result<LedgerTransaction, Unbalanced> {
    LedgerTransaction::new(
        event_id.to_string(),
        currency,
        Some(payment_id),
        vec![
            Leg::debit(MERCHANT_PENDING, Some(merchant_id), refunded),
            Leg::credit(PSP_CLEARING, None, refunded),
        ],
    )
}

/// Moves a settlement's net from pending to available (negative nets move back).
pub fn settlement_transaction(
    settlement_id: &str,
    merchant_id: &str,
    currency: &str,
    net: i64,
) -> Result<LedgerTransaction, Unbalanced> {
    let legs = if net >= 0 {
        vec![
            Leg::debit(MERCHANT_PENDING, Some(merchant_id), net),
            Leg::credit(MERCHANT_AVAILABLE, Some(merchant_id), net),
        ]
    } else {
        vec![
            Leg::debit(MERCHANT_AVAILABLE, Some(merchant_id), -net),
            Leg::credit(MERCHANT_PENDING, Some(merchant_id), -net),
        ]
    };
    LedgerTransaction::new(format!("settlement:{settlement_id}"), currency, None, legs)
}

/// Records a settlement's payout.
pub fn payout_transaction(
    settlement_id: &str,
    merchant_id: &str,
    currency: &str,
    net: i64,
) -> Result<LedgerTransaction, Unbalanced> {
    LedgerTransaction::new(
        format!("payout:{settlement_id}"),
        currency,
        None,
        vec![
            Leg::debit(MERCHANT_AVAILABLE, Some(merchant_id), net.max(0)),
            Leg::credit(PAYOUTS, Some(merchant_id), net.max(0)),
        ],
    )
}

/// The merchant's pricing.
pub async fn pricing(conn: &mut PgConnection, merchant_id: &str) -> Result<Pricing, sqlx::Error> {
    let row: Option<(i32, i64)> =
        sqlx::query_as("SELECT fee_bps, fee_fixed FROM merchants WHERE id = $1")
            .bind(merchant_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (bps, fixed) = row.unwrap_or((0, 0));
    Ok(Pricing {
        bps: bps as i64,
        fixed,
    })
}

pub struct LedgerProjector;

#[async_trait::async_trait]
impl PartitionHandler for LedgerProjector {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        let envelope = record.decode::<PaymentEvent>()?;
        match &envelope.payload {
            PaymentEvent::Created(created) => {
                sqlx::query("INSERT INTO ledger_payments (payment_id, merchant_id, currency) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(&envelope.payment_id)
                    .bind(&envelope.merchant_id)
                    .bind(created.currency.code())
                    .execute(&mut *conn)
                    .await?;
            }
            PaymentEvent::Succeeded {
                amount_captured, ..
            } if *amount_captured > 0 => {
                let currency = payment_currency(conn, &envelope.payment_id).await?;
                let fee = platform_fee(
                    *amount_captured,
                    pricing(conn, &envelope.merchant_id).await?,
                );
                capture_transaction(
                    envelope.event_id,
                    &envelope.merchant_id,
                    &envelope.payment_id,
                    &currency,
                    *amount_captured,
                    fee,
                )?
                .post(conn, &envelope.event_id.to_string())
                .await?;
            }
            PaymentEvent::RefundCreated {
                refund_id, amount, ..
            } => {
                sqlx::query("INSERT INTO ledger_refunds (refund_id, payment_id, amount) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(refund_id)
                    .bind(&envelope.payment_id)
                    .bind(amount)
                    .execute(&mut *conn)
                    .await?;
            }
            PaymentEvent::RefundSucceeded { refund_id, .. } => {
                let amount: i64 =
                    sqlx::query_scalar("SELECT amount FROM ledger_refunds WHERE refund_id = $1")
                        .bind(refund_id)
                        .fetch_one(&mut *conn)
                        .await?;
                let currency = payment_currency(conn, &envelope.payment_id).await?;
                refund_transaction(
                    envelope.event_id,
                    &envelope.merchant_id,
                    &envelope.payment_id,
                    &currency,
                    amount,
                )?
                .post(conn, &envelope.event_id.to_string())
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The batch's creates in one statement per run of creates (see [`super::created`]).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        super::created::apply_batch_with_creates(
            self,
            super::created::PaymentsTable::Ledger,
            conn,
            records,
        )
        .await
    }
}

async fn payment_currency(
    conn: &mut PgConnection,
    payment_id: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT currency FROM ledger_payments WHERE payment_id = $1")
        .bind(payment_id)
        .fetch_one(&mut *conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn capture_postings_balance_and_fee_never_exceeds_the_amount(captured in 1i64..1_000_000_000_000, bps in 0i64..10_000, fixed in 0i64..10_000) {
            let fee = platform_fee(captured, Pricing { bps, fixed });
            prop_assert!(0 <= fee && fee <= captured);
            let tx = capture_transaction(Uuid::nil(), "mer", "pay", "EUR", captured, fee).unwrap();
            let debits: i64 = tx.legs.iter().map(|l| l.debit).sum();
            let credits: i64 = tx.legs.iter().map(|l| l.credit).sum();
            prop_assert_eq!(debits, credits);
            prop_assert_eq!(debits, captured);
        }

        #[test]
        fn merchant_net_movement_plus_fees_equals_captured_minus_refunded(captured in 1i64..1_000_000_000, refunds in proptest::collection::vec(1i64..1_000_000, 0..5), bps in 0i64..1_000) {
            let fee = platform_fee(captured, Pricing { bps, fixed: 30 });
            let mut refunded = 0;
            let mut txs = vec![capture_transaction(Uuid::nil(), "m", "p", "EUR", captured, fee).unwrap()];
            for r in refunds {
                if refunded + r > captured { break; }
                refunded += r;
                txs.push(refund_transaction(Uuid::nil(), "m", "p", "EUR", r).unwrap());
            }
            let merchant_net: i64 = txs.iter().flat_map(|t| &t.legs).filter(|l| l.account == MERCHANT_PENDING).map(|l| l.credit - l.debit).sum();
            prop_assert_eq!(captured - refunded, merchant_net + fee);
        }
    }

    #[test]
    fn unbalanced_and_malformed_transactions_are_refused() {
        assert!(LedgerTransaction::new(
            "t".into(),
            "EUR",
            None,
            vec![
                Leg::debit(PSP_CLEARING, None, 10),
                Leg::credit(PAYOUTS, None, 9)
            ]
        )
        .is_err());
        assert!(LedgerTransaction::new(
            "t".into(),
            "EUR",
            None,
            vec![
                Leg::debit(PSP_CLEARING, None, -10),
                Leg::credit(PAYOUTS, None, -10)
            ]
        )
        .is_err());
        let two_sided = Leg {
            account: PSP_CLEARING,
            merchant_id: None,
            debit: 5,
            credit: 5,
        };
        assert!(LedgerTransaction::new("t".into(), "EUR", None, vec![two_sided]).is_err());
    }

    #[test]
    fn fee_rounds_half_up() {
        assert_eq!(
            platform_fee(
                1000,
                Pricing {
                    bps: 290,
                    fixed: 30
                }
            ),
            59
        );
        assert_eq!(platform_fee(50, Pricing { bps: 100, fixed: 0 }), 1);
        assert_eq!(
            platform_fee(
                10,
                Pricing {
                    bps: 290,
                    fixed: 30
                }
            ),
            10
        );
    }
}
