// start(): polls aligned to the expiry, by the server's clock; expiring, expired, loggedOut
// (server), loggedIn; activity; never a poll that slides the session.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createCloakroom } from "../dist/index.js";
import { FakeClock, FakeServer, FakeLocation, recorder } from "./support/fake.mjs";

const names = ["expiring", "expired", "loggedOut", "loggedIn"];

function setup(opts = {}, serverOpts = {}) {
  const clock = new FakeClock();
  const server = new FakeServer(clock, serverOpts);
  const location = new FakeLocation("/");
  const client = createCloakroom({ fetch: server.fetch, location, timers: clock, channelName: null, ...opts });
  const events = recorder(client, names);
  return { clock, server, location, client, events, t0: clock.now() };
}

/** Every request the watcher made to /auth/user left the session's idle timeout alone. */
function assertNeverSlid(server) {
  const urls = server.userRequests();
  assert.ok(urls.length > 0);
  for (const u of urls) assert.equal(u, "/auth/user?slide=false", "a poll must never slide the session");
}

const within = (v, lo, hi, what) => assert.ok(v >= lo && v <= hi, `${what}: ${v} not in [${lo}, ${hi}]`);

for (const [label, skewMs] of [
  ["an hour slow", 3_600_000],
  ["an hour fast", -3_600_000],
  ["right", 0],
  ["47 s fast", -47_250],
]) {
  test(`expiring, then expired, on time by the server's clock, with the browser's clock ${label}`, async () => {
    const { clock, server, client, events, t0 } = setup({}, { skewMs, idle: 300 });
    server.login();
    const first = await client.start();
    assert.equal(first.sub, "alice");
    within(client.secondsLeft(), 298, 300, "secondsLeft right after login");
    assert.equal(client.expiresAt(), server.expiresAt());
    within(client.serverNow(), server.now() - 1, server.now() + 1, "serverNow()");

    await clock.advanceTo(t0, 237_000);
    assert.deepEqual(events, [], "nothing before expires_at - 60 s");
    within(client.secondsLeft(), 61, 64, "secondsLeft at 237 s");

    await clock.advanceTo(t0, 241_000);
    assert.equal(events.length, 1, JSON.stringify(events));
    assert.equal(events[0][0], "expiring");
    assert.equal(events[0][1].expiresAt, server.session.created_at + 300);
    within(events[0][1].secondsLeft, 59, 61, "expiring's secondsLeft");

    await clock.advanceTo(t0, 298_000);
    assert.equal(events.length, 1, "expiring once, nothing else before the expiry");
    await clock.advanceTo(t0, 303_000);
    assert.deepEqual(events.slice(1), [["expired", { expiresAt: events[0][1].expiresAt }]]);
    assert.equal(client.current(), null);
    assert.equal(client.secondsLeft(), null);

    // Three polls: at login, at expires_at - 60 s, just after expires_at (nothing in between).
    const times = server.pollTimes(t0);
    assert.equal(times.length, 3, `poll times ${times}`);
    within(times[1], 238_000, 240_500, "the expiring poll");
    within(times[2], 300_000, 302_000, "the expiry poll");
    assertNeverSlid(server);
    client.stop();
    assert.equal(clock.pending, 0, "stop() leaves no timer");
  });
}

test("a session ended on the server before its expiry: loggedOut server within maxPollSeconds", async () => {
  const { clock, server, client, events, t0 } = setup({ maxPollSeconds: 30 }, { idle: 1800 });
  server.login();
  await client.start();
  await clock.advanceTo(t0, 100_000);
  server.session = null; // another device signed this one out, or an admin did
  await clock.advanceTo(t0, 131_000);
  assert.deepEqual(events, [["loggedOut", { reason: "server" }]]);
  const times = server.pollTimes(t0);
  assert.deepEqual(times, [0, 30_000, 60_000, 90_000, 120_000], "every maxPollSeconds, no more");
  // Without a session: still every maxPollSeconds (a login elsewhere shows up), no event.
  await clock.advanceTo(t0, 200_000);
  assert.equal(events.length, 1);
  assertNeverSlid(server);
  client.stop();
});

test("the app's own calls slide the session: the next poll (debounced) reads the new expiry", async () => {
  const { clock, server, client, events, t0 } = setup({}, { idle: 300 });
  server.login();
  await client.start();
  const firstExpiry = client.expiresAt();
  await clock.advanceTo(t0, 100_000);
  await Promise.all([client.fetch("/api/a"), client.fetch("/api/b"), client.fetch("/api/c")]);
  await clock.advanceTo(t0, 100_500);
  assert.equal(server.pollTimes(t0).length, 1, "not at once");
  await clock.advanceTo(t0, 102_000);
  assert.equal(server.pollTimes(t0).length, 2, "one poll for the burst of calls");
  assert.equal(client.expiresAt(), firstExpiry + 100, "the new expiry");
  await clock.advanceTo(t0, 300_000);
  assert.deepEqual(events, [], "no warning at the old time");
  await clock.advanceTo(t0, 341_000);
  assert.equal(events.length, 1);
  assert.equal(events[0][0], "expiring");
  assert.equal(events[0][1].expiresAt, firstExpiry + 100);
  assertNeverSlid(server);
  client.stop();
});

