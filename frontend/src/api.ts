// Every HTTP call of the SPA goes through this module. It picks the Bearer
// token (the registered access token when logged in, otherwise the anonymous
// token), refreshes an expired session once (one refresh in flight at a
// time, shared by every caller) and renews an expired anonymous token.
//
// A visitor gets an anonymous token only when it does something the server
// keeps (cart, favourite, view, preference): the catalogue is read without a
// token, and what a visitor without a token has kept is empty. Logins carry
// this browser's device token for the account (kept across logouts), which
// the server trusts past its failure limits. When the server answers
// `challenge_required` (a login or a new visitor under pressure), the call
// solves a proof-of-work challenge (challenge.ts, in Web Workers) and is
// retried once with the solution; "challenge" events tell the page meanwhile.
//
// Paths, parameters, bodies and answers are typed from the API's OpenAPI
// document (api/schema.d.ts, generated from /openapi.json by `make api-types`):
// a route or a shape the server changes breaks `tsc --noEmit`, not the page.
// The transport is this module's own rather than openapi-fetch's, because the
// token rules need what a generic client does not give: a body evaluated at
// each send (logout's refresh token after a refresh), one retry with a new
// token or a solved challenge, and plain `fetch(path, init)` calls.

import {
  startAuthentication,
  startRegistration,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
} from "@simplewebauthn/browser";
import type { components, paths } from "./api/schema";
import { solve } from "./challenge";

const API_URL: string = import.meta.env.VITE_API_URL ?? "";

const JWT = "jwt";
const REFRESH = "refresh_token";
const ANONYMOUS = "anonymous_token";
const DEVICES = "device_tokens";
// Device tokens kept (one per account that logged in here); the oldest go first.
const MAX_DEVICE_TOKENS = 10;

// 401 details that are about the token itself, not about credentials.
const TOKEN_ERRORS: readonly unknown[] = ["Invalid token", "Signature has expired", "Not authenticated"];

// --- the API's types, from the generated schema ---

export type Schemas = components["schemas"];
/** The account as its owner sees it (`/users/me`): `is_admin` shows the Administration page. */
export type User = Schemas["AccountOut"];
export type Account = Schemas["AccountOut"];
export type Session = Schemas["MySession"];
export type AuditEvent = Schemas["AuditEventOut"];
/** What an administrator may do to an account (AdminPage), by the route that does it. */
export type AdminAction = "disable" | "enable" | "unlock" | "endSessions" | "grant" | "revoke";
export type Item = Schemas["Item"];
export type Catalogue = Schemas["Catalogue"];
export type CartLine = Schemas["CartLine"];
export type Preferences = Schemas["Preferences"];
export type Sort = Preferences["sort"];
export type Theme = Preferences["theme"];

type Method = "get" | "put" | "post" | "delete" | "patch";
/** The operation `method` on `path`, as the OpenAPI document describes it. */
type Operation<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;
/** The paths that answer `method`. */
type PathWith<M extends Method> = {
  [P in keyof paths]: [NonNullable<paths[P][M]>] extends [never] ? never : P;
}[keyof paths];
type Json<R> = R extends { content: { "application/json": infer B } } ? B : null;
/** The body of the operation's success answer: its 200's or 201's JSON, null for a 204. */
type Answer<O> = O extends { responses: infer R }
  ? 200 extends keyof R
    ? Json<R[200]>
    : 201 extends keyof R
      ? Json<R[201]>
      : null
  : never;
/** The JSON body the operation takes, or undefined. */
type Body<O> = O extends { requestBody?: { content: { "application/json": infer B } } } ? B : undefined;
/** What fills the path's `{name}` parts, and the query string, when the operation has them. */
type PathAndQuery<O> = (O extends { parameters: { path: infer P } } ? { params: P } : { params?: never }) &
  (O extends { parameters: { query?: infer Q } } ? ([Q] extends [never] ? unknown : { query?: Q }) : unknown);
