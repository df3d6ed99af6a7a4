"""A small catalogue and a cart, for anonymous visitors and accounts alike."""

from fastapi import APIRouter, HTTPException, status

from deps import AUTH_ERRORS, COMMON_ERRORS, CurrentIdentity, IdentityRoute, StoreDep, unauthorized
from models import Cart, Catalogue, Item, Message, Quantity
from store import UnknownOwner

router = APIRouter(tags=["shop"], route_class=IdentityRoute, responses=COMMON_ERRORS)

CATALOGUE = {item.id: item for item in (
    Item(id=1, name="Espresso beans, 1 kg", price=24.5),
    Item(id=2, name="Pour-over kettle", price=39.0),
    Item(id=3, name="Ceramic dripper", price=18.0),
    Item(id=4, name="Paper filters (100)", price=5.5),
    Item(id=5, name="Burr grinder", price=129.0),
    Item(id=6, name="Travel mug", price=15.0),
)}
CATALOGUE_JSON = [item.model_dump() for item in CATALOGUE.values()]
NOT_FOUND = {404: {"model": Message, "description": "No such item"}}


def _cart(cart: dict[int, int]) -> dict[str, list[dict[str, int]]]:
    return {"items": [{"item_id": item_id, "quantity": quantity} for item_id, quantity in sorted(cart.items())]}


@router.get("/items", response_model=Catalogue, responses=AUTH_ERRORS, include_in_schema=False)
@router.get("/items/", response_model=Catalogue, responses=AUTH_ERRORS)
async def list_items(identity: CurrentIdentity) -> dict[str, object]:
    name = "anonymous visitor" if identity.anonymous else identity.username
    return {"message": f"Hello, {name}! Here is the catalogue.", "items": CATALOGUE_JSON}


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
