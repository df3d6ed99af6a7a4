import { useEffect, useMemo, useState } from "react";
import { api, SessionExpiredError } from "../api.js";
import { useAuth } from "../AuthContext.jsx";
import Cart from "./Cart.jsx";
import Items from "./Items.jsx";

/** Loads the catalogue and the cart of the current identity (anonymous or registered). */
export default function Shop() {
  const { sessionKey, setMessage } = useAuth();
  const [items, setItems] = useState([]);
  const [greeting, setGreeting] = useState("");
  const [lines, setLines] = useState([]);
  const [busy, setBusy] = useState(true);

  useEffect(() => {
    let cancelled = false;
    setBusy(true);
    Promise.all([api.items(), api.cart()])
      .then(([catalogue, cart]) => {
        if (cancelled) return;
        setItems(catalogue.items);
        setGreeting(catalogue.message);
        setLines(cart.items);
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
  }, [sessionKey, setMessage]);

  const itemsById = useMemo(() => new Map(items.map((item) => [item.id, item])), [items]);

  async function update(call) {
    setBusy(true);
    try {
      const cart = await call();
      setLines(cart.items);
    } catch (error) {
      if (!(error instanceof SessionExpiredError)) setMessage(error.message);
    } finally {
      setBusy(false);
    }
  }

  function add(item) {
    const current = lines.find((line) => line.item_id === item.id)?.quantity ?? 0;
    return update(() => api.setCartQuantity(item.id, current + 1));
  }

  function remove(itemId) {
    return update(() => api.removeFromCart(itemId));
  }

  return (
    <div className="shop" aria-busy={busy}>
      <Items items={items} greeting={greeting} busy={busy} onAdd={add} />
      <Cart lines={lines} itemsById={itemsById} busy={busy} onRemove={remove} />
    </div>
  );
}
