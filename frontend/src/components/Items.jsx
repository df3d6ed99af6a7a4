import { formatPrice } from "./price.js";

/** The catalogue: every item with its price and an "Add to cart" button. */
export default function Items({ items, greeting, busy, onAdd }) {
  return (
    <section className="card" aria-labelledby="items-title">
      <h2 id="items-title">Catalogue</h2>
      {greeting && <p data-testid="greeting">{greeting}</p>}
      <ul className="rows" aria-label="Items">
        {items.map((item) => (
          <li key={item.id} className="row" data-testid={`item-${item.id}`}>
            <span className="name">{item.name}</span>
            <span className="price">{formatPrice(item.price)}</span>
            <button type="button" onClick={() => onAdd(item)} disabled={busy}>
              Add to cart
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}
