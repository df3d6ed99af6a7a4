import { useAuth } from "../AuthContext";
import CredentialsForm from "./CredentialsForm";

export default function Login({ initialUsername = "" }: { initialUsername?: string }) {
  const { login } = useAuth();
  return (
    <CredentialsForm
      title="Login"
      passwordAutoComplete="current-password"
      initialUsername={initialUsername}
      onSubmit={login}
    />
  );
}
