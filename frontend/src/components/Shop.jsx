import { useCallback, useEffect, useMemo, useState } from "react";
import { api, DEFAULT_PREFERENCES, SessionExpiredError } from "../api.js";
import { useAuth } from "../AuthContext.jsx";
import Cart from "./Cart.jsx";
import Items from "./Items.jsx";
import { ItemDetail, ItemList, ThemeSwitch } from "./Personal.jsx";

/** Loads the catalogue, the cart, the favourites and the preferences of the current identity
 * (anonymous or registered); all of them live on the server, so they follow the visitor into
 * the account and to another browser. A visitor without a token sees the catalogue and an empty
 * cart; its first change asks for an anonymous token (api.js). */
export default function Shop() {
  const { sessionKey, setMessage } = useAuth();
  const [catalogue, setCatalogue] = useState({ items: [], recently_viewed: [], recommended: [] });
  const [greeting, setGreeting] = useState("");
  const [lines, setLines] = useState([]);
  const [favourites, setFavourites] = useState([]);
  const [preferences, setPreferences] = useState(DEFAULT_PREFERENCES);
  const [detail, setDetail] = useState(null);
  const [busy, setBusy] = useState(true);

  const showCatalogue = useCallback((data) => {
    setCatalogue(data);
    setGreeting(data.message);
  }, []);

  useEffect(() => {
    let cancelled = false;
    setBusy(true);
    setDetail(null);
    Promise.all([api.preferences(), api.items(), api.cart(), api.favourites()])
      .then(([prefs, items, cart, favs]) => {
        if (cancelled) return;
        setPreferences(prefs);
        showCatalogue(items);
        setLines(cart.items);
        setFavourites(favs.items);
      })
      .catch((error) => {
        // An expired session is reported by AuthContext, which reloads us.
        if (!cancelled && !(error instanceof SessionExpiredError)) setMessage(error.message);
      })
      .finally(() => {
        if (!cancelled) setBusy(false);
      });
    return () => {
      cancelled = true;
    };
  }, [sessionKey, setMessage, showCatalogue]);

  useEffect(() => {
    document.documentElement.dataset.theme = preferences.theme;
  }, [preferences.theme]);

  const itemsById = useMemo(
    () => new Map(catalogue.items.map((item) => [item.id, item])),
    [catalogue.items],
  );

  /** One change at a time: `call`, then the catalogue again (its recommendations depend on it). */
  async function run(call) {
    setBusy(true);
    try {
      await call();
      showCatalogue(await api.items());
    } catch (error) {
      if (!(error instanceof SessionExpiredError)) setMessage(error.message);
    } finally {
      setBusy(false);
    }
  }

  function add(item) {
    const current = lines.find((line) => line.item_id === item.id)?.quantity ?? 0;
    return run(async () => setLines((await api.setCartQuantity(item.id, current + 1)).items));
  }

  function remove(itemId) {
    return run(async () => setLines((await api.removeFromCart(itemId)).items));
  }

  function open(itemId) {
    return run(async () => setDetail(await api.item(itemId)));
  }

  function favourite(itemId, on) {
    return run(async () => {
      const result = on ? await api.addFavourite(itemId) : await api.removeFavourite(itemId);
      setFavourites(result.items);
    });
  }

  function choose(changes) {
    return run(async () => setPreferences(await api.setPreferences(changes)));
  }

  return (
    <div className="shop" aria-busy={busy}>
      <div className="column">
        <ThemeSwitch theme={preferences.theme} busy={busy} onChange={(theme) => choose({ theme })} />
        {detail && (
          <ItemDetail
            item={detail}
            favourite={favourites.includes(detail.id)}
            onClose={() => setDetail(null)}
          />
        )}
        <Items
          items={catalogue.items}
          greeting={greeting}
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
