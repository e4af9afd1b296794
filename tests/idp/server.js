// Test OpenID Provider for Cloakroom's integration tests.
//
// A thin wrapper around the certified `oidc-provider` package. Configured
// entirely through the IDP_CONFIG environment variable (JSON, see README.md).
// Prints exactly one line to stdout once listening:  READY http://127.0.0.1:<port>
// Everything else goes to stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider, { errors, interactionPolicy } from 'oidc-provider';

function log(...args) {
  process.stderr.write(`[idp] ${args.join(' ')}\n`);
}

function fail(msg) {
  log(`fatal: ${msg}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------
// browsers get HTML, everything else JSON
// ---------------------------------------------------------------------------
// A request "prefers HTML" when its Accept header names text/html with a q at
// least that of application/json (a real browser's navigation). `*/*`, no
// Accept header, or an explicit JSON preference keep the JSON contract below.

function acceptQ(accept, type) {
  let q = 0;
  for (const part of accept.split(',')) {
    const [range, ...params] = part.trim().toLowerCase().split(';').map((x) => x.trim());
    if (range !== type) continue;
    const qp = params.find((x) => x.startsWith('q='));
    q = Math.max(q, qp ? Number(qp.slice(2)) || 0 : 1);
  }
  return q;
}

function wantsHtml(req) {
  const accept = String(req.headers.accept ?? '');
  const html = acceptQ(accept, 'text/html');
  return html > 0 && html >= acceptQ(accept, 'application/json');
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

const PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'";

function htmlPage(title, body) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}
label{display:block;margin:.5rem 0}input{font:inherit;width:100%;box-sizing:border-box}
button{font:inherit;padding:.4rem 1rem;margin-top:.75rem}.error{color:#8c1d18}.muted{color:#666;font-size:.9rem}</style>
</head><body><h1>${escapeHtml(title)}</h1>
${body}
<p class="muted">Test identity provider (oidc-provider) for Cloakroom's integration tests. Not for production.</p>
</body></html>`;
}

function sendHtml(res, status, title, body) {
  const payload = htmlPage(title, body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Security-Policy', PAGE_CSP);
  res.setHeader('Content-Length', Buffer.byteLength(payload));
  res.end(payload);
}

function loginForm(uid, { login = '', error = '' } = {}) {
  return `${error ? `<p class="error" id="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${encodeURIComponent(uid)}/login">
<label>User <input name="login" id="login" value="${escapeHtml(login)}" autocomplete="username" required autofocus></label>
<label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="sign-in">Sign in</button>
</form>
<p class="muted">Users: alice / wonderland, bob / builder.</p>`;
}

// ---------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------

let cfg;
try {
  cfg = JSON.parse(process.env.IDP_CONFIG ?? '{}');
} catch (err) {
  fail(`IDP_CONFIG is not valid JSON: ${err.message}`);
}

const port = Number(cfg.port ?? 0);
const accessTokenTtl = Number(cfg.access_token_ttl ?? 3600);
const idTokenTtl = Number(cfg.id_token_ttl ?? 3600);
const refreshTokenTtl = Number(cfg.refresh_token_ttl ?? 86400);
if (!Array.isArray(cfg.clients) || cfg.clients.length === 0) {
  fail('IDP_CONFIG.clients must be a non-empty array');
}

// `resource_servers: [{indicator, scope, access_token_ttl?}]` (RFC 8707): resources a client may
// ask for, at login and on the refresh and client-credentials grants; each gets JWT access
// tokens whose `aud` is its indicator and whose `scope` is the asked-for part of its `scope`.
const resourceServers = new Map();
// `jwt_access_tokens: true`: the login's own access token is an RFC 9068 JWT (for the default
// resource `urn:cloakroom:test-api`, asked for when a request names none).
const JWT_API = 'urn:cloakroom:test-api';
if (cfg.jwt_access_tokens) {
  resourceServers.set(JWT_API, { scope: '', ttl: accessTokenTtl });
}
for (const rs of cfg.resource_servers ?? []) {
  if (typeof rs.indicator !== 'string') fail('every resource server needs an indicator');
  resourceServers.set(rs.indicator, {
    scope: String(rs.scope ?? ''),
    ttl: Number(rs.access_token_ttl ?? accessTokenTtl),
  });
}
// `token_exchange: {audiences: [...], access_token_ttl?}` (RFC 8693): the audiences the
// token-exchange grant issues JWT access tokens for.
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const exchangeAudiences = new Set(cfg.token_exchange?.audiences ?? []);
const exchangeTtl = Number(cfg.token_exchange?.access_token_ttl ?? accessTokenTtl);
// `acr_values` (weakest first): the levels a login can reach; a login is at the first unless
// the login form says `acr`. `amr` is `["pwd"]`, plus `"otp"` above the first level.
const acrValues = Array.isArray(cfg.acr_values) ? cfg.acr_values.map(String) : [];

const clients = cfg.clients.map((c) => {
  if (!c.client_id) fail('every client needs a client_id');
  const client = {
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris ?? [],
    post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  };
  // `client_credentials` / `token_exchange`: the client may use those grants too; `scope` limits
  // the OpenID scopes it may ask for (resource scopes come from `resource_servers`).
  if (c.client_credentials) client.grant_types.push('client_credentials');
  if (c.token_exchange) client.grant_types.push(TOKEN_EXCHANGE);
  if (c.scope) client.scope = c.scope;
  // `pairwise: true` (top level): every client gets pairwise subject identifiers (OIDC Core 8.1).
  if (cfg.pairwise) client.subject_type = 'pairwise';
  // `require_auth_time`: every ID token carries `auth_time` (OIDC Dynamic Registration §2).
  if (c.require_auth_time) client.require_auth_time = true;
  // `resource_server`: a client that only introspects (a resource server checking tokens).
  if (c.resource_server) {
    client.grant_types = [];
    client.response_types = [];
    client.redirect_uris = [];
  }
  // private_key_jwt: the client's public keys, and optionally the one algorithm it may use.
  if (c.jwks) client.jwks = c.jwks;
  if (c.token_endpoint_auth_signing_alg) {
    client.token_endpoint_auth_signing_alg = c.token_endpoint_auth_signing_alg;
  }
  // DPoP (RFC 9449): the client may be made to use DPoP-bound tokens only.
  if (c.dpop_bound_access_tokens) client.dpop_bound_access_tokens = true;
  // mTLS (RFC 8705): a CA-issued certificate named by its subject DN, or a self-signed one
  // registered by its x5c; tokens bound to the certificate presented (`cnf.x5t#S256`).
  if (c.tls_client_auth_subject_dn) client.tls_client_auth_subject_dn = c.tls_client_auth_subject_dn;
  if (c.tls_client_certificate_bound_access_tokens) {
    client.tls_client_certificate_bound_access_tokens = true;
  }
  // FAPI 2.0 (`fapi2`): ID tokens signed with PS256 (the RSA key allows it then).
  if (cfg.fapi2) client.id_token_signed_response_alg = 'PS256';
  else if (cfg.signing_alg) client.id_token_signed_response_alg = cfg.signing_alg;
  if (c.backchannel_logout_uri) {
    client.backchannel_logout_uri = c.backchannel_logout_uri;
    client.backchannel_logout_session_required = true;
  }
  return client;
});

// ---------------------------------------------------------------------------
// accounts
// ---------------------------------------------------------------------------

const USERS = {
  alice: {
    password: 'wonderland',
    claims: { name: 'Alice Liddell', email: 'alice@example.test', email_verified: true },
  },
  bob: {
    password: 'builder',
    claims: { name: 'Bob Builder', email: 'bob@example.test', email_verified: true },
  },
};

// `userinfo_claims: {name: value, ...}`: more claims the userinfo endpoint answers (with the
// `openid` scope), never put in the ID token; e.g. protocol claims (`acr`, `auth_time`, `sid`,
// `iss`, ...) a relying party must not take from there.
const userinfoClaims = cfg.userinfo_claims && typeof cfg.userinfo_claims === 'object'
  ? cfg.userinfo_claims : {};

async function findAccount(_ctx, sub) {
  const user = USERS[sub];
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims(use) {
      return use === 'userinfo'
        ? { ...userinfoClaims, sub, ...user.claims }
        : { sub, ...user.claims };
    },
  };
}

// ---------------------------------------------------------------------------
// test statistics
// ---------------------------------------------------------------------------

function freshStats() {
  return {
    token_requests: { authorization_code: 0, refresh_token: 0 },
    revocations: 0,
    backchannel_logouts_sent: 0,
    // every HTTP request to the token endpoint path, counted before the outage check
    token_endpoint_hits: 0,
    // token endpoint requests that carried a DPoP proof, by whether it had a nonce
    dpop_proofs: { with_nonce: 0, without_nonce: 0 },
    // PAR and front-channel authorization requests that carried dpop_jkt
    dpop_jkt_requests: 0,
    // `grant.error` events by OAuth error code, e.g. {"invalid_grant": 2}
    grant_errors: {},
    // refresh-token grants refused because the token had already been rotated out
    refresh_reuse: 0,
    // `grant.revoked` events: reuse detection, code replay, revocation, logout
    grants_revoked: 0,
    // private_key_jwt: the `aud` of every client assertion received, counted by value
    assertion_audiences: {},
    // successful grants that named a resource, by "<grant_type> <indicator>"
    resource_tokens: {},
    // successful token exchanges, by audience
    token_exchanges: {},
    // sha256 (hex) of every token sent to /token/revocation and answered 200
    revoked_tokens: [],
    // sha256 (hex) -> OAuth error code of every token the revocation endpoint refused
    // (a JWT access token: `unsupported_token_type`)
    revocation_refused: {},
  };
}
let stats = freshStats();

// ---------------------------------------------------------------------------
// offline_access tracking
// ---------------------------------------------------------------------------
// oidc-provider strips offline_access from an authorization request whose
// prompt does not include "consent". We remember whether the *original*
// request asked for it: per interaction uid while the user is in our
// interaction routes, then per issued authorization code (taken from the
// Location of the final redirect, response_mode=query), so issueRefreshToken
// can still issue a refresh token.
const offlineUids = new Set(); // interaction uids whose request asked for offline_access
const offlineCodes = new Set(); // authorization codes whose request asked for offline_access
const offlineRequestUris = new Set(); // PAR request_uris whose pushed request asked for it

function scopeHasOffline(scope) {
  return typeof scope === 'string' && scope.split(' ').includes('offline_access');
}

function requestedOffline(ctx) {
  if (ctx.state?.idpResumeUid) return offlineUids.has(ctx.state.idpResumeUid);
  if (ctx.path !== '/auth') return false;
  const requestUri = ctx.method === 'POST' ? ctx.oidc?.body?.request_uri : ctx.query.request_uri;
  if (requestUri) return offlineRequestUris.has(requestUri);
  const scope = ctx.method === 'POST' ? ctx.oidc?.body?.scope : ctx.query.scope;
  return scopeHasOffline(scope);
}

// ---------------------------------------------------------------------------
// keys
// ---------------------------------------------------------------------------

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `test-idp-${crypto.randomBytes(6).toString('hex')}`,
  // `fapi2`: the FAPI 2.0 profile allows PS256 and not RS256 (Security Profile §5.4).
  alg: cfg.fapi2 ? 'PS256' : 'RS256',
  use: 'sig',
};
// `signing_alg: "ES256" | "EdDSA"`: ID tokens (and JWT access tokens) signed with a key of
// that kind instead; the RSA key stays in the JWKS (it signs the /test/sign tokens).
const signingAlg = cfg.signing_alg ?? signingJwk.alg;
function makeJwk(alg) {
  const kid = `test-idp-${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`;
  if (alg === 'ES256') {
    const { privateKey: k } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    return { ...k.export({ format: 'jwk' }), kid, alg, use: 'sig' };
  }
  if (alg === 'EdDSA') {
    const { privateKey: k } = crypto.generateKeyPairSync('ed25519');
    return { ...k.export({ format: 'jwk' }), kid, alg, use: 'sig' };
  }
  fail(`signing_alg ${alg} is not ES256, EdDSA or RS256`);
  return null;
}
const idTokenJwk = signingAlg === signingJwk.alg ? signingJwk : makeJwk(signingAlg);
// `key_rotation: true`: a second, ES256 key is in the keystore from the start but neither
// published nor used until POST /test/rotate-keys?step=switch (published, and ID tokens
// signed with it from then on) and ?step=retire (the first key leaves the JWKS).
const nextJwk = cfg.key_rotation ? makeJwk('ES256') : null;
let retiredKid = null;
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];

// ---------------------------------------------------------------------------
// http server first (the issuer must contain the bound port)
// ---------------------------------------------------------------------------

const server = http.createServer();
server.on('clientError', (_err, socket) => socket.destroy());

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', () => {
    server.off('error', reject);
    resolve();
  });
});

const boundPort = server.address().port;

// `mtls: {cert, key, ca}` (PEM): a second, TLS listener that asks for client certificates
// (verified against `ca`, but not refused here: oidc-provider decides). Discovery names it in
// mtls_endpoint_aliases for the token, revocation, PAR and introspection endpoints.
let mtlsServer = null;
let mtlsBase = null;
if (cfg.mtls) {
  mtlsServer = https.createServer({
    cert: cfg.mtls.cert,
    key: cfg.mtls.key,
    ca: cfg.mtls.ca,
    requestCert: true,
    rejectUnauthorized: false,
  });
  mtlsServer.on('tlsClientError', () => {});
  await new Promise((resolve, reject) => {
    mtlsServer.once('error', reject);
    mtlsServer.listen(Number(cfg.mtls.port ?? 0), '127.0.0.1', () => {
      mtlsServer.off('error', reject);
      resolve();
    });
  });
  mtlsBase = `https://127.0.0.1:${mtlsServer.address().port}`;
}

// The client certificate of a request on the mTLS listener, as oidc-provider wants it.
function peerCertificate(ctx) {
  const socket = ctx.req?.socket;
  if (!socket || typeof socket.getPeerX509Certificate !== 'function') return undefined;
  return socket.getPeerX509Certificate() ?? undefined;
}
// "CN=a\nO=b" (node's form) as the RFC 4514-ish "CN=a,O=b" a registration names.
function subjectDn(cert) {
  return cert.subject.split('\n').join(',');
}
// `issuer` lets a test put a proxy (tests/it/support/fault.rs) in front of the IdP: the
// discovery document then names the proxy's address everywhere.
// `issuer_trailing_slash: true`: the issuer ends with `/` (as some IdPs' do).
const issuer = cfg.issuer ?? `http://127.0.0.1:${boundPort}${cfg.issuer_trailing_slash ? '/' : ''}`;

// ---------------------------------------------------------------------------
// provider
// ---------------------------------------------------------------------------

// What a grant's login reached (`acr`, `auth_time`), by grant id, for tokens issued without
// the login's code or refresh token at hand (token exchange).
const grantAuth = new Map();
// Claims to add to one token being issued (an exchanged token's `act`).
const tokenExtras = new WeakMap();

// oidc-provider's own login checks, plus one: a request whose `acr_values` the IdP session's
// `acr` is not among asks for a new login (as real IdPs do for a step-up).
function loginPolicy() {
  const policy = interactionPolicy.base();
  policy.get('login').checks.add(new interactionPolicy.Check(
    'acr_values',
    'the requested authentication level was not reached',
    (ctx) => {
      const { oidc } = ctx;
      const wanted = String(oidc.params.acr_values ?? '').split(' ').filter(Boolean);
      if (!wanted.length || !oidc.session.accountId || oidc.result?.login) {
        return interactionPolicy.Check.NO_NEED_TO_PROMPT;
      }
      return wanted.includes(oidc.session.acr)
        ? interactionPolicy.Check.NO_NEED_TO_PROMPT
        : interactionPolicy.Check.REQUEST_PROMPT;
    },
  ));
  return policy;
}

const configuration = {
  clients,
  jwks: {
    keys: [
      ...(idTokenJwk === signingJwk ? [signingJwk] : [idTokenJwk, signingJwk]),
      ...(nextJwk ? [nextJwk] : []),
    ],
  },
  findAccount,

  claims: {
    // `acr` and `amr` go with `openid` (set only when `acr_values` is configured).
    openid: ['sub', 'acr', 'amr', ...Object.keys(userinfoClaims).filter((k) => !['sub', 'acr', 'amr'].includes(k))],
    profile: ['name'],
    email: ['email', 'email_verified'],
    acr: null,
    amr: null,
    auth_time: null,
    sid: null,
    iss: null,
  },
  scopes: ['openid', 'profile', 'email', 'offline_access'],
  // Put the scope-derived claims (name, email, email_verified) in the ID token
  // even for response_type=code; `claims_at_userinfo: true` keeps them for the userinfo
  // endpoint only (OIDC Core 5.4), as many IdPs do.
  conformIdTokenClaims: Boolean(cfg.claims_at_userinfo),
  ...(cfg.pairwise ? {
    subjectTypes: ['public', 'pairwise'],
    // OIDC Core 8.1: a per-sector hash of the local id.
    async pairwiseIdentifier(_ctx, accountId, client) {
      return crypto.createHash('sha256')
        .update(`${client.sectorIdentifier}|${accountId}|test-idp-salt`).digest('base64url');
    },
  } : {}),

  pkce: {
    required: () => true, // S256 is the only method oidc-provider v9 supports
  },

  // Refresh token whenever the authorization request asked for offline_access
  // and the client may use the refresh_token grant. oidc-provider itself drops
  // offline_access from the request unless prompt=consent was sent (OIDC Core
  // 11), so the original request is tracked (see offline tracking below).
  async issueRefreshToken(ctx, client, code) {
    if (!client.grantTypeAllowed('refresh_token')) return false;
    if (code.scopes.has('offline_access')) return true;
    const raw = ctx.oidc?.params?.code;
    if (raw && offlineCodes.has(raw)) {
      offlineCodes.delete(raw);
      return true;
    }
    return false;
  },
  // Tokens from an offline request outlive the IdP session (as they would with
  // offline_access kept); everything else is bound to the session.
  async expiresWithSession(ctx, token) {
    return !(token.scopes.has('offline_access') || requestedOffline(ctx));
  },
  // `rotate_refresh_token: false`: refresh tokens are reused, never rotated.
  rotateRefreshToken: cfg.rotate_refresh_token !== false,

  ...(acrValues.length ? { acrValues } : {}),
  // JWT access tokens (resource servers, token exchange) carry the login's `acr` and
  // `auth_time`, and an exchanged token its actor (`act`).
  async extraTokenClaims(ctx, token) {
    const extra = tokenExtras.get(token) ?? {};
    const source = ctx?.oidc?.entities?.RefreshToken ?? ctx?.oidc?.entities?.AuthorizationCode;
    if (source?.grantId) {
      grantAuth.set(source.grantId, { acr: source.acr, auth_time: source.authTime, amr: source.amr });
    }
    const auth = source ?? (token.grantId ? grantAuth.get(token.grantId) : undefined);
    if (token.resourceServer && auth) {
      if (auth.acr) extra.acr = auth.acr;
      const t = auth.authTime ?? auth.auth_time;
      if (t) extra.auth_time = t;
    }
    return Object.keys(extra).length ? extra : undefined;
  },

  ttl: {
    AccessToken: (_ctx, token) => (token.resourceServer
      ? (resourceServers.get(token.resourceServer.identifier())?.ttl ?? exchangeTtl)
      : accessTokenTtl),
    ClientCredentials: (_ctx, token) => (token.resourceServer
      ? (resourceServers.get(token.resourceServer.identifier())?.ttl ?? accessTokenTtl)
      : accessTokenTtl),
    IdToken: idTokenTtl,
    RefreshToken: refreshTokenTtl,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: 24 * 3600,
    Grant: Math.max(refreshTokenTtl, 24 * 3600) * 2,
  },

  cookies: {
    names: {
      session: 'idp_session',
      interaction: 'idp_interaction',
      resume: 'idp_interaction_resume',
    },
    long: { httpOnly: true, sameSite: 'lax', secure: false },
    short: { httpOnly: true, sameSite: 'lax', secure: false },
    keys: cookieKeys,
  },

  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    policy: loginPolicy(),
  },

  // `client_auth_algs`: the only algorithms offered for client assertions (discovery's
  // token_endpoint_auth_signing_alg_values_supported).
  ...(Array.isArray(cfg.client_auth_algs) ? {
    enabledJWA: { clientAuthSigningAlgValues: cfg.client_auth_algs },
  } : {}),
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt', 'none',
    ...(mtlsBase ? ['tls_client_auth', 'self_signed_tls_client_auth'] : []),
  ],
  ...(mtlsBase ? {
    discovery: {
      claim_types_supported: ['normal'],
      mtls_endpoint_aliases: {
        token_endpoint: `${mtlsBase}/token`,
        revocation_endpoint: `${mtlsBase}/token/revocation`,
        introspection_endpoint: `${mtlsBase}/token/introspection`,
        pushed_authorization_request_endpoint: `${mtlsBase}/request`,
      },
    },
  } : {}),
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: resourceServers.size > 0 || exchangeAudiences.size > 0,
      defaultResource: () => (cfg.jwt_access_tokens ? JWT_API : undefined),
      useGrantedResource: () => Boolean(cfg.jwt_access_tokens),
      getResourceServerInfo(_ctx, indicator) {
        const rs = resourceServers.get(indicator);
        if (!rs) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
        return { scope: rs.scope, audience: indicator, accessTokenTTL: rs.ttl, accessTokenFormat: 'jwt' };
      },
    },
    clientCredentials: { enabled: cfg.clients.some((c) => c.client_credentials) },
    mTLS: {
      enabled: Boolean(mtlsBase),
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peerCertificate,
      certificateAuthorized: (ctx) => ctx.req?.socket?.authorized === true,
      certificateSubjectMatches(ctx, property, expected) {
        const cert = peerCertificate(ctx);
        return property === 'tls_client_auth_subject_dn' && Boolean(cert) && subjectDn(cert) === expected;
      },
    },
    // `fapi2`: oidc-provider's FAPI 2.0 Security Profile (PKCE required, client assertions'
    // aud must be the issuer, redirect_uri required); PAR is made mandatory below.
    fapi: { enabled: Boolean(cfg.fapi2), profile: '2.0' },
    // `revocation: false`: no revocation endpoint (none in discovery).
    revocation: { enabled: cfg.revocation !== false },
    // PAR (RFC 9126) is on unless `par: false`; `require_par` makes it the only way in.
    // DPoP is on (oidc-provider's default); `dpop_nonce` makes the token endpoint insist on a
    // server nonce (RFC 9449 §8), so a client must retry with the one it is sent.
    dPoP: {
      enabled: true,
      ...(cfg.dpop_nonce ? {
        nonceSecret: crypto.randomBytes(32),
        requireNonce: () => true,
      } : {}),
    },
    pushedAuthorizationRequests: {
      enabled: cfg.par !== false,
      requirePushedAuthorizationRequests: Boolean(cfg.require_par || cfg.fapi2),
    },
    introspection: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // Instead of an HTML confirmation page, answer GET /session/end with
      // JSON describing the confirmation POST a test has to make.
      async logoutSource(ctx, form) {
        const xsrf = /name="xsrf" value="([^"]+)"/.exec(form)?.[1];
        const action = /action="([^"]+)"/.exec(form)?.[1];
        ctx.status = 200;
        if (wantsHtml(ctx.req)) {
          // A browser: a confirmation page whose button POSTs exactly the JSON's fields.
          ctx.type = 'html';
          ctx.set('Content-Security-Policy', PAGE_CSP);
          ctx.body = htmlPage('Sign out', `<form method="post" action="${escapeHtml(action)}">
<input type="hidden" name="xsrf" value="${escapeHtml(xsrf)}">
<input type="hidden" name="logout" value="yes">
<p>Sign out of the test identity provider?</p>
<button type="submit" id="logout-confirm">Yes, sign me out</button>
</form>`);
          return;
        }
        ctx.type = 'application/json';
        ctx.body = JSON.stringify({
          action,
          method: 'POST',
          fields: { xsrf, logout: 'yes' },
        });
      },
      async postLogoutSuccessSource(ctx) {
        ctx.status = 200;
        if (wantsHtml(ctx.req)) {
          ctx.type = 'html';
          ctx.set('Content-Security-Policy', PAGE_CSP);
          ctx.body = htmlPage('Signed out', '<p id="logged-out">You are signed out.</p>');
          return;
        }
        ctx.type = 'application/json';
        ctx.body = JSON.stringify({ logged_out: true });
      },
    },
  },

  // oidc-provider routes outgoing requests (back-channel logout) through an
  // SSRF-guarding undici dispatcher that refuses loopback addresses. Drop
  // that dispatcher and use plain global fetch with our own timeout.
  fetch(url, options) {
    const { dispatcher: _ignored, signal: _signal, ...rest } = options;
    return globalThis.fetch(url, { ...rest, signal: AbortSignal.timeout(5000) });
  },

  async renderError(ctx, out) {
    ctx.type = 'application/json';
    ctx.body = JSON.stringify(out);
  },
};

const provider = new Provider(issuer, configuration);

// RFC 8693 token exchange: the subject is one of our own (opaque) access tokens; the actor, if
// sent, a client-credentials token of the calling client. The result is a JWT for `audience`
// with the subject's `sub`, the asked-for `scope`, and `act: {sub: <actor client>}`.
if (cfg.clients.some((c) => c.token_exchange)) {
  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const { client, params } = ctx.oidc;
    if (!client.grantTypeAllowed(TOKEN_EXCHANGE)) {
      throw new errors.UnauthorizedClient('token exchange is not allowed for this client');
    }
    if (!params.subject_token || params.subject_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('subject_token of type access_token is required');
    }
    const subject = await provider.AccessToken.find(params.subject_token);
    if (!subject || subject.isExpired) throw new errors.InvalidGrant('subject token is invalid');
    const audience = params.audience;
    if (!audience || !exchangeAudiences.has(audience)) {
      throw new errors.InvalidTarget(`audience ${audience ?? '(none)'} is not served`);
    }
    const extra = {};
    if (params.actor_token) {
      if (params.actor_token_type !== ACCESS_TOKEN_TYPE) {
        throw new errors.InvalidRequest('actor_token_type must be access_token');
      }
      const actor = await provider.ClientCredentials.find(params.actor_token);
      if (!actor || actor.isExpired) throw new errors.InvalidGrant('actor token is invalid');
      extra.act = { sub: actor.clientId };
    }
    const at = new provider.AccessToken({
      accountId: subject.accountId,
      client,
      grantId: subject.grantId,
      gty: 'token_exchange',
      scope: params.scope || undefined,
      sessionUid: subject.sessionUid,
      sid: subject.sid,
      expiresWithSession: subject.expiresWithSession,
    });
    at.resourceServer = new provider.ResourceServer(audience, {
      audience, scope: params.scope ?? '', accessTokenTTL: exchangeTtl, accessTokenFormat: 'jwt',
    });
    tokenExtras.set(at, extra);
    ctx.oidc.entity('AccessToken', at);
    const value = await at.save();
    stats.token_exchanges[audience] = (stats.token_exchanges[audience] ?? 0) + 1;
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: at.expiration,
      ...(at.scope ? { scope: at.scope } : {}),
    };
  }, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'audience',
    'scope', 'requested_token_type', 'resource']);
}

// --- events ----------------------------------------------------------------

provider.on('grant.success', (ctx) => {
  const gt = ctx.oidc.params?.grant_type;
  if (gt) stats.token_requests[gt] = (stats.token_requests[gt] ?? 0) + 1;
  const resource = ctx.oidc.params?.resource;
  if (gt && typeof resource === 'string') {
    const key = `${gt} ${resource}`;
    stats.resource_tokens[key] = (stats.resource_tokens[key] ?? 0) + 1;
  }
});
provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
  stats.backchannel_logouts_sent += 1;
  log(`backchannel logout sent to ${client.clientId} (sub=${accountId} sid=${sid})`);
});
provider.on('backchannel.error', (_ctx, err, client) => {
  log(`backchannel.error client=${client?.clientId}: ${err?.message}${err?.cause ? ` (cause: ${err.cause.message ?? err.cause})` : ''}`);
});
// oidc-provider emits grant.revoked (ctx, grantId) whenever a whole grant is destroyed
// (lib/helpers/revoke.js): refresh-token reuse, authorization-code replay, revoking a
// refresh token at /token/revocation, RP-initiated logout of a session-bound grant.
provider.on('grant.revoked', (_ctx, grantId) => {
  stats.grants_revoked += 1;
  log(`grant.revoked ${grantId}`);
});
// Reuse detection (lib/actions/grants/refresh_token.js): a rotated-out refresh token
// (`refreshToken.consumed`) is destroyed, its grant revoked (grant.revoked fires first), then
// InvalidGrant('refresh token already used') is thrown -> grant.error. The detail is only in
// err.error_detail; the client just sees invalid_grant / "grant request is invalid".
function isRefreshReuse(ctx, err) {
  return ctx.oidc?.params?.grant_type === 'refresh_token'
    && err instanceof errors.InvalidGrant
    && err.error_detail === 'refresh token already used';
}
// grant.error covers every failed token request (client auth included) except server errors,
// which oidc-provider reports as server_error instead.
provider.on('grant.error', (ctx, err) => {
  const code = err?.error ?? 'unknown';
  stats.grant_errors[code] = (stats.grant_errors[code] ?? 0) + 1;
  if (isRefreshReuse(ctx, err)) stats.refresh_reuse += 1;
});
provider.on('server_error', (_ctx, err) => {
  log(`server_error: ${err?.stack ?? err}`);
});
for (const ev of ['authorization.error', 'pushed_authorization_request.error', 'grant.error', 'revocation.error', 'introspection.error',
  'end_session.error', 'end_session_confirm.error', 'userinfo.error']) {
  provider.on(ev, (_ctx, err) => {
    log(`${ev}: ${err?.error ?? err?.name} ${err?.error_description ?? err?.message ?? ''}`);
  });
}

// Record the audience of each client assertion (read, not verified: oidc-provider verifies).
provider.use(async (ctx, next) => {
  await next();
  const assertion = ctx.oidc?.body?.client_assertion;
  if (typeof assertion !== 'string') return;
  let aud;
  try {
    aud = JSON.parse(Buffer.from(assertion.split('.')[1] ?? '', 'base64url').toString()).aud;
  } catch {
    aud = '(unreadable)';
  }
  const key = JSON.stringify(aud);
  stats.assertion_audiences[key] = (stats.assertion_audiences[key] ?? 0) + 1;
});

// `refresh_expires_in: true`: token responses with a refresh token say how long it lives, as
// Keycloak does (not standard).
provider.use(async (ctx, next) => {
  await next();
  if (cfg.refresh_expires_in && ctx.oidc?.route === 'token' && ctx.status === 200
    && ctx.body && typeof ctx.body === 'object' && ctx.body.refresh_token) {
    ctx.body = { ...ctx.body, refresh_expires_in: refreshTokenTtl };
  }
});

// `iss_response: false`: an IdP without RFC 9207 — no `iss` in its authorization responses,
// none promised in discovery (`authorization_response_iss_parameter_supported`).
provider.use(async (ctx, next) => {
  await next();
  if (cfg.iss_response !== false) return;
  if (ctx.oidc?.route === 'discovery' && ctx.body && typeof ctx.body === 'object') {
    const { authorization_response_iss_parameter_supported: _dropped, ...rest } = ctx.body;
    ctx.body = rest;
  }
  const loc = ctx.response.get('location');
  if (loc && loc.includes('iss=')) {
    try {
      const u = new URL(loc);
      if (u.searchParams.has('iss') && (u.searchParams.has('code') || u.searchParams.has('error'))) {
        u.searchParams.delete('iss');
        ctx.response.set('location', u.toString());
      }
    } catch {
      // a relative Location is one of the IdP's own: left alone
    }
  }
});

// The published JWKS under `key_rotation`: the next key only once switched to, the first one
// no more once retired.
let nextPublished = false;
provider.use(async (ctx, next) => {
  await next();
  if (nextJwk && ctx.oidc?.route === 'jwks' && ctx.body && Array.isArray(ctx.body.keys)) {
    ctx.body = {
      keys: ctx.body.keys.filter((k) => (k.kid !== nextJwk.kid || nextPublished) && k.kid !== retiredKid),
    };
  }
});

// Count revocation calls that succeeded (the endpoint answers 200), and record which tokens
// were revoked or refused (by hash).
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route !== 'revocation') return;
  const token = ctx.oidc?.body?.token ?? ctx.oidc?.params?.token;
  const hash = typeof token === 'string'
    ? crypto.createHash('sha256').update(token).digest('hex') : undefined;
  if (ctx.status === 200) {
    stats.revocations += 1;
    if (hash) stats.revoked_tokens.push(hash);
  } else if (hash) {
    let code = 'unknown';
    try {
      code = JSON.parse(typeof ctx.body === 'string' ? ctx.body : JSON.stringify(ctx.body)).error ?? code;
    } catch { /* not JSON */ }
    stats.revocation_refused[hash] = code;
  }
});

