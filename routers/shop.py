"""A small catalogue and a cart, for anonymous visitors and accounts alike; the catalogue is
personalised by what the caller viewed and favourited (routers/personal.py keeps those).

``GET /items/`` returns its JSON as a ``Response`` assembled from items serialised once at import
(FastAPI's documented "return a Response directly"; ``response_model`` still documents it): its
answer holds up to 30 items, and validating and dumping them through the model on every request
was a fifth of the route's time (bench row 10). The pieces come from ``Item.model_dump_json``, so
the bytes are what the model would produce; the HTTP tests and Schemathesis check the shape.
"""

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status

from deps import AUTH_ERRORS, COMMON_ERRORS, CurrentIdentity, OptionalIdentity, StoreDep, unauthorized
from models import DEFAULT_PREFERENCES, Cart, Catalogue, Item, Message, Quantity, SortOrder
from store import Personal, Store, UnknownOwner

router = APIRouter(tags=["shop"], responses=COMMON_ERRORS)

CATALOGUE = {item.id: item for item in (
    Item(id=1, name="Espresso beans, 1 kg", price=24.5, category="coffee"),
    Item(id=2, name="Pour-over kettle", price=39.0, category="brewing"),
    Item(id=3, name="Ceramic dripper", price=18.0, category="brewing"),
    Item(id=4, name="Paper filters (100)", price=5.5, category="brewing"),
    Item(id=5, name="Burr grinder", price=129.0, category="accessories"),
    Item(id=6, name="Travel mug", price=15.0, category="accessories"),
    Item(id=7, name="Decaf beans, 500 g", price=14.0, category="coffee"),
    Item(id=8, name="Single-origin Ethiopia, 250 g", price=12.5, category="coffee"),
    Item(id=9, name="Cold brew blend, 1 kg", price=22.0, category="coffee"),
    Item(id=10, name="French press", price=32.0, category="brewing"),
    Item(id=11, name="Moka pot", price=27.0, category="brewing"),
    Item(id=12, name="AeroPress", price=35.0, category="brewing"),
    Item(id=13, name="Digital scale", price=24.0, category="accessories"),
    Item(id=14, name="Milk frother", price=19.5, category="accessories"),
    Item(id=15, name="Espresso cups (2)", price=16.0, category="accessories"),
    Item(id=16, name="Cleaning tablets", price=9.0, category="accessories"),
)}
CATALOGUE_JSON = [item.model_dump() for item in CATALOGUE.values()]
ITEM_JSON = {item["id"]: item for item in CATALOGUE_JSON}
NOT_FOUND = {404: {"model": Message, "description": "No such item"}}
RECENTLY_VIEWED = 10
RECOMMENDED = 4
_ORDER: dict[str, list[dict[str, Any]]] = {
    "catalogue": CATALOGUE_JSON,
    "name": sorted(CATALOGUE_JSON, key=lambda item: item["name"].casefold()),
    "price": sorted(CATALOGUE_JSON, key=lambda item: item["price"]),  # stable: ties in catalogue order
}
_ITEM_BYTES = {item.id: item.model_dump_json() for item in CATALOGUE.values()}


def _array(items: list[dict[str, Any]]) -> str:
    return "[" + ",".join(_ITEM_BYTES[item["id"]] for item in items) + "]"


_ORDER_BYTES = {sort: _array(items) for sort, items in _ORDER.items()}


_CATEGORY = {item.id: item.category for item in CATALOGUE.values()}


def category_interest(history: list[tuple[int, float]], favourites: list[int]) -> dict[str, int]:
    """How often the caller viewed or favourited items of each category."""
    interest: dict[str, int] = {}
    for item_id in [*(item for item, _ in history), *favourites]:
        if (category := _CATEGORY.get(item_id)) is not None:
            interest[category] = interest.get(category, 0) + 1
    return interest


def by_interest(interest: dict[str, int]) -> list[dict[str, Any]]:
    """The catalogue, most interesting category first; ties in catalogue order."""
    if not interest:
        return CATALOGUE_JSON
    return sorted(CATALOGUE_JSON, key=lambda item: -interest.get(item["category"], 0))


NOBODY = Personal([], [], {}, {})  # a caller without a token: the plain catalogue


