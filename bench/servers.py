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
from urllib.parse import urlsplit, urlunsplit

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


def start_peer_on(database_url: str, secret: str, log_path: Path) -> Server:
    """The fastapi-users peer on any SQLAlchemy URL (``postgresql+asyncpg://...`` for PostgreSQL)."""
    env = _base_env()
    env.update({"PEER_DATABASE_URL": database_url, "PEER_JWT_SECRET": secret, "PEER_TOKEN_LIFETIME": "7200"})
    return spawn("peer", uvicorn_argv(PEER_PYTHON, free_port()), PEER_DIR, env, log_path)


def seed_peer(db_path: Path | str, n_users: int, password: str) -> None:
    """Seed the peer's SQLite file ``db_path``, or the database at SQLAlchemy URL ``db_path``."""
    env = _base_env()
    env["PEER_DATABASE_URL"] = db_path if isinstance(db_path, str) else f"sqlite+aiosqlite:///{db_path}"
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


# --- PostgreSQL (the rows P1-P4) ---------------------------------------------------------------


class PgUnavailable(RuntimeError):
    pass


class PgAdmin:
    """Databases for the PostgreSQL rows on the local test server (``make postgres`` starts it;
    ``BENCH_DATABASE_URL``, else ``TEST_DATABASE_URL``, names a role that may create databases).

    A base database per store size is filled once from a book-format store with the service's own
    ``python -m store.pg_tools import-json``; every server gets a fresh copy (``CREATE DATABASE ...
    TEMPLATE``), as every JSON server gets a fresh copy of its file. Statements go through ``psql``,
    so the harness needs no driver. Every database made here is dropped by ``drop_all()``.
    """

    def __init__(self, python: Path, ours_dir: Path) -> None:
        self.admin_url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
            "TEST_DATABASE_URL", "postgresql://farm:farm@127.0.0.1:5432/postgres")
        self.python = python
        self.ours_dir = ours_dir
        self.prefix = f"farmbench_{os.getpid()}_"
        self.made: list[str] = []
        if shutil.which("psql") is None:
            raise PgUnavailable("psql not found (`make postgres` installs PostgreSQL)")
        if not (ours_dir / "store" / "pg_tools.py").exists():
            raise PgUnavailable("the service has no PostgreSQL backend (store/pg_tools.py)")
        self.psql("SELECT 1")

    def url(self, name: str, driver: str = "postgresql") -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(scheme=driver, path="/" + name))

    def psql(self, sql: str) -> str:
        parts = urlsplit(self.admin_url)
        env = {**os.environ, "PGPASSWORD": parts.password or "", "PGCONNECT_TIMEOUT": "5"}
        dsn = urlunsplit(parts._replace(netloc=parts.netloc.split("@")[-1] if "@" in parts.netloc else parts.netloc))
        cmd = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-U", parts.username or "",
               "-c", sql]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
        if res.returncode != 0:
            raise PgUnavailable(f"psql: {res.stderr.strip()} (is PostgreSQL up? `make postgres`)")
        return res.stdout.strip()

    def create(self, template: str | None = None) -> str:
        name = f"{self.prefix}{len(self.made) + 1}"
        self.psql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        self.made.append(name)
        return name

    def base(self, store: Path) -> str:
        """A new database holding ``store`` (imported with the service's CLI); its name."""
        name = self.create()
        res = subprocess.run([str(self.python), "-m", "store.pg_tools", "import-json", str(store)], cwd=self.ours_dir,
                             env={**_base_env(), "DATABASE_URL": self.url(name)}, capture_output=True, text=True,
                             check=False)
        if res.returncode != 0:
            raise RuntimeError(f"import-json into {name} failed:\n{res.stdout}\n{res.stderr}")
        return name

    def drop_all(self) -> None:
        """Drop every database made here; FORCE cannot end an autovacuum worker, so retry a moment."""
        for name in reversed(self.made):
            for _ in range(20):
                try:
                    self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                    break
                except PgUnavailable:
                    time.sleep(0.25)
        self.made.clear()
