// Tabs of one browser (one cookie jar: one FakeServer) on one BroadcastChannel.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createCloakroom } from "../dist/index.js";
import { FakeClock, FakeServer, FakeLocation, channel, nextEvent, recorder, settle } from "./support/fake.mjs";

function tabs(n, opts = {}) {
  const clock = new FakeClock();
  const server = new FakeServer(clock, { idle: 1800, endSessionUrl: "http://idp/end" });
  const channelName = channel();
  const list = [];
  for (let i = 0; i < n; i++) {
    const location = new FakeLocation("/");
    const client = createCloakroom({ fetch: server.fetch, location, timers: clock, channelName, ...opts });
    list.push({ client, location, events: recorder(client, ["loggedOut", "loggedIn", "expired"]) });
  }
  return { clock, server, channelName, tabs: list, stop: () => list.forEach((t) => t.client.stop()) };
}

test("logout in one tab: every other tab emits loggedOut other_tab within a second", async (t) => {
  const { server, tabs: [a, b, c], stop } = tabs(3);
  t.after(stop);
  server.login();
  await Promise.all([a.client.start(), b.client.start(), c.client.start()]);
  const gotB = nextEvent(b.client, "loggedOut", 1000);
  const gotC = nextEvent(c.client, "loggedOut", 1000);
  await a.client.logout();
  assert.deepEqual(await gotB, { reason: "other_tab" });
  assert.deepEqual(await gotC, { reason: "other_tab" });
  assert.deepEqual(a.events, [["loggedOut", { reason: "this_tab" }]]);
  assert.equal(b.client.current(), null);
  assert.deepEqual(a.location.assigned, ["http://idp/end"]);
  assert.deepEqual(b.location.assigned, [], "the other tabs stay where they are");
});

test("a tab that is not watching still tells the others it logged out", async (t) => {
  const { server, tabs: [a, b], stop } = tabs(2);
  t.after(stop);
  server.login();
  await b.client.start();
  const got = nextEvent(b.client, "loggedOut", 1000);
  await a.client.logout({ everywhere: true });
  assert.deepEqual(await got, { reason: "other_tab" });
});

test('logout({scope: "others"}) is not news for the other tabs (they share this session)', async (t) => {
  const { server, tabs: [a, b], stop } = tabs(2);
  t.after(stop);
  server.login();
  await Promise.all([a.client.start(), b.client.start()]);
  await a.client.logout({ scope: "others" });
  await settle(50);
  assert.deepEqual(b.events, []);
  assert.equal(b.client.current().sub, "alice");
});

test("an answer that predates another tab's logout is dropped", async (t) => {
  const clock = new FakeClock();
  const server = new FakeServer(clock, { idle: 1800 });
  const channelName = channel();
  let gate = null;
  const slowFetch = async (input, init) => {
    const res = await server.fetch(input, init);
    if (gate) await gate.promise;
    return res;
  };
  const a = createCloakroom({ fetch: server.fetch, timers: clock, channelName, location: new FakeLocation() });
  const b = createCloakroom({ fetch: slowFetch, timers: clock, channelName, location: new FakeLocation() });
  t.after(() => {
    a.stop();
    b.stop();
  });
  server.login();
  await b.start();
  const events = recorder(b, ["loggedOut", "loggedIn", "user"]);
  let release;
  gate = { promise: new Promise((r) => (release = r)) };
  const pending = b.check(); // answered 200 by the server, delivered after the logout
  await settle();
  const got = nextEvent(b, "loggedOut", 1000);
  await a.logout();
  await got;
  release();
  await pending;
  await settle();
  assert.deepEqual(events, [
    ["loggedOut", { reason: "other_tab" }],
    ["user", null],
  ]);
  assert.equal(b.current(), null, "the stale 200 did not bring the session back");
});

test("a login in one tab: the others re-read the session and emit loggedIn", async (t) => {
  const { server, tabs: [a, b, c], stop } = tabs(3);
  t.after(stop);
  await Promise.all([b.client.start(), c.client.start()]); // no session yet
  assert.equal(b.client.current(), null);
  const gotB = nextEvent(b.client, "loggedIn", 1000);
  const gotC = nextEvent(c.client, "loggedIn", 1000);
  server.login("alice");
  await a.client.start(); // the tab the login came back to
  assert.deepEqual(await gotB, { sub: "alice" });
  assert.deepEqual(await gotC, { sub: "alice" });
  assert.equal(b.client.current().sub, "alice");
  await settle(50);
  assert.deepEqual(a.events, [], "the tab that logged in knew");
  // Each tab read /auth/user twice at most: its first poll and once after the news.
  assert.ok(server.userRequests().length <= 5, String(server.userRequests().length));
  for (const u of server.userRequests()) assert.equal(u, "/auth/user?slide=false");
});

test('channelName: null keeps the tabs apart', async (t) => {
  const { server, tabs: [a, b], stop } = tabs(2, { channelName: null });
  t.after(stop);
  server.login();
  await Promise.all([a.client.start(), b.client.start()]);
  await a.client.logout();
  await settle(50);
  assert.deepEqual(b.events, []);
});
