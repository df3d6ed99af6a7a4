import { browserSupportsWebAuthn, browserSupportsWebAuthnAutofill } from "@simplewebauthn/browser";
import { useEffect, useId, useState, type FormEvent } from "react";
import { useAuth } from "../AuthContext";
import CredentialsForm from "./CredentialsForm";

/** The second step of a login with TOTP on: a code of the app, or a recovery code. */
function SecondFactorForm() {
  const { completeMfa, cancelMfa } = useAuth();
  const id = useId();
  const [code, setCode] = useState("");
  const [busy, setBusy] = useState(false);

  async function handleSubmit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    setBusy(true);
    await completeMfa(code);
    setBusy(false);
    setCode("");
  }

  return (
    <form className="card" onSubmit={handleSubmit} aria-labelledby={`${id}-title`}>
      <h2 id={`${id}-title`}>Two-step verification</h2>
      <label htmlFor={`${id}-code`}>Code from your authenticator app, or a recovery code</label>
      <input
        id={`${id}-code`}
        autoComplete="one-time-code"
        inputMode="text"
        autoFocus
        value={code}
        onChange={(event) => setCode(event.target.value)}
        required
      />
      <button type="submit" disabled={busy}>
        Verify
      </button>
      <button type="button" onClick={cancelMfa}>
        Cancel
      </button>
    </form>
  );
}

export default function Login({ initialUsername = "" }: { initialUsername?: string }) {
  const { login, loginWithPasskey, pendingMfa } = useAuth();
  const [busy, setBusy] = useState(false);
  const passkeys = browserSupportsWebAuthn();

  // Conditional UI: where the browser offers it, the username field's suggestions include this
  // site's passkeys; picking one signs in. It waits in the background until then.
  useEffect(() => {
    if (pendingMfa || !passkeys) return;
    let active = true;
    browserSupportsWebAuthnAutofill().then((supported) => {
      if (supported && active) void loginWithPasskey(true);
    });
    return () => {
      active = false;
    };
  }, [pendingMfa, passkeys, loginWithPasskey]);

  if (pendingMfa) return <SecondFactorForm />;

  async function handlePasskey() {
    setBusy(true);
    await loginWithPasskey();
    setBusy(false);
  }

  return (
    <CredentialsForm
      title="Login"
      passwordAutoComplete="current-password"
      usernameAutoComplete="username webauthn"
      initialUsername={initialUsername}
      onSubmit={login}
    >
      {passkeys && (
        <button type="button" className="secondary" onClick={handlePasskey} disabled={busy}>
          Sign in with a passkey
        </button>
      )}
    </CredentialsForm>
  );
}
