// Unit tests of the token handling in api.js (Node environment: fetch and
// localStorage are replaced by small fakes).
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { api, formatDetail, on, SessionExpiredError, tokens } from "./api.js";

function fakeStorage() {
  const data = new Map();
  return {
    getItem: (key) => (data.has(key) ? data.get(key) : null),
    setItem: (key, value) => data.set(key, String(value)),
    removeItem: (key) => data.delete(key),
    clear: () => data.clear(),
  };
}

const json = (status, body) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

/** A fake fetch answering from `handler(path, init, bearer)`; records every call. */
function fakeFetch(handler) {
  const calls = [];
  const fetch = vi.fn(async (url, init) => {
    const bearer = init.headers.Authorization?.replace("Bearer ", "") ?? null;
    const body = init.body ? JSON.parse(init.body) : undefined;
    calls.push({ path: url, method: init.method, bearer, body });
    // Let concurrent callers interleave like real network calls.
    await new Promise((resolve) => setTimeout(resolve, 5));
    return handler(url, init, bearer, body);
  });
  return { fetch, calls };
}

beforeEach(() => {
  vi.stubGlobal("localStorage", fakeStorage());
});

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("registered session", () => {
  it("refreshes once for concurrent 401s and retries each call with the new token", async () => {
    tokens.saveSession({ token: "old", refresh_token: "r1" });
    const { fetch, calls } = fakeFetch((path, init, bearer) => {
      if (path === "/users/refresh") return json(200, { token: "new", refresh_token: "r2" });
      if (bearer !== "new") return json(401, { detail: "Signature has expired" });
      return path === "/users/me" ? json(200, { id: 1, username: "alice" }) : json(200, { items: [] });
    });
    vi.stubGlobal("fetch", fetch);

    const [me, cart, items] = await Promise.all([api.me(), api.cart(), api.items()]);

    expect(me).toEqual({ id: 1, username: "alice" });
    expect(cart).toEqual({ items: [] });
    expect(items).toEqual({ items: [] });
    const refreshes = calls.filter((call) => call.path === "/users/refresh");
    expect(refreshes).toEqual([
      { path: "/users/refresh", method: "POST", bearer: null, body: { refresh_token: "r1" } },
    ]);
    expect(tokens.jwt()).toBe("new");
    expect(tokens.refresh()).toBe("r2");
  });

  it("ends the session when the refresh is refused", async () => {
    tokens.saveSession({ token: "tampered", refresh_token: "spent" });
    const expired = vi.fn();
    const unsubscribe = on("expired", expired);
    vi.stubGlobal(
      "fetch",
      fakeFetch(() => json(401, { detail: "Invalid token" })).fetch,
    );

    await expect(api.me()).rejects.toBeInstanceOf(SessionExpiredError);

    expect(expired).toHaveBeenCalledTimes(1);
    expect(tokens.jwt()).toBeNull();
    expect(tokens.refresh()).toBeNull();
    unsubscribe();
  });

  it("logs out with the current refresh token in the body", async () => {
    tokens.saveSession({ token: "access", refresh_token: "r1" });
    const { fetch, calls } = fakeFetch(() => new Response(null, { status: 204 }));
    vi.stubGlobal("fetch", fetch);

    await api.logout();

    expect(calls).toEqual([
      { path: "/users/logout", method: "POST", bearer: "access", body: { refresh_token: "r1" } },
    ]);
  });
});

describe("account actions", () => {
  it("shows a wrong password instead of refreshing the session", async () => {
    tokens.saveSession({ token: "access", refresh_token: "r1" });
    const { fetch, calls } = fakeFetch(() => json(401, { detail: "Invalid username and/or password" }));
    vi.stubGlobal("fetch", fetch);

    await expect(api.changePassword("wrong", "new-password-1")).rejects.toMatchObject({
      status: 401,
      message: "Invalid username and/or password",
    });

    expect(calls).toEqual([
      {
        path: "/users/me/password",
        method: "POST",
        bearer: "access",
        body: { current_password: "wrong", new_password: "new-password-1" },
      },
    ]);
    expect(tokens.jwt()).toBe("access"); // still logged in
  });

  it("deletes the account with the password in the body", async () => {
    tokens.saveSession({ token: "access", refresh_token: "r1" });
    const { fetch, calls } = fakeFetch(() => new Response(null, { status: 204 }));
    vi.stubGlobal("fetch", fetch);

    await api.deleteAccount("secret-password");

    expect(calls).toEqual([
      { path: "/users/me", method: "DELETE", bearer: "access", body: { password: "secret-password" } },
    ]);
  });
});

