// Signs webhook payloads with Stripe's own library, for
// alvryn-core/tests/stripe_webhook.rs.
//
// Reads JSON lines from stdin, {"payload": "...", "secret": "whsec_...",
// "timestamp": 1700000000}, and writes one Stripe-Signature header value
// per line, made by stripe.webhooks.generateTestHeaderString. A line may
// add "scheme": "v0" (the library's default, and Stripe's, is v1).
// A line it cannot sign ends the process with a non-zero status.
'use strict';

const readline = require('node:readline');
const Stripe = require('stripe');

// No API key is needed to sign; the client is never used to call Stripe.
const stripe = new Stripe('sk_test_unused');

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', (line) => {
  if (line.trim() === '') return;
  const { payload, secret, timestamp, scheme } = JSON.parse(line);
  if (typeof payload !== 'string' || typeof secret !== 'string' || !Number.isInteger(timestamp)) {
    throw new Error('each line needs payload (string), secret (string), timestamp (integer)');
  }
  const opts = { payload, secret, timestamp };
  if (scheme !== undefined) opts.scheme = scheme;
  process.stdout.write(stripe.webhooks.generateTestHeaderString(opts) + '\n');
});
