// cloakroom.fetch: the CSRF header, credentials, and the two 401s.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createCloakroom } from "../dist/index.js";
import { FakeClock, FakeServer, FakeLocation, recorder } from "./support/fake.mjs";

function setup(opts = {}, path = "/orders?page=2#top") {
  const clock = new FakeClock();
  const server = new FakeServer(clock);
  const location = new FakeLocation(path);
  const client = createCloakroom({ fetch: server.fetch, location, timers: clock, channelName: null, ...opts });
  return { clock, server, location, client };
}

test("adds the CSRF header and same-origin credentials, keeping the caller's headers in every form", async () => {
  const { server, client } = setup();
  server.login();
  await client.fetch("/api/a");
  await client.fetch("/api/b", { headers: { accept: "application/json", "x-trace": "1" } });
  await client.fetch("/api/c", { headers: [["x-trace", "2"]] });
  await client.fetch("/api/d", { headers: new Headers({ "x-trace": "3" }), credentials: "include" });
  await client.fetch(new Request("http://localhost/api/e", { headers: { "x-trace": "4" } }));
  await client.fetch(new URL("http://localhost/api/f"), { method: "POST", body: "x" });
  const [a, b, c, d, e, f] = server.requests;
  for (const r of [a, b, c, d, e, f]) assert.equal(r.headers.get("x-csrf"), "1", r.url);
  assert.equal(a.credentials, "same-origin");
  assert.equal(b.headers.get("accept"), "application/json");
  assert.equal(b.headers.get("x-trace"), "1");
  assert.equal(c.headers.get("x-trace"), "2");
  assert.equal(d.headers.get("x-trace"), "3");
  assert.equal(d.credentials, "include", "the caller's credentials win");
  assert.equal(e.headers.get("x-trace"), "4", "a Request's own headers are kept");
  assert.equal(f.method, "POST");
  assert.equal(f.body, "x");
});

test("the header name and value are configurable, and a caller's own CSRF header is kept", async () => {
  const clock = new FakeClock();
  const seen = [];
  const client = createCloakroom({
    csrfHeader: "x-requested-with",
    csrfValue: "cloakroom",
    timers: clock,
    channelName: null,
    fetch: async (input, init) => {
      seen.push(new Headers(init.headers));
      return new Response("{}", { status: 200 });
    },
  });
  await client.fetch("/api/x");
  await client.fetch("/api/x", { headers: { "X-Requested-With": "mine" } });
  assert.equal(seen[0].get("x-requested-with"), "cloakroom");
  assert.equal(seen[0].get("x-csrf"), null);
  assert.equal(seen[1].get("x-requested-with"), "mine");
});

test("401 unauthenticated: emits and goes to the login, coming back to this page; the body stays readable", async () => {
  const { client, location } = setup();
  const events = recorder(client, ["unauthenticated"]);
  const res = await client.fetch("/api/orders");
  assert.equal(res.status, 401);
  assert.deepEqual(await res.json(), { error: "unauthenticated" }, "the caller can still read the body");
  const expected = "/auth/login?return_to=%2Forders%3Fpage%3D2%23top";
  assert.deepEqual(location.assigned, [expected]);
  assert.equal(events.length, 1);
  assert.equal(events[0][1].loginUrl, expected);
});

/** A 401 with this JSON body; `ours`: marked as Cloakroom's own (`x-cloakroom-error`). */
const answer401 = (body, ours = true) => async () => new Response(JSON.stringify(body), {
  status: 401,
  headers: { "content-type": "application/json", ...(ours ? { "x-cloakroom-error": body.error } : {}) },
});

test("401 unauthenticated with a login_url: a silent login first, a plain one after it failed", async () => {
  const answer = answer401({ error: "unauthenticated", login_url: "/auth/login?prompt=none" });
  const clock = new FakeClock();
  let location = new FakeLocation("/orders?page=2");
  let client = createCloakroom({ fetch: answer, location, timers: clock, channelName: null });
  await client.fetch("/api/orders");
  assert.deepEqual(location.assigned, ["/auth/login?prompt=none&return_to=%2Forders%3Fpage%3D2"]);
  // Back from a silent login the IdP refused: no loop, the ordinary login.
  location = new FakeLocation("/orders?page=2&error=login_required");
  client = createCloakroom({ fetch: answer, location, timers: clock, channelName: null });
  await client.fetch("/api/orders");
  assert.deepEqual(location.assigned, ["/auth/login?return_to=%2Forders%3Fpage%3D2%26error%3Dlogin_required"]);
});

test('onUnauthenticated "event" only emits', async () => {
  const { client, location } = setup({ onUnauthenticated: "event" });
  const events = recorder(client, ["unauthenticated"]);
  const res = await client.fetch("/api/orders");
  assert.equal(res.status, 401);
  assert.equal(events.length, 1);
  assert.deepEqual(location.assigned, []);
});

test("a 401 from an API with another body is left to the app", async () => {
  const clock = new FakeClock();
  const location = new FakeLocation("/");
  const client = createCloakroom({
    timers: clock,
    location,
    channelName: null,
    fetch: async () => new Response("nope", { status: 401 }),
  });
  const events = recorder(client, ["unauthenticated", "stepUpRequired"]);
  const res = await client.fetch("/api/x");
  assert.equal(await res.text(), "nope");
  assert.deepEqual(events, []);
  assert.deepEqual(location.assigned, []);
});

