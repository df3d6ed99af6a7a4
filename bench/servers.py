"""Starting, watching and stopping the servers under test, and the peer's venv.

Every server is a single uvicorn process (one worker, no access log, uvloop +
httptools) pinned to CPU 0 with ``taskset``; the load generators run on CPU 1.
``taskset`` execs the command, so the PID we hold is uvicorn's own: it is what
we read RSS from and what we stop. Nothing is ever killed by name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OURS_PYTHON = ROOT / ".venv" / "bin" / "python"
PEER_DIR = BENCH / "peer"
PEER_VENV = BENCH / ".venv-peer"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_REQUIREMENTS = (PEER_DIR / "requirements.txt", BENCH / "requirements-tools.txt")

SERVER_CPU = "0"
LOAD_CPU = "1"

_live: list[Server] = []


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_request(
    port: int, method: str, path: str, body: bytes | None = None,
    headers: dict[str, str] | None = None, timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One plain HTTP request on loopback (set-up calls only, never load)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A running server process and what we know about it."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ready_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def proc_status(self, key: str) -> int:
        """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM this PID (a clean stop lets ours fold its journal), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in _live:
            _live.remove(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def stop_all() -> None:
    """Stop every server this harness started (on error or interrupt)."""
    while _live:  # stop() removes the server from _live
        _live[-1].stop(timeout=10)


def spawn(
    name: str, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path,
    timeout: float = 120.0,
) -> Server:
    """Start ``argv`` on the server CPU and wait until GET /health answers 200.

    ``ready_seconds`` is spawn-to-first-200, the start-up time we report.
    """
    port = int(argv[argv.index("--port") + 1])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, *argv], cwd=cwd, env=env,
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    log.close()
    server = Server(name, proc, port, log_path)
    _live.append(server)
    deadline = t0 + timeout
    while True:
        if proc.poll() is not None:
            _live.remove(server)
            raise RuntimeError(f"{name} exited with {proc.returncode} before answering:\n{server.log_tail()}")
        try:
            status, _ = http_request(port, "GET", "/health", timeout=2)
            if status == 200:
                server.ready_seconds = time.monotonic() - t0
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not answer /health within {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.005)


def uvicorn_argv(python: Path, port: int) -> list[str]:
    """The one uvicorn command line every server gets, so they differ only in the app."""
    return [
        str(python), "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--no-access-log", "--loop", "uvloop", "--http", "httptools",
    ]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def start_ours(
    ours_dir: Path, store: Path, secret: str, bcrypt_rounds: int, log_path: Path,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """``uvicorn app:app`` from the service's directory, on a store of our making."""
    env = _base_env()
    env.update({
        "USERS_FILE": str(store),
        "JWT_SECRET": secret,
        "BCRYPT_ROUNDS": str(bcrypt_rounds),
        "ANONYMOUS_LOGIN_RATE_LIMIT": "0",  # the load comes from one address: budgets off,
        "ANONYMOUS_LOGIN_GLOBAL_LIMIT": "0",  # so that throughput is measured, not the limits
        "LOGIN_RATE_LIMIT": "0",
        "REGISTER_RATE_LIMIT": "0",
    })
    env.update(extra_env or {})
    python = ours_dir / ".venv" / "bin" / "python"
    if not python.exists():
        python = OURS_PYTHON
    return spawn(f"ours({store.parent.name})", uvicorn_argv(python, free_port()), ours_dir, env, log_path)


def start_peer(db_path: Path, secret: str, log_path: Path) -> Server:
    """The fastapi-users peer, from bench/peer, on a seeded SQLite file."""
    env = _base_env()
    env.update({
        "PEER_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "PEER_JWT_SECRET": secret,
        "PEER_TOKEN_LIFETIME": "7200",
    })
    return spawn("peer", uvicorn_argv(PEER_PYTHON, free_port()), PEER_DIR, env, log_path)


def seed_peer(db_path: Path, n_users: int, password: str) -> None:
    env = _base_env()
    env["PEER_DATABASE_URL"] = f"sqlite+aiosqlite:///{db_path}"
    subprocess.run(
        [str(PEER_PYTHON), "seed.py", "--users", str(n_users), "--password", password],
        cwd=PEER_DIR, env=env, check=True,
    )


def _requirements_digest() -> str:
    h = hashlib.sha256(sys.version.encode())
    for req in PEER_REQUIREMENTS:
        h.update(req.read_bytes())
    return h.hexdigest()


def ensure_peer_venv(say: Callable[[str], None] = print) -> None:
    """Create bench/.venv-peer from the pinned requirements, unless it is up to date.

    A stamp file holds a digest of the requirement files, so editing a pin
    rebuilds the venv on the next run and an unchanged one costs nothing.
    """
    stamp = PEER_VENV / ".bench-requirements.sha256"
    digest = _requirements_digest()
    if PEER_PYTHON.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    say(f"creating {PEER_VENV.relative_to(ROOT)} (peer + chart tools; about a minute the first time)")
    if PEER_VENV.exists():
        shutil.rmtree(PEER_VENV)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    cmd = [str(PEER_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for req in PEER_REQUIREMENTS:
        cmd += ["-r", str(req)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"installing the peer venv failed:\n{result.stdout}\n{result.stderr}")
    stamp.write_text(digest + "\n")


def ensure_wrk(say: Callable[[str], None] = print) -> str | None:
    """Path of wrk, installing Debian's package when it is missing; None if it cannot be had."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    say("wrk missing: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=False, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, **quiet)
    return shutil.which("wrk")