async def personalised(owner: str | None, store: Store, sort: SortOrder | None) -> dict[str, Any]:
    """``items`` in the asked (or saved) order, ``recently_viewed`` and ``recommended``: the
    items of categories the caller showed interest in, minus what it just saw, favours or buys."""
    mine = await store.get_personal(owner) if owner is not None else NOBODY
    if sort is None:
        sort = mine.preferences.get("sort", DEFAULT_PREFERENCES["sort"])  # type: ignore[assignment]
    interest = category_interest(mine.history, mine.favourites)
    ranked = by_interest(interest)
    recent = [item for item, _ in mine.history[:RECENTLY_VIEWED]]
    seen = {*recent, *mine.favourites, *mine.cart}
    recommended = []
    for item in ranked:
        if len(recommended) == RECOMMENDED or item["category"] not in interest:
            break  # ranked by interest: the rest are of categories nobody showed interest in
        if item["id"] not in seen:
            recommended.append(item)
    return {"sort": sort, "items": ranked if sort == "recommended" else _ORDER[sort],  # type: ignore[index]
            "recently_viewed": [ITEM_JSON[i] for i in recent if i in ITEM_JSON], "recommended": recommended}


def _cart(cart: dict[int, int]) -> dict[str, list[dict[str, int]]]:
    return {"items": [{"item_id": item_id, "quantity": quantity} for item_id, quantity in sorted(cart.items())]}


@router.get("/items", response_model=Catalogue, responses=AUTH_ERRORS, include_in_schema=False)
@router.get("/items/", response_model=Catalogue, responses=AUTH_ERRORS,
            openapi_extra={"security": [{}]})  # added to the bearer scheme: the token is optional
async def list_items(identity: OptionalIdentity, request: Request, sort: SortOrder | None = None) -> Response:
    """The catalogue, ordered by ``sort`` (default: the caller's saved preference), with the
    caller's recently viewed items and recommendations. No token is needed (a first visit shows
    the catalogue before any visitor is created); an invalid or expired one is still a 401."""
    # The store from the request, not ``StoreDep``: a dependency node costs ~20 us here, a tenth
    # of this route (bench row 10; fastpath.py says the same of the identity checks).
    name = "visitor" if identity is None else "anonymous visitor" if identity.anonymous else identity.username
    found = await personalised(identity and identity.id, request.app.state.store, sort)
    body = (f'{{"message":{json.dumps(f"Hello, {name}! Here is the catalogue.", ensure_ascii=False)},'
            f'"items":{_ORDER_BYTES.get(found["sort"]) or _array(found["items"])},'
            f'"recently_viewed":{_array(found["recently_viewed"])},"recommended":{_array(found["recommended"])}}}')
    return Response(body, media_type="application/json")


@router.get("/items/{item_id}", response_model=Item, responses={**AUTH_ERRORS, **NOT_FOUND})
async def get_item(item_id: int, identity: CurrentIdentity, store: StoreDep) -> dict[str, Any]:
    """One item; the view goes into the caller's history (written within about a second)."""
    item = ITEM_JSON.get(item_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Item {item_id} does not exist")
    await store.record_view(identity.id, item_id)
    return item


@router.get("/cart", response_model=Cart, responses=AUTH_ERRORS)
async def get_cart(identity: CurrentIdentity, store: StoreDep) -> dict[str, list[dict[str, int]]]:
    return _cart(await store.get_cart(identity.id))


@router.put("/cart/items/{item_id}", response_model=Cart, responses={**AUTH_ERRORS, **NOT_FOUND})
async def put_cart_item(item_id: int, body: Quantity, identity: CurrentIdentity,
                        store: StoreDep) -> dict[str, list[dict[str, int]]]:
    """Set the quantity of an item in the caller's cart."""
    if item_id not in CATALOGUE:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Item {item_id} does not exist")
    try:
        return _cart(await store.set_cart_item(identity.id, item_id, body.quantity))
    except UnknownOwner:  # upgraded or purged since its token was checked
        raise unauthorized("Invalid token") from None


@router.delete("/cart/items/{item_id}", response_model=Cart,
               responses={**AUTH_ERRORS, 404: {"model": Message, "description": "Item not in the cart"}})
async def delete_cart_item(item_id: int, identity: CurrentIdentity, store: StoreDep) -> dict[str, list[dict[str, int]]]:
    try:
        cart = await store.remove_cart_item(identity.id, item_id)
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Item {item_id} is not in the cart") from None
    except UnknownOwner:
        raise unauthorized("Invalid token") from None
    return _cart(cart)
