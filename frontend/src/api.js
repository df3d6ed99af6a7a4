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
// solves a proof-of-work challenge (challenge.js, in Web Workers) and is
// retried once with the solution; "challenge" events tell the page meanwhile.

import { solve } from "./challenge.js";

const API_URL = import.meta.env.VITE_API_URL ?? "";

const JWT = "jwt";
const REFRESH = "refresh_token";
const ANONYMOUS = "anonymous_token";
const DEVICES = "device_tokens";
// Device tokens kept (one per account that logged in here); the oldest go first.
const MAX_DEVICE_TOKENS = 10;

// 401 details that are about the token itself, not about credentials.
const TOKEN_ERRORS = ["Invalid token", "Signature has expired", "Not authenticated"];

// --- events: "expired" (refresh refused), "challenge" (true: solving a challenge; false: done) ---

const listeners = { expired: new Set(), challenge: new Set() };

export function on(event, fn) {
  listeners[event].add(fn);
  return () => listeners[event].delete(fn);
}

function emit(event, ...args) {
  listeners[event].forEach((fn) => fn(...args));
}

/** The key of an account in the device tokens: the username as the server compares it. */
const accountKey = (username) => username.normalize("NFKC").toLowerCase();

function deviceTokens() {
  try {
    const stored = JSON.parse(localStorage.getItem(DEVICES));
    return stored && typeof stored === "object" && !Array.isArray(stored) ? stored : {};
  } catch {
    return {};
  }
}

// --- token storage (localStorage) ---

export const tokens = {
  jwt: () => localStorage.getItem(JWT),
  refresh: () => localStorage.getItem(REFRESH),
  anonymous: () => localStorage.getItem(ANONYMOUS),
  saveSession({ token, refresh_token }) {
    localStorage.setItem(JWT, token);
    localStorage.setItem(REFRESH, refresh_token);
  },
  clearSession() {
    localStorage.removeItem(JWT);
    localStorage.removeItem(REFRESH);
  },
  saveAnonymous(token) {
    localStorage.setItem(ANONYMOUS, token);
  },
  clearAnonymous() {
    localStorage.removeItem(ANONYMOUS);
  },
  /** This browser's device token for `username`, or null. Logouts keep it. */
  device: (username) => deviceTokens()[accountKey(username)] ?? null,
  saveDevice(username, token) {
    const key = accountKey(username);
    const others = Object.entries(deviceTokens()).filter(([name]) => name !== key);
    const kept = [...others.slice(-(MAX_DEVICE_TOKENS - 1)), [key, token]];
    localStorage.setItem(DEVICES, JSON.stringify(Object.fromEntries(kept)));
  },
};

/** Whether this browser has an identity on the server (a session or an anonymous token). */
const hasIdentity = () => Boolean(tokens.jwt() || tokens.anonymous());

/** A new visitor's preferences: what GET /preferences answers before any change. */
export const DEFAULT_PREFERENCES = Object.freeze({ sort: "catalogue", theme: "system" });

// --- errors ---

/** Turns an API `detail` (a string, or FastAPI's 422 list) into readable text. */
export function formatDetail(detail) {
  if (detail == null || detail === "") return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((error) => {
        const field = (error.loc ?? []).filter((part) => part !== "body").join(".");
        return field ? `${field}: ${error.msg}` : error.msg;
      })
      .join("; ");
  }
  return JSON.stringify(detail);
}