test("401 step_up_required: emits the challenge first, then goes to its login_url with return_to", async () => {
  const { server, client, location } = setup({}, "/settings?tab=keys");
  server.login();
  server.stepUp = true;
  const order = [];
  client.on("stepUpRequired", (c) => order.push(["event", c, location.assigned.length]));
  const res = await client.fetch("/api/sensitive");
  assert.equal(res.status, 401);
  assert.equal((await res.json()).error, "step_up_required");
  assert.equal(order.length, 1);
  assert.equal(order[0][2], 0, "emitted before navigating");
  assert.deepEqual(order[0][1], {
    error: "step_up_required",
    acr_values: null,
    max_age: 300,
    login_url: "/auth/login?max_age=300",
  });
  assert.deepEqual(location.assigned, ["/auth/login?max_age=300&return_to=%2Fsettings%3Ftab%3Dkeys"]);
});

test('onStepUpRequired "event" leaves the navigation to stepUp(), which takes a returnTo', async () => {
  const { server, client, location } = setup({ onStepUpRequired: "event" });
  server.login();
  server.stepUp = true;
  let challenge = null;
  client.on("stepUpRequired", (c) => (challenge = c));
  await client.fetch("/api/sensitive");
  assert.deepEqual(location.assigned, []);
  client.stepUp(challenge, { returnTo: "/?step_up=sensitive" });
  assert.deepEqual(location.assigned, ["/auth/login?max_age=300&return_to=%2F%3Fstep_up%3Dsensitive"]);
});

test("login() and loginUrl(): return_to, prompt, remember, acr_values, max_age, provider", () => {
  const { client, location } = setup({ base: "/bff/" }, "/a?b=c");
  assert.equal(client.loginUrl(), "/bff/login?return_to=%2Fa%3Fb%3Dc");
  assert.equal(client.loginUrl({ provider: "partners" }), "/bff/login?return_to=%2Fa%3Fb%3Dc&provider=partners");
  client.login({ returnTo: "/", prompt: "none" });
  client.login({ remember: true });
  client.login({ acrValues: "urn:mfa", maxAge: 0 });
  client.login({ provider: "partners", remember: true });
  client.login({ provider: "a&b=c" });
  assert.deepEqual(location.assigned, [
    "/bff/login?return_to=%2F&prompt=none",
    "/bff/login?return_to=%2Fa%3Fb%3Dc&remember=true",
    "/bff/login?return_to=%2Fa%3Fb%3Dc&acr_values=urn%3Amfa&max_age=0",
    "/bff/login?return_to=%2Fa%3Fb%3Dc&remember=true&provider=partners",
    "/bff/login?return_to=%2Fa%3Fb%3Dc&provider=a%26b%3Dc",
  ]);
});

test("a login_url that is not Cloakroom's login is never followed", async () => {
  const foreign = [
    "https://evil.example/auth/login?prompt=none",
    "//evil.example/auth/login?prompt=none",
    "/\\evil.example/auth/login?x",
    "/auth/loginx?prompt=none",
    "/auth/login",
    "/other/login?prompt=none",
    "javascript:alert(1)//auth/login?",
  ];
  const clock = new FakeClock();
  for (const login_url of foreign) {
    // Marked as Cloakroom's own: the ordinary login instead.
    let location = new FakeLocation("/orders");
    let client = createCloakroom({
      fetch: answer401({ error: "unauthenticated", login_url }),
      location,
      timers: clock,
      channelName: null,
    });
    await client.fetch("/api/orders");
    assert.deepEqual(location.assigned, ["/auth/login?return_to=%2Forders"], login_url);
    // A step-up challenge naming it: not acted on, and stepUp() refuses it.
    location = new FakeLocation("/orders");
    client = createCloakroom({
      fetch: answer401({ error: "step_up_required", acr_values: null, max_age: 5, login_url }),
      location,
      timers: clock,
      channelName: null,
    });
    const events = recorder(client, ["stepUpRequired"]);
    await client.fetch("/api/orders");
    assert.deepEqual(events, [], login_url);
    assert.deepEqual(location.assigned, [], login_url);
    assert.throws(() => client.stepUp({ login_url }), TypeError, login_url);
  }
});

test("an upstream's 401 (not marked as Cloakroom's) is left to the app, whatever its body", async () => {
  const clock = new FakeClock();
  for (const body of [
    { error: "unauthenticated", login_url: "https://evil.example/phish?" },
    { error: "unauthenticated", login_url: "/auth/login?prompt=none" },
    { error: "unauthenticated" },
    { error: "step_up_required", acr_values: null, max_age: 5, login_url: "/auth/login?max_age=5" },
  ]) {
    const location = new FakeLocation("/orders");
    const client = createCloakroom({ fetch: answer401(body, false), location, timers: clock, channelName: null });
    const events = recorder(client, ["unauthenticated", "stepUpRequired"]);
    const res = await client.fetch("/api/orders");
    assert.equal(res.status, 401);
    assert.deepEqual(events, [], JSON.stringify(body));
    assert.deepEqual(location.assigned, [], JSON.stringify(body));
  }
});

test("with Cloakroom on another origin (an absolute base) its path-only login_url goes there", async () => {
  const clock = new FakeClock();
  const location = new FakeLocation("/orders");
  const client = createCloakroom({
    base: "https://bff.example/auth",
    fetch: answer401({ error: "unauthenticated", login_url: "/auth/login?prompt=none" }),
    location,
    timers: clock,
    channelName: null,
  });
  await client.fetch("/api/orders");
  assert.deepEqual(location.assigned, ["https://bff.example/auth/login?prompt=none&return_to=%2Forders"]);
  client.stepUp({ login_url: "https://bff.example/auth/login?max_age=5" });
  client.stepUp({ login_url: "/auth/login?max_age=5" });
  assert.throws(() => client.stepUp({ login_url: "https://evil.example/auth/login?max_age=5" }), TypeError);
  assert.deepEqual(location.assigned.slice(1), [
    "https://bff.example/auth/login?max_age=5&return_to=%2Forders",
    "https://bff.example/auth/login?max_age=5&return_to=%2Forders",
  ]);
});
