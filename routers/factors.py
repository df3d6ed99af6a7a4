"""Passkeys and the TOTP second factor: ``/users/me/passkeys``, ``/users/me/totp``,
``/users/login/passkey`` and ``/users/login/mfa``. The flows are ``factors.py``; these routes
map its answers to HTTP and declare every status they can answer.
"""

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

import factors
from accounts import Caller
from deps import (
    COMMON_ERRORS,
    REGISTERED_ERRORS,
    UNAVAILABLE,
    AuditDep,
    AuthDep,
    ClientAddress,
    CurrentUser,
    LimiterDep,
    OptionalAnonymous,
    SettingsDep,
    StoreDep,
    TrustDep,
    disconnect_watch,
    get_factors,
    user_agent,
)
from factors import Factors
from models import (
    LoginOut,
    Message,
    MfaLogin,
    PasskeyList,
    PasskeyLogin,
    PasskeyOut,
    PasskeyRegistration,
    RecoveryCodes,
    TotpConfirm,
    TotpDisable,
    TotpSetup,
    TotpSetupRequest,
)
from routers.users import REAUTH_ERRORS, TOO_MANY, _tokens

router = APIRouter(prefix="/users", tags=["passkeys and second factor"],
                   responses=COMMON_ERRORS)
FactorsDep = Annotated[Factors, Depends(get_factors)]
PASSKEY_ID = re.compile(r"[0-9a-f]{32}")
OPTIONS = {200: {"description": "WebAuthn options (`webauthn.options_to_json`): pass them to "
                 "`navigator.credentials` (or @simplewebauthn/browser) as they are"}}
CODE_ERRORS = {400: {"model": Message, "description": "`Invalid code`"},
               409: {"model": Message, "description": "TOTP is not in the state this needs"}}
LOGIN_401 = {"model": Message, "description": "The login was refused (see `detail`)"}


def _caller(request: Request, client: str, anonymous: str | None = None) -> Caller:
    return Caller(client, disconnect_watch(request), anonymous, user_agent(request))


DISABLED = {403: {"model": Message, "description": "`Account disabled` by an administrator"}}


# -- passkeys of the signed-in account --------------------------------------------------------------


@router.post("/me/passkeys/options", response_model=dict[str, Any], responses={**REGISTERED_ERRORS, **OPTIONS})
async def passkey_registration_options(user: CurrentUser, store: StoreDep, f: FactorsDep) -> dict[str, Any]:
    """Creation options for a new passkey (a discoverable credential; user verification
    preferred; this account's passkeys excluded). Its challenge works once, for 5 minutes."""
    return await factors.registration_options(user.user, store, f)  # type: ignore[arg-type]


@router.post("/me/passkeys", status_code=status.HTTP_201_CREATED, response_model=PasskeyOut, responses={
    **REGISTERED_ERRORS, 400: {"model": Message, "description": "A bad attestation, a wrong origin or RP, or a "
                                "spent, expired or unknown challenge; or a passkey already registered"}})
async def add_passkey(body: PasskeyRegistration, request: Request, client: ClientAddress, user: CurrentUser,
                      store: StoreDep, f: FactorsDep, audit: AuditDep) -> dict[str, Any]:
    """Keep a new passkey (what the authenticator answered to the options). Every other login
    session of the account ends; this one stays."""
    passkey = await factors.register_passkey(user, body.credential, body.name, store, f)
    audit.record("passkey_added", user.user, client, user_agent(request), passkey_id=passkey.id, name=passkey.name)
    return {"id": passkey.id, "name": passkey.name, "created_at": passkey.created_at}


@router.get("/me/passkeys", response_model=PasskeyList, responses=REGISTERED_ERRORS)
async def list_passkeys(user: CurrentUser, store: StoreDep) -> dict[str, Any]:
    return {"passkeys": [{"id": p.id, "name": p.name, "created_at": p.created_at, "last_used_at": p.last_used_at}
                         for p in await store.list_passkeys(user.id)]}


@router.delete("/me/passkeys/{passkey_id}", status_code=status.HTTP_204_NO_CONTENT, responses={
    **REGISTERED_ERRORS, 404: {"model": Message, "description": "No such passkey of this account"}})
