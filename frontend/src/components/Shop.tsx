import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useMemo, useState } from "react";
import { api, DEFAULT_PREFERENCES, type CartLine, type Catalogue, type Item, type Preferences } from "../api";
import { useAuth } from "../AuthContext";
import { queryKeys } from "../queries";
import Cart from "./Cart";
import Items from "./Items";
import { ItemDetail, ItemList, ThemeSwitch } from "./Personal";

/** What the shop shows of the current identity; all of it lives on the server. */
interface ShopState {
  catalogue: Catalogue;
  lines: CartLine[];
  favourites: number[];
  preferences: Preferences;
}

const EMPTY: ShopState = {
  catalogue: { message: "", items: [], recently_viewed: [], recommended: [] },
  lines: [],
  favourites: [],
  preferences: DEFAULT_PREFERENCES,
};

async function loadShop(): Promise<ShopState> {
  const [preferences, catalogue, cart, favourites] = await Promise.all([
    api.preferences(),
    api.items(),
    api.cart(),
    api.favourites(),
  ]);
  return { preferences, catalogue, lines: cart.items, favourites: favourites.items };
}

/** Loads the catalogue, the cart, the favourites and the preferences of the current identity
 * (anonymous or registered); all of them live on the server, so they follow the visitor into
 * the account and to another browser. A visitor without a token sees the catalogue and an empty
 * cart; its first change asks for an anonymous token (api.ts). A new identity's are fetched
 * while the last one's stay on screen (the page is busy meanwhile); errors go to the status line
 * (queries.ts). */
export default function Shop() {
  const { sessionKey } = useAuth();
  const queryClient = useQueryClient();
  const key = queryKeys.shop(sessionKey);
  const shop = useQuery({ queryKey: key, queryFn: loadShop, placeholderData: keepPreviousData });
  const { catalogue, lines, favourites, preferences } = shop.data ?? EMPTY;
  // The item last opened, by this identity.
  const [opened, setOpened] = useState<{ sessionKey: number; item: Item } | null>(null);
  const detail = opened?.sessionKey === sessionKey ? opened.item : null;

  const keep = (changes: Partial<ShopState>) =>
    queryClient.setQueryData<ShopState>(key, (old) => ({ ...(old ?? EMPTY), ...changes }));

  /** One change at a time: `call` (what it answers is shown at once), then the catalogue again
   * (its recommendations depend on it). */
  const change = useMutation({
    mutationFn: async (call: () => Promise<Partial<ShopState>>) => {
      keep(await call());
      keep({ catalogue: await api.items() });
    },
  });
  const busy = shop.isFetching || change.isPending;

  useEffect(() => {
    document.documentElement.dataset.theme = preferences.theme;
  }, [preferences.theme]);

  const itemsById = useMemo(
    () => new Map(catalogue.items.map((item) => [item.id, item])),
    [catalogue.items],
  );

  function add(item: Item) {
    const current = lines.find((line) => line.item_id === item.id)?.quantity ?? 0;
    change.mutate(async () => ({ lines: (await api.setCartQuantity(item.id, current + 1)).items }));
  }

  function remove(itemId: number) {
    change.mutate(async () => ({ lines: (await api.removeFromCart(itemId)).items }));
  }

  function open(itemId: number) {
    change.mutate(async () => {
      setOpened({ sessionKey, item: await api.item(itemId) });
      return {};
    });
  }

  function favourite(itemId: number, on: boolean) {
    change.mutate(async () => {
      const result = on ? await api.addFavourite(itemId) : await api.removeFavourite(itemId);
      return { favourites: result.items };
    });
  }

  function choose(changes: Partial<Preferences>) {
    change.mutate(async () => ({ preferences: await api.setPreferences(changes) }));
  }

  return (
    <div className="shop" aria-busy={busy}>
      <div className="column">
        <ThemeSwitch theme={preferences.theme} busy={busy} onChange={(theme) => choose({ theme })} />
        {detail && (
          <ItemDetail
            item={detail}
            favourite={favourites.includes(detail.id)}
            onClose={() => setOpened(null)}
          />
        )}
        <Items
          items={catalogue.items}
          greeting={catalogue.message}
          busy={busy}
          favourites={favourites}
          sort={preferences.sort}
          onAdd={add}
          onOpen={open}
          onFavourite={favourite}
          onSort={(sort) => choose({ sort })}
        />
      </div>
      <div className="column">
        <Cart lines={lines} itemsById={itemsById} busy={busy} onRemove={remove} />
        <ItemList
          title="Recently viewed"
          testId="recently-viewed"
          items={catalogue.recently_viewed}
          empty="Nothing viewed yet: click an item's name."
          onOpen={open}
        />
        <ItemList
          title="Recommended for you"
          testId="recommended"
          items={catalogue.recommended}
          empty="View or favourite a few items to get recommendations."
          onOpen={open}
        />
      </div>
    </div>
  );
}
