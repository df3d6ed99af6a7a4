"""Test data: user stores of any size, written straight to disk.

Registering 100,000 users through the API would take minutes of bcrypt; the
benchmark is about serving, not about making test data. So a store is written
directly in the book's format::

    {"users": [{"id": "<uuid4>", "username": "user000001", "password": "<bcrypt>"}]}

with ONE bcrypt hash (made once, at a low cost) shared by every user: the hash
is only checked when someone logs in, and the harness logs in as few users as
it needs (one token per server, plus the storm user with its own cost-12 hash).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

PASSWORD = "benchpass123"
STORM_USER = "stormuser"


def username_of(i: int) -> str:
    """Login name of user number ``i`` (1-based); the peer uses the same number."""
    return f"user{i:06d}"


def bcrypt_hash(python: Path, password: str, rounds: int) -> str:
    """Hash ``password`` with the service's own bcrypt (its venv's interpreter).

    Done in a subprocess so the harness itself needs nothing beyond the standard
    library and whichever ``python`` runs it.
    """
    code = (
        "import bcrypt, sys; "
        "print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(int(sys.argv[2]))).decode())"
    )
    out = subprocess.run(
        [str(python), "-c", code, password, str(rounds)],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def write_store(
    path: Path, n_users: int, hashed: str, extra: list[tuple[str, str]] | None = None
) -> None:
    """Write a store of ``n_users`` sharing ``hashed``, plus ``extra`` (username, hash) users."""
    users = [
        {"id": str(uuid.uuid4()), "username": username_of(i), "password": hashed}
        for i in range(1, n_users + 1)
    ]
    for username, extra_hash in extra or []:
        users.append({"id": str(uuid.uuid4()), "username": username, "password": extra_hash})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"users": users}, indent=1))
    tmp.replace(path)


class StoreFactory:
    """Base stores are generated once per run; each server gets a fresh copy.

    A fresh copy per server matters: the service writes to its store (sessions,
    registrations, a journal beside it), and every measurement must start from
    the same state.
    """

    def __init__(self, python: Path, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir
        self._base: dict[tuple[int, bool], Path] = {}
        self._server_count = 0
        self.cheap_hash = bcrypt_hash(python, PASSWORD, 4)
        self.storm_hash = bcrypt_hash(python, PASSWORD, 12)

    def fresh(self, n_users: int, with_storm_user: bool = False) -> Path:
        """Path of a new copy of a store of ``n_users`` in its own directory."""
        key = (n_users, with_storm_user)
        if key not in self._base:
            base = self.workdir / "base" / f"users-{n_users}{'-storm' if with_storm_user else ''}.json"
            extra = [(STORM_USER, self.storm_hash)] if with_storm_user else None
            write_store(base, n_users, self.cheap_hash, extra)
            self._base[key] = base
        self._server_count += 1
        target_dir = self.workdir / "servers" / f"ours-{self._server_count:03d}-{n_users}"
        target_dir.mkdir(parents=True)
        target = target_dir / "users.json"
        shutil.copyfile(self._base[key], target)
        return target