/** A call's options; `body` may be a function, evaluated at each send (see request). */
type Options<O> = PathAndQuery<O> & { body?: Body<O> | (() => Body<O> | undefined) };
/** The options argument, optional when nothing in it is required. */
type OptionsArg<O> = {} extends Options<O> ? [options?: Options<O>] : [options: Options<O>];

type Query = Record<string, string | number | null | undefined>;

/** `path` with its `{name}` parts filled in, and the query string (empty values left out). */
function url(path: string, params?: Record<string, string | number>, query?: Query): string {
  const filled = path.replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(String(params?.[name])));
  const pairs = Object.entries(query ?? {}).flatMap(([key, value]) =>
    value == null || value === "" ? [] : [[key, String(value)]],
  );
  return pairs.length ? `${filled}?${new URLSearchParams(pairs)}` : filled;
}

// --- events: "expired" (refresh refused), "challenge" (true: solving a challenge; false: done) ---

interface Events {
  expired: [];
  challenge: [solving: boolean];
}
type Listener<E extends keyof Events> = (...args: Events[E]) => void;

const listeners: { [E in keyof Events]: Set<Listener<E>> } = { expired: new Set(), challenge: new Set() };

export function on<E extends keyof Events>(event: E, fn: Listener<E>): () => void {
  listeners[event].add(fn);
  return () => {
    listeners[event].delete(fn);
  };
}

function emit<E extends keyof Events>(event: E, ...args: Events[E]): void {
  listeners[event].forEach((fn) => fn(...args));
}

/** The key of an account in the device tokens: the username as the server compares it. */
const accountKey = (username: string) => username.normalize("NFKC").toLowerCase();

function deviceTokens(): Record<string, string> {
  try {
    const stored: unknown = JSON.parse(localStorage.getItem(DEVICES) ?? "null");
    return stored && typeof stored === "object" && !Array.isArray(stored)
      ? (stored as Record<string, string>)
      : {};
  } catch {
    return {};
  }
}

// --- token storage (localStorage) ---

export const tokens = {
  jwt: () => localStorage.getItem(JWT),
  refresh: () => localStorage.getItem(REFRESH),
  anonymous: () => localStorage.getItem(ANONYMOUS),
  saveSession({ token, refresh_token }: { token: string; refresh_token: string }) {
    localStorage.setItem(JWT, token);
    localStorage.setItem(REFRESH, refresh_token);
  },
  clearSession() {
    localStorage.removeItem(JWT);
    localStorage.removeItem(REFRESH);
  },
  saveAnonymous(token: string) {
    localStorage.setItem(ANONYMOUS, token);
  },
  clearAnonymous() {
    localStorage.removeItem(ANONYMOUS);
  },
  /** This browser's device token for `username`, or null. Logouts keep it. */
  device: (username: string): string | null => deviceTokens()[accountKey(username)] ?? null,
  saveDevice(username: string, token: string) {
    const key = accountKey(username);
    const others = Object.entries(deviceTokens()).filter(([name]) => name !== key);
    const kept = [...others.slice(-(MAX_DEVICE_TOKENS - 1)), [key, token]];
    localStorage.setItem(DEVICES, JSON.stringify(Object.fromEntries(kept)));
  },
};

/** Whether this browser has an identity on the server (a session or an anonymous token). */
const hasIdentity = () => Boolean(tokens.jwt() || tokens.anonymous());

/** A new visitor's preferences: what GET /preferences answers before any change. */
export const DEFAULT_PREFERENCES: Readonly<Preferences> = Object.freeze({ sort: "catalogue", theme: "system" });

// --- errors ---

/** Turns an API `detail` (a string, or FastAPI's 422 list) into readable text. */
export function formatDetail(detail: unknown): string {
  if (detail == null || detail === "") return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return (detail as Partial<Schemas["ValidationError"]>[])
      .map((error) => {
        const field = (error.loc ?? []).filter((part) => part !== "body").join(".");
        return field ? `${field}: ${error.msg}` : error.msg;
      })
      .join("; ");
  }
  return JSON.stringify(detail);
}

