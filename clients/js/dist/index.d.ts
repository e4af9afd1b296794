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
/** Unix time in seconds. */
export type UnixSeconds = number;
/** The `session` part of `GET /auth/user`: when the session started and when it ends. */
export interface SessionTimes {
    /** When the session was created. */
    created_at: UnixSeconds;
    /** When it ends unless something slides it: the earlier of the two below. */
    expires_at: UnixSeconds;
    /** When the idle timeout ends it (moves on with activity). */
    idle_expires_at: UnixSeconds;
    /** When it ends whatever happens. */
    absolute_expires_at: UnixSeconds;
    /** The server's clock when it answered (the library corrects the browser's clock with it). */
    now?: UnixSeconds;
}
/** The answer of `GET /auth/user`: who is logged in, never a token. */
export interface User {
    /** The user's subject identifier at the identity provider. */
    sub: string;
    /** The identity provider the session is from: `[oidc]`'s name (`"default"` unless set) or a
     *  `[[oidc.providers]]` entry's. The same `sub` at two providers is two users. */
    provider?: string;
    /** How the user authenticated (`acr` claim), if the IdP said. */
    acr?: string | null;
    /** Authentication methods (`amr` claim), if the IdP said. */
    amr?: string[] | null;
    /** When the user last signed in at the IdP (`auth_time` claim). */
    auth_time?: UnixSeconds | null;
    /** The ID token's claims (minus `nonce`, `at_hash`, `c_hash`). */
    claims: Record<string, unknown>;
    /** The session was started with "remember me". */
    remembered?: boolean;
    /** The session was rebuilt from a timed-out one of the same user (its saved state too). */
    reconstituted?: boolean;
    /** When the session started and ends. */
    session: SessionTimes;
}
/** An identity provider a login may name, from `GET /auth/providers`. */
export interface Provider {
    /** What `login({provider})` takes. */
    name: string;
    /** The one a login without `provider` goes to. */
    default: boolean;
}
/** One of the user's sessions (devices), from `GET /auth/sessions`. */
export interface DeviceSession {
    /** Short id, for {@link Cloakroom.endSession}. */
    id: string;
    /** When that session was created. */
    created_at: UnixSeconds;
    /** When it was last used. */
    last_seen: UnixSeconds;
    /** The client address it was last used from, if known. */
    ip: string | null;
    /** A description of the browser, e.g. "Chrome on Linux", if known. */
    device: string | null;
    /** This is the session of this browser. */
    current: boolean;
    /** Started with "remember me". */
    remembered: boolean;
}
/** The body of Cloakroom's `401 step_up_required`. */
export interface StepUpChallenge {
    /** Always `step_up_required`. */
    error: "step_up_required";
    /** The `acr_values` the route needs, if any. */
    acr_values: string | null;
    /** How recent (seconds) the sign-in must be, if the route says. */
    max_age: number | null;
    /** Where to sign in again (`/auth/login?…`, without `return_to`). */
    login_url: string;
}
/** Which sessions {@link Cloakroom.logout} ends. */
export type LogoutScope = "this" | "others" | "everywhere";
/** Why a `loggedOut` event was emitted. */
export type LoggedOutReason = 
/** This tab called {@link Cloakroom.logout}. */
"this_tab"
/** Another tab of this browser logged out. */
 | "other_tab"
/** The server ended the session before it was due to expire (another device, an admin, the IdP). */
 | "server";
