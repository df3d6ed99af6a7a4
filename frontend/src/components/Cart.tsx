import type { CartLine, Item } from "../api";
import { formatPrice } from "./price";

/** The cart (kept on the server): quantities, a total and "Remove" buttons. */
export default function Cart({
  lines,
  itemsById,
  busy,
  onRemove,
}: {
  lines: CartLine[];
  itemsById: Map<number, Item>;
  busy: boolean;
  onRemove: (itemId: number) => void;
}) {
  const total = lines.reduce(
    (sum, line) => sum + (itemsById.get(line.item_id)?.price ?? 0) * line.quantity,
    0,
  );
  return (
    <section className="card" aria-labelledby="cart-title">
      <h2 id="cart-title">Cart</h2>
      {lines.length === 0 ? (
        <p data-testid="cart-empty">Your cart is empty</p>
      ) : (
        <>
          <ul className="rows" aria-label="Cart items">
            {lines.map((line) => {
              const item = itemsById.get(line.item_id);
              return (
                <li key={line.item_id} className="row" data-testid={`cart-item-${line.item_id}`}>
                  <span className="name">{item?.name ?? `Item ${line.item_id}`}</span>
                  <span className="quantity" data-testid="quantity">
                    × {line.quantity}
                  </span>
                  <button type="button" onClick={() => onRemove(line.item_id)} disabled={busy}>
                    Remove
                  </button>
                </li>
              );
            })}
          </ul>
          <p className="total">
            Total: <strong data-testid="cart-total">{formatPrice(total)}</strong>
          </p>
        </>
      )}
    </section>
  );
}
