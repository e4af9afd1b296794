// Test doubles: a clock with timers that only move when told, a fake Cloakroom (the HTTP
// contract of /auth/* and an API route, with its own, possibly skewed, clock) and a location.

/** Lets pending promise callbacks and I/O callbacks (BroadcastChannel) run. */
export async function settle(rounds = 20) {
  for (let i = 0; i < rounds; i++) {
    await new Promise((r) => setImmediate(r));
  }
}

/** The browser's clock and timers: `advance(ms)` runs every timer due, in order. */
export class FakeClock {
  constructor(startMs = Date.UTC(2030, 0, 1, 12, 0, 0)) {
    this.t = startMs;
    this.queue = [];
    this.seq = 0;
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms) {
    const id = ++this.seq;
    this.queue.push({ id, at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(id) {
    this.queue = this.queue.filter((t) => t.id !== id);
  }
  /** Timers still waiting. */
  get pending() {
    return this.queue.length;
  }
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      this.queue.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = this.queue[0];
      if (!next || next.at > end) break;
      this.queue.shift();
      this.t = next.at;
      next.fn();
    }
    this.t = end;
    await settle();
  }
  /** Advances to `ms` after `since` (a `now()` value). */
  async advanceTo(since, ms) {
    await this.advance(since + ms - this.t);
  }
}

// Cloakroom marks its own error answers (`x-cloakroom-error: <code>`), as the real one does.
const json = (status, body) =>
  new Response(JSON.stringify(body), {
    status,
    headers: {
      "content-type": "application/json",
      ...(status >= 400 && typeof body.error === "string" ? { "x-cloakroom-error": body.error } : {}),
    },
  });

/**
 * One browser's view of Cloakroom: one cookie jar, so every client instance (tab) given this
 * server's `fetch` shares the session. Its clock is the test clock plus `skewMs` (the browser's
 * clock is wrong by -skewMs).
 */
export class FakeServer {
  constructor(clock, { skewMs = 0, idle = 300, absolute = 3600, endSessionUrl = null } = {}) {
    this.clock = clock;
    this.skewMs = skewMs;
    this.idle = idle;
    this.absolute = absolute;
    this.endSessionUrl = endSessionUrl;
    this.session = null;
    this.requests = [];
    this.state = null;
    this.stepUp = false;
    this.devices = [];
    this.fetch = (input, init) => this.#handle(input, init);
  }
  nowMs() {
    return this.clock.now() + this.skewMs;
  }
  now() {
    return Math.floor(this.nowMs() / 1000);
  }
  login(sub = "alice") {
    const now = this.now();
    this.session = { sub, created_at: now, last: now };
    return this.session;
  }
  expiresAt() {
    const s = this.session;
    return Math.min(s.last + this.idle, s.created_at + this.absolute);
  }
  /** The session, unless it has expired (then it is gone). */
  live() {
    if (this.session && this.nowMs() >= this.expiresAt() * 1000) this.session = null;
    return this.session;
  }
  /** `/auth/user` requests, as URLs. */
  userRequests() {
    return this.requests.filter((r) => r.path === "/auth/user").map((r) => r.url);
  }
  /** Test-clock times (ms after `since`) of the `/auth/user` requests. */
  pollTimes(since) {
    return this.requests.filter((r) => r.path === "/auth/user").map((r) => r.at - since);
  }
  userBody() {
    const s = this.session;
    return {
      sub: s.sub,
      acr: "urn:test:pwd",
      amr: ["pwd"],
      auth_time: s.created_at,
      claims: { sub: s.sub, name: "Alice" },
      remembered: false,
      reconstituted: false,
      session: {
        created_at: s.created_at,
        expires_at: this.expiresAt(),
        idle_expires_at: s.last + this.idle,
        absolute_expires_at: s.created_at + this.absolute,
        now: this.now(),
      },
    };
  }
  async #handle(input, init = {}) {
    const req = input instanceof Request ? input : null;
    const url = new URL(req ? req.url : String(input), "http://localhost");
    const method = (init.method ?? req?.method ?? "GET").toUpperCase();
    const headers = new Headers(init.headers ?? req?.headers);
    const body = init.body ?? null;
    this.requests.push({
      method,
      url: url.pathname + url.search,
      path: url.pathname,
      headers,
      body,
      credentials: init.credentials,
      at: this.clock.now(),
    });
    if (this.offline) throw new TypeError("fetch failed");
    if (headers.get("x-csrf") === null) return json(403, { error: "csrf" });
    const s = this.live();
    const slide = () => {
      if (s) s.last = this.now();
    };
    const p = url.pathname;
    if (p === "/auth/user" && method === "GET") {
      if (!s) return json(401, { error: "unauthenticated" });
      if (url.searchParams.get("slide") !== "false") slide();
      return json(200, this.userBody());
    }
    if (p === "/auth/logout" && method === "POST") {
      const scope = body ? JSON.parse(body).scope : "this";
      if (scope === "others") return json(200, { end_session_url: null });
      this.session = null;
      return json(200, { end_session_url: this.endSessionUrl });
    }
    if (p === "/auth/providers" && method === "GET") {
      return json(200, { providers: this.providers ?? [{ name: "default", default: true }] });
    }
    if (p === "/auth/sessions" && method === "GET") {
      if (!s) return json(401, { error: "unauthenticated" });
      return json(200, { sessions: this.devices });
    }
    if (p.startsWith("/auth/sessions/") && method === "DELETE") {
      const id = decodeURIComponent(p.slice("/auth/sessions/".length));
      const i = this.devices.findIndex((d) => d.id === id);
      if (i < 0) return json(404, { error: "not_found" });
      this.devices.splice(i, 1);
      return json(200, { ended: true });
    }
    if (p === "/auth/session/state") {
      if (!s) return json(401, { error: "unauthenticated" });
      if (method === "PUT") {
        if (new TextEncoder().encode(body).length > 4096) return json(413, { error: "state_too_large" });
        this.state = JSON.parse(body);
        return new Response(null, { status: 204 });
      }
      return json(200, { state: this.state });
    }
    if (p.startsWith("/api/")) {
      if (!s) return json(401, { error: "unauthenticated" });
      slide();
      if (p.startsWith("/api/sensitive") && this.stepUp) {
        return json(401, {
          error: "step_up_required",
          acr_values: null,
          max_age: 300,
          login_url: "/auth/login?max_age=300",
        });
      }
      return json(200, { ok: true, path: p });
    }
    return json(404, { error: "not_found" });
  }
}

/** `window.location` for tests: records navigations. */
export class FakeLocation {
  constructor(path = "/") {
    const u = new URL(path, "http://localhost");
    this.pathname = u.pathname;
    this.search = u.search;
    this.hash = u.hash;
    this.assigned = [];
  }
  assign(url) {
    this.assigned.push(url);
  }
}

let channels = 0;
/** A BroadcastChannel name no other test uses. */
export function channel() {
  channels += 1;
  return `cloakroom-test-${process.pid}-${channels}`;
}

/** Records a client's events, in order. */
export function recorder(client, names) {
  const events = [];
  for (const n of names) client.on(n, (d) => events.push([n, d]));
  return events;
}

/** Resolves with the first `name` event of `client` (rejects after `ms` of real time). */
export function nextEvent(client, name, ms = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} event within ${ms} ms`)), ms);
    const off = client.on(name, (d) => {
      clearTimeout(timer);
      off();
      resolve(d);
    });
  });
}
