"""Drives a payrail node with the official Stripe Python SDK (PyPI `stripe`), unmodified:
only its base address is pointed at the node. Used by tests/stripe_sdk.rs.

    python3 stripe_sdk.py <base url> <api key> <scenario>

Each scenario asserts what Stripe documents and prints one JSON line of evidence (ids,
statuses) for the Rust test to check against payrail's own API. Exit 0 only if it held.
"""

import json
import os
import sys
import time
import uuid

import stripe

EXPECTED_SDK_VERSION = "12.5.1"


def create(**params):
    return stripe.PaymentIntent.create(currency="usd", **params)


def create_and_confirm():
    pi = create(
        amount=2000,
        payment_method="pm_card_visa",
        confirm=True,
        metadata={"order_no": "A-7", "note": "a b&c=d"},
        receipt_email="buyer@example.com",
    )
    assert pi.object == "payment_intent", pi
    assert pi.status == "succeeded", pi.status
    assert pi.amount_received == 2000, pi.amount_received
    assert pi.metadata["order_no"] == "A-7" and pi.metadata["note"] == "a b&c=d", pi.metadata
    assert pi.receipt_email == "buyer@example.com", pi.receipt_email
    later = create(amount=1500, payment_method_types=["card"])
    assert later.status == "requires_payment_method", later.status
    confirmed = stripe.PaymentIntent.confirm(later.id, payment_method="pm_card_mastercard")
    assert confirmed.status == "succeeded", confirmed.status
    retrieved = stripe.PaymentIntent.retrieve(later.id)
    assert retrieved.status == "succeeded" and retrieved.amount_received == 1500, retrieved
    return {"ids": [pi.id, later.id]}


def idempotent_replay():
    key = f"py-replay-{uuid.uuid4()}"
    first = create(amount=3100, payment_method="pm_card_visa", confirm=True, idempotency_key=key)
    again = create(amount=3100, payment_method="pm_card_visa", confirm=True, idempotency_key=key)
    assert first.id == again.id, (first.id, again.id)
    assert again.status == "succeeded" and again.amount_received == 3100, again
    return {"ids": [first.id]}


def idempotency_mismatch():
    key = f"py-mismatch-{uuid.uuid4()}"
    first = create(amount=4100, idempotency_key=key)
    try:
        create(amount=4200, idempotency_key=key)
    except stripe.IdempotencyError as e:
        assert e.http_status == 400, e.http_status
        return {"ids": [first.id], "error": type(e).__name__}
    raise AssertionError("no IdempotencyError for the same key with another amount")


def partial_capture():
    pi = create(amount=5000, capture_method="manual", payment_method="pm_card_visa", confirm=True)
    assert pi.status == "requires_capture" and pi.amount_capturable == 5000, pi
    captured = stripe.PaymentIntent.capture(pi.id, amount_to_capture=3000)
    assert captured.status == "succeeded", captured.status
    assert captured.amount_received == 3000, captured.amount_received
    return {"ids": [pi.id], "captured": captured.amount_received}


def refund():
    pi = create(amount=2500, payment_method="pm_card_amex", confirm=True)
    re = stripe.Refund.create(payment_intent=pi.id, amount=700, reason="requested_by_customer")
    assert re.object == "refund" and re.amount == 700 and re.payment_intent == pi.id, re
    assert re.status == "succeeded", re.status
    assert stripe.Refund.retrieve(re.id).amount == 700
    listed = stripe.Refund.list(payment_intent=pi.id)
    assert [r.id for r in listed.data] == [re.id], listed
    return {"ids": [pi.id], "refund": re.id}


def cancel():
    pi = create(amount=900)
    canceled = stripe.PaymentIntent.cancel(pi.id, cancellation_reason="requested_by_customer")
    assert canceled.status == "canceled", canceled.status
    return {"ids": [pi.id]}


def declined_card():
    try:
        create(amount=1200, payment_method="pm_card_visa_chargeDeclinedInsufficientFunds", confirm=True)
    except stripe.CardError as e:
        assert e.http_status == 402, e.http_status
        assert e.code == "card_declined", e.code
        assert e.error.decline_code == "insufficient_funds", e.error.decline_code
        intent = e.error.payment_intent
        assert intent.status == "requires_payment_method", intent.status
        assert intent.last_payment_error.decline_code == "insufficient_funds", intent
        return {"ids": [intent.id], "error": type(e).__name__}
    raise AssertionError("no CardError for a declined card")


def auto_pagination():
    made = [create(amount=100 + i).id for i in range(5)]
    deadline = time.time() + 30
    while len(stripe.PaymentIntent.list(limit=100).data) < 5:
        assert time.time() < deadline, "the list never showed the 5 intents"
        time.sleep(0.2)
    first_page = stripe.PaymentIntent.list(limit=2)
    assert len(first_page.data) == 2 and first_page.has_more, first_page
    seen = [pi.id for pi in stripe.PaymentIntent.list(limit=2).auto_paging_iter()]
    assert sorted(seen) == sorted(made), (seen, made)
    assert len(set(seen)) == 5, seen
    return {"ids": made, "seen": seen}


def bad_parameter():
    try:
        stripe.PaymentIntent.create(amount=2000, currency="xyz")
    except stripe.InvalidRequestError as e:
        assert e.http_status == 400, e.http_status
        assert e.param == "currency", e.param
        return {"param": e.param, "error": type(e).__name__}
    raise AssertionError("no InvalidRequestError for currency=xyz")


def wrong_key():
    stripe.api_key = "sk_test_" + "0" * 32
    try:
        create(amount=2000)
    except stripe.AuthenticationError as e:
        assert e.http_status == 401, e.http_status
        return {"error": type(e).__name__}
    raise AssertionError("no AuthenticationError with a wrong key")


def verify_webhooks():
    """Webhooks a merchant with `"webhook_api": "stripe"` received (a JSON file of
    {payload, signature} named by $PAYRAIL_WEBHOOKS_FILE), checked with the SDK's own
    verifier; the <api key> argument is the merchant's webhook secret here."""
    secret = stripe.api_key
    with open(os.environ["PAYRAIL_WEBHOOKS_FILE"], encoding="utf-8") as f:
        hits = json.load(f)
    assert hits, "no webhooks to verify"
    types = []
    for hit in hits:
        event = stripe.Webhook.construct_event(hit["payload"], hit["signature"], secret)
        assert event.object == "event" and event.id.startswith("evt_"), event
        assert event.data.object.object in ("payment_intent", "refund"), event
        types.append(event.type)
    try:
        stripe.Webhook.construct_event(hits[0]["payload"] + " ", hits[0]["signature"], secret)
    except stripe.SignatureVerificationError:
        pass
    else:
        raise AssertionError("an altered body passed construct_event")
    return {"types": types, "tampered_refused": True}


def main():
    base, key, scenario = sys.argv[1:4]
    assert stripe.VERSION == EXPECTED_SDK_VERSION, stripe.VERSION
    stripe.api_key = key
    stripe.api_base = base
    evidence = globals()[scenario]()
    print(json.dumps({"scenario": scenario, "sdk": f"stripe-python {stripe.VERSION}", **evidence}))


if __name__ == "__main__":
    main()
