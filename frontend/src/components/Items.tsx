import type { Item, Sort } from "../api";
import { formatPrice } from "./price";

const SORTS: [Sort, string][] = [
  ["catalogue", "Catalogue order"],
  ["name", "Name"],
  ["price", "Price"],
  ["recommended", "Recommended"],
];

/** The catalogue: every item with its price, a favourite toggle and an "Add to cart" button.
 * Clicking an item's name opens its details (and records a view on the server). */
export default function Items({
  items,
  greeting,
  busy,
  favourites,
  sort,
  onAdd,
  onOpen,
  onFavourite,
  onSort,
}: {
  items: Item[];
  greeting: string;
  busy: boolean;
  favourites: number[];
  sort: Sort;
  onAdd: (item: Item) => void;
  onOpen: (itemId: number) => void;
  onFavourite: (itemId: number, on: boolean) => void;
  onSort: (sort: Sort) => void;
}) {
  return (
    <section className="card" aria-labelledby="items-title">
      <h2 id="items-title">Catalogue</h2>
      {greeting && <p data-testid="greeting">{greeting}</p>}
      <label className="inline">
        Sort by{" "}
        <select value={sort} onChange={(event) => onSort(event.target.value as Sort)} disabled={busy}>
          {SORTS.map(([value, label]) => (
            <option key={value} value={value}>
              {label}
            </option>
          ))}
        </select>
      </label>
      <ul className="rows items" aria-label="Items">
        {items.map((item) => {
          const favourite = favourites.includes(item.id);
          return (
            <li key={item.id} className="row" data-testid={`item-${item.id}`}>
              <button type="button" className="link name" onClick={() => onOpen(item.id)}>
                {item.name}
              </button>
              <span className="price">{formatPrice(item.price)}</span>
              <button
                type="button"
                className="favourite"
                aria-label={`Favourite ${item.name}`}
                aria-pressed={favourite}
                onClick={() => onFavourite(item.id, !favourite)}
                disabled={busy}
              >
                {favourite ? "★" : "☆"}
              </button>
              <button type="button" onClick={() => onAdd(item)} disabled={busy}>
                Add to cart
              </button>
            </li>
          );
        })}
      </ul>
    </section>
  );
}
