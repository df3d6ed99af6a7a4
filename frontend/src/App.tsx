import { useState } from "react";
import { AuthProvider, useAuth } from "./AuthContext";
import AccountPanel from "./components/AccountPanel";
import AdminPage from "./components/AdminPage";
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

/** The shop, or for an administrator who asked for it, the Administration page. */
function Main() {
  const { user } = useAuth();
  const [page, setPage] = useState<"shop" | "admin">("shop");
  const admin = page === "admin" && user?.is_admin === true;
  return (
    <>
      {user?.is_admin && (
        <nav className="pages" aria-label="Pages">
          <button type="button" aria-pressed={!admin} onClick={() => setPage("shop")}>
            Shop
          </button>
          <button type="button" aria-pressed={admin} onClick={() => setPage("admin")}>
            Administration
          </button>
        </nav>
      )}
      <main className="layout">
        <div className="account">
          <Account />
        </div>
        {admin ? <AdminPage /> : <Shop />}
      </main>
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
      <Main />
    </AuthProvider>
  );
}
