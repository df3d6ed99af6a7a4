import { AuthProvider, useAuth } from "./AuthContext.jsx";
import AccountPanel from "./components/AccountPanel.jsx";
import AuthForms from "./components/AuthForms.jsx";
import ChallengeProgress from "./components/ChallengeProgress.jsx";
import Message from "./components/Message.jsx";
import Shop from "./components/Shop.jsx";
import Users from "./components/Users.jsx";

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
