"""What personalises the shop for a caller, anonymous or registered: browsing history,
favourites and preferences; and, for an account, the export of everything kept about it.

Register or log in with an anonymous token and all of it moves into the account (store/json_visitors.py's
merge). The catalogue itself, and how it uses these, is routers/shop.py.
"""

from typing import Any

from fastapi import APIRouter, HTTPException, Response, status

from deps import (
    AUTH_ERRORS,
    COMMON_ERRORS,
    REGISTERED_ERRORS,
    CurrentIdentity,
    CurrentUser,
    StoreDep,
    unauthorized,
)
from models import DEFAULT_PREFERENCES, DataExport, Favourites, History, Message, Preferences, PreferencesPatch
from routers.shop import CATALOGUE, NOT_FOUND
from store import UnknownOwner

router = APIRouter(tags=["personalisation"], responses=COMMON_ERRORS)


def _history(history: list[tuple[int, float]]) -> list[dict[str, Any]]:
    return [{"item_id": item_id, "viewed_at": viewed_at} for item_id, viewed_at in history]


@router.get("/history", response_model=History, responses=AUTH_ERRORS)
async def get_history(identity: CurrentIdentity, store: StoreDep) -> dict[str, Any]:
    """The items the caller viewed (``GET /items/{id}``), newest first, each once, at most 50."""
    return {"items": _history(await store.get_history(identity.id))}


@router.delete("/history", status_code=status.HTTP_204_NO_CONTENT, responses=AUTH_ERRORS)
async def delete_history(identity: CurrentIdentity, store: StoreDep) -> Response:
    try:
        await store.clear_history(identity.id)
    except UnknownOwner:  # upgraded or purged since its token was checked
        raise unauthorized("Invalid token") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/favourites", response_model=Favourites, responses=AUTH_ERRORS)
async def get_favourites(identity: CurrentIdentity, store: StoreDep) -> dict[str, list[int]]:
    return {"items": await store.get_favourites(identity.id)}


@router.put("/favourites/{item_id}", response_model=Favourites, responses={**AUTH_ERRORS, **NOT_FOUND})
async def put_favourite(item_id: int, identity: CurrentIdentity, store: StoreDep) -> dict[str, list[int]]:
    """Mark an item as a favourite (again: no change); answered once durable."""
    if item_id not in CATALOGUE:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Item {item_id} does not exist")
    try:
        return {"items": await store.add_favourite(identity.id, item_id)}
    except UnknownOwner:
        raise unauthorized("Invalid token") from None


@router.delete("/favourites/{item_id}", response_model=Favourites,
               responses={**AUTH_ERRORS, 404: {"model": Message, "description": "Item not a favourite"}})
async def delete_favourite(item_id: int, identity: CurrentIdentity, store: StoreDep) -> dict[str, list[int]]:
    try:
        return {"items": await store.remove_favourite(identity.id, item_id)}
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Item {item_id} is not a favourite") from None
    except UnknownOwner:
        raise unauthorized("Invalid token") from None


@router.get("/preferences", response_model=Preferences, responses=AUTH_ERRORS)
async def get_preferences(identity: CurrentIdentity, store: StoreDep) -> dict[str, str]:
    """``sort`` (the default order of ``GET /items/``) and ``theme``; defaults where unset."""
    return {**DEFAULT_PREFERENCES, **await store.get_preferences(identity.id)}


@router.patch("/preferences", response_model=Preferences, responses=AUTH_ERRORS)
async def patch_preferences(body: PreferencesPatch, identity: CurrentIdentity, store: StoreDep) -> dict[str, str]:
    """Set any of the preferences; the whole document comes back, once durable."""
    try:
        saved = await store.set_preferences(identity.id, body.model_dump(exclude_unset=True))
    except UnknownOwner:
        raise unauthorized("Invalid token") from None
    return {**DEFAULT_PREFERENCES, **saved}


@router.get("/users/me/data", response_model=DataExport, responses=REGISTERED_ERRORS)
async def export_data(user: CurrentUser, store: StoreDep) -> dict[str, Any]:
    """Everything the service keeps about this account (never the password hash, a TOTP secret
    or a recovery code: whether TOTP is on, and the passkeys by name), in one document: the data export a user is entitled to. ``DELETE /users/me`` removes all of it."""
    data = await store.export_user(user.id)
    if data is None:  # deleted since its token was checked
        raise unauthorized("Invalid token")
    return {
        **data,
        "cart": [{"item_id": item_id, "quantity": quantity} for item_id, quantity in sorted(data["cart"].items())],
        "history": _history(data["history"]),
        "preferences": {**DEFAULT_PREFERENCES, **data["preferences"]},
        "sessions": [{**s, "current": s["id"] == user.session_id} for s in data["sessions"]],
        "totp_enabled": bool(data["profile"].get("totp_enabled")),
        "passkeys": [{"id": p.id, "name": p.name, "created_at": p.created_at, "last_used_at": p.last_used_at}
                     for p in await store.list_passkeys(user.id)],
    }
