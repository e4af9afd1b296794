/**
 * `@cloakroom/client`: the browser side of Cloakroom, the backend-for-frontend token handler.
 *
 * The single-page app never sees a token: Cloakroom keeps them on the server and the browser
 * holds only an HttpOnly session cookie. What is left for the SPA, and what this module does:
 *
 * - {@link Cloakroom.fetch}: `window.fetch` with the CSRF header Cloakroom wants, same-origin
 *   credentials, and the two 401s handled (`unauthenticated`: go and log in, coming back to this
 *   page; `step_up_required`: sign in again, more strongly or more recently).
 * - {@link Cloakroom.login}, {@link Cloakroom.logout} (this tab, other devices, everywhere),
 *   {@link Cloakroom.user}, {@link Cloakroom.sessions}, {@link Cloakroom.endSession},
 *   {@link Cloakroom.saveState} and {@link Cloakroom.restoredState}.
 * - {@link Cloakroom.start}: watches the session without keeping it alive (`GET /auth/user
 *   ?slide=false`, polled only when something can have changed: shortly before it expires, at
 *   expiry, after the app's own calls, at most every `maxPollSeconds`) and emits `expiring`,
 *   `expired`, `loggedOut` and `loggedIn`, using the server's clock, not the browser's. Tabs
 *   tell each other about logins and logouts over a `BroadcastChannel`.
 *
 * No runtime dependencies; no Web Storage (nothing about the session is kept in the browser).
 *
 * @packageDocumentation
 */
/** A call to Cloakroom failed: `status` and the error `code` of its JSON body, if any. */
export class CloakroomError extends Error {
    /** The HTTP status (0: no answer). */
    status;
    /** Cloakroom's error code (`{"error": "…"}`), if the body had one. */
    code;
    /** The parsed JSON body, if any. */
    body;
    constructor(message, status, code, body) {
        super(message);
        this.name = "CloakroomError";
        this.status = status;
        this.code = code;
        this.body = body;
    }
}
/** {@link Cloakroom.saveState} was refused: the state is larger than the server keeps (413). */
export class StateTooLargeError extends CloakroomError {
    constructor(status, code, body) {
        super("the session state is too large for the server (413 state_too_large)", status, code, body);
        this.name = "StateTooLargeError";
    }
}
/** No poll sooner than this after the previous one. */
const MIN_POLL_MS = 1000;
/** Poll this long after the expiry time, so that the server has surely ended the session. */
const EXPIRY_GRACE_MS = 1000;
/** A 401 this close to the expected expiry (clock estimates are good to about a second) is `expired`. */
const EXPIRY_TOLERANCE_MS = 2000;
/** `session.now` is whole seconds: the server's time was somewhere in the next second. */
const HALF_SECOND_MS = 500;
const defaultTimers = {
    now: () => Date.now(),
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (id) => globalThis.clearTimeout(id),
};
function positive(n, fallback) {
    return typeof n === "number" && Number.isFinite(n) && n >= 0 ? n : fallback;
}
async function readJson(res) {
    try {
        return await res.json();
    }
    catch {
        return null;
    }
}
/**
 * The header Cloakroom puts on its own error answers (and drops from upstreams' responses):
 * only a 401 carrying it is acted on, so an API behind Cloakroom cannot send the browser
 * anywhere with a `login_url` of its own.
 */
export const ERROR_HEADER = "x-cloakroom-error";
function isObject(v) {
    return typeof v === "object" && v !== null;
}
function errorCode(body) {
    return isObject(body) && typeof body["error"] === "string" ? body["error"] : null;
}
function isUser(v) {
    return (isObject(v) &&
        typeof v["sub"] === "string" &&
        isObject(v["session"]) &&
        typeof v["session"]["expires_at"] === "number");
}
/**
 * A client for one Cloakroom (one auth prefix). Create it with {@link createCloakroom}.
 */
