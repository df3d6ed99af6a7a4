"""Visitors without an account: an anonymous token, a proof-of-work challenge, and what they may see."""

from fastapi import APIRouter, status

import accounts
from deps import (
    COMMON_ERRORS,
    UNAVAILABLE,
    AuthDep,
    ClientAddress,
    SettingsDep,
    StoreDep,
    TrustDep,
    challenge_required,
    too_many_requests,
)
from models import AnonymousTokenOut, Challenge, ChallengeSolution, Refusal
from store import ChallengeRequired, RateLimited

router = APIRouter(tags=["anonymous"], responses=COMMON_ERRORS)


@router.post("/anonymous-login", response_model=AnonymousTokenOut, responses={
    429: {"model": Refusal, "description": "Too many anonymous sign-ins from this address; or, with "
          "`challenge_required`, from everyone this hour: send a solved challenge as `altcha`; see Retry-After"},
    503: UNAVAILABLE,
})
async def anonymous_login(client: ClientAddress, store: StoreDep, auth: AuthDep, trust: TrustDep,
                          settings: SettingsDep, body: ChallengeSolution | None = None) -> dict[str, object]:
    """A token for a visitor: ``sub`` is ``anonymous_<uuid>``; cart and activity are kept server
    side and move into the account when the visitor registers or logs in with this token. No
    body is needed; past the service-wide bound on new visitors, a solved challenge admits one."""
    proven = body is not None and await accounts.solved(body.altcha, trust, store)
    try:
        anonymous_id = await store.add_anonymous(client, settings.anonymous_login_rate_limit,
                                                 0 if proven else settings.anonymous_login_global_limit)
    except ChallengeRequired as exc:
        detail = (accounts.BAD_SOLUTION if body else
                  f"Too many new visitors this hour; {accounts.SOLVE}")
        raise challenge_required(status.HTTP_429_TOO_MANY_REQUESTS, detail, exc.retry_after) from None
    except RateLimited as exc:
        raise too_many_requests("Too many anonymous sign-ins; try again later", exc.retry_after) from None
    return {"access_token": auth.encode_anonymous_token(anonymous_id), "token_type": "bearer",
            "expires_in": auth.anonymous_seconds}


@router.get("/challenge", response_model=Challenge)
async def challenge(trust: TrustDep) -> dict[str, object]:
    """A proof-of-work challenge (ALTCHA v1). Solve it (find ``number`` such that SHA-256 of
    ``salt + number`` is ``challenge``; about a second in a browser) and send base64 of
    ``{"algorithm", "challenge", "number", "salt", "signature"}`` as ``altcha`` to a login or an
    anonymous sign-in that answered ``challenge_required``. Each solution works once, on any host,
    until the challenge expires."""
    return trust.challenge()


@router.get("/public-data")
async def public_data() -> dict[str, str]:
    return {"message": "This is public: no token needed."}