// GET /session/end without a logged-in IdP session (and /auth/<uid> when a
// *different* user logged in over an existing session) answer with an
// auto-submitting HTML form that POSTs to /session/end/confirm. Turn that into
// the same JSON shape logoutSource produces, so a script never parses HTML.
provider.use(async (ctx, next) => {
  await next();
  if (
    (ctx.oidc?.route === 'end_session' || ctx.oidc?.route === 'resume')
    && !wantsHtml(ctx.req)
    && typeof ctx.body === 'string'
    && ctx.response.is('html')
    && ctx.body.includes('<form method="post"')
  ) {
    const action = /<form method="post" action="([^"]+)"/.exec(ctx.body)?.[1];
    const fields = Object.fromEntries(
      [...ctx.body.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"\/>/g)]
        .map(([, k, v]) => [k, v]),
    );
    if (action && action.endsWith('/session/end/confirm')) {
      ctx.type = 'application/json';
      ctx.body = JSON.stringify({ action, method: 'POST', fields });
    }
  }
});

// offline_access tracking of pushed requests (PAR): /request -> request_uri -> /auth
provider.use(async (ctx, next) => {
  if (ctx.path !== '/request' || ctx.method !== 'POST') {
    await next();
    return;
  }
  await next();
  const pushed = ctx.oidc?.body ?? ctx.request.body ?? {};
  const requestUri = ctx.body?.request_uri;
  if (requestUri && scopeHasOffline(pushed.scope)) offlineRequestUris.add(requestUri);
});

