// The OpenID provider the OAuth tests log in against: oauth2-mock-server
// (authorize -> code -> token endpoint, discovery, JWKS, PKCE S256, nonce
// echoed per code) plus a control API under /__control/ on the same
// origin, so a test can script the next ID tokens and rotate the key.
//
//   node server.js PORT        (0: any free port)
//
// Prints `listening http://127.0.0.1:PORT` on stdout once it accepts
// connections. The issuer (`iss`, the discovery document's `issuer`) is
// that URL, without a trailing slash.
//
// Endpoints (from oauth2-mock-server): GET /.well-known/openid-configuration,
// GET /jwks, GET /authorize, POST /token, GET /userinfo, ...
//
// What this wrapper adds to oauth2-mock-server's behaviour:
//  * one RS256 key (`use: "sig"`, `alg: "RS256"`, random kid); the JWKS
//    holds only the current key;
//  * realistic default ID-token claims: sub, email, email_verified: true,
//    name (plus iss, aud = the client_id of the token request, nonce from
//    the authorization request, iat, exp, nbf from the library);
//  * codes are single-use and must come from /authorize; refresh tokens
//    must have been issued and are rotated (each one works once):
//    otherwise 400 {"error": "invalid_grant"}.
//    (oauth2-mock-server itself checks PKCE only when a code_verifier is
//    sent, and checks neither client_id nor redirect_uri.)
//
// Control API (JSON in, JSON out):
//  POST /__control/next    {"claims": {...}, "mode": "...", "client_id": "...", "hmac_key": "pem"|"jwk_n"}
//      Queues a spec for a coming ID token (FIFO). With "client_id", only
//      a token issued to that client takes it (so concurrent tests with
//      different client ids do not steal each other's specs); without,
//      any client's token does when its own queue is empty. Each ID token
//      issued (authorization_code or refresh_token grant) takes one spec;
//      none queued means {"claims": {}, "mode": "normal"}.
//      claims: merged into the payload after the mode's changes (a null
//        value deletes the claim), so explicit claims win.
//      mode:
//        normal            as issued;
//        expired           iat = now - 7200, nbf = iat, exp = now - 3600;
//        tamper            after signing, the payload's email and sub are
//                          changed (still valid JSON), the signature kept;
//        hs256_public_key  re-signed with HS256 (same header kid), the HMAC
//                          secret being the provider's public key: by
//                          default ("hmac_key": "pem") the exact bytes of
//                          its SPKI PEM ("-----BEGIN PUBLIC KEY-----\n...
//                          -----END PUBLIC KEY-----\n"); with "hmac_key":
//                          "jwk_n" the raw modulus bytes (the JWK's `n`,
//                          base64url-decoded);
//        no_kid            the header has no kid;
//        alg_none          header {"alg": "none", "typ": "JWT", kid},
//                          empty signature.
//      Answers {"queued": N} (that queue's length).
//  POST /__control/rotate  New RS256 key (new kid) signs everything from
//      now on; the old key leaves the JWKS. Answers {"kid": NEW}.
//  POST /__control/reset   Empties every queue. Answers {}.
//  GET  /__control/stats   {"jwks_fetches": N, "discovery_fetches": N,
//      "token_requests": N, "kid": CURRENT}; counts since start (GETs of
//      /jwks and /.well-known/openid-configuration, POSTs of /token).
//  GET  /__control/last_tokens?client_id=ID   {"access_token": ...,
//      "refresh_token": ...} last issued to that client (the `aud` of its
//      ID token), or 404: lets a test look for the provider's tokens in
//      what the relying party stored.
import http from 'node:http';
import crypto from 'node:crypto';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const port = Number(process.argv[2] ?? '0');
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`usage: node server.js PORT (got ${process.argv[2]})`);
  process.exit(2);
}

