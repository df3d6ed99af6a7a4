"""Structured logs (issue 21), on a real uvicorn process: ``LOG_FORMAT=json`` gives one JSON object a
line, the access line carries the id the response carried, uvicorn's own access line is gone, and no
token, password or hash is written after a session of logins, refreshes and a password change."""

import json
from pathlib import Path

import httpx

from conftest import bearer
from server import Server

ACCESS_FIELDS = {"time", "level", "request_id", "method", "route", "status", "duration_ms", "client"}


def test_json_log_lines_carry_the_request_id_and_no_secret(tmp_path: Path) -> None:
    secrets_seen: list[str] = ["password123", "new-password-456", "wrong-password"]
    ids: dict[str, int] = {}  # request id -> status
    with Server(tmp_path / "users.json", LOG_FORMAT="json") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        secrets_seen.append(server.env["JWT_SECRET"])

        def call(method: str, path: str, **kwargs: object) -> httpx.Response:
            response = http.request(method, path, **kwargs)  # type: ignore[arg-type]
            ids[response.headers["x-request-id"]] = response.status_code
            return response

        assert call("POST", "/users/register", json={"username": "marko", "password": "password123"}).status_code == 201
        login = call("POST", "/users/login", json={"username": "marko", "password": "password123"}).json()
        assert call("POST", "/users/login", json={"username": "marko", "password": "wrong-password"}).status_code == 401
        refreshed = call("POST", "/users/refresh", json={"refresh_token": login["refresh_token"]}).json()
        assert call("POST", "/users/me/password", headers=bearer(refreshed["token"]),
                    json={"current_password": "password123", "new_password": "new-password-456"}).status_code == 204
        again = call("POST", "/users/login", json={"username": "marko", "password": "new-password-456"}).json()
        assert call("GET", "/users/me", headers=bearer(again["token"])).status_code == 200
        mine = call("GET", "/users/me", headers={**bearer(again["token"]), "X-Request-ID": "client-chosen.1"})
        assert mine.headers["x-request-id"] == "client-chosen.1"
        assert call("GET", "/items/42", headers=bearer(again["token"])).status_code == 404
        for answer in (login, refreshed, again):
            secrets_seen += [answer["token"], answer["refresh_token"]]
        server.stop()  # every line flushed; the shutdown lines too

        stdout, stderr = server.stdout, server.stderr
    access: list[dict] = []
    for line in (stdout + stderr).splitlines():
        doc = json.loads(line)  # every line, of both streams, is one JSON object
        assert {"time", "level", "message", "pid"} <= doc.keys(), line
        if doc["logger"] == "farm.access":
            access.append(doc)
    assert "Application startup complete" in stderr
    assert not any('"logger": "uvicorn.access"' in line for line in stdout.splitlines())  # not doubled
    assert len(access) == len([line for line in stdout.splitlines() if '"route"' in line])
    by_id = {doc["request_id"]: doc for doc in access}
    for request_id, status in ids.items():  # every answered request: its line, with the id it answered
        doc = by_id[request_id]
        assert ACCESS_FIELDS <= doc.keys()
        assert doc["status"] == status and doc["client"] == "127.0.0.1" and doc["duration_ms"] >= 0
    assert by_id["client-chosen.1"]["route"] == "/users/me"
    assert [d["route"] for d in access if d["status"] == 404] == ["/items/{item_id}"]  # the template, not the path
    everything = stdout + stderr
    for secret in secrets_seen:
        assert secret not in everything
    assert "$2b$" not in everything  # no bcrypt hash


def test_text_log_is_uvicorns_line_with_the_id_once(tmp_path: Path) -> None:
    with Server(tmp_path / "users.json") as server, httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.get("/health", headers={"X-Request-ID": "text-1"})
        server.stop()
        lines = [line for line in server.stdout.splitlines() if '"GET /health HTTP/1.1"' in line]
    assert response.headers["x-request-id"] == "text-1"
    assert len([line for line in lines if line.endswith("id=text-1")]) == 1  # ours, and not uvicorn's as well
    assert all(" ms id=" in line for line in lines)  # no line of uvicorn's own (it has no id)
