// Drives a payrail node with the official Stripe Node.js SDK (npm `stripe`), unmodified:
// only its host, port and protocol are pointed at the node. Used by tests/stripe_sdk.rs.
//
//   node stripe_sdk.cjs <base url> <api key> <scenario>
//
// The SDK is loaded from $STRIPE_NODE_DIR/node_modules (scripts/test.sh installs the pinned
// version there). Each scenario asserts what Stripe documents and prints one JSON line of
// evidence; the exit code is 0 only if it held.
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const crypto = require('node:crypto');
const fs = require('node:fs');

const EXPECTED_SDK_VERSION = '18.5.0';
const dir = process.env.STRIPE_NODE_DIR;
const Stripe = require(path.join(dir, 'node_modules', 'stripe'));
const sdkVersion = require(path.join(dir, 'node_modules', 'stripe', 'package.json')).version;

const [base, key, scenario] = process.argv.slice(2);
const url = new URL(base);
const client = (apiKey) =>
  new Stripe(apiKey, { host: url.hostname, port: Number(url.port), protocol: 'http' });
let stripe = client(key);

const create = (params, options) =>
  stripe.paymentIntents.create({ currency: 'usd', ...params }, options);

async function expectError(promise, type) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.type, type, `${e.type}: ${e.message}`);
    return e;
  }
  assert.fail(`no ${type}`);
}

