import type { Item, Theme } from "../api";
import { formatPrice } from "./price";

/** A short list of items (recently viewed, recommended); a name opens the item's details. */
export function ItemList({
  title,
  testId,
  items,
  empty,
  onOpen,
}: {
  title: string;
  testId: string;
  items: Item[];
  empty: string;
  onOpen: (itemId: number) => void;
}) {
  const id = `${testId}-title`;
  return (
    <section className="card" aria-labelledby={id} data-testid={testId}>
      <h2 id={id}>{title}</h2>
      {items.length === 0 ? (
        <p className="hint">{empty}</p>
      ) : (
        <ul className="rows compact" aria-label={title}>
          {items.map((item) => (
            <li key={item.id}>
              <button type="button" className="link" onClick={() => onOpen(item.id)}>
                {item.name}
              </button>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

/** The item last opened. */
export function ItemDetail({ item, favourite, onClose }: { item: Item; favourite: boolean; onClose: () => void }) {
  return (
    <section className="card" aria-labelledby="detail-title" data-testid="item-detail">
      <h2 id="detail-title">{item.name}</h2>
      <p>
        {formatPrice(item.price)} · <span data-testid="detail-category">{item.category}</span>
        {favourite && " · ★ a favourite"}
      </p>
      <button type="button" className="link" onClick={onClose}>
        Close
      </button>
    </section>
  );
}

/** The theme switch: light or dark (or the system's), kept on the server with the other preferences. */
export function ThemeSwitch({
  theme,
  busy,
  onChange,
}: {
  theme: Theme;
  busy: boolean;
  onChange: (theme: Theme) => void;
}) {
  return (
    <label className="inline theme-switch">
      Theme{" "}
      <select value={theme} onChange={(event) => onChange(event.target.value as Theme)} disabled={busy}>
        <option value="system">System</option>
        <option value="light">Light</option>
        <option value="dark">Dark</option>
      </select>
    </label>
  );
}