const MODES = new Set(['normal', 'expired', 'tamper', 'hs256_public_key', 'no_kid', 'alg_none']);
const DEFAULT_CLAIMS = {
  sub: '248289761001',
  email: 'jane.doe@example.com',
  email_verified: true,
  name: 'Jane Doe',
};

// ------------------------------------------------------------ the key

function newKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return {
    jwk: { ...jwk, kid: crypto.randomBytes(16).toString('hex'), alg: 'RS256', use: 'sig' },
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }),
  };
}

function publicJwk(jwk) {
  const { d, p, q, dp, dq, qi, ...pub } = jwk;
  return pub;
}

let current = newKey();

const issuer = new OAuth2Issuer();
// The library's key store can add keys but not remove them: make it serve
// exactly the current key, for signing and for the JWKS.
issuer.keys.get = () => current.jwk;
issuer.keys.toJSON = (includePrivateFields = false) => [
  includePrivateFields ? { ...current.jwk } : publicJwk(current.jwk),
];

const service = new OAuth2Service(issuer);

// ------------------------------------------------------------ scripted tokens

const queues = new Map(); // client id ('' = any client) -> [spec]
const stats = { jwks_fetches: 0, discovery_fetches: 0, token_requests: 0 };
const issuedCodes = new Set();
const issuedRefreshTokens = new Set();
const specForRequest = new WeakMap(); // token request -> spec of its ID token
const lastTokens = new Map(); // client id -> {access_token, refresh_token}

function takeSpec(clientId) {
  for (const key of [clientId, '']) {
    const queue = queues.get(key);
    if (queue !== undefined && queue.length > 0) return queue.shift();
  }
  return { claims: {}, mode: 'normal' };
}

// Why a token request must be refused, or null.
function grantProblem(body) {
  if (body?.grant_type === 'authorization_code' && !issuedCodes.has(body.code)) {
    return 'unknown or already used authorization code';
  }
  if (body?.grant_type === 'refresh_token' && !issuedRefreshTokens.has(body.refresh_token)) {
    return 'unknown or already used refresh token';
  }
  return null;
}

service.on('beforeAuthorizeRedirect', (redirect) => {
  const code = redirect.url.searchParams.get('code');
  if (code) issuedCodes.add(code);
});

service.on('beforeTokenSigning', (token, req) => {
  const payload = token.payload;
  // The access token carries a scope; the ID token does not.
  if ('scope' in payload || grantProblem(req.body) !== null) return;
  const spec = takeSpec(typeof payload.aud === 'string' ? payload.aud : '');
  Object.assign(payload, DEFAULT_CLAIMS);
  const now = Math.floor(Date.now() / 1000);
  if (spec.mode === 'expired') {
    payload.iat = now - 7200;
    payload.nbf = payload.iat;
    payload.exp = now - 3600;
  }
  if (spec.mode === 'no_kid') delete token.header.kid;
  for (const [name, value] of Object.entries(spec.claims ?? {})) {
    if (value === null) delete payload[name];
    else payload[name] = value;
  }
  specForRequest.set(req, spec);
});

service.on('beforeResponse', (response, req) => {
  const problem = grantProblem(req.body);
  if (problem !== null) {
    response.statusCode = 400;
    response.body = { error: 'invalid_grant', error_description: problem };
    return;
  }
  if (req.body.grant_type === 'authorization_code') issuedCodes.delete(req.body.code);
  if (req.body.grant_type === 'refresh_token') issuedRefreshTokens.delete(req.body.refresh_token);
  if (typeof response.body.refresh_token === 'string') {
    issuedRefreshTokens.add(response.body.refresh_token);
  }
  if (typeof response.body.id_token === 'string') {
    const { aud } = unb64json(response.body.id_token.split('.')[1]);
    if (typeof aud === 'string') {
      lastTokens.set(aud, {
        access_token: response.body.access_token,
        refresh_token: response.body.refresh_token,
      });
    }
  }
  const spec = specForRequest.get(req);
  if (spec !== undefined && typeof response.body.id_token === 'string') {
    response.body.id_token = afterSigning(response.body.id_token, spec);
  }
});

