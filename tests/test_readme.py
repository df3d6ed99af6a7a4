"""The README's HTTPie sessions, run as a person would type them, against a real uvicorn.

Each ``$ http …`` line of a console block runs in a pseudo-terminal (HTTPie behaves as in a
terminal: it ignores stdin and prints the status line and headers); the answer must match the
status line and the JSON shown under it. The only changes: the server's port, and the tokens a
reader pastes where the README says ``<token>``, ``<refresh token>``, ``<anonymous token>``,
``<mfa token>`` or ``<secret>``. A ``$ python -c …`` line (the TOTP walkthrough's authenticator
app) runs too, with the venv's Python, and its output is what the reader pastes as ``<code>``.
"""

import json
import os
import pty
import re
import shlex
import subprocess
import sys
from pathlib import Path

from server import ROOT, Server

HTTP = Path(sys.executable).parent / "http"
VARYING = {"device_token", "id", "token", "refresh_token", "access_token", "viewed_at", "secret", "otpauth_uri",
           "mfa_token", "recovery_codes"}
ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")


def sessions(readme: str) -> list[tuple[str, str, object]]:
    """(command, expected status line, expected JSON or None) for each ``$ http`` in the README."""
    steps = []
    for block in re.findall(r"```console\n(.*?)```", readme, re.DOTALL):
        for chunk in re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]:
            command, _, answer = chunk.partition("\n")
            if command.startswith("python "):
                steps.append((command, "", None))
                continue
            if not command.startswith("http "):
                continue
            status = answer.splitlines()[0]
            body = answer[answer.find("\n\n"):].strip() if "\n\n" in answer else ""
            steps.append((command, status, json.loads(body) if body else None))
    return steps


def run_in_terminal(argv: list[str]) -> str:
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT,
                               env={**os.environ, "COLUMNS": "200", "HOME": str(ROOT / ".venv")})
    os.close(follower)
    output = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the terminal closed
            break
        if not data:
            break
        output += data
    os.close(leader)
    assert process.wait(30) == 0 or b"HTTP/1.1 4" in output, output.decode(errors="replace")
    return ANSI.sub(b"", output).decode().replace("\r", "")


def matches(expected: object, actual: object) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and expected.keys() == actual.keys() and all(
            key in VARYING or matches(value, actual[key]) for key, value in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(map(matches, expected, actual))
    return expected == actual


def test_readme_httpie_sessions(tmp_path: Path) -> None:
    steps = sessions((ROOT / "README.md").read_text())
    assert len(steps) >= 12, "the README's HTTPie sessions were not found"
    pasted: dict[str, str] = {}
    with Server(tmp_path / "users.json") as server:
        for command, status, expected in steps:
            for placeholder, value in pasted.items():
                command = command.replace(placeholder, value)
            assert "<" not in command, f"nothing to paste for {command}"
            if command.startswith("python "):
                done = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True,
                                      cwd=ROOT, timeout=30, check=True)
                pasted["<code>"] = done.stdout.strip()
                continue
            argv = shlex.split(command.replace("127.0.0.1:8000", server.url.removeprefix("http://")))
            output = run_in_terminal([str(HTTP), *argv[1:]])
            assert output.splitlines()[0] == status, (command, output)
            body = output[output.find("\n\n"):].strip() if "\n\n" in output else ""
            actual = json.loads(body) if body else None
            assert matches(expected, actual), (command, expected, actual)
            if isinstance(actual, dict) and "token" in actual:
                pasted |= {"<token>": actual["token"], "<refresh token>": actual["refresh_token"]}
            if isinstance(actual, dict) and "access_token" in actual:
                pasted["<anonymous token>"] = actual["access_token"]
            for key in ("mfa_token", "secret"):  # the TOTP walkthrough
                if isinstance(actual, dict) and key in actual:
                    pasted[f"<{key.replace('_', ' ')}>"] = actual[key]
