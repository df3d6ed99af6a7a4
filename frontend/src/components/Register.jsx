import { useId, useState } from "react";
import { useAuth } from "../AuthContext.jsx";

export default function Register({ onRegistered }) {
  const { register } = useAuth();
  const id = useId();
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);

  async function handleSubmit(event) {
    event.preventDefault();
    setBusy(true);
    const ok = await register(username, password);
    setBusy(false);
    if (ok) onRegistered?.(username);
  }

  return (
    <form className="card" onSubmit={handleSubmit} aria-labelledby={`${id}-title`}>
      <h2 id={`${id}-title`}>Register</h2>
      <label htmlFor={`${id}-username`}>Username</label>
      <input
        id={`${id}-username`}
        autoComplete="username"
        value={username}
        onChange={(event) => setUsername(event.target.value)}
        required
      />
      <label htmlFor={`${id}-password`}>Password</label>
      <input
        id={`${id}-password`}
        type="password"
        autoComplete="new-password"
        value={password}
        onChange={(event) => setPassword(event.target.value)}
        required
      />
      <p className="hint">3–15 characters (letters, digits, _ . -); password at least 8 characters.</p>
      <button type="submit" disabled={busy}>
        Register
      </button>
    </form>
  );
}