// offline_access tracking across /auth -> /interaction/<uid> -> /auth/<uid> -> code
provider.use(async (ctx, next) => {
  const resumeUid = /^\/auth\/([^/]+)$/.exec(ctx.path)?.[1];
  if (ctx.path !== '/auth' && !resumeUid) {
    await next();
    return;
  }
  if (resumeUid) ctx.state.idpResumeUid = resumeUid;
  await next();
  const wants = requestedOffline(ctx);
  const location = ctx.response.get('Location');
  // a resume that answers without redirecting (different-user logout form)
  // comes back to the same /auth/<uid>, so keep the mark until it redirects
  if (resumeUid && location) offlineUids.delete(resumeUid);
  if (!wants || !location) return;
  const target = new URL(location, issuer);
  const interactionUid = /^\/interaction\/([^/]+)$/.exec(target.pathname)?.[1];
  if (target.origin === new URL(issuer).origin && interactionUid) {
    offlineUids.add(interactionUid);
  } else if (target.searchParams.get('code')) {
    offlineCodes.add(target.searchParams.get('code'));
  }
});

// ---------------------------------------------------------------------------
// our own routes: interactions and test controls
// ---------------------------------------------------------------------------

function sendJson(res, status, body) {
  const payload = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(payload));
  res.end(payload);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const raw = Buffer.concat(chunks).toString('utf8');
  if ((req.headers['content-type'] ?? '').includes('application/json')) {
    return raw ? JSON.parse(raw) : {};
  }
  return Object.fromEntries(new URLSearchParams(raw));
}