async def delete_passkey(passkey_id: str, request: Request, client: ClientAddress, user: CurrentUser,
                         store: StoreDep, audit: AuditDep) -> Response:
    """Remove a passkey: it no longer signs in. Every other login session of the account ends."""
    if not PASSKEY_ID.fullmatch(passkey_id) or not await factors.remove_passkey(user, passkey_id, store):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such passkey")
    audit.record("passkey_removed", user.user, client, user_agent(request), passkey_id=passkey_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- signing in with a passkey ----------------------------------------------------------------------


@router.post("/login/passkey/options", response_model=dict[str, Any], responses={**OPTIONS, 503: UNAVAILABLE})
async def passkey_login_options(store: StoreDep, f: FactorsDep) -> dict[str, Any]:
    """Request options for any passkey of this site (empty ``allowCredentials``: the
    authenticator offers its own). Its challenge works once, for 5 minutes."""
    return await factors.login_options(store, f)


@router.post("/login/passkey", response_model=LoginOut, responses={
    401: {"model": Message, "description": "`Invalid passkey`: a bad signature, an unknown credential, a wrong "
          "origin, a spent or expired challenge, or a signature counter that went backwards"},
    **DISABLED, 429: TOO_MANY, 503: UNAVAILABLE})
async def login_passkey(body: PasskeyLogin, request: Request, client: ClientAddress, store: StoreDep, auth: AuthDep,
                        trust: TrustDep, limiter: LimiterDep, f: FactorsDep,
                        anonymous: OptionalAnonymous, audit: AuditDep) -> dict[str, Any]:
    """The answer of a password login, for what the authenticator answered to the options. No
    second factor is asked: a passkey already proves possession and the user's presence. Sent
    with an anonymous visitor's token, the visitor's data moves into the account."""
    done = await factors.login_passkey(body.credential, _caller(request, client, anonymous), store, auth, trust,
                                       limiter, f)
    audit.record("login", done.user, client, user_agent(request), session_id=done.session_id, via="passkey")
    return {**_tokens(auth, done.user, done.session_id, done.refresh_jti), "device_token": done.device_token}


# -- the TOTP second factor -------------------------------------------------------------------------


@router.post("/me/totp", response_model=TotpSetup, responses={
    **REAUTH_ERRORS, 409: {"model": Message, "description": "TOTP is already on"}})
async def begin_totp(body: TotpSetupRequest, request: Request, client: ClientAddress, user: CurrentUser,
                     store: StoreDep, auth: AuthDep, trust: TrustDep, settings: SettingsDep,
                     f: FactorsDep) -> dict[str, str]:
    """Check the password, then a new TOTP secret for an authenticator app (the QR code holds
    ``otpauth_uri``). Nothing changes until a first code confirms it (``/users/me/totp/confirm``)."""
    secret, uri = await factors.begin_totp(user, body.password, _caller(request, client), store, auth, trust,
                                           settings, f)
    return {"secret": secret, "otpauth_uri": uri}


@router.post("/me/totp/confirm", response_model=RecoveryCodes, responses={**REGISTERED_ERRORS, **CODE_ERRORS})
async def confirm_totp(body: TotpConfirm, request: Request, client: ClientAddress, user: CurrentUser,
                       store: StoreDep, f: FactorsDep, audit: AuditDep) -> dict[str, Any]:
    """A code from the app turns TOTP on: ten single-use recovery codes, shown this once. Every
    other login session of the account ends; this one stays."""
    codes = await factors.confirm_totp(user, body.code, store, f)
    audit.record("totp_enabled", user.user, client, user_agent(request))
    return {"recovery_codes": codes}


@router.delete("/me/totp", status_code=status.HTTP_204_NO_CONTENT, responses={**REAUTH_ERRORS, **CODE_ERRORS})
async def disable_totp(body: TotpDisable, request: Request, client: ClientAddress, user: CurrentUser,
                       store: StoreDep, auth: AuthDep, trust: TrustDep, settings: SettingsDep,
                       f: FactorsDep, audit: AuditDep) -> Response:
    """The password and a code (or a recovery code) turn TOTP off. Every other login session of
    the account ends; this one stays."""
    await factors.disable_totp(user, body.password, body.code, _caller(request, client), store, auth, trust,
                               settings, f)
    audit.record("totp_disabled", user.user, client, user_agent(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/login/mfa", response_model=LoginOut, responses={
    401: {"model": Message, "description": "`Invalid code`, `Code already used; wait for the next one`, or an "
          "unknown, expired, used or exhausted (5 wrong codes) `mfa_token`"},
    **DISABLED, 429: TOO_MANY, 503: UNAVAILABLE})
async def login_mfa(body: MfaLogin, request: Request, client: ClientAddress, store: StoreDep, auth: AuthDep,
                    trust: TrustDep, limiter: LimiterDep, f: FactorsDep, anonymous: OptionalAnonymous,
                    audit: AuditDep) -> dict[str, Any]:
    """Complete a password login that answered ``403 Second factor required``: its ``mfa_token``
    and a code of the authenticator app, or an unused recovery code."""
    done = await factors.login_mfa(body.mfa_token, body.code, body.recovery_code, _caller(request, client, anonymous),
                                   store, auth, trust, limiter, f)
    audit.record("login", done.user, client, user_agent(request), session_id=done.session_id, via="second_factor")
    return {**_tokens(auth, done.user, done.session_id, done.refresh_jti), "device_token": done.device_token}
