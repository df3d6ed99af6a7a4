"""What an administrator may do to an account, shared by the ``/admin/`` routes (routers/admin.py)
and the operator's command line (manage.py), so both keep the same rules and reach every worker
and host the same way: through ``AccountStore.update_user`` and ``end_all_sessions`` (JSON: the
journal's cross-process lock; PostgreSQL: one transaction each, whose ``NOTIFY`` drops every
host's cached copy within milliseconds).

Each function answers the account as it now is, or ``None`` when there is no such account; the
caller records the audit event (with who acted) and maps ``None`` to its own "not found".
"""

from store import Store, User
from trust import Trust


async def disable(store: Store, user_id: str) -> User | None:
    """No more logins (403 ``Account disabled`` after the right password), and every session and
    device token ends now. Flag first: a login racing the end of the sessions is refused its
    token's use anyway (deps.py refuses a disabled account's tokens)."""
    user = await store.update_user(user_id, disabled=True)
    if user is not None:
        await store.end_all_sessions(user_id)
    return user


async def enable(store: Store, user_id: str) -> User | None:
    return await store.update_user(user_id, disabled=False)


async def set_admin(store: Store, user_id: str, is_admin: bool) -> User | None:
    return await store.update_user(user_id, is_admin=is_admin)


async def end_sessions(store: Store, user_id: str) -> User | None:
    """Every session and device token of the account: its next login is a stranger's (untrusted)."""
    user = await store.get_user(user_id)
    if user is not None:
        await store.end_all_sessions(user_id)
    return user


async def unlock(store: Store, trust: Trust, user_id: str) -> User | None:
    """Forget the failed logins counted against the account: every address's, the account's own
    (no more challenge), and its device tokens' own counts."""
    user = await store.get_user(user_id)
    if user is not None:
        await store.unlock(trust.name_key(user.username), user_id)
    return user
