"""Run the service as real uvicorn processes, for tests that need several workers, signals or crashes.

    with Server(tmp_path / "users.json", workers=4) as server:
        httpx.get(server.url + "/health")
        server.stop()              # SIGTERM to uvicorn, wait: a clean stop (lifespan shutdown)
    # or server.kill(): SIGKILL to the whole process group (parent and workers), like a crash

No pytest in here: the tests decide what a failure means. Each server logs to files in a directory
beside the store (``logs-<port>/``, so the test's tmp dir cleans it up); ``stderr`` and ``stdout``
(the access log) read them. Every log line carries the
pid of the process that wrote it, so a test can tell which worker answered a request
(``served_by``). Each server gets its own, empty, ``PROMETHEUS_MULTIPROC_DIR`` there too (unless the
test sets one), so ``/metrics`` sums its workers and no other server's.
"""

import copy
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
from uvicorn.config import LOGGING_CONFIG

ROOT = Path(__file__).resolve().parent.parent  # the repo root: where `app:app` is importable
_STARTED = re.compile(r"Started server process \[(\d+)\]")


def server_env(users_file: Path, **overrides: str | None) -> dict[str, str]:
    """``os.environ`` plus a test configuration; an override of ``None`` removes the variable."""
    env = dict(os.environ)
    env.update(USERS_FILE=str(users_file), JWT_SECRET=secrets.token_urlsafe(36),
               BCRYPT_ROUNDS="4", ANONYMOUS_LOGIN_RATE_LIMIT="0",
               LOGIN_RATE_LIMIT="0", REGISTER_RATE_LIMIT="0", EARLY_RETRY_DELAY_SECONDS="0")
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_config(path: Path) -> Path:
    """uvicorn's own logging setup, with ``pid=<n>`` in front of every line."""
    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["fmt"] = "pid=%(process)d " + formatter["fmt"]
        formatter["use_colors"] = False
    path.write_text(json.dumps(config))
    return path


class ServerError(RuntimeError):
    pass


class Server:
    """``uvicorn app:app`` on a free loopback port, in its own session (so ``kill`` reaches every
    worker). Used as a context manager it is always stopped, or killed if it will not stop."""

    def __init__(self, users_file: Path, *, workers: int = 1, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, **overrides: str | None) -> None:
        """``env`` replaces the default environment (``server_env(users_file, **overrides)``).
        ``cwd``: the process's working directory (default: the repo root), e.g. one per app host in
        the multi-host tests, so that no two hosts share a file; the app is imported from the repo."""
        self.users_file = Path(users_file)
        self.workers = workers
        self.cwd = Path(cwd) if cwd is not None else ROOT
        self.env = dict(env) if env is not None else server_env(self.users_file, **overrides)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._logs = self.users_file.parent / f"logs-{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    # -- starting ------------------------------------------------------------------------------

    def launch(self) -> Self:
        """Start the process without waiting for it to serve."""
        self._logs.mkdir(parents=True, exist_ok=True)
        if "PROMETHEUS_MULTIPROC_DIR" not in self.env:  # kept across a restart of this server, like its store
            self.env["PROMETHEUS_MULTIPROC_DIR"] = str(self._logs / "metrics")
        command = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(self.port),
                   "--log-config", str(_log_config(self._logs / "logging.json"))]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        if self.cwd != ROOT:
            command += ["--app-dir", str(ROOT)]
        with open(self._logs / "stdout", "wb") as out, open(self._logs / "stderr", "wb") as err:
            self._process = subprocess.Popen(command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=err, start_new_session=True)
        return self

    def start(self, timeout: float = 30) -> Self:
        """Start and wait until every worker has started and ``GET /health`` answers 200."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"uvicorn exited with {self.process.returncode} before serving; "
                                  f"stderr:\n{self.stderr}")
            if self.stderr.count("Application startup complete") >= self.workers:
                try:
                    response = httpx.get(self.url + "/health", timeout=2)
                    if response.status_code == 200:
                        return
                    last_error = f"GET /health answered {response.status_code}"
                except httpx.HTTPError as exc:
                    last_error = repr(exc)
            time.sleep(0.05)
        raise ServerError(f"uvicorn did not serve {self.url}/health within {timeout} s ({last_error}); "
                          f"stderr:\n{self.stderr}")

    def wait_exit(self, timeout: float = 10) -> int:
        """The exit status of a server expected to stop by itself (it is killed if it does not)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerError(f"uvicorn still running after {timeout} s; stderr:\n{self.stderr}") from None

    # -- stopping ------------------------------------------------------------------------------

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM to uvicorn (the supervisor stops its workers), then wait; the exit status: 0 from
        the ``--workers`` supervisor, ``-SIGTERM`` from a single uvicorn (it re-raises the signal
        once it has shut down)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServerError(f"uvicorn did not stop within {timeout} s of SIGTERM; "
                                  f"stderr:\n{self.stderr}") from None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to the whole process group, parent and workers at once; then reap the parent."""
        if self._process is None:
            return
        if self._process.returncode is None:  # not reaped, so the group id cannot have been reused
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._process.wait()

    def __enter__(self) -> Self:
        return self.start() if self._process is None else self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._process is not None and self._process.returncode is None:
            try:
                self.stop()
            finally:
                self.kill()

    # -- looking at it -------------------------------------------------------------------------

    @property
    def process(self) -> "subprocess.Popen[bytes]":
        if self._process is None:
            raise ServerError("the server was not started")
        return self._process

    @property
    def stderr(self) -> str:
        return (self._logs / "stderr").read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return (self._logs / "stdout").read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        """The processes that have served (or are serving) the app, from their startup lines."""
        return {int(pid) for pid in _STARTED.findall(self.stderr)}

    def served_by(self, request_line: str) -> Counter[int]:
        """How many access-log lines each worker wrote for ``request_line`` (e.g. ``"GET /users/me"``)."""
        counts: Counter[int] = Counter()
        request_line = request_line.split("?", 1)[0]  # the access line names the route, not the query
        for line in self.stdout.splitlines():
            if f'"{request_line} ' in line and line.startswith("pid="):
                counts[int(line.split(None, 1)[0].removeprefix("pid="))] += 1
            elif line.startswith("{") and f'"{request_line} ' in line:  # LOG_FORMAT=json
                counts[json.loads(line)["pid"]] += 1
        return counts
