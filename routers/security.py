"""Each user's own devices and security activity: the account's login sessions (one per device
that logged in), ending one of them, and the account's audit events (audit.py).

``last_used_at`` is coarse on purpose: logins and refreshes note it, an access token's use does
not (that would be a write per request). The activity is the audit log filtered to the account,
failed logins against it included, with the address they came from.
"""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

import metrics
from deps import (
    COMMON_ERRORS,
    REGISTERED_ERRORS,
    AuditDep,
    ClientAddress,
    CurrentUser,
    StoreDep,
    user_agent,
)
from models import AuditCursor, AuditPage, Message, MySessions
from store import AuditEvent

router = APIRouter(prefix="/users/me", tags=["security"], responses=COMMON_ERRORS)

SessionId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
PageLimit = Annotated[int, Query(ge=1, le=100)]


def audit_page(events: list[AuditEvent], limit: int) -> dict[str, Any]:
    """A page of events (asked for ``limit + 1``: one more says there is a next page)."""
    more = len(events) > limit
    del events[limit:]
    return {"events": [{"id": e.id, "at": e.at, "type": e.type, "user_id": e.user_id, "username": e.username,
                        "client": e.client, "user_agent": e.user_agent, "detail": e.detail} for e in events],
            "next_cursor": events[-1].id if more else None}


@router.get("/sessions", response_model=MySessions, responses=REGISTERED_ERRORS)
async def my_sessions(user: CurrentUser, store: StoreDep) -> dict[str, Any]:
    """The account's live login sessions, newest first; ``current`` marks the caller's."""
    return {"sessions": [{"id": s.id, "created_at": s.created_at, "last_used_at": s.last_used_at,
                          "client": s.client, "user_agent": s.user_agent, "current": s.id == user.session_id}
                         for s in await store.list_sessions(user.id)]}


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses={
    **REGISTERED_ERRORS, 404: {"model": Message, "description": "No such session of this account"}})
async def end_my_session(session_id: SessionId, user: CurrentUser, request: Request, client: ClientAddress,
                         store: StoreDep, audit: AuditDep) -> Response:
    """Sign one device out: that session's access and refresh tokens are refused from now on, on
    every worker and host. The caller's own session may be ended too (a logout)."""
    if not await store.end_session(session_id, user.id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Session not found")
    metrics.session_ended("session_ended")
    audit.record("session_ended", user.user, client, user_agent(request), session_id=session_id,
                 current=session_id == user.session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/activity", response_model=AuditPage, responses=REGISTERED_ERRORS)
async def my_activity(user: CurrentUser, store: StoreDep, audit: AuditDep, limit: PageLimit = 50,
                      cursor: Annotated[AuditCursor | None, Query()] = None) -> dict[str, Any]:
    """The account's security events, newest first: logins, failed logins (with their address),
    lockouts, sessions ended, password changes, and what administrators did to it."""
    await audit.flush()  # this worker's own unwritten events too: the caller sees what they just did
    return audit_page(await store.list_audit(limit + 1, before=cursor, user_id=user.id), limit)
