import { useId, useState } from "react";
import { useAuth } from "../AuthContext.jsx";

export default function Login({ initialUsername = "" }) {
  const { login } = useAuth();
  const id = useId();
  const [username, setUsername] = useState(initialUsername);
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);

  async function handleSubmit(event) {
    event.preventDefault();
    setBusy(true);
    const ok = await login(username, password);
    setBusy(false);
    if (!ok) setPassword("");
  }

  return (
    <form className="card" onSubmit={handleSubmit} aria-labelledby={`${id}-title`}>
      <h2 id={`${id}-title`}>Login</h2>
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
        autoComplete="current-password"
        autoFocus={Boolean(initialUsername)} // just registered: the password is what is left
        value={password}
        onChange={(event) => setPassword(event.target.value)}
        required
      />
      <button type="submit" disabled={busy}>
        Login
      </button>
    </form>
  );
}
