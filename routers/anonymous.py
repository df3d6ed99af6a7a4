"""Visitors without an account: an anonymous token, and what they may see."""

from fastapi import APIRouter

from deps import (
    COMMON_ERRORS,
    UNAVAILABLE,
    AuthDep,
    ClientAddress,
    DeclaredRoute,
    SettingsDep,
    StoreDep,
    too_many_requests,
)
from models import AnonymousTokenOut, Message
from store import RateLimited

router = APIRouter(tags=["anonymous"], route_class=DeclaredRoute, responses=COMMON_ERRORS)


@router.post("/anonymous-login", response_model=AnonymousTokenOut, responses={
    429: {"model": Message, "description": "Too many anonymous sign-ins from this address, or from everyone "
                                           "this hour; see Retry-After"},
    503: UNAVAILABLE,
})
async def anonymous_login(client: ClientAddress, store: StoreDep, auth: AuthDep, settings: SettingsDep) -> dict[str, object]:
    """A token for a visitor: ``sub`` is ``anonymous_<uuid>``; cart and activity are kept server
    side and move into the account when the visitor registers or logs in with this token."""
    try:
        anonymous_id = await store.add_anonymous(client, settings.anonymous_login_rate_limit,
                                                 settings.anonymous_login_global_limit)
    except RateLimited as exc:
        raise too_many_requests("Too many anonymous sign-ins; try again later", exc.retry_after) from None
    return {"access_token": auth.encode_anonymous_token(anonymous_id), "token_type": "bearer",
            "expires_in": auth.anonymous_seconds}


@router.get("/public-data")
async def public_data() -> dict[str, str]:
    return {"message": "This is public: no token needed."}
