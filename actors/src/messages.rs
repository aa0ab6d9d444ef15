//! The messages the node's actors exchange and the replies they send: the protocol between
//! the partition supervisor, the merchant actors and the payment actors, in one module that
//! all of them use, so no actor module imports another for its message type.

use crate::error::CommandError;
use crate::payment::{Command, PaymentView};
use ractor::{ActorId, RpcReplyPort};

/// A caller's answer: the payment's view after the command, or why not.
pub type Reply = RpcReplyPort<Result<PaymentView, CommandError>>;

/// Where the outcome of a create goes.
pub enum CreateReply {
    /// Straight to the caller.
    Caller(Reply),
    /// To the merchant actor, which answers every request waiting on this idempotency key.
    Merchant { idempotency_key: String },
}

/// Kept small (the large variants are boxed): ractor's task holds a message-sized slot in
/// every idle actor's pending future, so each byte here is a byte of every live payment actor.
pub enum PaymentMsg {
    Create(Box<CreateMsg>),
    Get(Option<Reply>),
    /// Any other command (confirm, capture, cancel, refund, recorded outcomes).
    Command(Box<CommandMsg>),
    /// From the sweeper: resolve a stale `processing`, expire a lapsed authorization,
    /// retry pending refunds.
    Poll(Option<Reply>),
    /// From the node's idle timer ([`crate::idle_timer`]): passivate when idle long enough.
    IdleCheck,
    /// From the node's idle timer: live payment actors passed `actors.max_live_payments`
    /// and this one is among the least recently active; passivate now.
    Evict,
    /// From the merchant, after it stopped routing here: every message before this one has
    /// been handled, so stopping drops nothing.
    Stop,
}

const _: () = assert!(std::mem::size_of::<PaymentMsg>() <= 32);

pub struct CreateMsg {
    pub command: Command,
    pub correlation_id: Option<String>,
    pub reply: CreateReply,
}

pub struct CommandMsg {
    pub command: Command,
    pub correlation_id: Option<String>,
    pub reply: Option<Reply>,
}

impl PaymentMsg {
    /// Answers the caller waiting on this message, if any, with `error`.
    pub(crate) fn refuse(self, error: CommandError) {
        match self {
            PaymentMsg::Get(Some(reply)) | PaymentMsg::Poll(Some(reply)) => {
                let _ = reply.send(Err(error));
            }
            PaymentMsg::Command(request) => {
                if let Some(reply) = request.reply {
                    let _ = reply.send(Err(error));
                }
            }
            PaymentMsg::Create(create) => match create.reply {
                CreateReply::Caller(reply) => {
                    let _ = reply.send(Err(error));
                }
                CreateReply::Merchant { .. } => {
                    debug_assert!(false, "a create is the first message of its actor")
                }
            },
            _ => {}
        }
    }
}

pub enum MerchantMsg {
    Create {
        command: Command,
        /// (key, fingerprint of the request).
        idempotency: Option<(String, String)>,
        correlation_id: Option<String>,
        reply: Reply,
    },
    Get {
        payment_id: String,
        reply: Reply,
    },
    /// A command for an existing payment.
    Command {
        payment_id: String,
        command: Command,
        correlation_id: Option<String>,
        reply: Option<Reply>,
    },
    /// The sweeper's visit to a payment.
    Poll {
        payment_id: String,
        reply: Option<Reply>,
    },
    /// Passivation timer.
    IdleCheck,
    /// A payment actor's outcome for a create made under an idempotency key.
    CreateSettled {
        idempotency_key: String,
        payment_id: String,
        result: Result<PaymentView, CommandError>,
    },
    /// A payment actor asks to be retired: idle (passivation), its create refused, or its
    /// state unknown after an append whose outcome is unknown. The merchant stops routing
    /// to it first and then tells it to stop, so no message is dropped on the way.
    Retire {
        payment_id: String,
        actor: ActorId,
        outcome_unknown: bool,
    },
    /// Asked by the partition supervisor before it stops this actor (passivation).
    Stop,
}

impl MerchantMsg {
    /// Answers the caller waiting on this message, if any, with `error`.
    pub fn fail(self, error: CommandError) {
        match self {
            MerchantMsg::Create { reply, .. } | MerchantMsg::Get { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            MerchantMsg::Command {
                reply: Some(reply), ..
            }
            | MerchantMsg::Poll {
                reply: Some(reply), ..
            } => {
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}

// Nearly every message is `ToMerchant`: boxing it would add an allocation per command.
#[allow(clippy::large_enum_variant)]
pub enum PartitionMsg {
    /// Deliver `msg` to the merchant's actor, spawning it if needed.
    ToMerchant {
        merchant_id: String,
        msg: MerchantMsg,
    },
    /// An idle merchant actor asks to stop: it is no longer routed to, then told to stop
    /// behind every message already queued for it.
    Passivate { merchant_id: String, actor: ActorId },
}