function requestedClaims(params) {
  const names = new Set();
  if (params.claims) {
    try {
      const parsed = typeof params.claims === 'string' ? JSON.parse(params.claims) : params.claims;
      for (const section of ['id_token', 'userinfo']) {
        for (const name of Object.keys(parsed?.[section] ?? {})) names.add(name);
      }
    } catch { /* malformed claims were rejected by the provider already */ }
  }
  return [...names];
}

// Grant everything that was asked for (scopes incl. offline_access, claims,
// and whatever the consent prompt reports as missing). Returns the grant id.
async function grantEverything(interaction, accountId) {
  const { params, prompt: { details = {} } } = interaction;
  let grant;
  if (interaction.grantId && interaction.session?.accountId === accountId) {
    grant = await provider.Grant.find(interaction.grantId);
  }
  if (!grant) {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  if (params.scope) grant.addOIDCScope(params.scope);
  if (offlineUids.has(interaction.uid)) grant.addOIDCScope('offline_access');
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  const claims = [...requestedClaims(params), ...(details.missingOIDCClaims ?? [])];
  if (claims.length) grant.addOIDCClaims(claims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

async function handleInteraction(req, res, uid, action) {
  const interaction = await provider.interactionDetails(req, res);
  if (interaction.uid !== uid) {
    sendJson(res, 400, { error: 'invalid_request', error_description: 'interaction uid mismatch' });
    return;
  }
  const prompt = interaction.prompt.name;

  if (action === '' && req.method === 'GET') {
    if (prompt === 'consent') {
      const accountId = interaction.session.accountId;
      const grantId = await grantEverything(interaction, accountId);
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return;
    }
    if (wantsHtml(req)) {
      sendHtml(res, 200, 'Sign in', loginForm(interaction.uid));
      return;
    }
    sendJson(res, 200, {
      uid: interaction.uid,
      prompt,
      reasons: interaction.prompt.reasons,
      details: interaction.prompt.details,
      params: interaction.params,
    });
    return;
  }

  if (action === 'login' && req.method === 'POST') {
    const body = await readForm(req);
    const user = USERS[body.login];
    if (!user || user.password !== body.password) {
      if (wantsHtml(req)) {
        sendHtml(res, 401, 'Sign in', loginForm(uid, { login: body.login ?? '', error: 'Wrong user or password.' }));
        return;
      }
      sendJson(res, 401, { error: 'invalid_credentials' });
      return;
    }
    const accountId = body.login;
    const grantId = await grantEverything(interaction, accountId);
    // `acr` (one of `acr_values`) and `auth_age` (seconds since the authentication, to make a
    // login look old) are test knobs of the login form.
    const login = { accountId };
    if (acrValues.length) {
      login.acr = acrValues.includes(body.acr) ? body.acr : acrValues[0];
      login.amr = login.acr === acrValues[0] ? ['pwd'] : ['pwd', 'otp'];
    }
    if (body.auth_age) login.ts = Math.floor(Date.now() / 1000) - Number(body.auth_age);
    await provider.interactionFinished(
      req,
      res,
      { login, consent: { grantId } },
      { mergeWithLastSubmission: false },
    );
    return;
  }

  if (action === 'abort' && (req.method === 'GET' || req.method === 'POST')) {
    await provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'End-User aborted interaction' },
      { mergeWithLastSubmission: false },
    );
    return;
  }

  sendJson(res, 404, { error: 'not_found' });
}

const providerCallback = provider.callback();

// Simulated outage of the OIDC endpoints (the /test/* controls keep working):
//   none  – normal service
//   503   – every OIDC request answers 503 (an IdP failing)
//   reset – every OIDC connection is destroyed unanswered (an IdP that is down)
// Nothing is processed during an outage, so no token is consumed behind the client's back.
// `paths` (comma-separated path prefixes, e.g. `/token`) limits the outage to those paths;
// absent or empty = every non-/test/ path.
let outage = 'none';
let outagePaths = null; // null = all paths

function outageApplies(pathname) {
  if (outage === 'none' || pathname.startsWith('/test/')) return false;
  if (!outagePaths) return true;
  return outagePaths.some((p) => pathname.startsWith(p));
}

const tokenPath = provider.pathFor('token');

async function onRequest(req, res) {
  const url = new URL(req.url, issuer);
  if (url.pathname === tokenPath) {
    stats.token_endpoint_hits += 1;
    const proof = req.headers.dpop;
    if (typeof proof === 'string') {
      let payload = {};
      try {
        payload = JSON.parse(Buffer.from(proof.split('.')[1] ?? '', 'base64url').toString('utf8'));
      } catch { /* counted as without */ }
      if (payload.nonce) stats.dpop_proofs.with_nonce += 1;
      else stats.dpop_proofs.without_nonce += 1;
    }
  }
  if (url.searchParams.has('dpop_jkt')) stats.dpop_jkt_requests += 1;
  if (url.pathname === '/test/outage' && req.method === 'POST') {
    outage = url.searchParams.get('mode') ?? 'none';
    const paths = (url.searchParams.get('paths') ?? '').split(',').map((p) => p.trim()).filter(Boolean);
    outagePaths = paths.length ? paths : null;
    log(`outage mode: ${outage}${outagePaths ? ` on ${outagePaths.join(',')}` : ''}`);
    sendJson(res, 200, { outage, paths: outagePaths });
    return;
  }
  if (outageApplies(url.pathname)) {
    if (outage === '503') {
      sendJson(res, 503, { error: 'temporarily_unavailable' });
    } else {
      req.socket.destroy();
    }
    return;
  }
  try {
    const m = /^\/interaction\/([^/]+)(?:\/(login|abort))?\/?$/.exec(url.pathname);
    if (m) {
      await handleInteraction(req, res, m[1], m[2] ?? '');
      return;
    }
    if (url.pathname === '/test/stats' && req.method === 'GET') {
      sendJson(res, 200, stats);
      return;
    }
    if (url.pathname === '/test/sign' && req.method === 'POST') {
      // Signs arbitrary claims with the IdP's own key, so tests can hand-make logout tokens
      // that are correctly signed but wrong in one claim. Body: {"payload": {...}, "header": {...}}
      // (header defaults to {alg: RS256, typ: logout+jwt, kid: <the IdP's kid>}).
      const chunks = [];
      for await (const c of req) chunks.push(c);
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
      const header = { alg: 'RS256', typ: 'logout+jwt', kid: signingJwk.kid, ...(body.header ?? {}) };
      const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
      const input = `${b64(header)}.${b64(body.payload ?? {})}`;
      const sig = crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url');
      sendJson(res, 200, { jwt: `${input}.${sig}`, kid: signingJwk.kid });
      return;
    }
    if (url.pathname === '/test/rotate-keys' && req.method === 'POST' && nextJwk) {
      const step = url.searchParams.get('step');
      if (step === 'switch') {
        nextPublished = true;
        for (const c of cfg.clients) {
          const client = await provider.Client.find(c.client_id);
          if (client) client.idTokenSignedResponseAlg = 'ES256';
        }
      } else if (step === 'retire') {
        retiredKid = signingJwk.kid;
      }
      sendJson(res, 200, { step, signing_kid: nextPublished ? nextJwk.kid : signingJwk.kid, retired: retiredKid });
      return;
    }
    if (url.pathname === '/test/reset' && req.method === 'POST') {
      stats = freshStats();
      sendJson(res, 200, stats);
      return;
    }
    providerCallback(req, res);
  } catch (err) {
    // OIDC errors (e.g. SessionNotFound: missing/expired interaction cookie)
    // get one line; anything else the full stack.
    log(`interaction/test route error: ${err?.error ? `${err.name}: ${err.error_description ?? err.message}` : err?.stack ?? err}`);
    if (!res.headersSent) {
      const status = err?.statusCode ?? err?.status ?? 500;
      sendJson(res, status, {
        error: err?.error ?? 'server_error',
        error_description: err?.error_description ?? err?.message,
      });
    } else {
      res.end();
    }
  }
}
server.on('request', onRequest);
if (mtlsServer) mtlsServer.on('request', onRequest);

// ---------------------------------------------------------------------------
// lifecycle
// ---------------------------------------------------------------------------

function shutdown(signal) {
  log(`${signal} received, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  mtlsServer?.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

log(`listening, issuer ${issuer}, kid ${signingJwk.kid}`);
process.stdout.write(`READY ${issuer}\n`);