test("expiring once per expiry time; again after the session was extended", async () => {
  const { clock, server, client, events, t0 } = setup({}, { idle: 300 });
  server.login();
  await client.start();
  await clock.advanceTo(t0, 250_000);
  await client.check();
  await client.check();
  assert.deepEqual(
    events.map((e) => e[0]),
    ["expiring"],
  );
  // "Keep me signed in": user() slides, and its answer resets the warning.
  const u = await client.user();
  assert.equal(u.session.expires_at, client.expiresAt());
  within(client.secondsLeft(), 299, 300, "after sliding");
  await clock.advanceTo(t0, 489_000);
  assert.equal(events.length, 1);
  await clock.advanceTo(t0, 492_000);
  assert.deepEqual(
    events.map((e) => e[0]),
    ["expiring", "expiring"],
  );
  client.stop();
});

test("a session that is there on a 401 poll after its expiry is expired, not logged out", async () => {
  // The page slept (a laptop lid): the first poll after waking is late and finds no session.
  const { clock, server, client, events } = setup({ maxPollSeconds: 300 }, { idle: 300 });
  server.login();
  await client.start();
  clock.queue = []; // the timers did not fire while asleep
  await clock.advance(400_000);
  await client.check();
  assert.deepEqual(events, [["expired", { expiresAt: server.now() - 100 }]]);
  client.stop();
});

test("no answer: back off, warn from the known expiry, and emit expired when its time is up", async () => {
  const { clock, server, client, events, t0 } = setup({}, { idle: 300 });
  server.login();
  await client.start();
  await clock.advanceTo(t0, 200_000);
  server.offline = true;
  await clock.advanceTo(t0, 245_000);
  assert.deepEqual(
    events.map((e) => e[0]),
    ["expiring"],
    "warned although the poll failed",
  );
  const failedPolls = server.pollTimes(t0).length - 1;
  assert.ok(failedPolls >= 2 && failedPolls <= 4, `backing off: ${server.pollTimes(t0)}`);
  await clock.advanceTo(t0, 320_000);
  assert.deepEqual(
    events.map((e) => e[0]),
    ["expiring", "expired"],
  );
  // Back online with a new session (logged in elsewhere meanwhile): loggedIn.
  server.offline = false;
  server.login();
  await clock.advanceTo(t0, 500_000);
  assert.deepEqual(
    events.map((e) => e[0]),
    ["expiring", "expired", "loggedIn"],
  );
  const gaps = server.pollTimes(t0).slice(1).map((t, i, a) => (i === 0 ? 0 : t - a[i - 1]));
  assert.ok(Math.max(...gaps) <= 300_000, `never longer than maxPollSeconds: ${gaps}`);
  assertNeverSlid(server);
  client.stop();
});

test("loggedIn when a session appears after none, or another user's; not on the first poll", async () => {
  const { clock, server, client, events, t0 } = setup({ maxPollSeconds: 60 }, { idle: 3600 });
  server.login("alice");
  await client.start();
  assert.deepEqual(events, [], "the page's first look is not a login");
  server.login("bob");
  await clock.advanceTo(t0, 61_000);
  assert.deepEqual(events, [["loggedIn", { sub: "bob" }]]);
  server.session = null;
  await clock.advanceTo(t0, 121_000);
  server.login("bob");
  await clock.advanceTo(t0, 181_000);
  assert.deepEqual(events, [
    ["loggedIn", { sub: "bob" }],
    ["loggedOut", { reason: "server" }],
    ["loggedIn", { sub: "bob" }],
  ]);
  assertNeverSlid(server);
  client.stop();
});

test("stop() ends polling; start() again resumes", async () => {
  const { clock, server, client, t0 } = setup({ maxPollSeconds: 10 }, { idle: 3600 });
  server.login();
  await client.start();
  client.stop();
  await clock.advanceTo(t0, 100_000);
  assert.equal(server.pollTimes(t0).length, 1);
  await client.start();
  await clock.advanceTo(t0, 111_000);
  assert.equal(server.pollTimes(t0).length, 3);
  client.stop();
  assert.equal(clock.pending, 0);
});

test("a handler that throws does not stop the others", async (t) => {
  const { server, client } = setup();
  const seen = [];
  const errors = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (e) => errors.push(e.message);
  t.after(() => {
    globalThis.reportError = saved;
  });
  client.on("user", () => {
    throw new Error("boom");
  });
  client.on("user", (u) => seen.push(u?.sub ?? null));
  server.login();
  await client.user();
  assert.deepEqual(seen, ["alice"]);
  assert.deepEqual(errors, ["boom"], "reported, like an event listener's error");
});
