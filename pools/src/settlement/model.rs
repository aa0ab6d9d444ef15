//! A settlement's events on `settlement.events`, its API view and the errors of its runs.

use crate::ledger;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Events on `settlement.events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettlementEvent {
    /// `settlement.created`
    Created {
        currency: String,
        captured: i64,
        refunded: i64,
        fees: i64,
        net: i64,
    },
    /// `settlement.paid`
    Paid { currency: String, net: i64 },
}

impl SettlementEvent {
    /// The journal's event type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "settlement.created",
            Self::Paid { .. } => "settlement.paid",
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SettlementView {
    pub id: String,
    pub object: &'static str,
    pub merchant_id: String,
    pub currency: String,
    pub captured: i64,
    pub refunded: i64,
    pub fees: i64,
    pub net: i64,
    pub item_count: i64,
    pub status: String,
    /// Unix seconds.
    pub cutoff: i64,
    pub created: i64,
    pub paid_at: Option<i64>,
}

pub(super) type SettlementRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
);

pub(super) const SETTLEMENT_COLUMNS: &str = "id, merchant_id, currency, captured, refunded, fees, net, item_count, status, cutoff, created_at, paid_at";

pub(super) fn view(row: SettlementRow) -> SettlementView {
    let (
        id,
        merchant_id,
        currency,
        captured,
        refunded,
        fees,
        net,
        item_count,
        status,
        cutoff,
        created,
        paid_at,
    ) = row;
    SettlementView {
        id,
        object: "settlement",
        merchant_id,
        currency: currency.to_ascii_lowercase(),
        captured,
        refunded,
        fees,
        net,
        item_count,
        status,
        cutoff: cutoff.timestamp(),
        created: created.timestamp(),
        paid_at: paid_at.map(|t| t.timestamp()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Unbalanced(#[from] ledger::Unbalanced),
    #[error("no such settlement")]
    NotFound,
    #[error("the settlement is already paid")]
    AlreadyPaid,
    #[error("journal: {0}")]
    Journal(#[from] kafka_journal::JournalError),
    /// An item's amounts cannot be settled even alone (its net or its negation is not a
    /// 64-bit amount); the run settles nothing.
    #[error("settlement item {0} has amounts out of range")]
    ItemOutOfRange(Uuid),
    /// The settlements' totals differ from their items' (a defect; the run settles nothing).
    #[error("settlement totals differ from their items: {0}")]
    Inexact(String),
}

/// The most any of a settlement's captured, refunded and fees totals reaches by adding
/// items: a quarter of `i64::MAX`. With each of the three within it, `net = captured −
/// refunded − fees` lies within ±2·limit, so the net and its negation (the ledger posts
/// |net|) fit the BIGINT columns and postings with room to spare. When the next item of a
/// merchant and currency would take a total past it, the run closes that settlement and
/// starts another for the same merchant and currency, so one run may create several, each
/// exact. An item larger than the limit on its own has a settlement to itself (its own
/// amounts are 64-bit).
pub const SETTLEMENT_TOTAL_LIMIT: i64 = i64::MAX / 4;