export class ApiError extends Error {
  readonly status: number;
  readonly detail: unknown;
  /** The whole JSON body of the answer (e.g. the `mfa_token` of a second factor's 403). */
  readonly body: unknown;

  constructor(status: number, detail: unknown, body: unknown = null) {
    super(formatDetail(detail) || `Request failed with status ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.body = body;
  }
}

/** The password was right and the account has TOTP on: a code completes the login (api.loginMfa). */
export class SecondFactorRequired extends ApiError {
  readonly mfaToken: string;

  constructor(mfaToken: string) {
    super(403, "Second factor required");
    this.name = "SecondFactorRequired";
    this.mfaToken = mfaToken;
  }
}

/** The registered session is over (refresh refused); the user must log in again. */
export class SessionExpiredError extends ApiError {
  constructor(detail: unknown = "Session expired") {
    super(401, detail);
    this.name = "SessionExpiredError";
  }
}

// --- low level ---

interface Send {
  method?: string;
  body?: unknown;
  token?: string | null;
}

function send(path: string, { method = "GET", body, token }: Send = {}): Promise<Response> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(API_URL + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

/** The answer's JSON (null for a 204), or an ApiError with the server's `detail`. Its type is
 * the caller's word: the typed calls below give the one the OpenAPI document names. */
async function parse<T = unknown>(response: Response): Promise<T> {
  if (response.status === 204) return null as T;
  const text = await response.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" ? (data as { detail?: unknown }).detail : data;
    throw new ApiError(response.status, detail || response.statusText, data);
  }
  return data as T;
}

/** The `detail` of an answer's JSON body, or null; the response stays readable. */
const detailOf = (response: Response): Promise<unknown> =>
  response
    .clone()
    .json()
    .then((data: { detail?: unknown } | null) => data?.detail)
    .catch(() => null);

/** A 401 about the token (renew it), not about a password the user typed (show it). */
async function isTokenError(response: Response): Promise<boolean> {
  const detail = await detailOf(response);
  return typeof detail !== "string" || TOKEN_ERRORS.includes(detail);
}

// --- proof of work ---

/** A 429 or 503 that asks for a solved challenge (the server's `challenge_required`). */
async function challengeRequired(response: Response): Promise<boolean> {
  if (![429, 503].includes(response.status)) return false;
  const data: Partial<Schemas["Refusal"]> | null = await response
    .clone()
    .json()
    .catch(() => null);
  return data?.challenge_required === true;
}

let solving = 0; // challenges being solved now; "challenge" events mark the first start and last end

/** GET /challenge and solve it: the ALTCHA payload for the body field "altcha". */
async function proofOfWork(): Promise<string> {
  if (solving++ === 0) emit("challenge", true);
  try {
    return await solve(await parse<Schemas["Challenge"]>(await send("/challenge")));
  } finally {
    if (--solving === 0) emit("challenge", false);
  }
}

/**
 * `attempt(altcha)` sends a request (`altcha` undefined the first time). When the server asks
 * for a challenge, it is solved and the request sent once more with the solution; that answer
 * is final, whatever it is.
 */
async function withChallenge(attempt: (altcha: string | undefined) => Promise<Response>): Promise<Response> {
  const response = await attempt(undefined);
  if (!(await challengeRequired(response))) return response;
  return attempt(await proofOfWork());
}

// --- single-flight token renewal ---

/** `fn` run once at a time: callers that ask while it runs share its promise. */
function singleFlight<T>(fn: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | null = null;
  return () => (running ??= fn().finally(() => (running = null)));
}

/** POST /users/refresh once, however many callers ask at the same time. */
const refreshSession = singleFlight(async (): Promise<string> => {
  const refreshToken = tokens.refresh();
  try {
    if (!refreshToken) throw new ApiError(401, "No refresh token");
    const body: Schemas["RefreshRequest"] = { refresh_token: refreshToken };
    const data = await parse<Schemas["TokenOut"]>(await send("/users/refresh", { method: "POST", body }));
    tokens.saveSession(data);
    return data.token;
  } catch (error) {
    if (error instanceof ApiError && error.status < 500) {
      // The server refused the refresh token: this session is over.
      tokens.clearSession();
      emit("expired");
      throw new SessionExpiredError(error.detail);
    }
    throw error; // network or server error: keep the tokens for a later try
  }
});

const newAnonymousToken = singleFlight(async (): Promise<string> => {
  const response = await withChallenge((altcha) => {
    const body: Schemas["ChallengeSolution"] | undefined = altcha ? { altcha } : undefined;
    return send("/anonymous-login", { method: "POST", body });
  });
  const data = await parse<Schemas["AnonymousTokenOut"]>(response);
  tokens.saveAnonymous(data.access_token);
  return data.access_token;
});

/** The stored anonymous token, or a new one from POST /anonymous-login. */
export function anonymousToken({ renew = false } = {}): Promise<string> {
  const stored = tokens.anonymous();
  if (stored && !renew) return Promise.resolve(stored);
  return newAnonymousToken();
}

// --- authenticated requests ---

/**
 * Sends a request with the right Bearer token. On a 401 it renews the token
 * once (refresh for a registered session, a new anonymous token otherwise)
 * and retries. `body` may be a function, evaluated at each send, so that a
 * retry after a refresh sends the current tokens.
 */
async function authorised(path: string, method: string, body?: unknown): Promise<unknown> {
  const bodyNow = () => (typeof body === "function" ? (body as () => unknown)() : body);
  const jwt = tokens.jwt();

  if (jwt) {
    let response = await send(path, { method, body: bodyNow(), token: jwt });
    if (response.status === 401 && (await isTokenError(response))) {
      const current = tokens.jwt();
      if (!current) throw new SessionExpiredError(); // logged out meanwhile
      // Another caller may have refreshed already while this one was waiting.
      const fresh = current !== jwt ? current : await refreshSession();
      response = await send(path, { method, body: bodyNow(), token: fresh });
    }
    return parse(response);
  }

  const anonymous = await anonymousToken();
  let response = await send(path, { method, body: bodyNow(), token: anonymous });
  if (response.status === 401) {
    const current = tokens.anonymous();
    const fresh = current && current !== anonymous ? current : await anonymousToken({ renew: true });
    response = await send(path, { method, body: bodyNow(), token: fresh });
  }
  return parse(response);
}

/** `method` on `path` (an OpenAPI path, `{name}` parts filled from `params`) as this browser's
 * identity (authorised): the answer typed as the document says. */
function request<M extends Method, P extends PathWith<M>>(
  method: M,
  path: P,
  ...[options]: OptionsArg<Operation<P, M>>
): Promise<Answer<Operation<P, M>>> {
  const { params, query, body } = (options ?? {}) as { params?: Record<string, string | number>; query?: Query; body?: unknown };
  return authorised(url(path, params, query), method.toUpperCase(), body) as Promise<Answer<Operation<P, M>>>;
}

/**
 * A read of the visitor's own data. A visitor without an identity has kept nothing: the
 * answer is `empty`, or for the catalogue (`empty` undefined) the same read without a token;
 * no anonymous token is asked for. An anonymous token the server refuses (expired: what it
 * kept is gone with it) is dropped, and the read answered the same way.
 */
async function read<P extends PathWith<"get">>(
  path: P,
  empty?: Answer<Operation<P, "get">>,
  query?: Query,
): Promise<Answer<Operation<P, "get">>> {
  type T = Answer<Operation<P, "get">>;
  const target = url(path, undefined, query);
  const answerWithoutIdentity = async () =>
    empty === undefined ? parse<T>(await send(target)) : structuredClone(empty);
  if (tokens.jwt()) return authorised(target, "GET") as Promise<T>;
  const anonymous = tokens.anonymous();
  if (!anonymous) return answerWithoutIdentity();
  const response = await send(target, { token: anonymous });
  if (response.status !== 401) return parse<T>(response);
  if (tokens.anonymous() === anonymous) tokens.clearAnonymous();
  // Logged in, or a new anonymous token from another call, meanwhile: read as that identity.
  return hasIdentity() ? (authorised(target, "GET") as Promise<T>) : answerWithoutIdentity();
}

type Credentials = Schemas["UserCreate"] | Schemas["LoginRequest"];

/**
 * Register and login send the anonymous token (if any) so that the server
 * moves the anonymous cart into the account. An anonymous token the server
 * no longer accepts is dropped and the call is made without it. A challenge the server asks
 * for is solved and the call retried once (withChallenge).
 */
async function sendCredentials<T>(
  path: "/users/register" | "/users/login" | "/users/login/mfa" | "/users/login/passkey",
  credentials: Credentials | Schemas["MfaLogin"] | Schemas["PasskeyLogin"],
): Promise<T> {
  const response = await withChallenge(async (altcha) => {
    const body = altcha ? { ...credentials, altcha } : credentials;
    const anonymous = tokens.anonymous();
    const response = await send(path, { method: "POST", body, token: anonymous });
    if (response.status === 401 && anonymous && TOKEN_ERRORS.includes(await detailOf(response))) {
      tokens.clearAnonymous();
      return send(path, { method: "POST", body });
    }
    return response;
  });
  const data = await parse<T>(response);
  // The anonymous identity now belongs to the account (or was refused).
  tokens.clearAnonymous();
  return data;
}

export const api = {
  register: (username: string, password: string) =>
    sendCredentials<Schemas["UserOut"]>("/users/register", { username, password }),

  /** Logs in with this browser's device token for the account, and keeps the one the server
   * returns (a new one after a password change or a logout everywhere). With TOTP on, the
   * right password throws SecondFactorRequired: loginMfa completes the login. */
  async login(username: string, password: string): Promise<Schemas["LoginOut"]> {
    const device = tokens.device(username);
    let data: Schemas["LoginOut"];
    try {
      data = await sendCredentials<Schemas["LoginOut"]>("/users/login", {
        username,
        password,
        ...(device ? { device_token: device } : {}),
      });
    } catch (error) {
      const body = error instanceof ApiError ? (error.body as Partial<Schemas["SecondFactorRequired"]> | null) : null;
      if (error instanceof ApiError && error.status === 403 && body?.mfa_token) {
        throw new SecondFactorRequired(body.mfa_token);
      }
      throw error;
    }
    tokens.saveSession(data);
    if (data.device_token) tokens.saveDevice(username, data.device_token);
    return data;
  },

  /** The second step of a login with TOTP on: a code of the app, or a recovery code (letters). */
  async loginMfa(username: string, mfaToken: string, code: string): Promise<Schemas["LoginOut"]> {
    const trimmed = code.trim();
    const body: Schemas["MfaLogin"] = /^[0-9\s]+$/.test(trimmed)
      ? { mfa_token: mfaToken, code: trimmed }
      : { mfa_token: mfaToken, recovery_code: trimmed };
    const data = await sendCredentials<Schemas["LoginOut"]>("/users/login/mfa", body);
    tokens.saveSession(data);
    tokens.saveDevice(username, data.device_token);
    return data;
  },

  /** Signs in with a passkey (the browser asks the user to pick one; `autofill`: from the
   * username field's suggestions, conditional UI). */
  async loginWithPasskey(autofill = false): Promise<Schemas["LoginOut"]> {
    const optionsJSON = (await parse(
      await send("/users/login/passkey/options", { method: "POST" }),
    )) as unknown as PublicKeyCredentialRequestOptionsJSON;
    const credential = await startAuthentication({ optionsJSON, useBrowserAutofill: autofill });
    const data = await sendCredentials<Schemas["LoginOut"]>("/users/login/passkey", {
      credential: credential as unknown as Record<string, unknown>,
    });
    tokens.saveSession(data);
    return data;
  },

  passkeys: () => request("get", "/users/me/passkeys"),

  /** Creates a passkey on this device (the browser asks the user) and registers it. */
  async addPasskey(name?: string): Promise<Schemas["PasskeyOut"]> {
    const optionsJSON = (await request("post", "/users/me/passkeys/options")) as unknown as
      PublicKeyCredentialCreationOptionsJSON;
    const credential = await startRegistration({ optionsJSON });
    return request("post", "/users/me/passkeys", {
      body: { credential: credential as unknown as Record<string, unknown>, ...(name ? { name } : {}) },
    });
  },

  removePasskey: (id: string) => request("delete", "/users/me/passkeys/{passkey_id}", { params: { passkey_id: id } }),

  accountData: () => request("get", "/users/me/data"),
  beginTotp: (password: string) => request("post", "/users/me/totp", { body: { password } }),
  confirmTotp: (code: string) => request("post", "/users/me/totp/confirm", { body: { code } }),
  disableTotp: (password: string, code: string) => request("delete", "/users/me/totp", { body: { password, code } }),

  /** Ends the session on the server, and on this side whatever the server answered. The
   * device token stays: the next login on this browser is still trusted. */
  async logout(): Promise<null> {
    try {
      return await request("post", "/users/logout", {
        body: () => {
          const refresh = tokens.refresh();
          return refresh ? { refresh_token: refresh } : undefined;
        },
      });
    } finally {
      tokens.clearSession();
    }
  },

  logoutAll: () => request("post", "/users/logout-all"),

  changePassword: (currentPassword: string, newPassword: string) =>
    request("post", "/users/me/password", {
      body: { current_password: currentPassword, new_password: newPassword },
    }),

  deleteAccount: (password: string) => request("delete", "/users/me", { body: { password } }),

  me: () => request("get", "/users/me"),
  listUsers: () => request("get", "/users/list"),
  items: (sort?: Sort) => read("/items/", undefined, { sort }),
  // Records a view: kept on the server.
  item: (itemId: number) => request("get", "/items/{item_id}", { params: { item_id: itemId } }),
  favourites: () => read("/favourites", { items: [] }),
  addFavourite: (itemId: number) => request("put", "/favourites/{item_id}", { params: { item_id: itemId } }),
  removeFavourite: (itemId: number) =>
    request("delete", "/favourites/{item_id}", { params: { item_id: itemId } }),
  preferences: () => read("/preferences", DEFAULT_PREFERENCES),
  setPreferences: (changes: Schemas["PreferencesPatch"]) => request("patch", "/preferences", { body: changes }),
  cart: () => read("/cart", { items: [] }),
  setCartQuantity: (itemId: number, quantity: number) =>
    request("put", "/cart/items/{item_id}", { params: { item_id: itemId }, body: { quantity } }),
  removeFromCart: (itemId: number) => request("delete", "/cart/items/{item_id}", { params: { item_id: itemId } }),

  // Each user's own devices and security activity.
  mySessions: () => request("get", "/users/me/sessions"),
  endMySession: (sessionId: string) =>
    request("delete", "/users/me/sessions/{session_id}", { params: { session_id: sessionId } }),
  myActivity: (limit = 20) => request("get", "/users/me/activity", { query: { limit } }),

  // The administrators' routes (403 for anyone else).
  adminUsers: (query?: string) => request("get", "/admin/users", { query: { query: query || undefined, limit: 50 } }),
  adminAudit: (limit = 50) => request("get", "/admin/audit", { query: { limit } }),
  adminAct(action: AdminAction, userId: string): Promise<unknown> {
    const params = { params: { user_id: userId } };
    switch (action) {
      case "disable":
        return request("post", "/admin/users/{user_id}/disable", params);
      case "enable":
        return request("post", "/admin/users/{user_id}/enable", params);
      case "unlock":
        return request("post", "/admin/users/{user_id}/unlock", params);
      case "endSessions":
        return request("delete", "/admin/users/{user_id}/sessions", params);
      case "grant":
        return request("post", "/admin/users/{user_id}/admin", params);
      case "revoke":
        return request("delete", "/admin/users/{user_id}/admin", params);
    }
  },
};
