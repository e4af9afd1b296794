// Smoke test for the test IdP: node tests/idp/smoke.mjs
// Spawns server.js, drives it with plain fetch (redirect: 'manual') and a
// hand-kept cookie jar, prints PASS/FAIL per step, exits non-zero on failure.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const VERBOSE = process.env.SMOKE_VERBOSE === '1';

let failures = 0;
function pass(step, extra = '') {
  console.log(`PASS ${step}${extra ? ` — ${extra}` : ''}`);
}
function failStep(step, why) {
  failures += 1;
  console.log(`FAIL ${step} — ${why}`);
}
async function step(name, fn) {
  try {
    const extra = await fn();
    pass(name, extra);
  } catch (err) {
    failStep(name, err?.stack ?? err);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}
function trace(...args) {
  if (VERBOSE) console.log('   ', ...args);
}

// ---------------------------------------------------------------------------
// cookie jar (name -> value; paths ignored, like a simple hand-kept jar)
// ---------------------------------------------------------------------------
class Jar {
  constructor() { this.cookies = new Map(); }

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let expired = value === '';
      for (const a of attrs) {
        const [k, v] = a.split('=');
        if (k.toLowerCase() === 'expires' && new Date(v).getTime() <= Date.now()) expired = true;
        if (k.toLowerCase() === 'max-age' && Number(v) <= 0) expired = true;
      }
      if (expired) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  names() { return [...this.cookies.keys()].sort(); }
}

async function req(jar, method, url, { form, headers = {} } = {}) {
  const h = { ...headers };
  if (jar && jar.cookies.size) h.cookie = jar.header();
  let body;
  if (form) {
    body = new URLSearchParams(form).toString();
    h['content-type'] = 'application/x-www-form-urlencoded';
  }
  const res = await fetch(url, { method, headers: h, body, redirect: 'manual' });
  if (jar) jar.store(res);
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { /* not json */ }
  const location = res.headers.get('location');
  trace(`${method} ${url} -> ${res.status}${location ? ` Location: ${location}` : ''}`);
  for (const c of res.headers.getSetCookie()) trace(`  Set-Cookie: ${c}`);
  return { status: res.status, location, text, json, headers: res.headers };
}

function b64url(buf) { return Buffer.from(buf).toString('base64url'); }
function decodeJwt(jwt) {
  const [h, p] = jwt.split('.');
  return { header: JSON.parse(Buffer.from(h, 'base64url')), payload: JSON.parse(Buffer.from(p, 'base64url')) };
}

// ---------------------------------------------------------------------------
// tiny RP listener (redirect target + back-channel logout receiver)
// ---------------------------------------------------------------------------
const backchannelTokens = [];
let onBackchannel = () => {};
const rp = http.createServer((rq, rs) => {
  const chunks = [];
  rq.on('data', (c) => chunks.push(c));
  rq.on('end', () => {
    if (rq.method === 'POST' && rq.url === '/auth/backchannel-logout') {
      const form = new URLSearchParams(Buffer.concat(chunks).toString());
      backchannelTokens.push(form.get('logout_token'));
      onBackchannel();
      rs.statusCode = 200;
      rs.end();
      return;
    }
    rs.statusCode = 200;
    rs.end('rp');
  });
});
await new Promise((r) => rp.listen(0, '127.0.0.1', r));
const rpBase = `http://127.0.0.1:${rp.address().port}`;

const CLIENT_ID = 'cloakroom';
const CLIENT_SECRET = 'cloakroom-secret';
const REDIRECT_URI = `${rpBase}/auth/callback`;
const POST_LOGOUT = `${rpBase}/`;

const idpConfig = {
  port: 0,
  access_token_ttl: 60,
  id_token_ttl: 60,
  refresh_token_ttl: 600,
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    post_logout_redirect_uris: [POST_LOGOUT],
    backchannel_logout_uri: `${rpBase}/auth/backchannel-logout`,
    token_endpoint_auth_method: 'client_secret_basic',
  }, {
    // second client: client_secret_post, no back-channel logout URI
    client_id: 'other',
    client_secret: 'other-secret',
    redirect_uris: [REDIRECT_URI],
    post_logout_redirect_uris: [POST_LOGOUT],
    token_endpoint_auth_method: 'client_secret_post',
  }],
};

