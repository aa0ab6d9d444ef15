//! A batch's `payment.created` events written with one statement, for the pools whose only
//! work on a create is remembering the payment's merchant and currency (ledger,
//! settlement). Other events are applied one by one, in order, after the creates before
//! them are written, so the outcome is that of applying the batch record by record.

use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use payrail_payment::PaymentEvent;
use sqlx::PgConnection;

/// The payments table a pool keeps (`payment_id`, `merchant_id`, `currency`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PaymentsTable {
    Ledger,
    Settlement,
}

impl PaymentsTable {
    fn insert(self) -> &'static str {
        match self {
            Self::Ledger => {
                "INSERT INTO ledger_payments (payment_id, merchant_id, currency)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING"
            }
            Self::Settlement => {
                "INSERT INTO settlement_payments (payment_id, merchant_id, currency)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING"
            }
        }
    }
}

/// Creates gathered until the next other event.
#[derive(Default)]
struct Creates {
    payment_ids: Vec<String>,
    merchant_ids: Vec<String>,
    currencies: Vec<String>,
}

impl Creates {
    async fn write(
        &mut self,
        conn: &mut PgConnection,
        table: PaymentsTable,
    ) -> Result<(), sqlx::Error> {
        if self.payment_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(table.insert())
            .bind(&self.payment_ids)
            .bind(&self.merchant_ids)
            .bind(&self.currencies)
            .execute(&mut *conn)
            .await?;
        self.payment_ids.clear();
        self.merchant_ids.clear();
        self.currencies.clear();
        Ok(())
    }
}

/// Applies `records` in order, the creates among them gathered into multi-row inserts
/// into `table`; every other record goes through `handler.apply`.
pub(crate) async fn apply_batch_with_creates<H: PartitionHandler + ?Sized>(
    handler: &H,
    table: PaymentsTable,
    conn: &mut PgConnection,
    records: &[&ConsumedRecord],
) -> Result<(), HandlerError> {
    let mut creates = Creates::default();
    for record in records {
        let envelope = record.decode::<PaymentEvent>()?;
        if let PaymentEvent::Created(created) = &envelope.payload {
            creates.payment_ids.push(envelope.payment_id);
            creates.merchant_ids.push(envelope.merchant_id);
            creates.currencies.push(created.currency.code().to_string());
            continue;
        }
        creates.write(conn, table).await?;
        handler.apply(conn, record).await?;
    }
    creates.write(conn, table).await?;
    Ok(())
}
