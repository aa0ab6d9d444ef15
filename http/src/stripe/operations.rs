//! The Stripe operations, one method of [`Request`] each: each reads its parameters, sends
//! payrail's command (or reads the payment or a read model) and answers Stripe's object.

use super::{
    api, capture_method, clamp_unix_s, command_error, confirmed, cursor, intent_of, ok, one_of,
    page, payment_in_refund_id, payment_method, refund_id_for, stripe_error, Request,
};
use crate::error::ApiError;
use crate::validation::{self, CreatePaymentBody};
use payrail_actors::payment::{Command, PaymentView, Refusal};
use payrail_actors::snapshots::{self, Cursor};
use payrail_actors::CommandError;
use payrail_stripe_compat::objects::{self, Refund, CANCELLATION_REASONS, REFUND_REASONS};
use payrail_stripe_compat::{List, Params, StripeError};
use warp::reply::Response;

impl Request<'_> {
    pub(super) async fn payment(&self, id: &str, param: &str) -> Result<PaymentView, StripeError> {
        if crate::payments::valid_payment_id(id).is_err() {
            return Err(StripeError::no_such("payment_intent", param));
        }
        self.state
            .node
            .get_payment(self.merchant_id, id)
            .await
            .map_err(|e| command_error(e, param))
    }

    async fn command(&self, id: &str, command: Command) -> Result<PaymentView, CommandError> {
        if crate::payments::valid_payment_id(id).is_err() {
            return Err(CommandError::NotFound);
        }
        self.state
            .node
            .command(
                self.merchant_id,
                id,
                command,
                Some(self.correlation_id.clone()),
            )
            .await
    }

    /// `POST /v1/payment_intents`: payrail's create, then its confirm when `confirm=true`.
    pub(super) async fn create_intent(
        &self,
        mut params: Params,
        fingerprint: String,
    ) -> Result<Response, StripeError> {
        let amount = params
            .integer("amount")?
            .ok_or_else(|| StripeError::missing_param("amount"))?;
        let currency = params.required_string("currency")?;
        let method = params
            .string("payment_method")?
            .map(payment_method)
            .transpose()?;
        let confirm = params.boolean("confirm")?.unwrap_or(false);
        let capture = capture_method(params.string("capture_method")?)?;
        let metadata = params.string_map("metadata")?;
        let receipt_email = params.string("receipt_email")?;
        for (i, kind) in params
            .string_list("payment_method_types")?
            .iter()
            .enumerate()
        {
            if kind != "card" {
                return Err(StripeError::invalid_param(
                    &format!("payment_method_types[{i}]"),
                    "Only `card` payments are supported",
                ));
            }
        }
        if params.contains("description") {
            return Err(StripeError::unsupported_param(
                "description",
                "payrail payments have no description; use metadata",
            ));
        }
        params.finish()?;
        let method = match (confirm, method) {
            (true, None) => return Err(StripeError::missing_param("payment_method")),
            (false, Some(_)) => {
                return Err(StripeError::unsupported_param(
                    "payment_method",
                    "payrail holds no payment method before the confirmation: pass \
                     confirm=true with it, or pass it to /confirm",
                ))
            }
            (_, method) => method,
        };
        let body = CreatePaymentBody {
            amount,
            currency,
            customer_email: receipt_email,
            order_no: None,
            channel: None,
            metadata,
            capture_method: capture,
        };
        let key = self.idempotency_key.clone();
        let mut command = body
            .into_command(key.clone())
            .map_err(|e| stripe_error(e, &[("customer_email", "receipt_email")]))?;
        // Stripe's idempotency covers every parameter of the request (confirm and
        // payment_method too), not only the payment's fields.
        command.request_fingerprint = key.as_ref().map(|_| fingerprint);
        let idempotency = key.clone().zip(command.request_fingerprint.clone());
        let correlation_id = key.or_else(|| Some(self.correlation_id.clone()));
        let view = self
            .state
            .node
            .create_payment(
                self.merchant_id,
                Command::Create(command),
                idempotency,
                correlation_id,
            )
            .await
            .map_err(|e| api(e.into()))?;
        let Some(method) = method else {
            return ok(&intent_of(view));
        };
        if view.status != "requires_payment_method" {
            // A retry of a create that confirmed: its answer is the payment as it is now.
            return confirmed(view);
        }
        let id = view.id.clone();
        let confirm = Command::Confirm {
            payment_method: method,
            capture_method: capture,
            psp_reference: None,
        };
        let view = match self.command(&id, confirm).await {
            // An earlier try of this request confirmed it meanwhile.
            Err(CommandError::Refused(Refusal::InvalidState { .. })) => {
                self.payment(&id, "intent").await?
            }
            other => other.map_err(|e| command_error(e, "intent"))?,
        };
        confirmed(view)
    }

    /// `POST /v1/payment_intents/{id}`: payrail has no update command (a payment's fields
    /// are fixed at creation), so an update may only restate what the payment already has.
    pub(super) async fn update_intent(
        &self,
        id: &str,
        mut params: Params,
    ) -> Result<Response, StripeError> {
        let view = self.payment(id, "intent").await?;
        let unchangeable = |param: &str| {
            StripeError::unsupported_param(
                param,
                "payrail payments cannot be changed after creation (there is no update \
                 command); create a new PaymentIntent",
            )
        };
        if params.integer("amount")?.is_some_and(|a| a != view.amount) {
            return Err(unchangeable("amount"));
        }
        if params
            .string("currency")?
            .is_some_and(|c| !c.eq_ignore_ascii_case(&view.currency))
        {
            return Err(unchangeable("currency"));
        }
        if params
            .string_map("metadata")?
            .is_some_and(|m| m != view.metadata)
        {
            return Err(unchangeable("metadata"));
        }
        if params
            .string("receipt_email")?
            .is_some_and(|e| Some(&e) != view.customer_email.as_ref())
        {
            return Err(unchangeable("receipt_email"));
        }
        if capture_method(params.string("capture_method")?)?
            .is_some_and(|c| c.as_str() != view.capture_method)
        {
            return Err(unchangeable("capture_method"));
        }
        for name in ["payment_method", "description"] {
            if params.contains(name) {
                return Err(unchangeable(name));
            }
        }
        params.finish()?;
        ok(&intent_of(view))
    }

    pub(super) async fn confirm_intent(
        &self,
        id: &str,
        mut params: Params,
    ) -> Result<Response, StripeError> {
        let method = params
            .string("payment_method")?
            .map(payment_method)
            .transpose()?
            .ok_or_else(|| StripeError::missing_param("payment_method"))?;
        let capture = capture_method(params.string("capture_method")?)?;
        params.finish()?;
        let command = Command::Confirm {
            payment_method: method,
            capture_method: capture,
            psp_reference: None,
        };
        let view = self
            .command(id, command)
            .await
            .map_err(|e| command_error(e, "intent"))?;
        confirmed(view)
    }

    pub(super) async fn capture_intent(
        &self,
        id: &str,
        mut params: Params,
    ) -> Result<Response, StripeError> {
        let renames = [("amount", "amount_to_capture")];
        let amount = params.integer("amount_to_capture")?;
        params.finish()?;
        validation::optional_amount(amount).map_err(|e| stripe_error(e, &renames))?;
        let view = self
            .command(id, Command::Capture { amount })
            .await
            .map_err(|e| match e {
                CommandError::NotFound => StripeError::no_such("payment_intent", "intent"),
                e => stripe_error(e.into(), &renames),
            })?;
        ok(&intent_of(view))
    }

    pub(super) async fn cancel_intent(
        &self,
        id: &str,
        mut params: Params,
    ) -> Result<Response, StripeError> {
        let reason = one_of(&mut params, "cancellation_reason", CANCELLATION_REASONS)?;
        params.finish()?;
        let view = self
            .command(id, Command::Cancel { reason })
            .await
            .map_err(|e| command_error(e, "intent"))?;
        ok(&intent_of(view))
    }

    pub(super) async fn list_intents(&self, mut params: Params) -> Result<Response, StripeError> {
        let (limit, after, before) = page(&mut params)?;
        // PostgreSQL's timestamps end in 294276: bounds past 1970..9999 mean the same as
        // those years, and are clamped there instead of failing in the query (found by the
        // API fuzz test).
        let (low, high) = params.range("created")?;
        let created = (low.map(clamp_unix_s), high.map(clamp_unix_s));
        params.finish()?;
        let param = if after.is_some() {
            "starting_after"
        } else {
            "ending_before"
        };
        let cursor = cursor(&after, &before);
        if let Cursor::After(id) | Cursor::Before(id) = cursor {
            if crate::payments::valid_payment_id(id).is_err() {
                return Err(StripeError::no_such("payment_intent", param));
            }
        }
        let page = snapshots::list_payments_page(
            &self.state.pool,
            self.merchant_id,
            limit,
            cursor,
            created,
        )
        .await
        .map_err(|e| api(ApiError::internal(e)))?;
        let Some((payments, has_more)) = page else {
            return Err(StripeError::no_such("payment_intent", param));
        };
        let data = payments
            .iter()
            .map(|p| intent_of(PaymentView::from(p)))
            .collect();
        ok(&List::new(data, has_more, "/v1/payment_intents"))
    }

    pub(super) async fn create_refund(&self, mut params: Params) -> Result<Response, StripeError> {
        let payment_id = params.required_string("payment_intent")?;
        let amount = params.integer("amount")?;
        let reason = one_of(&mut params, "reason", REFUND_REASONS)?;
        if params
            .string_map("metadata")?
            .is_some_and(|m| !m.is_empty())
        {
            return Err(StripeError::unsupported_param(
                "metadata",
                "payrail refunds carry no metadata",
            ));
        }
        params.finish()?;
        validation::optional_amount(amount).map_err(api)?;
        if crate::payments::valid_payment_id(&payment_id).is_err() {
            return Err(StripeError::no_such("payment_intent", "payment_intent"));
        }
        let refund_id = refund_id_for(&payment_id, self.idempotency_key.as_deref());
        let command = Command::CreateRefund {
            refund_id: refund_id.clone(),
            amount,
            reason,
        };
        let view = self
            .command(&payment_id, command)
            .await
            .map_err(|e| command_error(e, "payment_intent"))?;
        refund_answer(view, &refund_id)
    }

    pub(super) async fn retrieve_refund(&self, id: &str) -> Result<Response, StripeError> {
        let missing = || StripeError::no_such("refund", "id");
        if !id.starts_with("re_") || id.len() > 64 {
            return Err(missing());
        }
        let payment_id = match payment_in_refund_id(id) {
            Some(payment_id) => payment_id,
            // A refund made through payrail's own API: its payment from the read model.
            None => {
                snapshots::payment_of_refund(&self.state.pool, self.merchant_id, id)
                    .await
                    .map_err(|e| api(ApiError::internal(e)))?
                    .ok_or_else(missing)?
                    .id
            }
        };
        let view = self
            .state
            .node
            .get_payment(self.merchant_id, &payment_id)
            .await
            .map_err(|e| match e {
                CommandError::NotFound => missing(),
                e => api(e.into()),
            })?;
        if !view.refunds.iter().any(|r| r.id == id) {
            return Err(missing());
        }
        refund_answer(view, id)
    }

    pub(super) async fn list_refunds(&self, mut params: Params) -> Result<Response, StripeError> {
        let (limit, after, before) = page(&mut params)?;
        let payment_id = params.string("payment_intent")?;
        params.finish()?;
        let param = if after.is_some() {
            "starting_after"
        } else {
            "ending_before"
        };
        let cursor = cursor(&after, &before);
        let missing = || StripeError::no_such("refund", param);
        let (data, has_more) = match &payment_id {
            // One payment's refunds: from the payment itself (on its owner), so a refund just
            // made is listed; newest first.
            Some(payment_id) => {
                let payment =
                    objects::Payment::from(self.payment(payment_id, "payment_intent").await?);
                let newest_first: Vec<&objects::RefundSource> =
                    payment.refunds.iter().rev().collect();
                let (refunds, has_more) =
                    page_of(&newest_first, |r| r.id.as_str(), limit, cursor).ok_or_else(missing)?;
                let data = refunds.iter().map(|r| Refund::new(&payment, r)).collect();
                (data, has_more)
            }
            None => {
                let (rows, has_more) = snapshots::list_refunds_page(
                    &self.state.pool,
                    self.merchant_id,
                    None,
                    limit,
                    cursor,
                )
                .await
                .map_err(|e| api(ApiError::internal(e)))?
                .ok_or_else(missing)?;
                let data = rows
                    .iter()
                    .filter_map(|(payment, refund_id)| {
                        let payment = objects::Payment::from(PaymentView::from(payment));
                        let refund = payment.refunds.iter().find(|r| &r.id == refund_id)?;
                        Some(Refund::new(&payment, refund))
                    })
                    .collect();
                (data, has_more)
            }
        };
        ok(&List::<Refund>::new(data, has_more, "/v1/refunds"))
    }
}

