import { useAuth } from "../AuthContext.jsx";
import CredentialsForm from "./CredentialsForm.jsx";

export default function Register({ onRegistered }) {
  const { register } = useAuth();

  async function submit(username, password) {
    const ok = await register(username, password);
    if (ok) onRegistered?.(username);
    return ok;
  }

  return (
    <CredentialsForm title="Register" passwordAutoComplete="new-password" onSubmit={submit}>
      <p className="hint">3–15 characters (letters, digits, _ . -); password at least 8 characters.</p>
    </CredentialsForm>
  );
}