const b64json = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
const unb64json = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

function afterSigning(idToken, spec) {
  const [header, payload, signature] = idToken.split('.');
  switch (spec.mode) {
    case 'tamper': {
      const claims = unb64json(payload);
      claims.email = 'attacker@example.com';
      claims.sub = `${claims.sub}0`;
      return `${header}.${b64json(claims)}.${signature}`;
    }
    case 'hs256_public_key': {
      const h = b64json({ alg: 'HS256', typ: 'JWT', kid: current.jwk.kid });
      const secret =
        spec.hmac_key === 'jwk_n' ? Buffer.from(current.jwk.n, 'base64url') : Buffer.from(current.publicPem);
      const mac = crypto.createHmac('sha256', secret).update(`${h}.${payload}`).digest('base64url');
      return `${h}.${payload}.${mac}`;
    }
    case 'alg_none':
      return `${b64json({ alg: 'none', typ: 'JWT', kid: current.jwk.kid })}.${payload}.`;
    default:
      return idToken;
  }
}

// ------------------------------------------------------------ control API

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text.trim() === '' ? {} : JSON.parse(text);
}

async function control(req, res, path) {
  if (req.method === 'GET' && path === '/__control/stats') {
    return reply(res, 200, { ...stats, kid: current.jwk.kid });
  }
  if (req.method === 'GET' && path === '/__control/last_tokens') {
    const clientId = new URL(req.url ?? '/', 'http://127.0.0.1').searchParams.get('client_id') ?? '';
    const tokens = lastTokens.get(clientId);
    return tokens === undefined ? reply(res, 404, { error: 'no tokens issued to this client' }) : reply(res, 200, tokens);
  }
  if (req.method !== 'POST') return reply(res, 405, { error: 'method not allowed' });
  let body;
  try {
    body = await readJson(req);
  } catch {
    return reply(res, 400, { error: 'body is not JSON' });
  }
  switch (path) {
    case '/__control/next': {
      const mode = body.mode ?? 'normal';
      const claims = body.claims ?? {};
      if (!MODES.has(mode)) return reply(res, 400, { error: `unknown mode ${mode}` });
      if (typeof claims !== 'object' || Array.isArray(claims)) {
        return reply(res, 400, { error: 'claims must be an object' });
      }
      if (body.hmac_key !== undefined && !['pem', 'jwk_n'].includes(body.hmac_key)) {
        return reply(res, 400, { error: 'hmac_key must be "pem" or "jwk_n"' });
      }
      const key = typeof body.client_id === 'string' ? body.client_id : '';
      if (!queues.has(key)) queues.set(key, []);
      const queue = queues.get(key);
      queue.push({ claims, mode, hmac_key: body.hmac_key ?? 'pem' });
      return reply(res, 200, { queued: queue.length });
    }
    case '/__control/rotate':
      current = newKey();
      return reply(res, 200, { kid: current.jwk.kid });
    case '/__control/reset':
      queues.clear();
      return reply(res, 200, {});
    default:
      return reply(res, 404, { error: 'no such control endpoint' });
  }
}

// ------------------------------------------------------------ server

const server = http.createServer((req, res) => {
  const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
  if (path.startsWith('/__control/')) {
    control(req, res, path).catch((err) => {
      console.error('control API error:', err);
      reply(res, 500, { error: 'control API error' });
    });
    return;
  }
  if (req.method === 'GET' && path === '/.well-known/openid-configuration') stats.discovery_fetches += 1;
  if (req.method === 'GET' && path === '/jwks') stats.jwks_fetches += 1;
  if (req.method === 'POST' && path === '/token') stats.token_requests += 1;
  service.requestHandler(req, res);
});

server.on('error', (err) => {
  console.error(`cannot listen: ${err.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${server.address().port}`;
  issuer.url = url;
  console.log(`listening ${url}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