// ---------------------------------------------------------------------------
// spawn the IdP
// ---------------------------------------------------------------------------
const child = spawn(process.execPath, [path.join(here, 'server.js')], {
  env: { ...process.env, IDP_CONFIG: JSON.stringify(idpConfig) },
  stdio: ['ignore', 'pipe', 'pipe'],
});
let idpStderr = '';
child.stderr.on('data', (d) => { idpStderr += d; if (VERBOSE) process.stderr.write(d); });

const issuer = await new Promise((resolve, reject) => {
  let buf = '';
  const timer = setTimeout(() => reject(new Error('IdP did not become ready in 15s')), 15000);
  child.stdout.on('data', (d) => {
    buf += d;
    const m = /^READY (\S+)\n/m.exec(buf);
    if (m) { clearTimeout(timer); resolve(m[1]); }
  });
  child.on('exit', (code) => reject(new Error(`IdP exited early (${code}): ${idpStderr}`)));
}).catch((err) => { console.log(`FAIL start — ${err.message}`); process.exit(1); });
pass('start', issuer);

let disco;
const basic = `Basic ${Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64')}`;

async function tokenRequest(params) {
  return req(null, 'POST', disco.token_endpoint, { form: params, headers: { authorization: basic } });
}

function authUrl(extra = {}) {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = crypto.hash('sha256', verifier, 'base64url');
  const state = b64url(crypto.randomBytes(12));
  const nonce = b64url(crypto.randomBytes(12));
  const u = new URL(disco.authorization_endpoint);
  const params = {
    client_id: CLIENT_ID,
    response_type: 'code',
    scope: 'openid profile email offline_access',
    redirect_uri: REDIRECT_URI,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...extra,
  };
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return { url: u.toString(), verifier, state, nonce };
}

function abs(location) { return new URL(location, issuer).toString(); }

// Full interactive login. Returns { code, verifier, state, chain }
async function login(jar, user = 'alice', password = 'wonderland', extra = {}) {
  const a = authUrl(extra);
  const chain = [];
  let r = await req(jar, 'GET', a.url);
  chain.push(`GET /auth -> ${r.status} ${r.location}`);
  assert(r.status === 303, `authorize expected 303, got ${r.status} ${r.text}`);
  const interactionUrl = abs(r.location);
  const uid = new URL(interactionUrl).pathname.split('/').pop();

  r = await req(jar, 'GET', interactionUrl);
  let resumeUrl;
  if (r.status === 200) {
    assert(r.json?.prompt === 'login', `expected login prompt, got ${r.text}`);
    assert(r.json.uid === uid, 'uid mismatch');
    chain.push(`GET /interaction/${uid} -> 200 ${JSON.stringify({ prompt: r.json.prompt })}`);
    r = await req(jar, 'POST', `${interactionUrl}/login`, { form: { login: user, password } });
    chain.push(`POST /interaction/${uid}/login -> ${r.status} ${r.location}`);
    assert(r.status === 303, `login expected 303, got ${r.status} ${r.text}`);
    resumeUrl = abs(r.location);
  } else {
    // consent prompt: auto-granted by the GET
    assert(r.status === 303, `interaction GET expected 200/303, got ${r.status} ${r.text}`);
    chain.push(`GET /interaction/${uid} (consent) -> ${r.status} ${r.location}`);
    resumeUrl = abs(r.location);
  }

  r = await req(jar, 'GET', resumeUrl);
  chain.push(`GET ${new URL(resumeUrl).pathname} -> ${r.status} ${r.location}`);
  assert(r.status === 303, `resume expected 303, got ${r.status} ${r.text}`);
  const cb = new URL(r.location);
  assert(cb.origin + cb.pathname === REDIRECT_URI, `unexpected redirect ${r.location}`);
  assert(cb.searchParams.get('state') === a.state, 'state mismatch');
  assert(cb.searchParams.get('iss') === issuer, 'iss mismatch');
  const code = cb.searchParams.get('code');
  assert(code, `no code in ${r.location}`);
  return { code, verifier: a.verifier, state: a.state, nonce: a.nonce, chain };
}

async function exchange(code, verifier) {
  return tokenRequest({
    grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier,
  });
}

