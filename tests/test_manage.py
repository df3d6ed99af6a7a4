"""The operator's command line (manage.py) against a running server, on both backends: its changes
take effect without a restart (``grant-admin``, ``disable``, ``set-password``, ``end-sessions``),
an unknown name exits non-zero with a message, and nothing it prints is a hash or a password.
"""

import time
from pathlib import Path

import httpx
import pytest
from test_admin import manage
from test_audit import env_of

from conftest import bearer, make_settings
from server import Server

PASSWORD = "password123"


def until(check, seconds: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``check()`` (a change another process made), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the running server did not see the change"
        time.sleep(0.02)


def status(client: httpx.Client, path: str, token: str) -> int:
    return client.get(path, headers=bearer(token)).status_code


def test_commands_take_effect_on_a_running_server(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    env = env_of(settings)
    with Server(settings.users_file, workers=2, env=env) as server, \
            httpx.Client(base_url=server.url, timeout=20, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        created = manage(env, "create-user", "root", "--password-stdin", stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr
        assert client.post("/users/register", json={"username": "marko", "password": PASSWORD}).status_code == 201
        root = client.post("/users/login", json={"username": "root", "password": PASSWORD}).json()
        marko = client.post("/users/login", json={"username": "marko", "password": PASSWORD}).json()
        for _ in range(10):  # cached by both workers
            assert status(client, "/admin/users", root["token"]) == 403

        granted = manage(env, "grant-admin", "ROOT")  # a name as logins take it: case-insensitive
        assert granted.returncode == 0 and "granted" in granted.stdout, granted.stderr
        until(lambda: all(status(client, "/admin/users", root["token"]) == 200 for _ in range(10)))

        listed = manage(env, "list", "--query", "ma")
        assert listed.returncode == 0 and "marko" in listed.stdout and "root" not in listed.stdout

        assert manage(env, "disable", "marko").returncode == 0
        until(lambda: all(status(client, "/users/me", marko["token"]) == 401 for _ in range(10)))
        refused = client.post("/users/login", json={"username": "marko", "password": PASSWORD})
        assert (refused.status_code, refused.json()) == (403, {"detail": "Account disabled"})
        assert manage(env, "enable", "marko").returncode == 0
        marko = client.post("/users/login", json={"username": "marko", "password": PASSWORD}).json()
        assert "access_token" not in marko and marko["token"]

        assert manage(env, "end-sessions", "marko").returncode == 0
        until(lambda: status(client, "/users/me", marko["token"]) == 401)

        changed = manage(env, "set-password", "marko", "--password-stdin", stdin="a-new-password\n")
        assert changed.returncode == 0, changed.stderr
        assert client.post("/users/login", json={"username": "marko", "password": PASSWORD}).status_code == 401
        assert client.post("/users/login", json={"username": "marko", "password": "a-new-password"}).status_code == 200

        assert manage(env, "unlock", "marko").returncode == 0
        assert manage(env, "revoke-admin", "root").returncode == 0
        until(lambda: status(client, "/admin/users", root["token"]) == 403)

        assert manage(env, "grant-admin", "root").returncode == 0
        until(lambda: status(client, "/admin/audit", root["token"]) == 200)
        audit = client.get("/admin/audit", params={"limit": 100}, headers=bearer(root["token"])).json()["events"]
        via_cli = [e["type"] for e in audit if e["detail"].get("via") == "cli"]
        assert via_cli == ["admin_grant", "admin_revoke", "admin_unlock", "password_changed", "admin_end_sessions",
                           "admin_enable", "admin_disable", "admin_grant", "register"]
        for output in (created, granted, listed, changed):
            assert "$2b$" not in output.stdout + output.stderr and PASSWORD not in output.stdout + output.stderr


def test_an_unknown_name_or_a_bad_password_exits_non_zero(tmp_path: Path) -> None:
    env = env_of(make_settings(tmp_path))
    for command in ("grant-admin", "revoke-admin", "disable", "enable", "unlock", "end-sessions"):
        answer = manage(env, command, "nobody")
        assert answer.returncode == 1 and "no account named 'nobody'" in answer.stderr, (command, answer.stderr)
    short = manage(env, "create-user", "marko", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "password" in short.stderr
    bad = manage(env, "create-user", "no spaces!", "--password-stdin", stdin=PASSWORD + "\n")
    assert bad.returncode == 2 and "username" in bad.stderr
    assert manage(env, "create-user", "marko", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    taken = manage(env, "create-user", "MARKO", "--password-stdin", stdin=PASSWORD + "\n")
    assert taken.returncode == 1 and "taken" in taken.stderr
    assert manage(env, "create-user", "Marko", "--exists-ok").returncode == 0  # make admin's first step
    assert manage(env, "set-password", "nobody", "--password-stdin", stdin=PASSWORD + "\n").returncode == 1


@pytest.mark.json_only
def test_make_admin_creates_the_first_administrator(tmp_path: Path) -> None:
    """``make admin NAME=...``'s two steps: create if missing (prompted password), then grant."""
    env = env_of(make_settings(tmp_path))
    assert manage(env, "create-user", "boss", "--exists-ok", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    assert manage(env, "grant-admin", "boss").returncode == 0
    listed = manage(env, "list")
    assert listed.returncode == 0 and "boss  [admin]" in listed.stdout