/** The events and what their handlers receive. */
export interface CloakroomEvents {
    /** The session ends in at most `expiringLeadSeconds`, unless something slides it. Once per expiry time. */
    expiring: {
        expiresAt: UnixSeconds;
        secondsLeft: number;
    };
    /** The session reached its expiry time. */
    expired: {
        expiresAt: UnixSeconds;
    };
    /** The session was ended (see {@link LoggedOutReason}). */
    loggedOut: {
        reason: LoggedOutReason;
    };
    /** A session appeared where there was none, or another user's (e.g. another tab logged in). */
    loggedIn: {
        sub: string;
    };
    /** A {@link Cloakroom.fetch} got `401 unauthenticated`. `loginUrl` is where "login" mode goes. */
    unauthenticated: {
        url: string;
        loginUrl: string;
    };
    /** A {@link Cloakroom.fetch} got `401 step_up_required` (emitted before navigating). */
    stepUpRequired: StepUpChallenge;
    /** Every answer of `/auth/user` the library reads (polls and {@link Cloakroom.user}); `null`: no session. */
    user: User | null;
}
/** An event name. */
export type CloakroomEventName = keyof CloakroomEvents;
/** A handler of event `K`. */
export type CloakroomHandler<K extends CloakroomEventName> = (detail: CloakroomEvents[K]) => void;
/** `window.fetch`'s shape. */
export type FetchLike = (input: RequestInfo | URL, init?: RequestInit) => Promise<Response>;
/** The part of `window.location` the library uses (tests pass their own). */
export interface LocationLike {
    readonly pathname: string;
    readonly search: string;
    readonly hash: string;
    assign(url: string): void;
}
/** Time and timers (tests pass their own). */
export interface Timers {
    /** The browser's clock, in milliseconds since the Unix epoch (like `Date.now`). */
    now(): number;
    setTimeout(fn: () => void, ms: number): unknown;
    clearTimeout(id: unknown): void;
}
/** What an unauthenticated call or step-up does. */
export type NavigationMode = "login" | "event";
/** Options of {@link createCloakroom}; every one has a default. */
export interface CloakroomOptions {
    /** Cloakroom's auth prefix. Default `"/auth"`. */
    base?: string;
    /** The CSRF header's name. Default `"x-csrf"`. */
    csrfHeader?: string;
    /** The CSRF header's value. Default `"1"`. */
    csrfValue?: string;
    /** Emit `expiring` this many seconds before the session ends. Default 60. */
    expiringLeadSeconds?: number;
    /** On `401 unauthenticated` from {@link Cloakroom.fetch}: `"login"` (default) emits
     *  `unauthenticated` and goes to the login, coming back to this page; `"event"` only emits. */
    onUnauthenticated?: NavigationMode;
    /** On `401 step_up_required` from {@link Cloakroom.fetch}: `"login"` (default) emits
     *  `stepUpRequired` and goes to its `login_url`, coming back here; `"event"` only emits
     *  (then call {@link Cloakroom.stepUp} yourself). */
    onStepUpRequired?: NavigationMode;
    /** The fetch to use. Default `globalThis.fetch`. */
    fetch?: FetchLike;
    /** Where the app is and how to navigate. Default `globalThis.location`. */
    location?: LocationLike;
    /** The `BroadcastChannel` tabs talk on; `null` turns cross-tab messages off. Default `"cloakroom"`. */
    channelName?: string | null;
    /** The longest time between two polls, in seconds. Default 300. */
    maxPollSeconds?: number;
    /** Where {@link Cloakroom.logout} goes when the IdP has no end-session URL. Default `"/"`. */
    afterLogout?: string;
    /** After a {@link Cloakroom.fetch} (which slides the session), poll this much later to read
     *  the new expiry; calls in quick succession share one poll. Default 1000 ms. */
    activityPollDelayMs?: number;
    /** The clock and timers. Default `Date.now`, `setTimeout`, `clearTimeout`. */
    timers?: Timers;
}
/** Options of {@link Cloakroom.login}. */
export interface LoginOptions {
    /** Where to come back to (a same-origin path). Default: the current path, query and fragment. */
    returnTo?: string;
    /** OIDC `prompt`, e.g. `"none"` (silent login: fails with `?error=login_required` when the
     *  IdP has no session) or `"login"`. */
    prompt?: "none" | "login" | "consent" | "select_account" | (string & {});
    /** Keep the session across browser restarts (`remember=true`; the deployment must allow it). */
    remember?: boolean;
    /** OIDC `acr_values` to ask for. */
    acrValues?: string;
    /** OIDC `max_age` (seconds). */
    maxAge?: number;
    /** Which identity provider to sign in with (`provider=NAME`: `[oidc]`'s name or a
     *  `[[oidc.providers]]` entry's). Default: the deployment's `oidc.default_provider`. */
    provider?: string;
}
/** Options of {@link Cloakroom.logout}. */
export interface LogoutOptions {
    /** Shorthand for `scope: "everywhere"`. */
    everywhere?: boolean;
    /** `"this"` (default): this browser's session; `"others"`: every other session of the user,
     *  this one stays; `"everywhere"`: all of them. */
    scope?: LogoutScope;
}
/** What {@link Cloakroom.logout} learned. */
export interface LogoutResult {
    scope: LogoutScope;
    /** The IdP's end-session URL (the library has navigated there), or null. */
    endSessionUrl: string | null;
}
/** Options of {@link Cloakroom.stepUp}. */
export interface StepUpOptions {
    /** Where to come back to. Default: the current path, query and fragment. */
    returnTo?: string;
}
/** A call to Cloakroom failed: `status` and the error `code` of its JSON body, if any. */
export declare class CloakroomError extends Error {
    /** The HTTP status (0: no answer). */
    readonly status: number;
    /** Cloakroom's error code (`{"error": "…"}`), if the body had one. */
    readonly code: string | null;
    /** The parsed JSON body, if any. */
    readonly body: unknown;
    constructor(message: string, status: number, code: string | null, body: unknown);
}
/** {@link Cloakroom.saveState} was refused: the state is larger than the server keeps (413). */
export declare class StateTooLargeError extends CloakroomError {
    constructor(status: number, code: string | null, body: unknown);
}
/** {@link CloakroomOptions} with every default filled in ({@link Cloakroom.options}). */
export interface ResolvedCloakroomOptions {
    base: string;
    csrfHeader: string;
    csrfValue: string;
    expiringLeadSeconds: number;
    onUnauthenticated: NavigationMode;
    onStepUpRequired: NavigationMode;
    channelName: string | null;
    maxPollSeconds: number;
    afterLogout: string;
    activityPollDelayMs: number;
}
/**
 * The header Cloakroom puts on its own error answers (and drops from upstreams' responses):
 * only a 401 carrying it is acted on, so an API behind Cloakroom cannot send the browser
 * anywhere with a `login_url` of its own.
 */
