"""Smoke test of the benchmark harness: `bench/run.py --quick` runs end to end.

It checks the harness, not the service's speed: the run must exit 0, print
every row of the table and write every key of results.json. Figures are never
asserted (a quick run on a busy CI machine measures nothing meaningful).
The first run on a machine also builds bench/.venv-peer (about a minute).
"""

import json
import subprocess
import sys
from pathlib import Path

from server import ROOT

# (key in results.json, measure as printed in the table), in table order.
ROWS = [
    ("me_over_health", "GET /users/me ÷ GET /health, req/s, same server"),
    ("ours_over_peer", "GET /users/me req/s, ours ÷ peer"),
    ("me_size_scaling", "GET /users/me req/s, large store ÷ small store"),
    ("storm_p99", "GET /health p99 during login storm ÷ idle"),
    ("storm_rps", "GET /health req/s during login storm ÷ idle"),
    ("storm_logins", "logins/s during storm (with /health load) ÷ (1 / one hash)"),
    ("storm_alone_logins", "logins/s, storm alone (no /health load) ÷ (1 / one hash)"),
    ("register_scaling", "POST /users/register req/s (32 clients), large ÷ small store"),
    ("rss_mb", "process RSS after load (VmRSS), MB"),
    ("startup_s", "start-up, spawn → /health 200, s"),
    ("flood_login_p99", "real user's login p99 during a login flood ÷ idle"),
    ("trusted_flood_login_p99", "trusted user's login p99 (device token) during a flood ÷ idle"),
    ("passkey_over_password", "passkey logins/s ÷ password logins/s, one client"),
    ("passkey_flood_login_p99", "passkey login p99 during a login flood ÷ idle"),
    ("list_health_p99", "GET /health p99 while 4 clients page /users/list ÷ idle"),
    ("login_latency_ms", "POST login latency, one client, median ms"),
    ("anonymous_login_rps", "POST /anonymous-login req/s"),
    ("cart_put_rps", "PUT /cart/items/1 req/s (registered user)"),
    ("item_view_over_health", "GET /items/{id} (a view) ÷ GET /health, req/s, same server"),
    ("items_history_over_health", "GET /items/ with a full history ÷ GET /health, req/s, same server"),
    ("metrics_cost", "GET /users/me req/s, metrics on ÷ off"),
    ("audit_me_over_health", "GET /users/me ÷ GET /health, req/s, audit log being written"),
    ("audit_login_p99", "POST login p99, one client, audit log on ÷ off"),
    ("pg_me_over_health", "PostgreSQL: GET /users/me ÷ GET /health, req/s, same server"),
    ("pg_ours_over_peer", "PostgreSQL: GET /users/me req/s, ours ÷ peer (SQLAlchemy + asyncpg)"),
    ("pg_revocation_p99_ms", "PostgreSQL: revocation delay, logout on one instance → 401 on another, p99 ms"),
    ("pg_register_scaling", "PostgreSQL: POST /users/register req/s (32 clients), large ÷ small store"),
]


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def test_quick_bench_prints_every_row_and_writes_every_key(tmp_path: Path) -> None:
    real_results = ROOT / "bench" / "RESULTS.md"
    before = _mtime(real_results)

    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]

    for _key, measure in ROWS:
        assert measure in proc.stdout, f"row {measure!r} missing from the table:\n{proc.stdout[-3000:]}"
    for header in ("measure", "target", "ours", "peer", "pass"):
        assert header in proc.stdout

    doc = json.loads((tmp_path / "results.json").read_text())
    assert [row["key"] for row in doc["rows"]] == [key for key, _ in ROWS]
    for row in doc["rows"]:
        assert {"num", "measure", "at", "target", "ours", "peer", "verdict"} <= row.keys()
        assert row["verdict"] in {"pass", "FAIL", "info", "INVALID", "n/a"} or row["verdict"].startswith("n/a")
    assert {"meta", "config", "hash_cost12_seconds", "ours", "peer", "rows"} <= doc.keys()
    assert {"command", "date", "nproc", "cpu_model", "versions", "load_tool", "wall_seconds"} <= doc["meta"].keys()
    assert {"python", "fastapi", "uvicorn", "pydantic", "pyjwt", "bcrypt", "peer fastapi-users"} <= (
        doc["meta"]["versions"].keys())
    assert {"sizes", "extras", "personal", "metrics_off_me", "rss_kib", "startup_seconds", "storm", "abuse", "register",
            "postgres", "audit"} <= doc["ours"].keys()
    pg = doc["ours"]["postgres"]  # the PostgreSQL rows were measured (make test starts PostgreSQL)
    assert isinstance(pg, dict), pg
    assert {"health", "me", "peer_me", "revocation_ms", "register"} <= pg.keys()
    assert {"idle", "storm", "logins_per_s", "alone_logins_per_s", "login_latency_ms"} <= doc["ours"]["storm"].keys()
    assert {"size", "health", "me", "login_latency_ms"} <= doc["peer"].keys()

    assert (tmp_path / "RESULTS.md").read_text().startswith("# Benchmark results")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _mtime(real_results) == before, "the quick run must not touch bench/RESULTS.md"
