//! `payrail audit` and `payrail rebuild <pool>`.
//!
//! The audit recomputes the read models from the journal (and the settlements table, the
//! one business record that is not an event stream) and prints every difference, then the
//! ledger's debits and credits per currency. [`log`] reads and replays the journal,
//! [`models`] compares each read model, [`rebuild`] replays a pool's read model anew.

mod log;
mod models;
mod rebuild;

pub use rebuild::rebuild;

use kafka_journal::codec::CodecError;
use kafka_journal::spool::SpoolError;
use kafka_journal::{JournalError, JournalOptions};
use payrail_payment::money::NotAnAmountSum;
use sqlx::PgPool;
use std::time::Duration;

const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an audit or a rebuild could not finish (a difference is not an error: it is
/// printed and makes [`audit`] answer `false`).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("reading the journal: {0}")]
    Journal(#[from] JournalError),
    #[error("reading the fallback spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("reading PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("decoding offset {offset} of partition {partition}: {source}")]
    Decode {
        partition: i32,
        offset: i64,
        #[source]
        source: CodecError,
    },
    #[error(transparent)]
    Amount(#[from] NotAnAmountSum),
    #[error(transparent)]
    Unbalanced(#[from] crate::ledger::Unbalanced),
    #[error("rebuild: {0}")]
    Rebuild(String),
}

struct Differences(Vec<String>);

impl Differences {
    fn check<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, expected: T, actual: T) {
        if expected != actual {
            self.0.push(format!(
                "{what}: journal says {expected:?}, read model has {actual:?}"
            ));
        }
    }
}

/// Audits the read models of `topic` (the namespaced `payment.events`); `true` when
/// nothing differs.
pub async fn audit(
    journal: &JournalOptions,
    topic: &str,
    pool: &PgPool,
) -> Result<bool, AuditError> {
    let records = log::read(journal, topic, pool).await?;
    let mut diffs = Differences(Vec::new());
    let replayed = log::replay(&records, &mut diffs)?;
    models::snapshots(pool, &replayed.payments, &mut diffs).await?;
    let pricing = models::pricing(pool).await?;
    models::analytics(pool, &replayed, &pricing, &mut diffs).await?;
    let (stored, settlements) =
        models::ledger_balances(pool, &replayed, &pricing, &mut diffs).await?;
    models::settlements(pool, &replayed.payments, &stored, &mut diffs).await?;
    println!(
        "audit: {} journal records, {} payments, {} settlements",
        records.len(),
        replayed.payments.len(),
        settlements
    );
    let totals: Vec<(String, String, String)> = sqlx::query_as("SELECT currency, sum(debit)::TEXT, sum(credit)::TEXT FROM ledger_entries GROUP BY currency ORDER BY currency")
        .fetch_all(pool)
        .await?;
    for (currency, debits, credits) in totals {
        let (debits, credits) = (amount(&debits)?, amount(&credits)?);
        println!(
            "ledger {currency}: debits {debits} credits {credits} {}",
            if debits == credits {
                "balanced"
            } else {
                "UNBALANCED"
            }
        );
        if debits != credits {
            diffs.0.push(format!("ledger {currency} does not balance"));
        }
    }
    for d in &diffs.0 {
        println!("difference: {d}");
    }
    println!("audit: {} differences", diffs.0.len());
    Ok(diffs.0.is_empty())
}

/// A sum of amounts read as text (NUMERIC, which fits `i128`).
fn amount(text: &str) -> Result<i128, AuditError> {
    Ok(payrail_payment::money::sum_from_text(text)?)
}
