import { useEffect, useState } from "react";
import { api, SessionExpiredError } from "../api.js";
import { useAuth } from "../AuthContext.jsx";

/** All registered users, for a logged-in user; a Logout button. */
export default function Users() {
  const { user, logout, setMessage } = useAuth();
  const [users, setUsers] = useState([]);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    setUsers([]);
    if (!user) return undefined;
    let cancelled = false;
    api
      .listUsers()
      .then((data) => {
        if (!cancelled) setUsers(data.users);
      })
      .catch((error) => {
        if (!cancelled && !(error instanceof SessionExpiredError)) setMessage(error.message);
      });
    return () => {
      cancelled = true;
    };
  }, [user, setMessage]);

  async function handleLogout() {
    setBusy(true);
    await logout();
    setBusy(false);
  }

  return (
    <section className="card" aria-labelledby="users-title">
      <h2 id="users-title">Users</h2>
      {user ? (
        <>
          <p>
            Logged in as <strong data-testid="current-user">{user.username}</strong>
          </p>
          <ul className="user-list" aria-label="All users" data-testid="user-list">
            {users.map((entry) => (
              <li key={entry.id}>{entry.username}</li>
            ))}
          </ul>
          <button type="button" onClick={handleLogout} disabled={busy}>
            Logout
          </button>
        </>
      ) : (
        <p>Please log in to see all the users</p>
      )}
    </section>
  );
}