const scenarios = {
  async create_and_confirm() {
    const pi = await create({
      amount: 2000,
      payment_method: 'pm_card_visa',
      confirm: true,
      metadata: { order_no: 'A-7', note: 'a b&c=d' },
      receipt_email: 'buyer@example.com',
    });
    assert.equal(pi.object, 'payment_intent');
    assert.equal(pi.status, 'succeeded');
    assert.equal(pi.amount_received, 2000);
    assert.deepEqual(pi.metadata, { order_no: 'A-7', note: 'a b&c=d' });
    assert.equal(pi.receipt_email, 'buyer@example.com');
    const later = await create({ amount: 1500, payment_method_types: ['card'] });
    assert.equal(later.status, 'requires_payment_method');
    const confirmed = await stripe.paymentIntents.confirm(later.id, { payment_method: 'pm_card_mastercard' });
    assert.equal(confirmed.status, 'succeeded');
    const retrieved = await stripe.paymentIntents.retrieve(later.id);
    assert.equal(retrieved.amount_received, 1500);
    return { ids: [pi.id, later.id] };
  },

  async idempotent_replay() {
    const idempotencyKey = `node-replay-${crypto.randomUUID()}`;
    const params = { amount: 3100, payment_method: 'pm_card_visa', confirm: true };
    const first = await create(params, { idempotencyKey });
    const again = await create(params, { idempotencyKey });
    assert.equal(again.id, first.id);
    assert.equal(again.status, 'succeeded');
    assert.equal(again.amount_received, 3100);
    return { ids: [first.id] };
  },

  async idempotency_mismatch() {
    const idempotencyKey = `node-mismatch-${crypto.randomUUID()}`;
    const first = await create({ amount: 4100 }, { idempotencyKey });
    const e = await expectError(create({ amount: 4200 }, { idempotencyKey }), 'StripeIdempotencyError');
    assert.ok(e instanceof Stripe.errors.StripeIdempotencyError);
    assert.equal(e.statusCode, 400);
    return { ids: [first.id], error: e.type };
  },

  async partial_capture() {
    const pi = await create({ amount: 5000, capture_method: 'manual', payment_method: 'pm_card_visa', confirm: true });
    assert.equal(pi.status, 'requires_capture');
    assert.equal(pi.amount_capturable, 5000);
    const captured = await stripe.paymentIntents.capture(pi.id, { amount_to_capture: 3000 });
    assert.equal(captured.status, 'succeeded');
    assert.equal(captured.amount_received, 3000);
    return { ids: [pi.id], captured: captured.amount_received };
  },

  async refund() {
    const pi = await create({ amount: 2500, payment_method: 'pm_card_amex', confirm: true });
    const re = await stripe.refunds.create({ payment_intent: pi.id, amount: 700, reason: 'requested_by_customer' });
    assert.equal(re.object, 'refund');
    assert.equal(re.amount, 700);
    assert.equal(re.payment_intent, pi.id);
    assert.equal(re.status, 'succeeded');
    assert.equal((await stripe.refunds.retrieve(re.id)).amount, 700);
    const listed = await stripe.refunds.list({ payment_intent: pi.id });
    assert.deepEqual(listed.data.map((r) => r.id), [re.id]);
    return { ids: [pi.id], refund: re.id };
  },

  async cancel() {
    const pi = await create({ amount: 900 });
    const canceled = await stripe.paymentIntents.cancel(pi.id, { cancellation_reason: 'requested_by_customer' });
    assert.equal(canceled.status, 'canceled');
    return { ids: [pi.id] };
  },

  async declined_card() {
    const e = await expectError(
      create({ amount: 1200, payment_method: 'pm_card_visa_chargeDeclinedInsufficientFunds', confirm: true }),
      'StripeCardError',
    );
    assert.ok(e instanceof Stripe.errors.StripeCardError);
    assert.equal(e.statusCode, 402);
    assert.equal(e.code, 'card_declined');
    assert.equal(e.decline_code, 'insufficient_funds');
    const intent = e.raw.payment_intent;
    assert.equal(intent.status, 'requires_payment_method');
    assert.equal(intent.last_payment_error.decline_code, 'insufficient_funds');
    return { ids: [intent.id], error: e.type };
  },

  async auto_pagination() {
    const made = [];
    for (let i = 0; i < 5; i++) made.push((await create({ amount: 100 + i })).id);
    const deadline = Date.now() + 30000;
    while ((await stripe.paymentIntents.list({ limit: 100 })).data.length < 5) {
      assert.ok(Date.now() < deadline, 'the list never showed the 5 intents');
      await new Promise((r) => setTimeout(r, 200));
    }
    const firstPage = await stripe.paymentIntents.list({ limit: 2 });
    assert.equal(firstPage.data.length, 2);
    assert.equal(firstPage.has_more, true);
    const seen = [];
    for await (const pi of stripe.paymentIntents.list({ limit: 2 })) seen.push(pi.id);
    assert.deepEqual([...seen].sort(), [...made].sort());
    return { ids: made, seen };
  },

  async bad_parameter() {
    const e = await expectError(stripe.paymentIntents.create({ amount: 2000, currency: 'xyz' }), 'StripeInvalidRequestError');
    assert.equal(e.statusCode, 400);
    assert.equal(e.param, 'currency');
    return { param: e.param, error: e.type };
  },

  // Webhooks a merchant with "webhook_api": "stripe" received ($PAYRAIL_WEBHOOKS_FILE, a
  // JSON array of {payload, signature}), checked with the SDK's own verifier; <api key> is
  // the merchant's webhook secret here.
  async verify_webhooks() {
    const hits = JSON.parse(fs.readFileSync(process.env.PAYRAIL_WEBHOOKS_FILE, 'utf8'));
    assert.ok(hits.length > 0, 'no webhooks to verify');
    const types = hits.map((hit) => {
      const event = stripe.webhooks.constructEvent(hit.payload, hit.signature, key);
      assert.equal(event.object, 'event');
      assert.ok(event.id.startsWith('evt_'), event.id);
      assert.ok(['payment_intent', 'refund'].includes(event.data.object.object), event.type);
      return event.type;
    });
    assert.throws(
      () => stripe.webhooks.constructEvent(`${hits[0].payload} `, hits[0].signature, key),
      (e) => e.type === 'StripeSignatureVerificationError',
    );
    return { types, tampered_refused: true };
  },

  async wrong_key() {
    stripe = client(`sk_test_${'0'.repeat(32)}`);
    const e = await expectError(create({ amount: 2000 }), 'StripeAuthenticationError');
    assert.equal(e.statusCode, 401);
    return { error: e.type };
  },
};

(async () => {
  assert.equal(sdkVersion, EXPECTED_SDK_VERSION);
  const evidence = await scenarios[scenario]();
  console.log(JSON.stringify({ scenario, sdk: `stripe-node ${sdkVersion}`, ...evidence }));
})().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
