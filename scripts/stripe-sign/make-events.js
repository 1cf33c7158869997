// Writes N signed Stripe webhook deliveries for the webhook load test
// (scripts/load/webhooks), one per line: "<Stripe-Signature>\t<body>".
//
//   node make-events.js N SECRET FIXTURES_JSON > deliveries.tsv
//
// Bodies are Stripe's fixture event around its fixture subscription (every
// other one) or customer, with fresh ids; each subscription is a new one
// of a new user (a sign-up), so each applies and, as in life, a user has
// one subscription, not hundreds (a user's billing state holds every
// subscription of theirs that has not ended). Signed now by
// stripe.webhooks.generateTestHeaderString (Stripe's own library).
'use strict';

const fs = require('node:fs');
const Stripe = require('stripe');

const [n, secret, fixturesPath] = process.argv.slice(2);
if (!n || !secret || !fixturesPath) {
  console.error('usage: node make-events.js N SECRET FIXTURES_JSON');
  process.exit(2);
}
const stripe = new Stripe('sk_test_unused');
const fixtures = JSON.parse(fs.readFileSync(fixturesPath, 'utf8')).resources;
const now = Math.floor(Date.now() / 1000);
const out = fs.createWriteStream(null, { fd: 1 });
for (let i = 0; i < Number(n); i++) {
  const event = structuredClone(fixtures.event);
  event.id = `evt_load${now}x${i}`;
  event.created = now;
  if (i % 2 === 0) {
    const sub = structuredClone(fixtures.subscription);
    sub.id = `sub_load${now}x${i}`;
    sub.status = 'active';
    sub.created = now;
    sub.metadata = { alvryn_user_id: `load-user-${now}x${i}` };
    sub.items.data[0].price.id = 'price_alvrynLoadPro';
    event.type = 'customer.subscription.created';
    event.data = { object: sub };
  } else {
    event.type = 'customer.created';
    event.data = { object: fixtures.customer };
  }
  const body = JSON.stringify(event);
  const sig = stripe.webhooks.generateTestHeaderString({ payload: body, secret, timestamp: now });
  out.write(`${sig}\t${body}\n`);
}
out.end();