export class Cloakroom {
    /** The options in force (defaults filled in). */
    options;
    #fetchImpl;
    #location;
    #timers;
    #handlers = new Map();
    /** The last session seen, or null. */
    #known = null;
    /** null: never read yet; false: the last read found no session. */
    #hadSession = null;
    /** Server clock minus browser clock, in ms. */
    #offsetMs = 0;
    /** Moves on at every logout and at stop(): answers of requests started before are dropped. */
    #epoch = 0;
    #started = false;
    #pollTimer = null;
    #activityTimer = null;
    #inflight = null;
    #pollAgain = false;
    #failures = 0;
    /** The expiry time `expiring` was emitted for. */
    #expiringFor = null;
    #channel = null;
    #listening = false;
    constructor(options = {}) {
        this.options = Object.freeze({
            base: (options.base ?? "/auth").replace(/\/+$/, ""),
            csrfHeader: options.csrfHeader ?? "x-csrf",
            csrfValue: options.csrfValue ?? "1",
            expiringLeadSeconds: positive(options.expiringLeadSeconds, 60),
            onUnauthenticated: options.onUnauthenticated ?? "login",
            onStepUpRequired: options.onStepUpRequired ?? "login",
            channelName: options.channelName === undefined ? "cloakroom" : options.channelName,
            maxPollSeconds: Math.max(1, positive(options.maxPollSeconds, 300)),
            afterLogout: options.afterLogout ?? "/",
            activityPollDelayMs: positive(options.activityPollDelayMs, 1000),
        });
        this.#fetchImpl = options.fetch;
        this.#location = options.location;
        this.#timers = options.timers ?? defaultTimers;
    }
    // ---------------------------------------------------------------- events
    /** Calls `handler` on every `name` event. Returns a function that removes it. */
    on(name, handler) {
        let set = this.#handlers.get(name);
        if (!set) {
            set = new Set();
            this.#handlers.set(name, set);
        }
        set.add(handler);
        return () => this.off(name, handler);
    }
    /** Removes a handler added with {@link Cloakroom.on}. */
    off(name, handler) {
        this.#handlers.get(name)?.delete(handler);
    }
    #emit(name, detail) {
        const set = this.#handlers.get(name);
        if (!set)
            return;
        for (const h of [...set]) {
            try {
                h(detail);
            }
            catch (e) {
                // One broken handler must not stop the others or the watcher; report it like an
                // event listener's error.
                const report = globalThis.reportError;
                if (typeof report === "function") {
                    report(e);
                }
                else {
                    queueMicrotask(() => {
                        throw e;
                    });
                }
            }
        }
    }
    // ---------------------------------------------------------------- fetch
    /**
     * `window.fetch`, for the app's API calls through Cloakroom: adds the CSRF header (unless the
     * caller set it; the caller's other headers are kept, in any of the `HeadersInit` forms) and
     * `credentials: "same-origin"` (unless given). A `401 unauthenticated` emits `unauthenticated`
     * and, in "login" mode, goes to the login with this page as `return_to`; a
     * `401 step_up_required` emits `stepUpRequired` and, in "login" mode, goes to its `login_url`.
     * Always resolves with the response, its body unread.
     */
    async fetch(input, init) {
        const isRequest = typeof Request !== "undefined" && input instanceof Request;
        const headers = new Headers(init?.headers !== undefined ? init.headers : isRequest ? input.headers : undefined);
        if (!headers.has(this.options.csrfHeader)) {
            headers.set(this.options.csrfHeader, this.options.csrfValue);
        }
        const next = { ...init, headers };
        if (init?.credentials === undefined && !isRequest) {
            next.credentials = "same-origin";
        }
        const res = await this.#rawFetch(input, next);
        // The call slid the session (if it reached one): read the new expiry soon.
        this.#activity();
        if (res.status === 401) {
            await this.#handle401(res);
        }
        return res;
    }
    async #handle401(res) {
        // Only Cloakroom's own answers: an upstream's 401 (whatever its body says) is the app's.
        if (!res.headers.has(ERROR_HEADER))
            return;
        const body = await readJson(res.clone());
        const code = errorCode(body);
        if (code === "unauthenticated") {
            // A session that ended for want of a refresh token may be restored by a silent login
            // (`session.without_refresh_token = "silent_login"`): the server names it. Not when this
            // page is the answer to one that failed (`?error=…`): then the user has to sign in.
            const named = isObject(body) && typeof body["login_url"] === "string" ? body["login_url"] : null;
            const silent = named === null ? null : this.#ownLoginUrl(named);
            const failedBefore = /[?&]error=/.test(this.#loc().search);
            const loginUrl = silent && !failedBefore
                ? `${silent}${silent.includes("?") ? "&" : "?"}return_to=${encodeURIComponent(this.#here())}`
                : this.loginUrl();
            this.#emit("unauthenticated", { url: res.url, loginUrl });
            if (this.options.onUnauthenticated === "login") {
                this.#navigate(loginUrl);
            }
        }
        else if (code === "step_up_required" && isObject(body) && typeof body["login_url"] === "string") {
            const loginUrl = this.#ownLoginUrl(body["login_url"]);
            if (loginUrl === null)
                return;
            const challenge = {
                error: "step_up_required",
                acr_values: typeof body["acr_values"] === "string" ? body["acr_values"] : null,
                max_age: typeof body["max_age"] === "number" ? body["max_age"] : null,
                login_url: loginUrl,
            };
            this.#emit("stepUpRequired", challenge);
            if (this.options.onStepUpRequired === "login") {
                this.stepUp(challenge);
            }
        }
    }
    #rawFetch(input, init) {
        const f = this.#fetchImpl ?? globalThis.fetch;
        if (typeof f !== "function") {
            return Promise.reject(new TypeError("no fetch: pass options.fetch"));
        }
        return f.call(globalThis, input, init);
    }
    /** A call to one of Cloakroom's own endpoints (`base + path`). */
    #request(method, path, body) {
        const headers = { [this.options.csrfHeader]: this.options.csrfValue };
        const init = { method, headers, credentials: "same-origin", cache: "no-store" };
        if (body !== undefined) {
            headers["content-type"] = "application/json";
            init.body = JSON.stringify(body);
        }
        return this.#rawFetch(this.options.base + path, init);
    }
    async #fail(what, res) {
        const body = await readJson(res);
        const code = errorCode(body);
        return new CloakroomError(`${what}: HTTP ${res.status}${code ? ` ${code}` : ""}`, res.status, code, body);
    }
    // ---------------------------------------------------------------- navigation
    #loc() {
        const loc = this.#location ?? globalThis.location;
        if (!loc) {
            throw new TypeError("no location: pass options.location");
        }
        return loc;
    }
    #here() {
        const loc = this.#loc();
        return `${loc.pathname}${loc.search}${loc.hash}`;
    }
    #navigate(url) {
        this.#loc().assign(url);
    }
    /** The login URL {@link Cloakroom.login} goes to (e.g. for an `<a href>`). */
    loginUrl(options = {}) {
        const q = [`return_to=${encodeURIComponent(options.returnTo ?? this.#here())}`];
        if (options.prompt)
            q.push(`prompt=${encodeURIComponent(options.prompt)}`);
        if (options.remember)
            q.push("remember=true");
        if (options.acrValues)
            q.push(`acr_values=${encodeURIComponent(options.acrValues)}`);
        if (options.maxAge !== undefined)
            q.push(`max_age=${encodeURIComponent(String(options.maxAge))}`);
        if (options.provider)
            q.push(`provider=${encodeURIComponent(options.provider)}`);
        return `${this.options.base}/login?${q.join("&")}`;
    }
    /** Goes to the login (the IdP), coming back to `returnTo` (default: this page). */
    login(options = {}) {
        this.#navigate(this.loginUrl(options));
    }
    /**
     * Goes to a step-up challenge's `login_url`, coming back to `returnTo` (default: this page).
     * Throws a `TypeError` for a `login_url` that is not Cloakroom's login (`base/login?…`).
     */
    stepUp(challenge, options = {}) {
        const url = this.#ownLoginUrl(challenge.login_url);
        if (url === null) {
            throw new TypeError(`not a Cloakroom login URL: ${challenge.login_url}`);
        }
        const sep = url.endsWith("?") ? "" : "&";
        this.#navigate(`${url}${sep}return_to=${encodeURIComponent(options.returnTo ?? this.#here())}`);
    }
    /**
     * `url` if it is Cloakroom's own login (`base/login?…`), else null. With an absolute `base`
     * (Cloakroom on another origin) the server's path-only `login_url` is put on that origin.
     */
    #ownLoginUrl(url) {
        const base = this.options.base;
        if (url.startsWith(`${base}/login?`))
            return url;
        const origin = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]+/i.exec(base)?.[0];
        if (origin !== undefined && url.startsWith(`${base.slice(origin.length)}/login?`) && url.startsWith("/")) {
            return origin + url;
        }
        return null;
    }
    // ---------------------------------------------------------------- the session
    /**
     * `GET /auth/user`: the user, or null when there is no session. `slide: true` (the default,
     * as for any request) counts as activity and extends the idle timeout; `slide: false` does not.
     * The answer also updates the watcher (expiry, events).
     */
    async user(options = {}) {
        const slide = options.slide ?? true;
        const epoch = this.#epoch;
        const t0 = this.#timers.now();
        const res = await this.#request("GET", slide ? "/user" : "/user?slide=false");
        const t1 = this.#timers.now();
        if (res.status === 401) {
            if (epoch === this.#epoch)
                this.#gone();
            return null;
        }
        const body = await readJson(res);
        if (res.status !== 200 || !isUser(body)) {
            throw new CloakroomError(`GET ${this.options.base}/user: HTTP ${res.status}`, res.status, errorCode(body), body);
        }
        if (epoch === this.#epoch)
            this.#accept(body, t0, t1, res);
        return body;
    }
    /** Reads the session now without sliding it (`slide=false`), as the watcher does. Never rejects. */
    check() {
        return this.#poll();
    }
    /** The last session seen (by a poll or {@link Cloakroom.user}), or null. */
    current() {
        return this.#known;
    }
    /** When the session ends (unix seconds, server clock), or null without one. */
    expiresAt() {
        return this.#known ? this.#known.session.expires_at : null;
    }
    /** Seconds until the session ends, by the server's clock (whatever the browser's says), or null. */
    secondsLeft() {
        if (!this.#known)
            return null;
        return Math.max(0, Math.floor((this.#known.session.expires_at * 1000 - this.#serverNowMs()) / 1000));
    }
    /** The server's clock now (unix seconds), estimated from its last answer. */
    serverNow() {
        return Math.floor(this.#serverNowMs() / 1000);
    }
    #serverNowMs() {
        return this.#timers.now() + this.#offsetMs;
    }
    // ---------------------------------------------------------------- logout, devices, state
    /**
     * `POST /auth/logout`. For `"this"` and `"everywhere"`: tells the other tabs, emits
     * `loggedOut {reason: "this_tab"}`, then goes to the IdP's end-session URL, or to
     * `afterLogout` without one. For `"others"`: this session stays, nothing navigates.
     */
    async logout(options = {}) {
        const scope = options.scope ?? (options.everywhere ? "everywhere" : "this");
        const res = await this.#request("POST", "/logout", scope === "this" ? undefined : { scope });
        if (!res.ok) {
            throw await this.#fail(`POST ${this.options.base}/logout`, res);
        }
        const body = await readJson(res);
        const url = isObject(body) ? body["end_session_url"] : null;
        const endSessionUrl = typeof url === "string" && url !== "" ? url : null;
        if (scope !== "others") {
            this.#epoch += 1;
            this.#post({ cloakroom: 1, type: "logout", scope });
            this.#clear();
            this.#emit("loggedOut", { reason: "this_tab" });
            this.#emit("user", null);
            this.#schedule();
            this.#navigate(endSessionUrl ?? this.options.afterLogout);
        }
        return { scope, endSessionUrl };
    }
    /** `GET /auth/providers`: the identity providers a login may name, for one sign-in button each. */
    async providers() {
        const res = await this.#request("GET", "/providers");
        if (res.status !== 200) {
            throw await this.#fail(`GET ${this.options.base}/providers`, res);
        }
        const body = await readJson(res);
        const list = isObject(body) ? body["providers"] : null;
        return Array.isArray(list) ? list : [];
    }
    /** `GET /auth/sessions`: the user's sessions (devices), this one marked `current`. */
    async sessions() {
        const res = await this.#request("GET", "/sessions");
        if (res.status !== 200) {
            throw await this.#fail(`GET ${this.options.base}/sessions`, res);
        }
        const body = await readJson(res);
        const list = isObject(body) ? body["sessions"] : null;
        return Array.isArray(list) ? list : [];
    }
    /** `DELETE /auth/sessions/{id}`: signs that device out. False when there is no such session. */
    async endSession(id) {
        const res = await this.#request("DELETE", `/sessions/${encodeURIComponent(id)}`);
        if (res.status === 404)
            return false;
        if (!res.ok) {
            throw await this.#fail(`DELETE ${this.options.base}/sessions/…`, res);
        }
        return true;
    }
    /**
     * `PUT /auth/session/state`: keeps a small JSON value with the session, restored even from a
     * timed-out session of the same user. Rejects with {@link StateTooLargeError} on 413.
     */
    async saveState(value) {
        const res = await this.#request("PUT", "/session/state", value === undefined ? null : value);
        if (res.status === 413) {
            const body = await readJson(res);
            throw new StateTooLargeError(res.status, errorCode(body), body);
        }
        if (!res.ok) {
            throw await this.#fail(`PUT ${this.options.base}/session/state`, res);
        }
    }
    /** `GET /auth/session/state`: the value saved with {@link Cloakroom.saveState}, or null (also without a session). */
    async restoredState() {
        const res = await this.#request("GET", "/session/state");
        if (res.status === 401)
            return null;
        if (res.status !== 200) {
            throw await this.#fail(`GET ${this.options.base}/session/state`, res);
        }
        const body = await readJson(res);
        const state = isObject(body) ? body["state"] : null;
        return state === undefined ? null : state;
    }
    // ---------------------------------------------------------------- the watcher
    /**
     * Starts watching the session (and listening to the other tabs). Resolves with the first
     * poll's answer. Calling it again only polls.
     */
    start() {
        if (!this.#started) {
            this.#started = true;
            const name = this.options.channelName;
            if (name !== null && typeof BroadcastChannel === "function") {
                this.#channel = new BroadcastChannel(name);
                this.#channel.addEventListener("message", this.#onMessage);
            }
            if (typeof document !== "undefined" && typeof document.addEventListener === "function") {
                document.addEventListener("visibilitychange", this.#onVisible);
                globalThis.addEventListener?.("online", this.#onVisible);
                this.#listening = true;
            }
        }
        return this.#poll();
    }
    /** Stops the timers and the cross-tab channel. */
    stop() {
        this.#started = false;
        this.#epoch += 1;
        this.#clearTimer("poll");
        this.#clearTimer("activity");
        if (this.#channel) {
            this.#channel.removeEventListener("message", this.#onMessage);
            this.#channel.close();
            this.#channel = null;
        }
        if (this.#listening) {
            document.removeEventListener("visibilitychange", this.#onVisible);
            globalThis.removeEventListener?.("online", this.#onVisible);
            this.#listening = false;
        }
    }
    #onVisible = () => {
        if (typeof document === "undefined" || document.visibilityState !== "hidden") {
            this.#activity();
        }
    };
    #onMessage = (ev) => {
        const m = ev.data;
        if (!isObject(m) || m["cloakroom"] !== 1)
            return;
        if (m["type"] === "logout" && (m["scope"] === "this" || m["scope"] === "everywhere")) {
            // This browser's session is gone (the tabs share its cookie).
            this.#epoch += 1;
            const had = this.#known !== null;
            this.#clear();
            if (had) {
                this.#emit("loggedOut", { reason: "other_tab" });
                this.#emit("user", null);
            }
            this.#schedule();
        }
        else if (m["type"] === "login" && typeof m["sub"] === "string") {
            const k = this.#known;
            if (k && k.sub === m["sub"] && k.session.created_at === m["createdAt"])
                return;
            void this.#poll();
        }
    };
    #post(msg) {
        if (this.options.channelName === null || typeof BroadcastChannel !== "function")
            return;
        if (this.#channel) {
            this.#channel.postMessage(msg);
            return;
        }
        // Not watching: a channel just for this message (logout must reach the other tabs).
        const ch = new BroadcastChannel(this.options.channelName);
        ch.postMessage(msg);
        ch.close();
    }
    #clear() {
        this.#known = null;
        this.#hadSession = false;
        this.#expiringFor = null;
        this.#failures = 0;
    }
    #clearTimer(which) {
        const id = which === "poll" ? this.#pollTimer : this.#activityTimer;
        if (id !== null)
            this.#timers.clearTimeout(id);
        if (which === "poll")
            this.#pollTimer = null;
        else
            this.#activityTimer = null;
    }
    /** A call that slid the session (or the tab came back): poll soon, once for a burst. */
    #activity() {
        if (!this.#started)
            return;
        this.#clearTimer("activity");
        this.#activityTimer = this.#timers.setTimeout(() => {
            this.#activityTimer = null;
            void this.#poll();
        }, this.options.activityPollDelayMs);
    }
    /** One `GET /auth/user?slide=false` at a time; a request during one makes another after it. */
    #poll() {
        if (this.#inflight) {
            this.#pollAgain = true;
            return this.#inflight;
        }
        const p = this.#pollOnce().finally(() => {
            this.#inflight = null;
            if (this.#pollAgain) {
                this.#pollAgain = false;
                void this.#poll();
            }
        });
        this.#inflight = p;
        return p;
    }
    async #pollOnce() {
        const epoch = this.#epoch;
        const t0 = this.#timers.now();
        let res;
        let body = null;
        try {
            res = await this.#request("GET", "/user?slide=false");
            if (res.status === 200)
                body = await res.json();
        }
        catch {
            if (epoch === this.#epoch)
                this.#failed();
            return this.#known;
        }
        const t1 = this.#timers.now();
        if (epoch !== this.#epoch) {
            // A logout happened meanwhile: this answer may predate it.
            return this.#known;
        }
        if (res.status === 200 && isUser(body)) {
            this.#accept(body, t0, t1, res);
            return body;
        }
        if (res.status === 401) {
            this.#gone();
            return null;
        }
        this.#failed();
        return this.#known;
    }
    /** A session (200 from /auth/user). */
    #accept(user, t0, t1, res) {
        const serverMs = typeof user.session.now === "number"
            ? user.session.now * 1000 + HALF_SECOND_MS
            : Date.parse(res.headers.get("date") ?? "") + HALF_SECOND_MS;
        if (Number.isFinite(serverMs)) {
            this.#offsetMs = serverMs - (t0 + t1) / 2;
        }
        const prev = this.#known;
        const had = this.#hadSession;
        this.#known = user;
        this.#hadSession = true;
        this.#failures = 0;
        const other = prev !== null && prev.sub !== user.sub;
        if (prev === null || other || prev.session.created_at !== user.session.created_at) {
            // A session appeared (or a new one): the other tabs re-read theirs.
            if (this.#channel) {
                this.#post({ cloakroom: 1, type: "login", sub: user.sub, createdAt: user.session.created_at });
            }
        }
        if (had === false || other) {
            this.#emit("loggedIn", { sub: user.sub });
        }
        this.#emit("user", user);
        this.#checkExpiring();
        this.#schedule();
    }
    /** `expiring`, once per expiry time, when the known session ends within the lead time. */
    #checkExpiring() {
        const k = this.#known;
        if (!k || this.#expiringFor === k.session.expires_at)
            return;
        const leftMs = k.session.expires_at * 1000 - this.#serverNowMs();
        if (leftMs <= this.options.expiringLeadSeconds * 1000 + HALF_SECOND_MS) {
            this.#expiringFor = k.session.expires_at;
            this.#emit("expiring", { expiresAt: k.session.expires_at, secondsLeft: this.secondsLeft() ?? 0 });
        }
    }
    /** No session (401 from /auth/user). */
    #gone() {
        const prev = this.#known;
        this.#clear();
        if (prev) {
            const exp = prev.session.expires_at;
            if (this.#serverNowMs() >= exp * 1000 - EXPIRY_TOLERANCE_MS) {
                this.#emit("expired", { expiresAt: exp });
            }
            else {
                this.#emit("loggedOut", { reason: "server" });
            }
        }
        this.#emit("user", null);
        this.#schedule();
    }
    /** No answer (network, 5xx): keep what we know, try again later. */
    #failed() {
        this.#failures += 1;
        const k = this.#known;
        if (k && this.#serverNowMs() >= k.session.expires_at * 1000 + EXPIRY_GRACE_MS) {
            // Unconfirmed, but its time is up (a later answer with a session emits loggedIn).
            this.#clear();
            this.#failures = 1;
            this.#emit("expired", { expiresAt: k.session.expires_at });
            this.#emit("user", null);
        }
        else {
            // The known expiry comes closer even when the server cannot be asked.
            this.#checkExpiring();
        }
        this.#schedule();
    }
    /** The next poll: at `expires_at - expiringLeadSeconds`, then at expiry, at most `maxPollSeconds` away. */
    #schedule() {
        this.#clearTimer("poll");
        if (!this.#started)
            return;
        const max = this.options.maxPollSeconds * 1000;
        let delay;
        const k = this.#known;
        if (this.#failures > 0) {
            delay = 2000 * 2 ** Math.min(this.#failures - 1, 10);
        }
        else if (!k) {
            delay = max;
        }
        else {
            const now = this.#serverNowMs();
            const exp = k.session.expires_at * 1000;
            const warn = exp - this.options.expiringLeadSeconds * 1000;
            if (now < warn - HALF_SECOND_MS)
                delay = warn - now;
            else if (now < exp + EXPIRY_GRACE_MS)
                delay = exp + EXPIRY_GRACE_MS - now;
            else
                delay = 5000; // past its time yet still there: a server a little behind
        }
        delay = Math.min(max, Math.max(MIN_POLL_MS, delay));
        this.#pollTimer = this.#timers.setTimeout(() => {
            this.#pollTimer = null;
            void this.#poll();
        }, delay);
    }
}
/**
 * A client for Cloakroom at `options.base` (default `/auth`). Call `start()` to watch the
 * session and receive its events.
 *
 * ```js
 * const cloakroom = createCloakroom();
 * cloakroom.on("expiring", ({ secondsLeft }) => showWarning(secondsLeft));
 * cloakroom.start();
 * const res = await cloakroom.fetch("/api/orders"); // CSRF header added; 401 → login
 * ```
 */
export function createCloakroom(options = {}) {
    return new Cloakroom(options);
}
