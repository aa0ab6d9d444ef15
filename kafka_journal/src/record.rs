//! What a consumer hands a read model: the consumed record and the handler trait (in
//! their own module so the fence, the offsets and the dead letters read records without
//! importing the consumer).

use crate::codec::{Codec, CodecError, CodecKind};
use crate::envelope::Envelope;
use crate::producer::OutgoingRecord;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use uuid::Uuid;

/// Event type of the marker a new owner appends before anything else (see
/// [`crate::fence`]).
pub const OWNER_CHANGED: &str = "partition.owner_changed";

/// A record as a worker sees it.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub event_type: Option<String>,
    pub event_id: Option<Uuid>,
    pub content_type: Option<String>,
    pub value: Vec<u8>,
    /// The record's journal timestamp (ms since the epoch; the producer's create time).
    pub timestamp_ms: Option<i64>,
    /// Header `owner_epoch` (0 when absent), see [`crate::fence`].
    pub owner_epoch: u64,
}

impl ConsumedRecord {
    /// Whether this is a new owner's `partition.owner_changed` marker.
    pub fn is_owner_change(&self) -> bool {
        self.event_type.as_deref() == Some(OWNER_CHANGED)
    }

    /// Decodes the envelope with the codec its `content_type` header names.
    pub fn decode<P: DeserializeOwned>(&self) -> Result<Envelope<P>, CodecError> {
        let kind = match &self.content_type {
            Some(ct) => CodecKind::from_content_type(ct)?,
            None => CodecKind::Bincode,
        };
        kind.decode(&self.value)
    }
}

pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A read model's reaction to records. Called inside the worker's transaction; whatever it
/// writes through `conn` commits or rolls back together with the consumed offset.
#[async_trait::async_trait]
pub trait PartitionHandler: Send + Sync + 'static {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError>;

    /// Applies `records` (one partition, offset order, each not applied before) in the
    /// worker's transaction. The default applies them one by one; a handler may override it
    /// to write several records per statement, as long as the outcome is the same as
    /// applying them in order.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        for record in records {
            self.apply(conn, record).await?;
        }
        Ok(())
    }
}

impl From<&OutgoingRecord> for ConsumedRecord {
    /// The consumed form of an outgoing record (no offset yet, -1): how the spool's
    /// records are applied and audited before the journal has them.
    fn from(record: &OutgoingRecord) -> Self {
        ConsumedRecord {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: -1,
            key: Some(record.key.as_bytes().to_vec()),
            event_type: Some(record.headers.event_type.clone()),
            event_id: Uuid::parse_str(&record.headers.event_id).ok(),
            content_type: Some(record.headers.content_type.clone()),
            value: record.value.clone(),
            timestamp_ms: None,
            owner_epoch: record.headers.owner_epoch,
        }
    }
}