export declare const ERROR_HEADER = "x-cloakroom-error";
/**
 * A client for one Cloakroom (one auth prefix). Create it with {@link createCloakroom}.
 */
export declare class Cloakroom {
    #private;
    /** The options in force (defaults filled in). */
    readonly options: Readonly<ResolvedCloakroomOptions>;
    constructor(options?: CloakroomOptions);
    /** Calls `handler` on every `name` event. Returns a function that removes it. */
    on<K extends CloakroomEventName>(name: K, handler: CloakroomHandler<K>): () => void;
    /** Removes a handler added with {@link Cloakroom.on}. */
    off<K extends CloakroomEventName>(name: K, handler: CloakroomHandler<K>): void;
    /**
     * `window.fetch`, for the app's API calls through Cloakroom: adds the CSRF header (unless the
     * caller set it; the caller's other headers are kept, in any of the `HeadersInit` forms) and
     * `credentials: "same-origin"` (unless given). A `401 unauthenticated` emits `unauthenticated`
     * and, in "login" mode, goes to the login with this page as `return_to`; a
     * `401 step_up_required` emits `stepUpRequired` and, in "login" mode, goes to its `login_url`.
     * Always resolves with the response, its body unread.
     */
    fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
    /** The login URL {@link Cloakroom.login} goes to (e.g. for an `<a href>`). */
    loginUrl(options?: LoginOptions): string;
    /** Goes to the login (the IdP), coming back to `returnTo` (default: this page). */
    login(options?: LoginOptions): void;
    /**
     * Goes to a step-up challenge's `login_url`, coming back to `returnTo` (default: this page).
     * Throws a `TypeError` for a `login_url` that is not Cloakroom's login (`base/login?…`).
     */
    stepUp(challenge: Pick<StepUpChallenge, "login_url">, options?: StepUpOptions): void;
    /**
     * `GET /auth/user`: the user, or null when there is no session. `slide: true` (the default,
     * as for any request) counts as activity and extends the idle timeout; `slide: false` does not.
     * The answer also updates the watcher (expiry, events).
     */
    user(options?: {
        slide?: boolean;
    }): Promise<User | null>;
    /** Reads the session now without sliding it (`slide=false`), as the watcher does. Never rejects. */
    check(): Promise<User | null>;
    /** The last session seen (by a poll or {@link Cloakroom.user}), or null. */
    current(): User | null;
    /** When the session ends (unix seconds, server clock), or null without one. */
    expiresAt(): UnixSeconds | null;
    /** Seconds until the session ends, by the server's clock (whatever the browser's says), or null. */
    secondsLeft(): number | null;
    /** The server's clock now (unix seconds), estimated from its last answer. */
    serverNow(): UnixSeconds;
    /**
     * `POST /auth/logout`. For `"this"` and `"everywhere"`: tells the other tabs, emits
     * `loggedOut {reason: "this_tab"}`, then goes to the IdP's end-session URL, or to
     * `afterLogout` without one. For `"others"`: this session stays, nothing navigates.
     */
    logout(options?: LogoutOptions): Promise<LogoutResult>;
    /** `GET /auth/providers`: the identity providers a login may name, for one sign-in button each. */
    providers(): Promise<Provider[]>;
    /** `GET /auth/sessions`: the user's sessions (devices), this one marked `current`. */
    sessions(): Promise<DeviceSession[]>;
    /** `DELETE /auth/sessions/{id}`: signs that device out. False when there is no such session. */
    endSession(id: string): Promise<boolean>;
    /**
     * `PUT /auth/session/state`: keeps a small JSON value with the session, restored even from a
     * timed-out session of the same user. Rejects with {@link StateTooLargeError} on 413.
     */
    saveState(value: unknown): Promise<void>;
    /** `GET /auth/session/state`: the value saved with {@link Cloakroom.saveState}, or null (also without a session). */
    restoredState<T = unknown>(): Promise<T | null>;
    /**
     * Starts watching the session (and listening to the other tabs). Resolves with the first
     * poll's answer. Calling it again only polls.
     */
    start(): Promise<User | null>;
    /** Stops the timers and the cross-tab channel. */
    stop(): void;
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
export declare function createCloakroom(options?: CloakroomOptions): Cloakroom;
