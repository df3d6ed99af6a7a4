// Every HTTP call of the SPA goes through this module. It picks the Bearer
// token (the registered access token when logged in, otherwise the anonymous
// token), refreshes an expired session once (one refresh in flight at a
// time, shared by every caller) and renews an expired anonymous token.

const API_URL = import.meta.env.VITE_API_URL ?? "";

const JWT = "jwt";
const REFRESH = "refresh_token";
const ANONYMOUS = "anonymous_token";

// 401 details that are about the token itself, not about credentials.
const TOKEN_ERRORS = ["Invalid token", "Signature has expired", "Not authenticated"];

// --- events: "expired" (refresh refused) ---

const listeners = { expired: new Set() };

export function on(event, fn) {
  listeners[event].add(fn);
  return () => listeners[event].delete(fn);
}

function emit(event) {
  listeners[event].forEach((fn) => fn());
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
};

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
  const data = await parse(await send("/anonymous-login", { method: "POST" }));
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
 * Register and login send the anonymous token (if any) so that the server
 * moves the anonymous cart into the account. An anonymous token the server
 * no longer accepts is dropped and the call is made without it.
 */
async function sendCredentials(path, username, password) {
  const body = { username, password };
  const anonymous = tokens.anonymous();
  let response = await send(path, { method: "POST", body, token: anonymous });
  if (response.status === 401 && anonymous) {
    const detail = await response
      .clone()
      .json()
      .then((data) => data.detail)
      .catch(() => null);
    if (TOKEN_ERRORS.includes(detail)) {
      tokens.clearAnonymous();
      response = await send(path, { method: "POST", body });
    }
  }
  const data = await parse(response);
  // The anonymous identity now belongs to the account (or was refused).
  tokens.clearAnonymous();
  return data;
}

export const api = {
  register: (username, password) => sendCredentials("/users/register", username, password),

  async login(username, password) {
    const data = await sendCredentials("/users/login", username, password);
    tokens.saveSession(data);
    return data;
  },

  logout: () =>
    request("/users/logout", {
      method: "POST",
      body: () => (tokens.refresh() ? { refresh_token: tokens.refresh() } : undefined),
    }),

  logoutAll: () => request("/users/logout-all", { method: "POST" }),

  changePassword: (currentPassword, newPassword) =>
    request("/users/me/password", {
      method: "POST",
      body: { current_password: currentPassword, new_password: newPassword },
    }),

  deleteAccount: (password) => request("/users/me", { method: "DELETE", body: { password } }),

  me: () => request("/users/me"),
  listUsers: () => request("/users/list"),
  items: (sort) => request(sort ? `/items/?sort=${encodeURIComponent(sort)}` : "/items/"),
  item: (itemId) => request(`/items/${itemId}`),
  favourites: () => request("/favourites"),
  addFavourite: (itemId) => request(`/favourites/${itemId}`, { method: "PUT" }),
  removeFavourite: (itemId) => request(`/favourites/${itemId}`, { method: "DELETE" }),
  preferences: () => request("/preferences"),
  setPreferences: (changes) => request("/preferences", { method: "PATCH", body: changes }),
  cart: () => request("/cart"),
  setCartQuantity: (itemId, quantity) =>
    request(`/cart/items/${itemId}`, { method: "PUT", body: { quantity } }),
  removeFromCart: (itemId) => request(`/cart/items/${itemId}`, { method: "DELETE" }),
};
