import { useAuth } from "../AuthContext.jsx";
import CredentialsForm from "./CredentialsForm.jsx";

export default function Login({ initialUsername = "" }) {
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
