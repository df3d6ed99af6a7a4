import { useAuth } from "../AuthContext";
import CredentialsForm from "./CredentialsForm";

export default function Register({ onRegistered }: { onRegistered?: (username: string) => void }) {
  const { register } = useAuth();

  async function submit(username: string, password: string) {
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
