// user(), logout(), devices and saved state.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createCloakroom, CloakroomError, StateTooLargeError } from "../dist/index.js";
import { FakeClock, FakeServer, FakeLocation, recorder } from "./support/fake.mjs";

function setup(opts = {}, serverOpts = {}) {
  const clock = new FakeClock();
  const server = new FakeServer(clock, serverOpts);
  const location = new FakeLocation("/");
  const client = createCloakroom({ fetch: server.fetch, location, timers: clock, channelName: null, ...opts });
  return { clock, server, location, client };
}

test("user(): the /auth/user JSON, or null on 401; it slides unless slide: false", async () => {
  const { server, client } = setup();
  assert.equal(await client.user(), null);
  server.login("alice");
  const u = await client.user();
  assert.equal(u.sub, "alice");
  assert.equal(u.claims.name, "Alice");
  assert.equal(client.current().sub, "alice");
  await client.user({ slide: false });
  assert.deepEqual(server.userRequests(), ["/auth/user", "/auth/user", "/auth/user?slide=false"]);
  for (const r of server.requests) assert.equal(r.headers.get("x-csrf"), "1");
});

test("user() rejects with a CloakroomError on another status", async () => {
  const clock = new FakeClock();
  const client = createCloakroom({
    timers: clock,
    channelName: null,
    fetch: async () => new Response('{"error":"csrf"}', { status: 403 }),
  });
  await assert.rejects(client.user(), (e) => e instanceof CloakroomError && e.status === 403 && e.code === "csrf");
});

test("logout(): POSTs, emits loggedOut this_tab, goes to the IdP's end_session_url", async () => {
  const { server, client, location } = setup({}, { endSessionUrl: "http://idp/end?x=1" });
  server.login();
  await client.user();
  const events = recorder(client, ["loggedOut", "user"]);
  const r = await client.logout();
  assert.deepEqual(r, { scope: "this", endSessionUrl: "http://idp/end?x=1" });
  const post = server.requests.at(-1);
  assert.equal(post.method, "POST");
  assert.equal(post.url, "/auth/logout");
  assert.equal(post.body, null, "no body for the default scope");
  assert.equal(post.headers.get("x-csrf"), "1");
  assert.deepEqual(location.assigned, ["http://idp/end?x=1"]);
  assert.deepEqual(events, [
    ["loggedOut", { reason: "this_tab" }],
    ["user", null],
  ]);
  assert.equal(client.current(), null);
});

test("logout() without an end_session_url goes to afterLogout", async () => {
  const { server, client, location } = setup({ afterLogout: "/goodbye" });
  server.login();
  await client.logout();
  assert.deepEqual(location.assigned, ["/goodbye"]);
  const d = setup();
  await d.client.logout();
  assert.deepEqual(d.location.assigned, ["/"], 'the default afterLogout is "/"');
});

test('logout({scope: "others"}) keeps this session and does not navigate; everywhere sends its scope', async () => {
  const { server, client, location } = setup({}, { endSessionUrl: "http://idp/end" });
  server.login();
  await client.user();
  const events = recorder(client, ["loggedOut"]);
  assert.deepEqual(await client.logout({ scope: "others" }), { scope: "others", endSessionUrl: null });
  const post = server.requests.at(-1);
  assert.equal(post.headers.get("content-type"), "application/json");
  assert.deepEqual(JSON.parse(post.body), { scope: "others" });
  assert.deepEqual(location.assigned, []);
  assert.deepEqual(events, []);
  assert.equal(client.current().sub, "alice", "still logged in");

  await client.logout({ everywhere: true });
  assert.deepEqual(JSON.parse(server.requests.at(-1).body), { scope: "everywhere" });
  assert.deepEqual(location.assigned, ["http://idp/end"]);
  assert.deepEqual(events, [["loggedOut", { reason: "this_tab" }]]);
});

test("logout() rejects when the server refuses, and stays", async () => {
  const clock = new FakeClock();
  const location = new FakeLocation("/");
  const client = createCloakroom({
    timers: clock,
    location,
    channelName: null,
    fetch: async () => new Response('{"error":"origin"}', { status: 403 }),
  });
  await assert.rejects(client.logout(), (e) => e instanceof CloakroomError && e.code === "origin");
  assert.deepEqual(location.assigned, []);
});

test("providers() lists the identity providers, without a session", async () => {
  const { server, client } = setup();
  assert.deepEqual(await client.providers(), [{ name: "default", default: true }]);
  server.providers = [
    { name: "default", default: false },
    { name: "partners", default: true },
  ];
  const list = await client.providers();
  assert.deepEqual(list.map((p) => p.name), ["default", "partners"]);
  assert.equal(list.find((p) => p.default).name, "partners");
  assert.equal(server.requests.at(-1).url, "/auth/providers");
});

test("sessions() and endSession()", async () => {
  const { server, client } = setup();
  server.login();
  server.devices = [
    { id: "a1", created_at: 1, last_seen: 2, ip: "10.0.0.1", device: "Chrome on Linux", current: true, remembered: false },
    { id: "b/2", created_at: 1, last_seen: 2, ip: null, device: null, current: false, remembered: true },
  ];
  const list = await client.sessions();
  assert.deepEqual(
    list.map((d) => d.id),
    ["a1", "b/2"],
  );
  assert.equal(await client.endSession("b/2"), true);
  assert.equal(server.requests.at(-1).url, "/auth/sessions/b%2F2", "the id is URL-encoded");
  assert.equal(server.requests.at(-1).method, "DELETE");
  assert.equal(await client.endSession("b/2"), false, "404: already gone");
  server.session = null;
  await assert.rejects(client.sessions(), (e) => e instanceof CloakroomError && e.status === 401 && e.code === "unauthenticated");
});

test("saveState() PUTs JSON; restoredState() reads it back; 413 rejects with StateTooLargeError", async () => {
  const { server, client } = setup();
  assert.equal(await client.restoredState(), null, "no session: null");
  server.login();
  assert.equal(await client.restoredState(), null, "nothing saved: null");
  await client.saveState({ notes: "buy milk", n: 1 });
  const put = server.requests.at(-1);
  assert.equal(put.method, "PUT");
  assert.equal(put.url, "/auth/session/state");
  assert.equal(put.headers.get("content-type"), "application/json");
  assert.equal(put.headers.get("x-csrf"), "1");
  assert.deepEqual(await client.restoredState(), { notes: "buy milk", n: 1 });

  const err = await client.saveState({ notes: "x".repeat(5000) }).then(
    () => null,
    (e) => e,
  );
  assert.ok(err instanceof StateTooLargeError, String(err));
  assert.ok(err instanceof CloakroomError);
  assert.equal(err.status, 413);
  assert.equal(err.code, "state_too_large");
  assert.equal(err.name, "StateTooLargeError");
  assert.deepEqual(await client.restoredState(), { notes: "buy milk", n: 1 }, "the old state stays");
});
