import { AuthProvider, useAuth } from "./AuthContext";
import AccountPanel from "./components/AccountPanel";
import AuthForms from "./components/AuthForms";
import ChallengeProgress from "./components/ChallengeProgress";
import Message from "./components/Message";
import Shop from "./components/Shop";
import Users from "./components/Users";

function Account() {
  const { user, checking } = useAuth();
  if (checking) return <p className="card">Checking your session…</p>;
  return (
    <>
      {!user && <AuthForms />}
      <Users />
      <AccountPanel />
    </>
  );
}

export default function App() {
  return (
    <AuthProvider>
      <header className="header">
        <h1>JWT Auth Shop</h1>
        <Message />
        <ChallengeProgress />
      </header>
      <main className="layout">
        <div className="account">
          <Account />
        </div>
        <Shop />
      </main>
    </AuthProvider>
  );
}