/// A page of `items` (newest first) from `cursor`, and whether more lie in its direction;
/// `None` when the cursor is not among them.
pub(super) fn page_of<'i, T>(
    items: &'i [T],
    id: impl Fn(&T) -> &str,
    limit: i64,
    cursor: Cursor<'_>,
) -> Option<(&'i [T], bool)> {
    let limit = usize::try_from(limit).unwrap_or(0);
    let position = |wanted: &str| items.iter().position(|item| id(item) == wanted);
    Some(match cursor {
        Cursor::Newest => (&items[..limit.min(items.len())], items.len() > limit),
        Cursor::After(wanted) => {
            let rest = &items[position(wanted)? + 1..];
            (&rest[..limit.min(rest.len())], rest.len() > limit)
        }
        Cursor::Before(wanted) => {
            let rest = &items[..position(wanted)?];
            (
                &rest[rest.len().saturating_sub(limit)..],
                rest.len() > limit,
            )
        }
    })
}

fn refund_answer(view: PaymentView, refund_id: &str) -> Result<Response, StripeError> {
    let payment = objects::Payment::from(view);
    let refund = payment
        .refunds
        .iter()
        .find(|r| r.id == refund_id)
        .ok_or_else(|| api(ApiError::internal("refund missing after creation")))?;
    ok(&Refund::new(&payment, refund))
}
