import { useQuery } from "@tanstack/react-query";
import { useState } from "react";
import { api } from "../api";
import { useAuth } from "../AuthContext";
import { queryKeys } from "../queries";

/** All registered users, for a logged-in user (fetched anew at each login); a Logout button. */
export default function Users() {
  const { user, logout, sessionKey } = useAuth();
  const users = useQuery({
    queryKey: queryKeys.users(sessionKey),
    queryFn: api.listUsers,
    enabled: user !== null,
  });
  const [busy, setBusy] = useState(false);

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
            {(users.data?.users ?? []).map((entry) => (
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
