"""Benchmark harness: ours (app:app) against itself and against a fastapi-users peer.

One command, no manual step (from the repo root)::

    .venv/bin/python bench/run.py            # full run, ~10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick --out /tmp/b   # smoke run, tiny sizes

It installs wrk (apt-get) when missing, builds bench/.venv-peer for the peer and
the chart, writes the test stores, starts and stops every server itself, and
writes RESULTS.md, results.json and results.png (to bench/ or ``--out``).
See report.py for how the figures become the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' software authenticator
from data import PASSWORD, STORM_USER, StoreFactory, username_of
from load import Loader, LoadResult, RequestSpec
from servers import (
    BENCH,
    OURS_PYTHON,
    PEER_PYTHON,
    ROOT,
    SERVER_CPU,
    PgAdmin,
    PgUnavailable,
    Server,
    ensure_peer_venv,
    ensure_wrk,
    http_request,
    seed_peer,
    start_ours,
    start_peer,
    start_peer_on,
    stop_all,
)

from webauthn_support import SoftAuthenticator

T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


@dataclass(frozen=True)
class Config:
    """What to measure and for how long; --quick swaps in tiny sizes and 1 s runs."""

    quick: bool
    sizes: tuple[int, ...]  # /users/me sweep for ours: smallest and largest form ratio 3
    compare_size: int  # the size ours and the peer are compared at (ratios 1, 2)
    register_sizes: tuple[int, int]  # ratio 7: large ÷ small
    storm_size: int
    duration: float  # seconds per measured run
    warmup: float
    reps: int
    connections: int = 32
    register_connections: int = 32
    storm_clients: int = 4
    chunk: float = 1.0  # throughput comparisons alternate between their targets every `chunk` seconds
    storm_margin: float = 1.0  # storm runs this long before and after the /health window
    login_samples: int = 10
    audit_login_samples: int = 200  # row A2: logins on each server (audit log on, off), alternating
    startup_spawns: int = 3
    hash_samples: int = 5
    revocation_trials: int = 200


FULL = Config(False, (10, 1_000, 10_000, 100_000), 1_000, (1_000, 100_000), 1_000,
              duration=8, warmup=2, reps=3)
QUICK = Config(True, (10, 1_000), 1_000, (100, 1_000), 100, duration=1, warmup=1, reps=1,
               storm_margin=0.5, login_samples=3, audit_login_samples=20, startup_spawns=1, hash_samples=1, revocation_trials=20)


# --- small helpers -----------------------------------------------------------------


def _json_post(port: int, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    status, body = http_request(port, "POST", path, json.dumps(payload).encode(), headers)
    try:
        return status, json.loads(body or b"null")
    except ValueError:
        return status, body


def login_ours(port: int, username: str, patience: float = 60.0) -> str:
    """A token for ``username``. A 503 (the hashing queue shedding load on a busy machine) is retried
    after its ``Retry-After``, as a client would: a timed login then includes the wait."""
    deadline = time.monotonic() + patience
    while True:
        status, body = _json_post(port, "/users/login", {"username": username, "password": PASSWORD})
        if status == 503 and time.monotonic() < deadline:
            time.sleep(1.0)  # the service's Retry-After is whole seconds; 1 s is its smallest
            continue
        if status != 200:
            raise RuntimeError(f"ours: login as {username} gave {status}: {body}")
        return str(body["token"])


def _peer_login_raw(port: int, email: str) -> tuple[int, bytes]:
    form = f"username={email}&password={PASSWORD}".replace("@", "%40").encode()
    return http_request(port, "POST", "/auth/jwt/login", form,
                        {"Content-Type": "application/x-www-form-urlencoded"})


def login_peer(port: int, email: str) -> str:
    status, body = _peer_login_raw(port, email)
    if status != 200:
        raise RuntimeError(f"peer: login as {email} gave {status}: {body!r}")
    return str(json.loads(body)["access_token"])


def timed_ms(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _p99(samples: list[float]) -> float:
    return sorted(samples)[min(len(samples) - 1, int(len(samples) * 0.99))] if samples else float("nan")


FLOOD_ADDRESSES = [f"127.0.4.{i}" for i in range(1, 52)]  # row 11b: an attacker with 51 addresses


def _flood(port: int, stop: threading.Event, answers: Counter[int], abandon: bool,
           sources: list[str] | None = None, first: int = 0) -> None:
    """Log in with random usernames from 127.0.0.2 until ``stop``, on one kept-alive connection;
    ``abandon``: a new connection per request, closed as soon as the request is sent (paced, so
    that sockets in TIME_WAIT do not use up the machine's ephemeral ports). ``sources``: rotate
    over these addresses instead, a new connection every 5 requests."""
    conn: http.client.HTTPConnection | None = None
    sent = first
    while not stop.is_set():
        body = json.dumps({"username": "x" + secrets.token_hex(6), "password": "guess-guess"})
        if conn is not None and sources and sent % 5 == 0:
            conn.close()
            conn = None
        sent += 1
        if conn is None:
            source = sources[(sent // 5) % len(sources)] if sources else "127.0.0.2"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
        try:
            conn.request("POST", "/users/login", body=body, headers={"Content-Type": "application/json"})
            if abandon:
                answers[0] += 1
                conn.close()
                conn = None
                time.sleep(0.02)
            else:
                response = conn.getresponse()
                response.read()
                answers[response.status] += 1
        except OSError:
            answers[-1] += 1
            conn.close()
            conn = None
            time.sleep(0.1)
    if conn is not None:
        conn.close()


def _logins_during(cfg: Any, flood: list[threading.Thread], stop: threading.Event,
                   login: Callable[[], int]) -> tuple[list[float], int]:
    """Start ``flood``; once it is in full swing, time ``login`` (its HTTP status) again and again
    for ``cfg.duration`` (and at least ``cfg.login_samples`` successes); then stop the flood. The
    times of the successes, in ms, and how many were refused."""
    for thread in flood:
        thread.start()
    samples: list[float] = []
    refused = 0
    try:
        time.sleep(cfg.storm_margin)
        end = time.monotonic() + cfg.duration
        while (time.monotonic() < end or len(samples) < cfg.login_samples) and time.monotonic() < end + 60:
            started = time.perf_counter()
            if login() == 200:
                samples.append((time.perf_counter() - started) * 1000)
            else:
                refused += 1
                time.sleep(0.2)
    finally:
        stop.set()
        for thread in flood:
            thread.join()
    return samples, refused


def route_missing(status: int, body: bytes) -> bool:
    """FastAPI's own 404/405 for an unknown route (not a 404 the route itself raised)."""
    return status == 405 or (status == 404 and b'"Not Found"' in body)


def merge(parts: list[LoadResult]) -> LoadResult:
    """One figure from consecutive chunks: totals for throughput, the median chunk's p50/p99."""
    requests = sum(p.requests for p in parts)
    return LoadResult(
        requests=requests, seconds=sum(p.seconds for p in parts), errors=sum(p.errors for p in parts),
        p50_ms=statistics.median(p.p50_ms for p in parts), p99_ms=statistics.median(p.p99_ms for p in parts),
        mean_ms=sum(p.mean_ms * p.requests for p in parts) / max(1, requests),
        max_ms=max(p.max_ms for p in parts), tool=parts[0].tool,
    )


Target = tuple[int, RequestSpec]  # (port, request)


def _base36(i: int) -> str:
    """``i`` in base 31: digits and the letters that look like no other (no ``l``/``1``, ``o``/``0``,
    ``m``/``rn``), so names of different runs never pass for each other (usernames.py refuses those)."""
    digits = "0123456789abcdefghijkpqstuvwxyz"
    out = ""
    while True:
        i, r = divmod(i, len(digits))
        out = digits[r] + out
        if not i:
            return out


def interleaved(
    loader: Loader, targets: dict[str, Target], cfg: Config, connections: int | None = None, warm: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Warm every target up, then each repetition alternates short chunks between the targets.

    This machine's CPU speed drifts by tens of percent within seconds (a VM: a pure-Python loop
    on an idle core varies up to 1.8x), so figures that form a ratio are measured in alternating
    `cfg.chunk`-second slices (A, B, C, A, B, C, ...) that add up to `cfg.duration` each.
    """
    conns = connections or cfg.connections
    runs = 0

    def run(port: int, spec: RequestSpec, seconds: float) -> LoadResult:
        nonlocal runs
        runs += 1
        if spec.unique:  # every wrk run counts from 1 again: keep the names apart
            spec = replace(spec, prefix=spec.prefix + _base36(runs))
        return loader.run(port, spec, conns, seconds)

    if warm:
        for port, spec in targets.values():
            run(port, spec, cfg.warmup)
    chunks = max(1, round(cfg.duration / cfg.chunk))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(cfg.reps):
        parts: dict[str, list[LoadResult]] = {name: [] for name in targets}
        for _ in range(chunks):
            for name, (port, spec) in targets.items():
                parts[name].append(run(port, spec, cfg.duration / chunks))
        for name, rs in parts.items():
            results[name].append(merge(rs).as_dict())
    return results


def _brief(results: list[dict[str, Any]]) -> str:
    rps = statistics.median(r["rps"] for r in results)
    p99 = statistics.median(r["p99_ms"] for r in results)
    errors = sum(r["errors"] for r in results)
    return f"{rps:,.0f} req/s, p99 {p99:.1f} ms" + (f", {errors} FAILED requests" if errors else "")


def time_single_hash(python: Path, hashed: str, samples: int) -> list[float]:
    """Seconds for one bcrypt check of ``hashed`` on the server CPU, nothing else running."""
    code = (
        "import bcrypt, json, sys, time\n"
        "h = sys.argv[1].encode(); out = []\n"
        "for _ in range(int(sys.argv[2])):\n"
        "    t = time.perf_counter(); bcrypt.checkpw(sys.argv[3].encode(), h)\n"
        "    out.append(time.perf_counter() - t)\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run(["taskset", "-c", SERVER_CPU, str(python), "-c", code, hashed, str(samples), PASSWORD],
                         check=True, capture_output=True, text=True)
    return list(json.loads(out.stdout))


# --- the phases --------------------------------------------------------------------------


class Bench:
    def __init__(self, cfg: Config, loader: Loader, ours_dir: Path, workdir: Path, with_peer: bool) -> None:
        self.cfg = cfg
        self.with_peer = with_peer
        self.loader = loader
        self.ours_dir = ours_dir
        self.workdir = workdir
        self.secret = secrets.token_urlsafe(36)  # 48 characters
        self.stores = StoreFactory(OURS_PYTHON, workdir)
        self._logs = 0

    def log_path(self, name: str) -> Path:
        self._logs += 1
        return self.workdir / "logs" / f"{self._logs:03d}-{name}.log"

    def ours(self, n_users: int, rounds: int = 4, storm_user: bool = False,
             extra_env: dict[str, str] | None = None, label: str = "") -> Server:
        store = self.stores.fresh(n_users, with_storm_user=storm_user)
        return start_ours(self.ours_dir, store, self.secret, rounds, self.log_path(f"ours-{n_users}{label}"),
                          extra_env)

    def throughput(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """/health and /users/me on ours at every store size and on the peer, all interleaved.

        All these servers run at once (pinned to the server CPU, idle unless loaded), so each
        ratio compares slices measured seconds apart. Then: RSS at the largest size, the extras
        at the comparison size, and more spawns of the largest store for the start-up time.
        """
        cfg = self.cfg
        big = cfg.sizes[-1]
        ours: dict[str, Any] = {"sizes": {}, "extras": {}}
        servers: dict[int, Server] = {}
        targets: dict[str, Target] = {}
        peer_out: dict[str, Any] | None = None
        try:
            for n in cfg.sizes:
                srv = servers[n] = self.ours(n)
                say(f"ours, {n:,} users: ready in {srv.ready_seconds:.2f} s")
                auth = {"Authorization": f"Bearer {login_ours(srv.port, username_of(1))}"}
                targets[f"ours {n} health"] = (srv.port, RequestSpec("/health"))
                targets[f"ours {n} me"] = (srv.port, RequestSpec("/users/me", headers=auth))
            # Row 13: the same /users/me on a server that counts nothing (METRICS_ENABLED=false)
            off = self.ours(cfg.compare_size, extra_env={"METRICS_ENABLED": "false"}, label="-metrics-off")
            targets["ours metrics off me"] = (off.port, RequestSpec("/users/me", headers={
                "Authorization": f"Bearer {login_ours(off.port, username_of(1))}"}))
            if self.with_peer:
                peer, peer_out = self.start_peer()
                targets["peer health"] = (peer.port, RequestSpec("/health"))
                targets["peer me"] = (peer.port, RequestSpec("/users/me", headers={
                    "Authorization": f"Bearer {login_peer(peer.port, peer_out.pop('email'))}"}))
            say(f"interleaving {len(targets)} targets: {cfg.reps} x {cfg.duration:g} s each, "
                f"in {cfg.chunk:g} s slices")
            res = interleaved(self.loader, targets, cfg)
            for n in cfg.sizes:
                health, me = res[f"ours {n} health"], res[f"ours {n} me"]
                ours["sizes"][str(n)] = {"health": health, "me": me, "ready_seconds": servers[n].ready_seconds}
                say(f"  ours {n:>7,} users: /health {_brief(health)}; /users/me {_brief(me)}")
            ours["metrics_off_me"] = res["ours metrics off me"]
            say(f"  ours {cfg.compare_size:>7,} users, metrics off: /users/me {_brief(ours['metrics_off_me'])}")
            if peer_out is not None:
                peer_out.update(health=res["peer health"], me=res["peer me"])
                say(f"  peer {cfg.compare_size:>7,} users: /health {_brief(peer_out['health'])}; "
                    f"/users/me {_brief(peer_out['me'])}")
            ours["rss_kib"] = servers[big].proc_status("VmRSS")
            ours["hwm_kib"] = servers[big].proc_status("VmHWM")
            ours["startup_seconds"] = [servers[big].ready_seconds]
            say(f"  RSS of ours after load, {big:,} users: {ours['rss_kib'] / 1024:.1f} MB "
                f"(peak {ours['hwm_kib'] / 1024:.1f} MB)")
            cmp_srv = servers[cfg.compare_size]
            ours["extras"] = self.extras(cmp_srv, login_ours(cmp_srv.port, username_of(2)))
            ours["personal"] = self.personal(cmp_srv, login_ours(cmp_srv.port, username_of(3)))
        finally:
            stop_all()
        for _ in range(cfg.startup_spawns - 1):
            with self.ours(big) as srv:
                ours["startup_seconds"].append(srv.ready_seconds)
        say(f"  start-up with {big:,} users: " + ", ".join(f"{s:.2f} s" for s in ours["startup_seconds"]))
        return ours, peer_out

    def start_peer(self) -> tuple[Server, dict[str, Any]]:
        """The peer on a seeded SQLite file, and its single-client login latency."""
        n = self.cfg.compare_size
        db = self.workdir / "peer" / "peer.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        seed_peer(db, n, PASSWORD)
        email = f"{username_of(1)}@example.com"
        srv = start_peer(db, self.secret, self.log_path("peer"))
        latency = timed_ms(lambda: login_peer(srv.port, email), self.cfg.login_samples)
        say(f"peer, {n:,} users: ready in {srv.ready_seconds:.2f} s; "
            f"login {statistics.median(latency):.0f} ms (median of {len(latency)})")
        return srv, {"size": n, "email": email, "login_latency_ms": latency, "ready_seconds": srv.ready_seconds}

    def extras(self, srv: Server, token: str) -> dict[str, Any]:
        """Anonymous sign-in and cart writes: reported without a target."""
        found: dict[str, Any] = {}
        status, body = http_request(srv.port, "POST", "/anonymous-login")
        if route_missing(status, body):
            found["anonymous_login"] = "missing"
            say("  POST /anonymous-login: n/a, route missing")
        else:
            r = interleaved(self.loader, {"a": (srv.port, RequestSpec("/anonymous-login", method="POST"))}, self.cfg)
            found["anonymous_login"] = r["a"]
            say(f"  POST /anonymous-login {_brief(r['a'])}")
        cart = RequestSpec("/cart/items/1", method="PUT", body='{"quantity": 1}', headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        status, body = http_request(srv.port, "PUT", "/cart/items/1", cart.body.encode(), cart.headers)  # type: ignore[union-attr]
        if route_missing(status, body):
            found["cart_put"] = "missing"
            say("  PUT /cart/items/1: n/a, route missing")
        else:
            r = interleaved(self.loader, {"c": (srv.port, cart)}, self.cfg)
            found["cart_put"] = r["c"]
            say(f"  PUT /cart/items/1 {_brief(r['c'])}")
        return found

    def personal(self, srv: Server, token: str) -> dict[str, Any] | str:
        """A view (GET /items/{id}) and the personalised catalogue of a caller whose history holds
        every catalogue item, favourites and a cart line, interleaved with /health on one server."""
        auth = {"Authorization": f"Bearer {token}"}
        status, body = http_request(srv.port, "GET", "/items/1", headers=auth)
        if route_missing(status, body):
            say("  GET /items/{id}: n/a, route missing")
            return "missing"
        status, body = http_request(srv.port, "GET", "/items/", headers=auth)
        for item in json.loads(body)["items"]:  # a full history: every item of the catalogue
            http_request(srv.port, "GET", f"/items/{item['id']}", headers=auth)
        for item in json.loads(body)["items"][:3]:
            http_request(srv.port, "PUT", f"/favourites/{item['id']}", headers=auth)
        http_request(srv.port, "PUT", "/cart/items/2", b'{"quantity": 1}', {**auth, "Content-Type": "application/json"})
        r = interleaved(self.loader, {
            "health": (srv.port, RequestSpec("/health")),
            "item": (srv.port, RequestSpec("/items/7", headers=auth)),
            "items": (srv.port, RequestSpec("/items/", headers=auth)),
        }, self.cfg)
        say(f"  /health {_brief(r['health'])}; GET /items/7 {_brief(r['item'])}; "
            f"GET /items/ (full history) {_brief(r['items'])}")
        return r

    def audit(self) -> dict[str, Any]:
        """Rows A1, A2: /users/me ÷ /health on a server whose audit log is being written (one
        client logging in non-stop beside the load: an event per login, a batch a second), and one
        client's login p99 on that server ÷ on one with AUDIT_ENABLED=false, the two alternating."""
        cfg = self.cfg
        out: dict[str, Any] = {"health": [], "me": [], "login_on_ms": [], "login_off_ms": []}
        with self.ours(cfg.compare_size, label="-audit") as on, \
                self.ours(cfg.compare_size, extra_env={"AUDIT_ENABLED": "false"}, label="-audit-off") as off:
            for _ in range(cfg.audit_login_samples):
                out["login_on_ms"] += timed_ms(lambda: login_ours(on.port, username_of(4)), 1)
                out["login_off_ms"] += timed_ms(lambda: login_ours(off.port, username_of(4)), 1)
            login = RequestSpec("/users/login", method="POST", headers={"Content-Type": "application/json"},
                                body=json.dumps({"username": username_of(5), "password": PASSWORD}))
            auth = {"Authorization": f"Bearer {login_ours(on.port, username_of(1))}"}
            bg = self.loader.background(on.port, login, 1, 2 * cfg.reps * cfg.duration + 30)
            try:
                res = interleaved(self.loader, {"health": (on.port, RequestSpec("/health")),
                                                "me": (on.port, RequestSpec("/users/me", headers=auth))}, cfg)
            finally:
                bg.kill()
            out.update(health=res["health"], me=res["me"])
        say(f"  audit log busy: /health {_brief(out['health'])}; /users/me {_brief(out['me'])}; login p99 "
            f"{_p99(out['login_on_ms']):.1f} ms on, {_p99(out['login_off_ms']):.1f} ms off")
        return out

    def storm(self) -> dict[str, Any]:
        """/health while 4 clients log in non-stop at bcrypt cost 12, against /health idle."""
        cfg = self.cfg
        login = RequestSpec("/users/login", method="POST", headers={"Content-Type": "application/json"},
                            body=json.dumps({"username": STORM_USER, "password": PASSWORD}))
        health = RequestSpec("/health")
        out: dict[str, Any] = {"idle": [], "storm": [], "logins_per_s": [], "alone_logins_per_s": [],
                               "storm_login_p50_ms": []}
        with self.ours(cfg.storm_size, rounds=12, storm_user=True) as srv:
            say(f"storm server ({cfg.storm_size:,} users, BCRYPT_ROUNDS=12) ready")
            out["login_latency_ms"] = timed_ms(lambda: login_ours(srv.port, STORM_USER), cfg.login_samples)
            self.loader.run(srv.port, health, cfg.connections, cfg.warmup)
            for _ in range(cfg.reps):
                out["idle"].append(self.loader.run(srv.port, health, cfg.connections, cfg.duration).as_dict())
                bg = self.loader.background(srv.port, login, cfg.storm_clients, cfg.duration + 2 * cfg.storm_margin)
                try:
                    time.sleep(cfg.storm_margin)
                    t0 = time.monotonic()
                    during = self.loader.run(srv.port, health, cfg.connections, cfg.duration)
                    t1 = time.monotonic()
                    data = bg.result()
                finally:
                    bg.kill()
                out["storm"].append(during.as_dict())
                ok = [s for s in data["samples"] if t0 <= s[0] <= t1 and s[2] == 200]
                out["logins_per_s"].append(len(ok) / (t1 - t0))
                if ok:
                    out["storm_login_p50_ms"].append(statistics.median(s[1] for s in ok) * 1000)
                failed = sum(1 for s in data["samples"] if s[2] != 200) + data["socket_errors"]
                if failed:
                    out.setdefault("storm_login_failures", 0)
                    out["storm_login_failures"] += failed
            for _ in range(cfg.reps):
                data = self.loader.background(srv.port, login, cfg.storm_clients, cfg.duration).result()
                ok = [s for s in data["samples"] if s[2] == 200]
                out["alone_logins_per_s"].append(len(ok) / (data["end"] - data["start"]))
        say(f"  idle /health {_brief(out['idle'])}; storm /health {_brief(out['storm'])}")
        say("  logins/s with /health load " + ", ".join(f"{x:.2f}" for x in out["logins_per_s"])
            + "; alone " + ", ".join(f"{x:.2f}" for x in out["alone_logins_per_s"])
            + f"; one login alone {statistics.median(out['login_latency_ms']):.0f} ms")
        return out

    def abuse(self) -> dict[str, Any]:
        """Row 11: a real user's login times while 8 connections from 127.0.0.2 flood /users/login
        with random usernames (2 of them abandon each request), against the same user's idle
        logins. Row 12: /health p99 while 4 clients page /users/list (100 a page) at the largest
        store, against idle. Budgets are off (start_ours): the flood reaches the hashing queue."""
        cfg = self.cfg
        out: dict[str, Any] = {"login_idle_ms": [], "login_flood_ms": [], "flood_answers": {},
                               "trusted_idle_ms": [], "trusted_flood_ms": [], "trusted_refused": 0,
                               "list_idle": [], "list_busy": []}
        with self.ours(cfg.storm_size, rounds=12, storm_user=True) as srv:
            for _ in range(cfg.reps):
                out["login_idle_ms"].append(timed_ms(lambda: login_ours(srv.port, STORM_USER), cfg.login_samples))
                stop = threading.Event()
                answers: Counter[int] = Counter()
                flood = [threading.Thread(target=_flood, args=(srv.port, stop, answers, i < 2)) for i in range(8)]
                samples, refused = _logins_during(cfg, flood, stop, lambda: _json_post(
                    srv.port, "/users/login", {"username": STORM_USER, "password": PASSWORD})[0])
                if refused:  # refused (503): counted, and the row says so
                    out["login_flood_refused"] = out.get("login_flood_refused", 0) + refused
                out["login_flood_ms"].append(samples)
                for code, n in answers.items():
                    out["flood_answers"][str(code)] = out["flood_answers"].get(str(code), 0) + n
            self.trusted_flood(srv, out)
            self.passkey_flood(srv, out)
        say(f"  real-user login p99 idle {[f'{_p99(s):.0f}' for s in out['login_idle_ms']]} ms, during the flood "
            f"{[f'{_p99(s):.0f}' for s in out['login_flood_ms']]} ms ({out.get('login_flood_refused', 0)} refused); "
            f"flood answers {out['flood_answers']}")
        big = cfg.sizes[-1]
        health = RequestSpec("/health")
        with self.ours(big) as srv:
            pages = RequestSpec("/users/list?limit=100", headers={
                "Authorization": f"Bearer {login_ours(srv.port, username_of(1))}"})
            self.loader.run(srv.port, health, cfg.connections, cfg.warmup)
            for _ in range(cfg.reps):
                out["list_idle"].append(self.loader.run(srv.port, health, cfg.connections, cfg.duration).as_dict())
                bg = self.loader.background(srv.port, pages, 4, cfg.duration + 2 * cfg.storm_margin)
                try:
                    time.sleep(cfg.storm_margin)
                    out["list_busy"].append(self.loader.run(srv.port, health, cfg.connections, cfg.duration).as_dict())
                    bg.result()
                finally:
                    bg.kill()
        say(f"  {big:,} users: /health idle {_brief(out['list_idle'])}; while paging {_brief(out['list_busy'])}")
        return out

    def trusted_flood(self, srv: Server, out: dict[str, Any]) -> None:
        """Row 11b: the same user, from a browser that logged in before (its device token), while
        32 connections rotating over 51 addresses flood /users/login; against its idle logins."""
        cfg = self.cfg
        status, answer = _json_post(srv.port, "/users/login", {"username": STORM_USER, "password": PASSWORD})
        assert status == 200, answer
        body = {"username": STORM_USER, "password": PASSWORD, "device_token": answer["device_token"]}

        def trusted_login() -> int:
            return _json_post(srv.port, "/users/login", body)[0]

        for _ in range(cfg.reps):
            out["trusted_idle_ms"].append(timed_ms(trusted_login, cfg.login_samples))
            stop = threading.Event()
            answers: Counter[int] = Counter()
            flood = [threading.Thread(target=_flood, args=(srv.port, stop, answers, False, FLOOD_ADDRESSES, 5 * i))
                     for i in range(32)]
            samples, refused = _logins_during(cfg, flood, stop, trusted_login)
            out["trusted_refused"] += refused
            out["trusted_flood_ms"].append(samples)
        say(f"  trusted login p99 idle {[f'{_p99(s):.0f}' for s in out['trusted_idle_ms']]} ms, during a flood "
            f"from 51 addresses {[f'{_p99(s):.0f}' for s in out['trusted_flood_ms']]} ms "
            f"({out['trusted_refused']} refused)")

    def passkey_flood(self, srv: Server, out: dict[str, Any]) -> None:
        """Rows 11c and 11d: the same user signing in with a passkey (a software authenticator, as
        in the tests: P-256, ``none`` attestation), idle against a password login (no bcrypt: the
        ratio is the hash it skips), and during row 11's flood against idle."""
        cfg = self.cfg
        token = login_ours(srv.port, STORM_USER)
        key = SoftAuthenticator()
        auth = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        status, body = http_request(srv.port, "POST", "/users/me/passkeys/options", b"", auth)
        assert status == 200, body
        status, body = http_request(srv.port, "POST", "/users/me/passkeys",
                                    json.dumps({"credential": key.create(json.loads(body))}).encode(), auth)
        assert status == 201, body

        def passkey_login() -> int:
            status, options = _json_post(srv.port, "/users/login/passkey/options", {})
            if status != 200:
                return status
            return _json_post(srv.port, "/users/login/passkey", {"credential": key.get(options)})[0]

        out.update(passkey_idle_ms=[], passkey_flood_ms=[], password_idle_ms=[], passkey_refused=0)
        for _ in range(cfg.reps):
            out["password_idle_ms"].append(timed_ms(lambda: login_ours(srv.port, STORM_USER), cfg.login_samples))
            out["passkey_idle_ms"].append(timed_ms(passkey_login, cfg.login_samples))
            stop = threading.Event()
            answers: Counter[int] = Counter()
            flood = [threading.Thread(target=_flood, args=(srv.port, stop, answers, i < 2)) for i in range(8)]
            samples, refused = _logins_during(cfg, flood, stop, passkey_login)
            out["passkey_refused"] += refused
            out["passkey_flood_ms"].append(samples)
        say(f"  passkey login median {[f'{statistics.median(s):.1f}' for s in out['passkey_idle_ms']]} ms "
            f"(password {[f'{statistics.median(s):.0f}' for s in out['password_idle_ms']]} ms); p99 idle "
            f"{[f'{_p99(s):.0f}' for s in out['passkey_idle_ms']]} ms, during the flood "
            f"{[f'{_p99(s):.0f}' for s in out['passkey_flood_ms']]} ms ({out['passkey_refused']} refused)")

    def register(self) -> dict[str, Any]:
        """32 clients registering new users, small store vs large, interleaved; fresh stores every repetition."""
        return self._register_pairs(lambda n: self.ours(n), "r", "register")

    def _register_pairs(self, start: Callable[[int], Server], prefix: str, label: str) -> dict[str, Any]:
        """Per repetition: a fresh server per size from ``start``, the register load interleaved
        between them (``prefix`` keeps each run's usernames apart)."""
        cfg = self.cfg
        out: dict[str, list[dict[str, Any]]] = {str(n): [] for n in cfg.register_sizes}
        for rep in range(cfg.reps):
            try:
                targets: dict[str, Target] = {}
                for k, n in enumerate(cfg.register_sizes):
                    srv = start(n)
                    self.loader.run(srv.port, RequestSpec("/health"), cfg.connections, cfg.warmup)
                    targets[str(n)] = (srv.port, RequestSpec(
                        "/users/register", method="POST", headers={"Content-Type": "application/json"},
                        body=json.dumps({"username": "{n}", "password": PASSWORD}),
                        unique=True, prefix=f"{prefix}{rep}{'ab'[k]}",
                    ))
                # No registering warm-up: it would grow the small store before it is measured.
                res = interleaved(self.loader, targets, replace(cfg, reps=1), cfg.register_connections, warm=False)
            finally:
                stop_all()
            for n, results in res.items():
                out[n] += results
        for n, results in out.items():
            say(f"{label}, {int(n):,} users: {_brief(results)}")
        return out

    def ours_pg(self, database_url: str, name: str) -> Server:
        """Ours with DATABASE_URL (one worker, like every other server here); no store file is used."""
        workdir = self.workdir / "servers" / f"{name}-{self._logs + 1:03d}"
        workdir.mkdir(parents=True)
        return start_ours(self.ours_dir, workdir / "users.json", self.secret, 4, self.log_path(name),
                          extra_env={"DATABASE_URL": database_url, "DATABASE_POOL_SIZE": "10"})

    def postgres(self) -> dict[str, Any] | str:
        """/users/me and /health on ours with the PostgreSQL backend, and the peer moved onto the same
        server (SQLAlchemy + asyncpg), interleaved; the revocation delay between two instances on one
        database; register throughput at two store sizes. A missing PostgreSQL makes the rows n/a."""
        cfg = self.cfg
        try:
            pg = PgAdmin(OURS_PYTHON, self.ours_dir)
        except PgUnavailable as exc:
            say(f"PostgreSQL rows: n/a ({exc})")
            return f"n/a: {exc}"
        out: dict[str, Any] = {}
        try:
            sizes = sorted({cfg.compare_size, *cfg.register_sizes})
            base = {}
            for n in sizes:
                t = time.monotonic()
                base[n] = pg.base(self.stores.fresh(n))
                say(f"PostgreSQL: {n:,} users imported in {time.monotonic() - t:.1f} s")
            n = cfg.compare_size
            try:
                srv = self.ours_pg(pg.url(pg.create(base[n])), "ours-pg")
                auth = {"Authorization": f"Bearer {login_ours(srv.port, username_of(1))}"}
                targets: dict[str, Target] = {"health": (srv.port, RequestSpec("/health")),
                                              "me": (srv.port, RequestSpec("/users/me", headers=auth))}
                if self.with_peer:
                    peer_db = pg.create()
                    seed_peer(pg.url(peer_db, "postgresql+asyncpg"), n, PASSWORD)
                    peer = start_peer_on(pg.url(peer_db, "postgresql+asyncpg"), self.secret, self.log_path("peer-pg"))
                    token = login_peer(peer.port, f"{username_of(1)}@example.com")
                    targets["peer health"] = (peer.port, RequestSpec("/health"))
                    targets["peer me"] = (peer.port, RequestSpec("/users/me", headers={
                        "Authorization": f"Bearer {token}"}))
                say(f"PostgreSQL, {n:,} users: interleaving {len(targets)} targets")
                res = interleaved(self.loader, targets, cfg)
                out.update(size=n, health=res["health"], me=res["me"], peer_health=res.get("peer health"),
                           peer_me=res.get("peer me"))
                say(f"  ours on PostgreSQL: /health {_brief(res['health'])}; /users/me {_brief(res['me'])}")
                if self.with_peer:
                    say(f"  peer on PostgreSQL: /health {_brief(res['peer health'])}; "
                        f"/users/me {_brief(res['peer me'])}")
            finally:
                stop_all()
            out["revocation_ms"] = self.revocation(pg, base[n])
            out["register"] = self.register_pg(pg, base)
        finally:
            stop_all()
            pg.drop_all()
        return out

    def revocation(self, pg: PgAdmin, template: str) -> list[float]:
        """Two instances on one database: log in on A, read /users/me on B (B caches the session),
        log out on A; the time from A's 204 to B's first 401, polling B on one connection."""
        url = pg.url(pg.create(template))
        delays: list[float] = []
        with self.ours_pg(url, "ours-pg-a") as a, self.ours_pg(url, "ours-pg-b") as b:
            poll = http.client.HTTPConnection("127.0.0.1", b.port, timeout=30)
            try:
                for i in range(self.cfg.revocation_trials):
                    token = login_ours(a.port, username_of(1 + i % 10))
                    auth = {"Authorization": f"Bearer {token}"}
                    for _ in range(2):
                        poll.request("GET", "/users/me", headers=auth)
                        status = poll.getresponse()
                        status.read()
                        if status.status != 200:
                            raise RuntimeError(f"revocation: B answered {status.status} before the logout")
                    status_a, body = http_request(a.port, "POST", "/users/logout", headers=auth)
                    if status_a != 204:
                        raise RuntimeError(f"revocation: logout on A gave {status_a}: {body!r}")
                    t0 = time.perf_counter()
                    while True:
                        poll.request("GET", "/users/me", headers=auth)
                        answer = poll.getresponse()
                        answer.read()
                        elapsed = (time.perf_counter() - t0) * 1000
                        if answer.status == 401 or elapsed > 35_000:
                            break
                    delays.append(elapsed)
            finally:
                poll.close()
        say(f"  revocation delay over {len(delays)} trials: median {statistics.median(delays):.1f} ms, "
            f"p99 {_p99(delays):.1f} ms, max {max(delays):.1f} ms")
        return delays

    def register_pg(self, pg: PgAdmin, base: dict[int, str]) -> dict[str, list[dict[str, Any]]]:
        """As register(), on fresh copies of the PostgreSQL base databases."""
        return self._register_pairs(lambda n: self.ours_pg(pg.url(pg.create(base[n])), f"ours-pg-register-{n}"),
                                    "p", "register on PostgreSQL")


# --- metadata, chart, main ------------------------------------------------------------------


def _busy_cpu_seconds() -> float:
    """Non-idle CPU time of the whole machine so far (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU time of this process and of every child it has reaped (servers, wrk, pip...)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def machine_busy(seconds: float = 1.0) -> float:
    """Fraction of the machine's cores busy over ``seconds`` (nothing of ours runs meanwhile)."""
    before, t = _busy_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (_busy_cpu_seconds() - before) / ((time.monotonic() - t) * (os.cpu_count() or 1))


def wait_until_quiet(limit: float) -> float:
    """Wait up to ``limit`` seconds for the other processes on the machine to go quiet."""
    deadline = time.monotonic() + limit
    busy = machine_busy()
    while busy > QUIET_BUSY and time.monotonic() < deadline:
        say(f"machine {busy:.0%} busy with other work; waiting for it to go quiet")
        time.sleep(10)
        busy = machine_busy()
    return busy


QUIET_BUSY = 0.10  # fraction of all cores that other processes may use before we warn


def _versions(python: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys, platform\n"
        "out = {'python': platform.python_version()}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=False)
    return dict(json.loads(res.stdout)) if res.returncode == 0 else {}


def machine_meta(loader: Loader, with_peer: bool) -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = _versions(OURS_PYTHON, ["fastapi", "uvicorn", "pydantic", "pyjwt", "bcrypt", "starlette", "uvloop",
                                       "httptools"])
    if with_peer:
        peer = _versions(PEER_PYTHON, ["fastapi-users", "fastapi-users-db-sqlalchemy", "fastapi", "sqlalchemy",
                                       "aiosqlite", "asyncpg", "pwdlib", "argon2-cffi"])
        peer.pop("python", None)  # the same interpreter as ours
        versions.update({f"peer {k}": v for k, v in peer.items()})
    if loader.wrk:
        wrk = subprocess.run([loader.wrk, "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
        versions["wrk"] = " ".join(wrk.split()[1:2])
    return {
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT)
                                                      if sys.executable.startswith(str(ROOT)) else sys.executable,
                                                      "bench/run.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": versions,
        "load_tool": loader.tool,
        "warnings": [],
    }


def draw_chart(json_path: Path, png_path: Path) -> bool:
    """Run chart.py with an interpreter that has matplotlib (the bench venv first)."""
    for python in (PEER_PYTHON, Path(sys.executable)):
        if not python.exists():
            continue
        res = subprocess.run([str(python), str(BENCH / "chart.py"), str(json_path), str(png_path)],
                             capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return True
    say("WARNING: no chart (matplotlib not available: run without --no-peer to build bench/.venv-peer)")
    return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 s runs, one repetition (smoke test)")
    p.add_argument("--out", type=Path, default=BENCH, help="where RESULTS.md, results.json, results.png go")
    p.add_argument("--no-peer", action="store_true", help="skip the fastapi-users peer (and its venv)")
    p.add_argument("--duration", type=float, help="seconds per measured run (default 8, quick 1)")
    p.add_argument("--reps", type=int, help="repetitions per point (default 3, quick 1)")
    p.add_argument("--ours-dir", type=Path, default=ROOT, help="directory holding app.py (default: repo root)")
    p.add_argument("--keep-workdir", action="store_true", help="keep stores and server logs for inspection")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to this long for other processes to stop using the CPUs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.duration:
        cfg = replace(cfg, duration=args.duration)
    if args.reps:
        cfg = replace(cfg, reps=args.reps)
    ours_dir = args.ours_dir.resolve()
    if not (ours_dir / "app.py").exists():
        say(f"ERROR: {ours_dir}/app.py not found: nothing to benchmark")
        return 2
    if shutil.which("taskset") is None:
        say("ERROR: taskset (util-linux) not found")
        return 2
    if not OURS_PYTHON.exists():
        say(f"ERROR: {OURS_PYTHON} missing: create the service's venv first")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below

    warnings: list[str] = []
    wrk = ensure_wrk(say)
    if not wrk:
        banner = "wrk could not be installed: USING THE PYTHON LOAD GENERATOR; it may saturate before the server"
        print("\n" + "!" * 100 + f"\n!!! {banner}\n" + "!" * 100 + "\n", flush=True)
        warnings.append(banner)
    loader = Loader(wrk, OURS_PYTHON)
    with_peer = not args.no_peer
    if with_peer:
        ensure_peer_venv(say)
    meta = machine_meta(loader, with_peer)
    meta["warnings"] = warnings
    busy = wait_until_quiet(args.wait_quiet)
    meta["busy_at_start"] = round(busy, 3)
    if busy > QUIET_BUSY:
        warnings.append(f"machine {busy:.0%} busy with other work at start: figures are noisy")
        say("WARNING: " + warnings[-1])
    busy0, own0, wall0 = _busy_cpu_seconds(), _own_cpu_seconds(), time.monotonic()

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    raw: dict[str, Any] = {"meta": meta, "config": {**asdict(cfg)}}
    say(f"work directory {workdir}; load generator {loader.tool}; "
        f"{'QUICK ' if cfg.quick else ''}{cfg.reps} x {cfg.duration:g} s per point")
    ok = False
    try:
        bench = Bench(cfg, loader, ours_dir, workdir, with_peer)
        raw["hash_cost12_seconds"] = time_single_hash(OURS_PYTHON, bench.stores.storm_hash, cfg.hash_samples)
        say(f"one bcrypt cost-12 check on one core: {statistics.median(raw['hash_cost12_seconds']) * 1000:.0f} ms")
        raw["ours"], raw["peer"] = bench.throughput()
        raw["ours"]["storm"] = bench.storm()
        raw["ours"]["abuse"] = bench.abuse()
        raw["ours"]["register"] = bench.register()
        raw["ours"]["audit"] = bench.audit()
        raw["ours"]["postgres"] = bench.postgres()
        ok = True
    finally:
        stop_all()
        if not ok or args.keep_workdir:
            say(f"work directory kept: {workdir} (server logs in logs/)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    meta["wall_seconds"] = time.monotonic() - T0
    other = max(0.0, (_busy_cpu_seconds() - busy0) - (_own_cpu_seconds() - own0))
    meta["other_cpu_share"] = round(other / (time.monotonic() - wall0), 3)
    if meta["other_cpu_share"] > QUIET_BUSY:
        warnings.append(f"other processes used {meta['other_cpu_share']:.0%} of a core on average during the "
                        "measurements: they competed with the servers and wrk, figures are noisy")
        say("WARNING: " + warnings[-1])
    rows = report.build_rows(raw)
    out_dir = args.out.resolve()
    json_path = report.write_json(out_dir, raw, rows)
    chart = draw_chart(json_path, out_dir / "results.png")
    md_path = report.write_markdown(out_dir, raw, rows, "results.png" if chart else None)
    print()
    print(report.text_table(report.HEADER, [r.cells() for r in rows]))
    for r in rows:
        if r.note:
            print(f"  {r.num}: {r.note}")
    print(f"\nwrote {md_path}, {json_path}" + (f", {out_dir / 'results.png'}" if chart else "")
          + f" in {meta['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
