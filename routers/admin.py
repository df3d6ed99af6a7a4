"""The administrators' routes (``/admin/``): find accounts, disable and enable them, clear their
failed logins, end their sessions, grant and revoke the right, and read the audit log.

Every route needs an administrator's token (``AdminUser``: 401 without a valid token, 403
``Admin rights required`` for anyone else; a disabled administrator's tokens are already 401).
Every action is itself an audit event naming the acting administrator (``admin_id``, ``admin``).
The rules live in administration.py, shared with the command line (manage.py).
"""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

import administration
import metrics
from deps import (
    ADMIN_ERRORS,
    COMMON_ERRORS,
    AdminUser,
    AuditDep,
    ClientAddress,
    StoreDep,
    TrustDep,
    user_agent,
)
from models import AccountList, AccountOut, AuditCursor, AuditPage, AuditType, Cursor, Message, UserQuery, encode_cursor
from models import normalize_username as normalize
from routers.security import PageLimit, audit_page
from store import User, public_profile

router = APIRouter(prefix="/admin", tags=["admin"], responses=COMMON_ERRORS)

UserId = Annotated[str, Path(min_length=1, max_length=64, description="the account's `id`")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Message, "description": "No account with this id"}}
SELF = {"model": Message, "description": "An administrator cannot do this to their own account"}


def _found(user: User | None) -> User:
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")
    return user


def _note(audit: Any, type: str, target: User, admin: Any, request: Request, client: str) -> None:
    audit.record(type, target, client, user_agent(request), admin_id=admin.id, admin=admin.username)


@router.get("/users", response_model=AccountList, responses=ADMIN_ERRORS)
async def list_accounts(_: AdminUser, store: StoreDep, limit: PageLimit = 50,
                        cursor: Annotated[Cursor | None, Query(description="`next_cursor` of the previous page")] = None,
                        query: Annotated[UserQuery | None, Query()] = None) -> dict[str, Any]:
    """A page of accounts ordered by normalised username, all their attributes but the password
    hash; ``query``: only names starting with it (case-insensitive, as logins compare names)."""
    users = await store.list_users(limit + 1, after=cursor, prefix=normalize(query) if query else None)
    more = len(users) > limit
    del users[limit:]
    return {"users": [public_profile(u) for u in users],
            "next_cursor": encode_cursor(normalize(users[-1].username)) if more else None}


@router.post("/users/{user_id}/disable", response_model=AccountOut, responses={**ADMIN_ERRORS, **NOT_FOUND, 409: SELF})
async def disable(user_id: UserId, admin: AdminUser, request: Request, client: ClientAddress, store: StoreDep,
                  audit: AuditDep) -> dict[str, Any]:
    """No more logins for the account (403 `Account disabled` after the right password), and every
    session and device token of it ends at once, on every worker and host."""
    if user_id == admin.id:
        raise HTTPException(status.HTTP_409_CONFLICT, "An administrator cannot disable their own account")
    user = _found(await administration.disable(store, user_id))
    metrics.session_ended("admin")
    _note(audit, "admin_disable", user, admin, request, client)
    return public_profile(user)


@router.post("/users/{user_id}/enable", response_model=AccountOut, responses={**ADMIN_ERRORS, **NOT_FOUND})
async def enable(user_id: UserId, admin: AdminUser, request: Request, client: ClientAddress, store: StoreDep,
                 audit: AuditDep) -> dict[str, Any]:
    user = _found(await administration.enable(store, user_id))
    _note(audit, "admin_enable", user, admin, request, client)
    return public_profile(user)


@router.post("/users/{user_id}/unlock", status_code=status.HTTP_204_NO_CONTENT,
             responses={**ADMIN_ERRORS, **NOT_FOUND})
async def unlock(user_id: UserId, admin: AdminUser, request: Request, client: ClientAddress, store: StoreDep,
                 trust: TrustDep, audit: AuditDep) -> Response:
    """Clear the account's failed logins: every address's lockout, the account's own count (no
    more challenge), and its device tokens' counts."""
    user = _found(await administration.unlock(store, trust, user_id))
    _note(audit, "admin_unlock", user, admin, request, client)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/users/{user_id}/sessions", status_code=status.HTTP_204_NO_CONTENT,
               responses={**ADMIN_ERRORS, **NOT_FOUND})
async def end_sessions(user_id: UserId, admin: AdminUser, request: Request, client: ClientAddress, store: StoreDep,
                       audit: AuditDep) -> Response:
    """End every session and device token of the account, on every worker and host."""
    user = _found(await administration.end_sessions(store, user_id))
    metrics.session_ended("admin")
    _note(audit, "admin_end_sessions", user, admin, request, client)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/users/{user_id}/admin", response_model=AccountOut, responses={**ADMIN_ERRORS, **NOT_FOUND})
async def grant(user_id: UserId, admin: AdminUser, request: Request, client: ClientAddress, store: StoreDep,
                audit: AuditDep) -> dict[str, Any]:
    """Make the account an administrator (again: no change)."""
    user = _found(await administration.set_admin(store, user_id, True))
    _note(audit, "admin_grant", user, admin, request, client)
    return public_profile(user)


@router.delete("/users/{user_id}/admin", response_model=AccountOut,
               responses={**ADMIN_ERRORS, **NOT_FOUND, 409: SELF})
async def revoke(user_id: UserId, admin: AdminUser, request: Request, client: ClientAddress, store: StoreDep,
                 audit: AuditDep) -> dict[str, Any]:
    """Take the right away; not from oneself (so the last administrator cannot lock everyone out by accident)."""
    if user_id == admin.id:
        raise HTTPException(status.HTTP_409_CONFLICT, "An administrator cannot revoke their own admin rights")
    user = _found(await administration.set_admin(store, user_id, False))
    _note(audit, "admin_revoke", user, admin, request, client)
    return public_profile(user)


@router.get("/audit", response_model=AuditPage, responses=ADMIN_ERRORS)
async def audit_log(_: AdminUser, store: StoreDep, audit: AuditDep, limit: PageLimit = 50,
                    cursor: Annotated[AuditCursor | None, Query()] = None,
                    user_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
                    type: Annotated[AuditType | None, Query()] = None) -> dict[str, Any]:
    """The audit log, newest first; of one account (``user_id``; a deleted one's too) and/or one event type."""
    await audit.flush()  # this worker's unwritten events too
    return audit_page(await store.list_audit(limit + 1, before=cursor, user_id=user_id, type=type), limit)
