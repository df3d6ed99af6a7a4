// Unit tests of the token handling in api.ts (Node environment: fetch and
// localStorage are replaced by small fakes). The proof-of-work challenges are
// real ones (altcha-lib creates and verifies them), solved by challenge.ts.
import { createChallenge, verifySolution } from "altcha-lib/v1";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { api, formatDetail, on, SessionExpiredError, tokens } from "./api";

function fakeStorage() {
  const data = new Map<string, string>();
  return {
    getItem: (key: string) => data.get(key) ?? null,
    setItem: (key: string, value: unknown) => data.set(key, String(value)),
    removeItem: (key: string) => data.delete(key),
    clear: () => data.clear(),
  };
}

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

interface Call {
  path: string;
  method: string | undefined;
  bearer: string | null;
  body: any; // what the page sent, of any shape
}
type Handler = (
  path: string,
  init: RequestInit,
  bearer: string | null,
  body: Call["body"],
) => Response | Promise<Response>;

/** A fake fetch answering from `handler(path, init, bearer)`; records every call. */
function fakeFetch(handler: Handler) {
  const calls: Call[] = [];
  const fetch = vi.fn(async (url: string, init: RequestInit) => {
    const headers = init.headers as Record<string, string>;
    const bearer = headers.Authorization?.replace("Bearer ", "") ?? null;
    const body = init.body ? JSON.parse(init.body as string) : undefined;
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
    const { fetch, calls } = fakeFetch((path, _init, bearer) => {
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
    const { fetch, calls } = fakeFetch((path, _init, bearer) => {
      if (path === "/anonymous-login") {
        issued += 1;
        return json(200, { access_token: `anon${issued}`, token_type: "bearer", expires_in: 60 });
      }
      return bearer === "anon2"
        ? json(200, { items: [{ item_id: 1, quantity: 1 }] })
        : json(401, { detail: "Invalid token" });
    });
    vi.stubGlobal("fetch", fetch);

    await expect(api.setCartQuantity(1, 1)).resolves.toEqual({ items: [{ item_id: 1, quantity: 1 }] });

    expect(calls.map((call) => [call.path, call.bearer])).toEqual([
      ["/anonymous-login", null],
      ["/cart/items/1", "anon1"],
      ["/anonymous-login", null],
      ["/cart/items/1", "anon2"],
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

describe("a visitor without a token", () => {
  it("reads the catalogue without a token and asks for one only for something kept on the server", async () => {
    const { fetch, calls } = fakeFetch((path, _init, bearer) => {
      if (path === "/anonymous-login") {
        return json(200, { access_token: "anon", token_type: "bearer", expires_in: 60 });
      }
      if (path === "/items/") return json(200, { message: "Hello", items: [{ id: 1 }] });
      return bearer === "anon" ? json(200, { items: [1] }) : json(401, { detail: "Not authenticated" });
    });
    vi.stubGlobal("fetch", fetch);

    const [prefs, items, cart, favs] = await Promise.all([
      api.preferences(),
      api.items(),
      api.cart(),
      api.favourites(),
    ]);

    expect(prefs).toEqual({ sort: "catalogue", theme: "system" });
    expect(items.items).toEqual([{ id: 1 }]);
    expect(cart).toEqual({ items: [] });
    expect(favs).toEqual({ items: [] });
    expect(calls).toEqual([{ path: "/items/", method: "GET", bearer: null, body: undefined }]);
    expect(tokens.anonymous()).toBeNull();

    await expect(api.addFavourite(1)).resolves.toEqual({ items: [1] });
    expect(calls.slice(1).map((call) => [call.path, call.bearer])).toEqual([
      ["/anonymous-login", null],
      ["/favourites/1", "anon"],
    ]);
    expect(tokens.anonymous()).toBe("anon");
  });

  it("drops an expired anonymous token on a read instead of asking for a new one", async () => {
    tokens.saveAnonymous("expired");
    const { fetch, calls } = fakeFetch((_path, _init, bearer) =>
      bearer ? json(401, { detail: "Signature has expired" }) : json(200, { items: [{ id: 2 }] }),
    );
    vi.stubGlobal("fetch", fetch);

    await expect(api.items("price")).resolves.toEqual({ items: [{ id: 2 }] });
    await expect(api.cart()).resolves.toEqual({ items: [] });

    expect(calls.map((call) => [call.path, call.bearer])).toEqual([
      ["/items/?sort=price", "expired"],
      ["/items/?sort=price", null],
    ]);
    expect(tokens.anonymous()).toBeNull();
  });
});

describe("device token", () => {
  const session = (device: string | undefined) => ({
    token: "access",
    token_type: "bearer",
    expires_in: 1800,
    refresh_token: "r1",
    device_token: device,
  });

  it("is kept across a logout and sent with the next login, and a new one replaces it", async () => {
    const issued = ["device-1", "device-2"];
    const { fetch, calls } = fakeFetch((path) =>
      path === "/users/login" ? json(200, session(issued.shift())) : new Response(null, { status: 204 }),
    );
    vi.stubGlobal("fetch", fetch);

    await api.login("Alice", "secret-password");
    expect(calls[0]!.body).toEqual({ username: "Alice", password: "secret-password" });
    expect(tokens.device("alice")).toBe("device-1");

    await api.logout();
    expect(tokens.jwt()).toBeNull();
    expect(tokens.refresh()).toBeNull();
    expect(tokens.device("Alice")).toBe("device-1");

    await api.login("alice", "secret-password");
    expect(calls[2]).toMatchObject({
      path: "/users/login",
      body: { username: "alice", password: "secret-password", device_token: "device-1" },
    });
    expect(tokens.device("alice")).toBe("device-2");
  });

  it("is kept per account: another account's login neither sends nor replaces it", async () => {
    tokens.saveDevice("alice", "alice-device");
    const { fetch, calls } = fakeFetch(() => json(200, session("bob-device")));
    vi.stubGlobal("fetch", fetch);

    await api.login("bob", "secret-password");

    expect(calls[0]!.body).toEqual({ username: "bob", password: "secret-password" });
    expect(tokens.device("alice")).toBe("alice-device");
    expect(tokens.device("bob")).toBe("bob-device");
  });

  it("survives a wrong password", async () => {
    tokens.saveDevice("alice", "alice-device");
    vi.stubGlobal(
      "fetch",
      fakeFetch(() => json(401, { detail: "Invalid username and/or password" })).fetch,
    );

    await expect(api.login("alice", "wrong-password")).rejects.toMatchObject({ status: 401 });
    expect(tokens.device("alice")).toBe("alice-device");
  });
});

describe("challenge", () => {
  const HMAC_KEY = "unit-test-hmac-key";
  const CHALLENGE_REQUIRED = { detail: "Too many failed logins", challenge_required: true };

  /** A real ALTCHA v1 challenge, written as the server's Python altcha writes it (maxNumber). */
  async function serverChallenge() {
    const expires = new Date(Date.now() + 60_000);
    const { maxnumber, ...rest } = await createChallenge({ hmacKey: HMAC_KEY, maxNumber: 2000, expires });
    return { ...rest, maxNumber: maxnumber };
  }

  /** A server whose `path` asks for a challenge unless the body carries a valid solution. */
  function guardedServer(path: string, answer: unknown, { alwaysRefuse = false } = {}) {
    const verified: boolean[] = [];
    const fake = fakeFetch(async (url, _init, _bearer, body) => {
      if (url === "/challenge") return json(200, await serverChallenge());
      if (url !== path) return json(404, { detail: "Not Found" });
      if (body?.altcha) verified.push(await verifySolution(body.altcha, HMAC_KEY));
      if (alwaysRefuse || !verified.at(-1)) {
        return new Response(JSON.stringify(CHALLENGE_REQUIRED), {
          status: 429,
          headers: { "Content-Type": "application/json", "Retry-After": "60" },
        });
      }
      return json(200, answer);
    });
    return { ...fake, verified };
  }

  it("is solved when a login is told challenge_required, and the login retried once", async () => {
    const { fetch, calls, verified } = guardedServer("/users/login", {
      token: "access",
      token_type: "bearer",
      expires_in: 1800,
      refresh_token: "r1",
      device_token: "device-1",
    });
    vi.stubGlobal("fetch", fetch);
    const events: boolean[] = [];
    const unsubscribe = on("challenge", (solving) => events.push(solving));

    await api.login("alice", "secret-password");

    unsubscribe();
    expect(calls.map((call) => call.path)).toEqual(["/users/login", "/challenge", "/users/login"]);
    expect(calls[0]!.body).toEqual({ username: "alice", password: "secret-password" });
    expect(calls[2]!.body).toMatchObject({ username: "alice", password: "secret-password" });
    expect(verified).toEqual([true]);
    expect(events).toEqual([true, false]);
    expect(tokens.jwt()).toBe("access");
    expect(tokens.device("alice")).toBe("device-1");
  });

  it("is solved once only: a second refusal is the answer", async () => {
    const { fetch, calls, verified } = guardedServer("/users/login", {}, { alwaysRefuse: true });
    vi.stubGlobal("fetch", fetch);

    await expect(api.login("alice", "secret-password")).rejects.toMatchObject({
      status: 429,
      message: "Too many failed logins",
    });
    expect(calls.map((call) => call.path)).toEqual(["/users/login", "/challenge", "/users/login"]);
    expect(verified).toEqual([true]);
    expect(tokens.jwt()).toBeNull();
  });

  it("is not asked for on a refusal without challenge_required", async () => {
    const { fetch, calls } = fakeFetch(() => json(429, { detail: "Too many requests" }));
    vi.stubGlobal("fetch", fetch);

    await expect(api.login("alice", "secret-password")).rejects.toMatchObject({ status: 429 });
    expect(calls.map((call) => call.path)).toEqual(["/users/login"]);
  });

  it("admits a new visitor past the service's bound, then keeps its cart", async () => {
    const { fetch, calls, verified } = guardedServer("/anonymous-login", {
      access_token: "anon",
      token_type: "bearer",
      expires_in: 60,
    });
    const cart = { items: [{ item_id: 2, quantity: 1 }] };
    vi.stubGlobal("fetch", async (url: string, init: RequestInit) =>
      url === "/cart/items/2" ? json(200, cart) : fetch(url, init),
    );

    await expect(api.setCartQuantity(2, 1)).resolves.toEqual(cart);

    expect(calls.map((call) => [call.path, call.body === undefined ? "no body" : "altcha"])).toEqual([
      ["/anonymous-login", "no body"],
      ["/challenge", "no body"],
      ["/anonymous-login", "altcha"],
    ]);
    expect(verified).toEqual([true]);
    expect(tokens.anonymous()).toBe("anon");
  });
});
