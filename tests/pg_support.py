"""PostgreSQL for the tests: the admin connection, a migrated template, throw-away databases.

The server is the machine's own cluster, started by ``make postgres`` (``make test`` and ``.ci/run``
depend on it); the tests reach it through ``TEST_DATABASE_URL`` (a role that may create databases,
default ``postgresql://farm:farm@127.0.0.1:5432/postgres``). A server that cannot be reached is a
test failure, never a skip.

Per test session one template database is created and migrated (``python -m store.pg_tools migrate``, the
same command as ``make migrate``); every test that needs a database gets its own copy
(``CREATE DATABASE ... TEMPLATE``) and it is dropped afterwards; ``Spares`` makes the copies
ahead of need and drops them behind, on a thread, so a test waits for neither (about 0.3 s each). Names carry this
process's pid (``farmtest_<pid>_<n>``), so concurrent sessions on one machine never meet, and
databases left behind by a session that died are dropped by the next one.

Admin statements go through ``psql`` (the server's own client, installed with it), so the harness
needs no driver of its own. No pytest in here: the fixtures in conftest.py decide what a failure is.
"""

import functools
import itertools
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://farm:farm@127.0.0.1:5432/postgres")
PREFIX = f"farmtest_{os.getpid()}_"
_NAME = re.compile(r"farmtest_(\d+)_\w+")
_numbers = itertools.count(1)


class DatabaseError(RuntimeError):
    pass


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@", 1)))


def psql(sql: str, url: str = ADMIN_URL, timeout: float = 60) -> str:
    """Run ``sql`` with psql (password through the environment, not argv); its unaligned output."""
    parts = urlsplit(url)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    if parts.password is not None:
        env["PGPASSWORD"] = parts.password
        url = without_password(url).replace(":***@", "@", 1)
    result = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                            env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise DatabaseError(f"psql on {without_password(url)} failed ({result.returncode}): "
                            f"{result.stderr.strip()}\n(is the test server up? `make postgres` starts it)")
    return result.stdout.strip()


@functools.cache
def server_major_version() -> int:
    """The server's major version (remembered: asked while it is up, used to restart it)."""
    return int(psql("SHOW server_version_num")) // 10000


def create_database(template: str | None = None) -> str:
    """A new empty (or ``template``-copied) database; its URL."""
    name = f"{PREFIX}{next(_numbers)}"
    psql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return with_database(ADMIN_URL, name)


def drop_database(url: str, attempts: int = 20) -> None:
    """Drop it, its sessions cut off. FORCE cannot cut an autovacuum worker (a superuser's process)
    that happens to be in it: then try again, it is gone within a moment."""
    name = urlsplit(url).path.lstrip("/")
    for attempt in range(attempts):
        try:
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        except DatabaseError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25)


