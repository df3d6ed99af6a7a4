"""Schemathesis over the live service's /openapi.json: what the document promises is what the
routes answer (no 5xx, no undeclared status, declared content types and schemas).

Runs the ``st`` CLI (schemathesis 4.x, pinned in requirements-dev.txt) against a real uvicorn, in
two time-boxed passes that together stay under a minute: with a registered token, first without
the operations that end the token's session (so the rest is tested logged in), then everything.
The lockout is set generously: fuzzed wrong passwords must not turn the run into 429s (which are
declared, but test less). One worker: with two, Schemathesis' threads call ``ast.parse`` at once
(Hypothesis describing a filter's lambda), which on Python 3.11 now and then fails inside
CPython ("SystemError: AST constructor recursion depth mismatch", python/cpython#106905): it
failed a CI run here on 2026-12-03, on no answer of ours.
"""

import subprocess
import sys
from pathlib import Path

import httpx

from server import Server

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
ST = Path(sys.executable).with_name("st")
PASSES = (  # (seconds, extra arguments)
    (26, ["--exclude-path-regex", "^/users/logout"]),
    (18, []),
)


def _token(url: str, username: str) -> str:
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/users/register", json={"username": username, "password": "password123"}).status_code == 201
        response = client.post("/users/login", json={"username": username, "password": "password123"})
        assert response.status_code == 200, response.text
        return response.json()["token"]


def test_the_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    with Server(tmp_path / "users.json", LOGIN_MAX_FAILURES="1000000", ANONYMOUS_LOGIN_RATE_LIMIT="0") as server:
        for index, (seconds, extra) in enumerate(PASSES):
            token = _token(server.url, f"fuzz{index}")
            command = [str(ST), "run", f"{server.url}/openapi.json", "--checks", CHECKS, "--max-time", str(seconds),
                       "--seed", "14", "--generation-database", "none", "--workers", "1",
                       "-H", f"Authorization: Bearer {token}", *extra]
            run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=seconds + 15,
                                 stdin=subprocess.DEVNULL, cwd=tmp_path)  # cwd: st's own files go there
            assert run.returncode == 0, f"{' '.join(command[:8])} ...\n{run.stdout[-8000:]}\n{run.stderr[-2000:]}"
            assert "Test cases:" in run.stdout and "failure" not in run.stdout.split("Test cases:")[-1], run.stdout