let jwks;
function verifyJwt(jwt) {
  const [h, p, s] = jwt.split('.');
  const { header, payload } = decodeJwt(jwt);
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  assert(jwk, `no jwk for kid ${header.kid}`);
  assert(header.alg === 'RS256', `alg ${header.alg}`);
  const ok = crypto.verify('sha256', Buffer.from(`${h}.${p}`), crypto.createPublicKey({ key: jwk, format: 'jwk' }), Buffer.from(s, 'base64url'));
  assert(ok, 'signature does not verify');
  return payload;
}

const jar = new Jar();
let tokens;
let loginResult;

try {
  await step('discovery', async () => {
    const r = await req(null, 'GET', `${issuer}/.well-known/openid-configuration`);
    assert(r.status === 200, `status ${r.status}`);
    disco = r.json;
    assert(disco.issuer === issuer, 'issuer mismatch');
    for (const k of ['authorization_endpoint', 'token_endpoint', 'revocation_endpoint', 'introspection_endpoint', 'end_session_endpoint', 'jwks_uri']) {
      assert(disco[k], `missing ${k}`);
    }
    assert(disco.code_challenge_methods_supported.join() === 'S256', 'S256 only');
    assert(disco.backchannel_logout_supported && disco.backchannel_logout_session_supported, 'backchannel');
    jwks = (await req(null, 'GET', disco.jwks_uri)).json;
    assert(jwks.keys.length === 1 && jwks.keys[0].kid && !jwks.keys[0].d, 'jwks');
    return ['authorization_endpoint', 'token_endpoint', 'revocation_endpoint', 'introspection_endpoint', 'end_session_endpoint', 'jwks_uri']
      .map((k) => `${k}=${new URL(disco[k]).pathname}`).join(' ');
  });

  await step('authorize without PKCE is rejected', async () => {
    const a = authUrl();
    const u = new URL(a.url);
    u.searchParams.delete('code_challenge');
    u.searchParams.delete('code_challenge_method');
    const r = await req(new Jar(), 'GET', u.toString());
    assert(r.status === 303, `status ${r.status}`);
    const loc = new URL(r.location);
    assert(loc.searchParams.get('error') === 'invalid_request', `got ${r.location}`);
    return loc.searchParams.get('error_description');
  });

  await step('bad credentials -> 401', async () => {
    const j = new Jar();
    const a = authUrl();
    const r1 = await req(j, 'GET', a.url);
    const r2 = await req(j, 'POST', `${abs(r1.location)}/login`, { form: { login: 'alice', password: 'nope' } });
    assert(r2.status === 401 && r2.json?.error === 'invalid_credentials', `got ${r2.status} ${r2.text}`);
  });

  await step('abort -> access_denied', async () => {
    const j = new Jar();
    const a = authUrl();
    const r1 = await req(j, 'GET', a.url);
    const r2 = await req(j, 'GET', `${abs(r1.location)}/abort`);
    assert(r2.status === 303, `abort status ${r2.status}`);
    const r3 = await req(j, 'GET', abs(r2.location));
    assert(r3.status === 303, `resume status ${r3.status}`);
    const loc = new URL(r3.location);
    assert(loc.searchParams.get('error') === 'access_denied', `got ${r3.location}`);
    assert(loc.searchParams.get('state') === a.state, 'state');
  });

  await req(null, 'POST', `${issuer}/test/reset`);

  await step('code flow login (alice)', async () => {
    loginResult = await login(jar);
    return `\n      ${loginResult.chain.join('\n      ')}\n      cookies now: ${jar.names().join(', ')}`;
  });

  await step('code exchange (client_secret_basic + PKCE)', async () => {
    const r = await exchange(loginResult.code, loginResult.verifier);
    assert(r.status === 200, `status ${r.status} ${r.text}`);
    tokens = r.json;
    assert(tokens.id_token && tokens.access_token && tokens.refresh_token, `missing tokens: ${Object.keys(tokens)}`);
    assert(tokens.token_type === 'Bearer', 'token_type');
    const claims = verifyJwt(tokens.id_token);
    assert(claims.iss === issuer && claims.aud === CLIENT_ID && claims.sub === 'alice', 'iss/aud/sub');
    assert(claims.nonce === loginResult.nonce, 'nonce');
    assert(claims.name === 'Alice Liddell', `name=${claims.name}`);
    assert(claims.email === 'alice@example.test' && claims.email_verified === true, 'email claims');
    assert(claims.sid, 'sid');
    return `scope="${tokens.scope}" expires_in=${tokens.expires_in} id_token claims: ${Object.keys(claims).join(',')}`;
  });

  const rt0 = tokens?.refresh_token;
  let rt2;
  await step('userinfo with access token', async () => {
    const r = await req(null, 'GET', disco.userinfo_endpoint, { headers: { authorization: `Bearer ${tokens.access_token}` } });
    assert(r.status === 200 && r.json.sub === 'alice' && r.json.email === 'alice@example.test', `${r.status} ${r.text}`);
    return `${new URL(disco.userinfo_endpoint).pathname} -> ${r.text}`;
  });

  await step('refresh twice, rotating every time', async () => {
    const r1 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt0 });
    assert(r1.status === 200, `refresh1 ${r1.status} ${r1.text}`);
    const rt1 = r1.json.refresh_token;
    assert(rt1 && rt1 !== rt0, 'refresh token did not rotate (1)');
    assert(r1.json.access_token && r1.json.id_token, 'refresh1 tokens');
    const r2 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt1 });
    assert(r2.status === 200, `refresh2 ${r2.status} ${r2.text}`);
    rt2 = r2.json.refresh_token;
    assert(rt2 && rt2 !== rt1, 'refresh token did not rotate (2)');
    const idc = decodeJwt(r2.json.id_token).payload;
    assert(idc.name === 'Alice Liddell' && idc.email, 'refreshed id_token claims');
  });

  await step('prompt=none with IdP session -> code', async () => {
    const a = authUrl({ prompt: 'none' });
    const r = await req(jar, 'GET', a.url);
    assert(r.status === 303, `status ${r.status} ${r.text}`);
    const loc = new URL(r.location);
    const code = loc.searchParams.get('code');
    assert(code, `no code: ${r.location}`);
    const t = await exchange(code, a.verifier);
    assert(t.status === 200 && t.json.id_token, `exchange ${t.status} ${t.text}`);
    assert(t.json.refresh_token, 'no refresh_token for prompt=none request with offline_access');
    return 'refresh_token issued too (offline_access tracked from the original request)';
  });

  await step('prompt=none without IdP session -> login_required', async () => {
    const a = authUrl({ prompt: 'none' });
    const r = await req(new Jar(), 'GET', a.url);
    assert(r.status === 303, `status ${r.status}`);
    const loc = new URL(r.location);
    assert(loc.searchParams.get('error') === 'login_required', `got ${r.location}`);
    assert(loc.searchParams.get('state') === a.state, 'state');
  });

  await step('reuse of rotated-out refresh token -> invalid_grant', async () => {
    const r = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt0 });
    assert(r.status === 400 && r.json.error === 'invalid_grant', `got ${r.status} ${r.text}`);
    // reuse detection revokes the whole grant, so the newest RT is dead as well
    const intro = await req(null, 'POST', disco.introspection_endpoint, { form: { token: rt2 }, headers: { authorization: basic } });
    assert(intro.json?.active === false, `newest RT still active after reuse: ${intro.text}`);
    return 'reuse detection revoked the whole grant: newest RT now introspects active=false';
  });

  await step('multi-user: bob logs in with a separate jar', async () => {
    const bobJar = new Jar();
    const b = await login(bobJar, 'bob', 'builder');
    const r = await exchange(b.code, b.verifier);
    assert(r.status === 200, `status ${r.status}`);
    const claims = decodeJwt(r.json.id_token).payload;
    assert(claims.sub === 'bob' && claims.name === 'Bob Builder', JSON.stringify(claims));
    const replay = await exchange(b.code, b.verifier);
    assert(replay.status === 400 && replay.json.error === 'invalid_grant', `code replay: ${replay.status} ${replay.text}`);
    return 'code replay -> 400 invalid_grant (and revokes that grant)';
  });

  let tokens2;
  await step('re-login for alice after grant revocation (consent auto-granted on GET /interaction)', async () => {
    const l = await login(jar);
    const r = await exchange(l.code, l.verifier);
    assert(r.status === 200 && r.json.refresh_token, `status ${r.status} ${r.text}`);
    tokens2 = r.json;
    return `\n      ${l.chain.join('\n      ')}`;
  });

  await step('revoke refresh token, introspection says inactive', async () => {
    const before = await req(null, 'POST', disco.introspection_endpoint, { form: { token: tokens2.refresh_token }, headers: { authorization: basic } });
    assert(before.status === 200 && before.json.active === true, `before: ${before.text}`);
    const rv = await req(null, 'POST', disco.revocation_endpoint, { form: { token: tokens2.refresh_token, token_type_hint: 'refresh_token' }, headers: { authorization: basic } });
    assert(rv.status === 200, `revocation ${rv.status} ${rv.text}`);
    const after = await req(null, 'POST', disco.introspection_endpoint, { form: { token: tokens2.refresh_token }, headers: { authorization: basic } });
    assert(after.status === 200 && after.json.active === false, `after: ${after.text}`);
    const rf = await tokenRequest({ grant_type: 'refresh_token', refresh_token: tokens2.refresh_token });
    assert(rf.status === 400 && rf.json.error === 'invalid_grant', `refresh after revoke: ${rf.status} ${rf.text}`);
  });

  await step('stats', async () => {
    const r = await req(null, 'GET', `${issuer}/test/stats`);
    const s = r.json;
    // after reset: alice code x1, prompt=none x1, bob x1, alice relogin x1 = 4 codes;
    // refresh: 2 successful (reuse + post-revoke ones failed)
    assert(s.token_requests.authorization_code === 4, JSON.stringify(s));
    assert(s.token_requests.refresh_token === 2, JSON.stringify(s));
    assert(s.revocations === 1, JSON.stringify(s));
    assert(s.backchannel_logouts_sent === 0, JSON.stringify(s));
    return JSON.stringify(s);
  });

  await step('RP-initiated logout with back-channel logout to loopback', async () => {
    // need a fresh id_token for id_token_hint (tokens2 is from the current session)
    const u = new URL(disco.end_session_endpoint);
    u.searchParams.set('id_token_hint', tokens2.id_token);
    u.searchParams.set('post_logout_redirect_uri', POST_LOGOUT);
    u.searchParams.set('state', 'bye');
    const r1 = await req(jar, 'GET', u.toString());
    assert(r1.status === 200, `end_session ${r1.status} ${r1.text}`);
    assert(r1.json?.fields?.xsrf && r1.json.action, `unexpected body ${r1.text}`);
    const got = new Promise((resolve) => { onBackchannel = resolve; });
    const r2 = await req(jar, 'POST', r1.json.action, { form: r1.json.fields });
    assert(r2.status === 303, `confirm ${r2.status} ${r2.text}`);
    const loc = new URL(r2.location);
    assert(loc.origin + loc.pathname === POST_LOGOUT && loc.searchParams.get('state') === 'bye', `redirect ${r2.location}`);
    await Promise.race([got, new Promise((_, rej) => setTimeout(() => rej(new Error('no back-channel logout within 5s')), 5000))]);
    const lt = verifyJwt(backchannelTokens[0]);
    const idc = decodeJwt(tokens2.id_token).payload;
    assert(lt.iss === issuer && lt.aud === CLIENT_ID && lt.sub === 'alice', JSON.stringify(lt));
    assert(lt.sid === idc.sid, 'logout_token sid != id_token sid');
    assert(lt.events?.['http://schemas.openid.net/event/backchannel-logout'], 'events claim');
    assert(!jar.cookies.has('idp_session'), `session cookie still present: ${jar.names()}`);
    const s = (await req(null, 'GET', `${issuer}/test/stats`)).json;
    assert(s.backchannel_logouts_sent === 1, JSON.stringify(s));
    return `GET ${u.pathname} -> 200 ${JSON.stringify({ ...r1.json, fields: { ...r1.json.fields, xsrf: '…' } })}; POST ${new URL(r1.json.action).pathname} -> 303 ${r2.location}; logout_token claims: ${Object.keys(lt).join(',')}`;
  });

  await step('after logout: prompt=none -> login_required', async () => {
    const a = authUrl({ prompt: 'none' });
    const r = await req(jar, 'GET', a.url);
    const loc = new URL(r.location);
    assert(loc.searchParams.get('error') === 'login_required', `got ${r.location}`);
  });

  await step('logout without an IdP session -> same JSON confirm shape, no back-channel', async () => {
    const u = new URL(disco.end_session_endpoint);
    u.searchParams.set('client_id', CLIENT_ID);
    u.searchParams.set('post_logout_redirect_uri', POST_LOGOUT);
    u.searchParams.set('state', 'again');
    const j = new Jar();
    const r1 = await req(j, 'GET', u.toString());
    assert(r1.status === 200 && r1.json?.fields?.xsrf && r1.json.fields.logout === 'yes', `${r1.status} ${r1.text}`);
    const r2 = await req(j, 'POST', r1.json.action, { form: r1.json.fields });
    assert(r2.status === 303 && r2.location === `${POST_LOGOUT}?state=again`, `${r2.status} ${r2.location}`);
    assert(backchannelTokens.length === 1, 'unexpected back-channel logout');
  });

  await step('different user over an existing session (same jar)', async () => {
    const j = new Jar();
    await login(j, 'alice', 'wonderland');
    const a = authUrl({ prompt: 'login' });
    let r = await req(j, 'GET', a.url);
    const interactionUrl = abs(r.location);
    r = await req(j, 'POST', `${interactionUrl}/login`, { form: { login: 'bob', password: 'builder' } });
    const chain = [`POST /interaction/…/login (bob) -> ${r.status}`];
    r = await req(j, 'GET', abs(r.location));
    chain.push(`GET /auth/<uid> -> ${r.status} ${JSON.stringify({ ...r.json, fields: Object.keys(r.json?.fields ?? {}) })}`);
    assert(r.status === 200 && r.json?.action, `expected logout confirm, got ${r.status} ${r.text}`);
    r = await req(j, 'POST', r.json.action, { form: r.json.fields });
    chain.push(`POST /session/end/confirm -> ${r.status} ${new URL(r.location).pathname}`);
    assert(r.status === 303, `confirm ${r.status}`);
    r = await req(j, 'GET', abs(r.location));
    chain.push(`GET /auth/<uid> -> ${r.status} redirect_uri?code=…`);
    const code = new URL(r.location).searchParams.get('code');
    assert(code, `no code: ${r.location}`);
    const t = await exchange(code, a.verifier);
    assert(decodeJwt(t.json.id_token).payload.sub === 'bob', 'sub should be bob');
    assert(t.json.refresh_token, 'no refresh_token for bob');
    return chain.join('; ');
  });

  await step('second client with client_secret_post', async () => {
    const j = new Jar();
    const a = authUrl({ client_id: 'other' });
    let r = await req(j, 'GET', a.url);
    r = await req(j, 'POST', `${abs(r.location)}/login`, { form: { login: 'alice', password: 'wonderland' } });
    r = await req(j, 'GET', abs(r.location));
    const code = new URL(r.location).searchParams.get('code');
    assert(code, `no code: ${r.location}`);
    const t = await req(null, 'POST', disco.token_endpoint, {
      form: {
        grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: a.verifier, client_id: 'other', client_secret: 'other-secret',
      },
    });
    assert(t.status === 200 && t.json.refresh_token && decodeJwt(t.json.id_token).payload.aud === 'other', `${t.status} ${t.text}`);
    const bad = await req(null, 'POST', disco.token_endpoint, {
      form: { grant_type: 'refresh_token', refresh_token: t.json.refresh_token, client_id: 'other', client_secret: 'wrong' },
    });
    assert(bad.status === 401 && bad.json.error === 'invalid_client', `wrong secret: ${bad.status} ${bad.text}`);
    return 'wrong secret -> 401 invalid_client';
  });

  await step('test/reset zeroes stats', async () => {
    await req(null, 'POST', `${issuer}/test/reset`);
    const s = (await req(null, 'GET', `${issuer}/test/stats`)).json;
    // Every counter zero, every list and map empty (token_requests keeps its two keys at 0).
    const zero = (v) => (typeof v === 'number' ? v === 0
      : Array.isArray(v) ? v.length === 0
        : Object.values(v).every(zero));
    assert(Object.values(s).every(zero), JSON.stringify(s));
    assert(s.token_requests.authorization_code === 0 && s.token_requests.refresh_token === 0, JSON.stringify(s));
  });
} finally {
  const exited = new Promise((r) => child.once('exit', (code, sig) => r({ code, sig })));
  child.kill('SIGTERM');
  const { code, sig } = await exited;
  if (code === 0) pass('SIGTERM -> clean exit');
  else failStep('SIGTERM -> clean exit', `code=${code} signal=${sig}`);
  rp.close();
}

if (failures) {
  console.log(`\n${failures} step(s) FAILED. IdP stderr:\n${idpStderr}`);
  process.exit(1);
}
console.log('\nALL PASS');