def drop_abandoned() -> None:
    """Drop the test databases of sessions whose process is gone (a crashed or killed run)."""
    for name in psql("SELECT datname FROM pg_database WHERE datname LIKE 'farmtest\\_%'").split():
        match = _NAME.fullmatch(name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            try:
                psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except DatabaseError:
                pass  # busy (autovacuum): the next session tries again
        except PermissionError:
            pass  # alive, someone else's


def migrate(url: str) -> None:
    """``python -m store.pg_tools migrate`` on ``url`` (what ``make migrate`` runs)."""
    result = subprocess.run([sys.executable, "-m", "store.pg_tools", "migrate"], cwd=ROOT, env={**os.environ,
                            "DATABASE_URL": url}, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise DatabaseError(f"migrating {without_password(url)} failed ({result.returncode}):\n"
                            f"{result.stdout}\n{result.stderr}")


def import_json(path: Path, url: str) -> str:
    """``python -m store.pg_tools import-json PATH`` into ``url`` (what ``make import-json`` runs); its report."""
    result = subprocess.run([sys.executable, "-m", "store.pg_tools", "import-json", str(path)], cwd=ROOT,
                            env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=300,
                            check=False)
    if result.returncode != 0:
        raise DatabaseError(f"importing {path} into {without_password(url)} failed ({result.returncode}):\n"
                            f"{result.stdout}\n{result.stderr}")
    return result.stdout


def create_template() -> str:
    """This session's migrated template database; its name. Leftovers of dead sessions go first."""
    drop_abandoned()
    drop_abandoned_clusters()
    url = create_database()
    migrate(url)
    return urlsplit(url).path.lstrip("/")


class Spares:
    """Copies of the template made before they are asked for, and databases dropped after, on one
    worker thread. ``take()`` hands out a fresh copy (and orders its replacement); ``give_back()``
    queues a drop; ``close()`` waits for the queue and drops the spares left."""

    def __init__(self, template: str, ahead: int = 2) -> None:
        self.template = template
        self._ready: queue.Queue[str | Exception] = queue.Queue()
        self._jobs: queue.Queue[tuple[str, str]] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="pg-spares", daemon=True)
        self._thread.start()
        for _ in range(ahead):
            self._jobs.put(("create", ""))

    def _work(self) -> None:
        while True:
            job, url = self._jobs.get()
            if job == "stop":
                return
            try:
                if job == "create":
                    self._ready.put(create_database(self.template))
                else:
                    drop_database(url)
            except Exception as exc:  # noqa: BLE001 - handed to the test that waits for it
                if job == "create":
                    self._ready.put(exc)

    def take(self) -> str:
        self._jobs.put(("create", ""))
        got = self._ready.get(timeout=120)
        if isinstance(got, Exception):
            raise got
        return got

    def give_back(self, url: str) -> None:
        self._jobs.put(("drop", url))

    def close(self) -> None:
        self._jobs.put(("stop", ""))
        self._thread.join(timeout=300)
        while not self._ready.empty():
            got = self._ready.get()
            if isinstance(got, str):
                drop_database(got)


class PrivateCluster:
    """A PostgreSQL cluster of this test's own (``pg_createcluster``, a free port), for the tests that
    stop and restart the server: the shared one keeps serving every other test meanwhile.

    It runs the same major version as the test server and has the same login role; ``drop()``
    removes it (data directory, configuration and log)."""

    def __init__(self) -> None:
        self.version = str(server_major_version())
        self.name = f"farmtest{os.getpid()}x{next(_numbers)}"
        self.port = free_port()
        admin = urlsplit(ADMIN_URL)
        self.role, self.password = admin.username or "farm", admin.password or "farm"
        self.url = f"postgresql://{self.role}:{self.password}@127.0.0.1:{self.port}/postgres"

    def create(self) -> "PrivateCluster":
        _root(["pg_createcluster", "-p", str(self.port), self.version, self.name, "--start"])
        _root(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p", str(self.port), "-v", "ON_ERROR_STOP=1",
               "-c", f"CREATE ROLE {self.role} LOGIN CREATEDB PASSWORD '{self.password}'"])
        return self

    def control(self, action: str) -> None:
        """``pg_ctlcluster <version> <name> start|stop|restart`` (stop: the "fast" mode, clients cut off)."""
        _root(["pg_ctlcluster", self.version, self.name, action])

    def database(self) -> str:
        """A new database on this cluster, migrated; its URL."""
        name = f"farm{next(_numbers)}"
        psql(f"CREATE DATABASE {name}", self.url)
        url = with_database(self.url, name)
        migrate(url)
        return url

    def drop(self) -> None:
        _root(["pg_dropcluster", "--stop", self.version, self.name], check=False)


def drop_abandoned_clusters() -> None:
    """Clusters left by PrivateCluster in a session that died."""
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        version, name = line.split()[:2]
        match = re.fullmatch(r"farmtest(\d+)x\d+", name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            _root(["pg_dropcluster", "--stop", version, name], check=False)
        except PermissionError:
            pass


def _root(command: list[str], check: bool = True) -> None:
    if os.geteuid() != 0:
        command = ["sudo", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise DatabaseError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
