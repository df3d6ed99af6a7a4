"""The operator's command line: ``python manage.py COMMAND`` from the project directory, with the
service's own settings (``USERS_FILE`` or ``DATABASE_URL``, ``JWT_SECRET``, ``BCRYPT_ROUNDS``,
from the environment or ``.env``). ``python manage.py --help`` lists the commands.

Safe while the service runs: every change goes through the same store and the same rules as the
``/admin/`` routes (administration.py), so a running service sees it at once (JSON: a transaction
under the journal's cross-process lock, which every worker reads before answering; PostgreSQL: a
transaction whose ``NOTIFY`` drops every host's cached copy within milliseconds, as a logout does).
Passwords are hashed as the service hashes them (``AuthHandler``) and never echoed; no hash is
ever printed. Each change is an audit event (``detail.via`` = ``cli``). An unknown name exits 1
with a message; a store that cannot be opened exits 3.
"""

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError

import administration
from audit import Auditor
from authentication import AuthHandler
from models import UserCreate
from settings import Settings
from store import Store, StoreError, User, build_store
from trust import Trust

T = TypeVar("T")
app = typer.Typer(help="Operate the FARM auth service: accounts, administrators, sessions.", no_args_is_help=True,
                  add_completion=False)
Name = Annotated[str, typer.Argument(help="the account's username (as it logs in: case-insensitive)")]
PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="read the password from standard input "
                                             "(one line) instead of prompting")]
CLI = "cli"


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def run(job: Callable[[Store, Settings, Auditor], Awaitable[T]]) -> T:
    """Open the service's store, run ``job``, write its audit events, close the store."""
    async def main() -> T:
        settings = Settings()
        store = build_store(settings)
        try:
            await store.open()
        except StoreError as exc:
            fail(f"cannot open the store: {exc}", 3)
        audit = Auditor(store)
        try:
            return await job(store, settings, audit)
        finally:
            try:
                await audit.flush(everything=True)
            finally:
                await store.close()

    try:
        return asyncio.run(main())
    except ValidationError as exc:  # the settings (the values are not echoed: one may be a secret)
        fail("invalid configuration: " + "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                                                    for e in exc.errors(include_input=False)), 3)
        raise AssertionError("unreachable") from None


async def _named(store: Store, name: str) -> User:
    user = await store.find_user(name)
    if user is None:
        fail(f"no account named {name!r}")
    assert user is not None
    return user


def _password(stdin: bool) -> str:
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


def _checked(name: str, password: str) -> None:
    """The registration rules of the API (models.UserCreate), so the CLI makes no account the API would refuse."""
    try:
        UserCreate(username=name, password=password)
    except ValidationError as exc:
        fail("; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors(include_input=False)), 2)


async def _hash(settings: Settings, password: str) -> str:
    auth = await asyncio.to_thread(AuthHandler, settings.secret, settings.bcrypt_rounds)
    try:
        return await auth.get_password_hash(password)
    finally:
        auth.close()


def _show(user: User) -> None:
    flags = [flag for flag, on in (("admin", user.is_admin), ("disabled", user.disabled)) if on]
    typer.echo(f"{user.id}  {user.username}" + (f"  [{', '.join(flags)}]" if flags else ""))


@app.command("create-user")
def create_user(name: Name, password_stdin: PasswordStdin = False,
                admin: Annotated[bool, typer.Option("--admin", help="also grant admin rights")] = False,
                exists_ok: Annotated[bool, typer.Option("--exists-ok", help="an existing account is not an error "
                                                        "(nothing is changed; no password is asked)")] = False) -> None:
    """Create an account (password prompted twice, or one line on stdin with --password-stdin)."""
    async def job(store: Store, settings: Settings, audit: Auditor) -> None:
        existing = await store.find_lookalike(name)
        if existing is not None:
            if exists_ok and existing.username.casefold() == name.casefold():
                typer.echo(f"{existing.username} exists already")
                return
            fail(f"username {name!r} is taken (or looks like {existing.username!r})")
        password = _password(password_stdin)
        _checked(name, password)
        user = await store.add_user(name, await _hash(settings, password))
        audit.record("register", user, user_agent="manage.py", via=CLI)
        if admin:
            user = await administration.set_admin(store, user.id, True) or user
            audit.record("admin_grant", user, user_agent="manage.py", via=CLI, admin=CLI)
        _show(user)

    run(job)


@app.command("set-password")
def set_password(name: Name, password_stdin: PasswordStdin = False) -> None:
    """Set a new password; every session and device token of the account ends."""
    async def job(store: Store, settings: Settings, audit: Auditor) -> None:
        user = await _named(store, name)
        password = _password(password_stdin)
        _password_rules(password)
        if not await store.change_password(user.id, await _hash(settings, password), keep_session=None):
            fail(f"no account named {name!r}")
        audit.record("password_changed", user, user_agent="manage.py", via=CLI)
        typer.echo(f"password of {user.username} set; its sessions ended")

    run(job)


def _password_rules(password: str) -> None:
    """The API's password rules (models.Password) alone: an existing name may predate today's name rules."""
    try:
        UserCreate(username="valid-name", password=password)
    except ValidationError as exc:
        fail("; ".join(f"password: {e['msg']}" for e in exc.errors(include_input=False)), 2)


def _action(type: str, act: Callable[[Store, Trust, str], Awaitable[User | None]], done: str) -> Callable[[str], None]:
    def command(name: Name) -> None:
        async def job(store: Store, settings: Settings, audit: Auditor) -> None:
            user = await _named(store, name)
            changed = await act(store, Trust(settings.secret), user.id)
            if changed is None:
                fail(f"no account named {name!r}")
            assert changed is not None
            audit.record(type, changed, user_agent="manage.py", via=CLI, admin=CLI)
            typer.echo(f"{changed.username}: {done}")

        run(job)

    return command


app.command("grant-admin", help="Make the account an administrator.")(
    _action("admin_grant", lambda s, _, i: administration.set_admin(s, i, True), "admin rights granted"))
app.command("revoke-admin", help="Take the account's admin rights away.")(
    _action("admin_revoke", lambda s, _, i: administration.set_admin(s, i, False), "admin rights revoked"))
app.command("disable", help="Disable the account: no login (403), every session and device token ends.")(
    _action("admin_disable", lambda s, _, i: administration.disable(s, i), "disabled; its sessions ended"))
app.command("enable", help="Enable a disabled account.")(
    _action("admin_enable", lambda s, _, i: administration.enable(s, i), "enabled"))
app.command("unlock", help="Clear the account's failed logins (every address, the account, its devices).")(
    _action("admin_unlock", administration.unlock, "failed logins cleared"))
app.command("end-sessions", help="End every session and device token of the account.")(
    _action("admin_end_sessions", lambda s, _, i: administration.end_sessions(s, i), "sessions ended"))


@app.command("list")
def list_users(query: Annotated[str | None, typer.Option("--query", help="a case-insensitive prefix of the "
                                                         "username")] = None,
               limit: Annotated[int, typer.Option(min=1, help="at most this many")] = 1000) -> None:
    """List accounts by username: id, username, and their admin / disabled flags."""
    from models import normalize_username

    async def job(store: Store, settings: Settings, audit: Auditor) -> None:
        after: str | None = None
        shown = 0
        while shown < limit:
            users = await store.list_users(min(500, limit - shown), after=after,
                                           prefix=normalize_username(query) if query else None)
            for user in users:
                _show(user)
            shown += len(users)
            if len(users) < min(500, limit - shown + len(users)):
                break
            after = normalize_username(users[-1].username)

    run(job)


if __name__ == "__main__":
    app()
