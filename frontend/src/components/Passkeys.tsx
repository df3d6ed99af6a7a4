import { browserSupportsWebAuthn } from "@simplewebauthn/browser";
import { useCallback, useEffect, useId, useState, type FormEvent } from "react";
import { api, type Schemas } from "../api";
import { useAuth } from "../AuthContext";

type Passkey = Schemas["PasskeyInfo"];

const when = (seconds: number | null) => (seconds == null ? "never" : new Date(seconds * 1000).toLocaleString());

/** The account's passkeys: add one made on this device, remove any. Each change ends the
 * account's other sessions (the server does it). */
export default function Passkeys() {
  const { setMessage } = useAuth();
  const id = useId();
  const [passkeys, setPasskeys] = useState<Passkey[] | null>(null);
  const [name, setName] = useState("");
  const [busy, setBusy] = useState(false);

  const reload = useCallback(async () => {
    try {
      setPasskeys((await api.passkeys()).passkeys);
    } catch (error) {
      setMessage(error instanceof Error ? error.message : String(error));
    }
  }, [setMessage]);

  useEffect(() => {
    void reload();
  }, [reload]);

  async function act(action: () => Promise<unknown>, done: string) {
    setBusy(true);
    try {
      await action();
      setMessage(done);
    } catch (error) {
      const cancelled = error instanceof Error && ["NotAllowedError", "AbortError"].includes(error.name);
      setMessage(cancelled ? "No passkey was made" : error instanceof Error ? error.message : String(error));
    }
    await reload();
    setBusy(false);
  }

  async function handleAdd(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    await act(() => api.addPasskey(name.trim() || undefined), "Passkey added; your other sessions are logged out");
    setName("");
  }

  if (!browserSupportsWebAuthn()) return null;
  return (
    <div className="account-form" aria-labelledby={`${id}-title`} role="group">
      <h3 id={`${id}-title`}>Passkeys</h3>
      {passkeys && passkeys.length === 0 && <p>No passkey yet: add one to sign in without a password.</p>}
      <ul className="passkeys">
        {passkeys?.map((passkey) => (
          <li key={passkey.id}>
            <span className="passkey-name">{passkey.name}</span>{" "}
            <small>
              added {when(passkey.created_at)}, last used {when(passkey.last_used_at)}
            </small>{" "}
            <button
              type="button"
              className="danger"
              disabled={busy}
              aria-label={`Remove passkey ${passkey.name}`}
              onClick={() => act(() => api.removePasskey(passkey.id), "Passkey removed; your other sessions are logged out")}
            >
              Remove
            </button>
          </li>
        ))}
      </ul>
      <form onSubmit={handleAdd}>
        <label htmlFor={`${id}-name`}>Name (optional)</label>
        <input id={`${id}-name`} value={name} maxLength={64} onChange={(event) => setName(event.target.value)} />
        <button type="submit" disabled={busy}>
          Add a passkey
        </button>
      </form>
    </div>
  );
}
