import { useId, useState, type FormEvent, type ReactNode } from "react";

// The username + password form that Login and Register share; `onSubmit` resolves to true on
// success. The password is cleared after a failed attempt.
export default function CredentialsForm({
  title,
  passwordAutoComplete,
  usernameAutoComplete = "username",
  initialUsername = "",
  onSubmit,
  children,
}: {
  title: string;
  passwordAutoComplete: "current-password" | "new-password";
  /** "username webauthn" on the login form: the browser may offer passkeys there (conditional UI). */
  usernameAutoComplete?: string;
  initialUsername?: string;
  onSubmit: (username: string, password: string) => Promise<boolean>;
  children?: ReactNode;
}) {
  const id = useId();
  const [username, setUsername] = useState(initialUsername);
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);

  async function handleSubmit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    setBusy(true);
    const ok = await onSubmit(username, password);
    setBusy(false);
    if (!ok) setPassword("");
  }

  return (
    <form className="card" onSubmit={handleSubmit} aria-labelledby={`${id}-title`}>
      <h2 id={`${id}-title`}>{title}</h2>
      <label htmlFor={`${id}-username`}>Username</label>
      <input
        id={`${id}-username`}
        autoComplete={usernameAutoComplete}
        value={username}
        onChange={(event) => setUsername(event.target.value)}
        required
      />
      <label htmlFor={`${id}-password`}>Password</label>
      <input
        id={`${id}-password`}
        type="password"
        autoComplete={passwordAutoComplete}
        autoFocus={Boolean(initialUsername)} // the username is known: the password is what is left
        value={password}
        onChange={(event) => setPassword(event.target.value)}
        required
      />
      {children}
      <button type="submit" disabled={busy}>
        {title}
      </button>
    </form>
  );
}
