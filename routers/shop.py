"""A small catalogue and a cart, for anonymous visitors and accounts alike; the catalogue is
personalised by what the caller viewed and favourited (routers/personal.py keeps those)."""

from collections import Counter
from typing import Any

from fastapi import APIRouter, HTTPException, status

from deps import AUTH_ERRORS, COMMON_ERRORS, CurrentIdentity, IdentityRoute, StoreDep, unauthorized
from models import DEFAULT_PREFERENCES, Cart, Catalogue, Item, Message, Quantity, SortOrder
from store import Store, UnknownOwner

router = APIRouter(tags=["shop"], route_class=IdentityRoute, responses=COMMON_ERRORS)

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


def category_interest(history: list[tuple[int, float]], favourites: list[int]) -> Counter[str]:
    """How often the caller viewed or favourited items of each category."""
    return Counter(ITEM_JSON[i]["category"] for i in [*(item for item, _ in history), *favourites] if i in ITEM_JSON)


def by_interest(interest: Counter[str]) -> list[dict[str, Any]]:
    """The catalogue, most interesting category first; ties in catalogue order."""
    return sorted(CATALOGUE_JSON, key=lambda item: -interest[item["category"]])


async def personalised(owner: str, store: Store, sort: SortOrder | None) -> dict[str, Any]:
    """``items`` in the asked (or saved) order, ``recently_viewed`` and ``recommended``: the
    items of categories the caller showed interest in, minus what it just saw, favours or buys."""
    if sort is None:
        sort = (await store.get_preferences(owner)).get("sort", DEFAULT_PREFERENCES["sort"])  # type: ignore[assignment]
    history = await store.get_history(owner)
    favourites = await store.get_favourites(owner)
    interest = category_interest(history, favourites)
    ranked = by_interest(interest)
    recent = [item for item, _ in history[:RECENTLY_VIEWED]]
    seen = {*recent, *favourites, *(await store.get_cart(owner))}
    recommended = [item for item in ranked if interest[item["category"]] and item["id"] not in seen][:RECOMMENDED]
    return {"items": ranked if sort == "recommended" else _ORDER[sort],  # type: ignore[index]
            "recently_viewed": [ITEM_JSON[i] for i in recent if i in ITEM_JSON], "recommended": recommended}


def _cart(cart: dict[int, int]) -> dict[str, list[dict[str, int]]]:
    return {"items": [{"item_id": item_id, "quantity": quantity} for item_id, quantity in sorted(cart.items())]}


@router.get("/items", response_model=Catalogue, responses=AUTH_ERRORS, include_in_schema=False)
@router.get("/items/", response_model=Catalogue, responses=AUTH_ERRORS)
async def list_items(identity: CurrentIdentity, store: StoreDep, sort: SortOrder | None = None) -> dict[str, object]:
    """The catalogue, ordered by ``sort`` (default: the caller's saved preference), with the
    caller's recently viewed items and recommendations."""
    name = "anonymous visitor" if identity.anonymous else identity.username
    return {"message": f"Hello, {name}! Here is the catalogue.", **await personalised(identity.id, store, sort)}


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