class ApiError extends Error {
  constructor(status, detail) {
    super(formatDetail(detail) || `Request failed with status ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

/** The registered session is over (refresh refused); the user must log in again. */
export class SessionExpiredError extends ApiError {
  constructor(detail = "Session expired") {
    super(401, detail);
    this.name = "SessionExpiredError";
  }
}

// --- low level ---

function send(path, { method = "GET", body, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(API_URL + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

async function parse(response) {
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" ? data.detail : data;
    throw new ApiError(response.status, detail || response.statusText);
  }
  return data;
}

/** A 401 about the token (renew it), not about a password the user typed (show it). */
async function isTokenError(response) {
  const detail = await response
    .clone()
    .json()
    .then((data) => data?.detail)
    .catch(() => null);
  return typeof detail !== "string" || TOKEN_ERRORS.includes(detail);
}

// --- proof of work ---

/** A 429 or 503 that asks for a solved challenge (the server's `challenge_required`). */
async function challengeRequired(response) {
  if (![429, 503].includes(response.status)) return false;
  const data = await response
    .clone()
    .json()
    .catch(() => null);
  return data?.challenge_required === true;
}

let solving = 0; // challenges being solved now; "challenge" events mark the first start and last end

/** GET /challenge and solve it: the ALTCHA payload for the body field "altcha". */
async function proofOfWork() {
  if (solving++ === 0) emit("challenge", true);
  try {
    return await solve(await parse(await send("/challenge")));
  } finally {
    if (--solving === 0) emit("challenge", false);
  }
}

/**
 * `attempt(altcha)` sends a request (`altcha` undefined the first time). When the server asks
 * for a challenge, it is solved and the request sent once more with the solution; that answer
 * is final, whatever it is.
 */
async function withChallenge(attempt) {
  const response = await attempt(undefined);
  if (!(await challengeRequired(response))) return response;
  return attempt(await proofOfWork());
}

// --- single-flight token renewal ---

/** `fn` run once at a time: callers that ask while it runs share its promise. */
function singleFlight(fn) {
  let running = null;
  return () => (running ??= fn().finally(() => (running = null)));
}

/** POST /users/refresh once, however many callers ask at the same time. */
const refreshSession = singleFlight(async () => {
  const refreshToken = tokens.refresh();
  try {
    if (!refreshToken) throw new ApiError(401, "No refresh token");
    const data = await parse(
      await send("/users/refresh", { method: "POST", body: { refresh_token: refreshToken } }),
    );
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

const newAnonymousToken = singleFlight(async () => {
  const response = await withChallenge((altcha) =>
    send("/anonymous-login", { method: "POST", body: altcha ? { altcha } : undefined }),
  );
  const data = await parse(response);
  tokens.saveAnonymous(data.access_token);
  return data.access_token;
});

/** The stored anonymous token, or a new one from POST /anonymous-login. */
export function anonymousToken({ renew = false } = {}) {
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
export async function request(path, { method = "GET", body } = {}) {
  const bodyNow = () => (typeof body === "function" ? body() : body);
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
    const fresh =
      current && current !== anonymous ? current : await anonymousToken({ renew: true });
    response = await send(path, { method, body: bodyNow(), token: fresh });
  }
  return parse(response);
}

/**
 * A read of the visitor's own data. A visitor without an identity has kept nothing: the
 * answer is `empty`, or for the catalogue (`empty` undefined) the same read without a token;
 * no anonymous token is asked for. An anonymous token the server refuses (expired: what it
 * kept is gone with it) is dropped, and the read answered the same way.
 */
async function read(path, empty) {
  const answerWithoutIdentity = async () =>
    empty === undefined ? parse(await send(path)) : structuredClone(empty);
  if (tokens.jwt()) return request(path);
  const anonymous = tokens.anonymous();
  if (!anonymous) return answerWithoutIdentity();
  const response = await send(path, { token: anonymous });
  if (response.status !== 401) return parse(response);
  if (tokens.anonymous() === anonymous) tokens.clearAnonymous();
  // Logged in, or a new anonymous token from another call, meanwhile: read as that identity.
  return hasIdentity() ? request(path) : answerWithoutIdentity();
}

/**
 * Register and login send the anonymous token (if any) so that the server
 * moves the anonymous cart into the account. An anonymous token the server
 * no longer accepts is dropped and the call is made without it. A challenge the server asks
 * for is solved and the call retried once (withChallenge).
 */
async function sendCredentials(path, credentials) {
  const response = await withChallenge(async (altcha) => {
    const body = altcha ? { ...credentials, altcha } : credentials;
    const anonymous = tokens.anonymous();
    const response = await send(path, { method: "POST", body, token: anonymous });
    if (response.status === 401 && anonymous) {
      const detail = await response
        .clone()
        .json()
        .then((data) => data.detail)
        .catch(() => null);
      if (TOKEN_ERRORS.includes(detail)) {
        tokens.clearAnonymous();
        return send(path, { method: "POST", body });
      }
    }
    return response;
  });
  const data = await parse(response);
  // The anonymous identity now belongs to the account (or was refused).
  tokens.clearAnonymous();
  return data;
}

export const api = {
  register: (username, password) => sendCredentials("/users/register", { username, password }),

  /** Logs in with this browser's device token for the account, and keeps the one the server
   * returns (a new one after a password change or a logout everywhere). */
  async login(username, password) {
    const device = tokens.device(username);
    const data = await sendCredentials("/users/login", {
      username,
      password,
      ...(device ? { device_token: device } : {}),
    });
    tokens.saveSession(data);
    if (data.device_token) tokens.saveDevice(username, data.device_token);
    return data;
  },

  /** Ends the session on the server, and on this side whatever the server answered. The
   * device token stays: the next login on this browser is still trusted. */
  async logout() {
    try {
      return await request("/users/logout", {
        method: "POST",
        body: () => (tokens.refresh() ? { refresh_token: tokens.refresh() } : undefined),
      });
    } finally {
      tokens.clearSession();
    }
  },

  logoutAll: () => request("/users/logout-all", { method: "POST" }),

  changePassword: (currentPassword, newPassword) =>
    request("/users/me/password", {
      method: "POST",
      body: { current_password: currentPassword, new_password: newPassword },
    }),

  deleteAccount: (password) => request("/users/me", { method: "DELETE", body: { password } }),

  me: () => request("/users/me"),
  listUsers: () => request("/users/list"),
  items: (sort) => read(sort ? `/items/?sort=${encodeURIComponent(sort)}` : "/items/"),
  item: (itemId) => request(`/items/${itemId}`), // records a view: kept on the server
  favourites: () => read("/favourites", { items: [] }),
  addFavourite: (itemId) => request(`/favourites/${itemId}`, { method: "PUT" }),
  removeFavourite: (itemId) => request(`/favourites/${itemId}`, { method: "DELETE" }),
  preferences: () => read("/preferences", DEFAULT_PREFERENCES),
  setPreferences: (changes) => request("/preferences", { method: "PATCH", body: changes }),
  cart: () => read("/cart", { items: [] }),
  setCartQuantity: (itemId, quantity) =>
    request(`/cart/items/${itemId}`, { method: "PUT", body: { quantity } }),
  removeFromCart: (itemId) => request(`/cart/items/${itemId}`, { method: "DELETE" }),
};