describe("anonymous visitor", () => {
  it("gets an anonymous token first, and a new one once after a 401", async () => {
    let issued = 0;
    const { fetch, calls } = fakeFetch((path, init, bearer) => {
      if (path === "/anonymous-login") {
        issued += 1;
        return json(200, { access_token: `anon${issued}`, token_type: "bearer", expires_in: 60 });
      }
      return bearer === "anon2" ? json(200, { items: [] }) : json(401, { detail: "Invalid token" });
    });
    vi.stubGlobal("fetch", fetch);

    await expect(api.cart()).resolves.toEqual({ items: [] });

    expect(calls.map((call) => [call.path, call.bearer])).toEqual([
      ["/anonymous-login", null],
      ["/cart", "anon1"],
      ["/anonymous-login", null],
      ["/cart", "anon2"],
    ]);
    expect(tokens.anonymous()).toBe("anon2");
  });

  it("sends the anonymous token with the login, then keeps only the session tokens", async () => {
    tokens.saveAnonymous("anon");
    const { fetch, calls } = fakeFetch(() =>
      json(200, { token: "access", token_type: "bearer", expires_in: 1800, refresh_token: "r1" }),
    );
    vi.stubGlobal("fetch", fetch);

    await api.login("alice", "secret-password");

    expect(calls[0]).toMatchObject({ path: "/users/login", bearer: "anon" });
    expect(tokens.anonymous()).toBeNull();
    expect(tokens.jwt()).toBe("access");
    expect(tokens.refresh()).toBe("r1");
  });

  it("keeps the anonymous token when the credentials are wrong", async () => {
    tokens.saveAnonymous("anon");
    vi.stubGlobal(
      "fetch",
      fakeFetch(() => json(401, { detail: "Invalid username and/or password" })).fetch,
    );

    await expect(api.login("alice", "wrong-password")).rejects.toThrow(
      "Invalid username and/or password",
    );
    expect(tokens.anonymous()).toBe("anon");
  });
});

describe("formatDetail", () => {
  it("turns a 422 list into readable text", () => {
    const detail = [
      { loc: ["body", "username"], msg: "String should have at least 3 characters", type: "x" },
      { loc: ["body", "password"], msg: "String should have at least 8 characters", type: "y" },
    ];
    expect(formatDetail(detail)).toBe(
      "username: String should have at least 3 characters; " +
        "password: String should have at least 8 characters",
    );
  });

  it("keeps a plain detail as it is", () => {
    expect(formatDetail("Username already taken")).toBe("Username already taken");
  });
});

describe("personalisation calls", () => {
  it("send the visitor's token to the personalisation routes, with the right methods and bodies", async () => {
    tokens.saveAnonymous("visitor");
    const { fetch, calls } = fakeFetch(() => json(200, { items: [] }));
    vi.stubGlobal("fetch", fetch);

    await api.items("price");
    await api.item(3);
    await api.addFavourite(3);
    await api.removeFavourite(3);
    await api.setPreferences({ theme: "dark" });

    expect(calls).toEqual([
      { path: "/items/?sort=price", method: "GET", bearer: "visitor", body: undefined },
      { path: "/items/3", method: "GET", bearer: "visitor", body: undefined },
      { path: "/favourites/3", method: "PUT", bearer: "visitor", body: undefined },
      { path: "/favourites/3", method: "DELETE", bearer: "visitor", body: undefined },
      { path: "/preferences", method: "PATCH", bearer: "visitor", body: { theme: "dark" } },
    ]);
  });
});
