import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, type Account, type AdminAction } from "../api";
import { useAuth } from "../AuthContext";
import { queryKeys } from "../queries";
import { when } from "./Devices";

/** The buttons of one account's row: what an administrator may do to it, and what it says once done. */
function actionsFor(account: Account, self: boolean): { action: AdminAction; label: string; done: string }[] {
  const actions: { action: AdminAction; label: string; done: string }[] = [];
  if (!self) {
    actions.push(account.disabled
      ? { action: "enable", label: "Enable", done: "enabled" }
      : { action: "disable", label: "Disable", done: "disabled; its sessions ended" });
  }
  actions.push({ action: "unlock", label: "Unlock", done: "unlocked" });
  actions.push({ action: "endSessions", label: "End sessions", done: "signed out everywhere" });
  if (!account.is_admin) actions.push({ action: "grant", label: "Make admin", done: "is now an administrator" });
  else if (!self) actions.push({ action: "revoke", label: "Remove admin", done: "is no longer an administrator" });
  return actions;
}

/** An administrator's page: find accounts, disable or enable them, clear their failed logins, end
 * their sessions, grant or revoke the right; and the audit log, newest first. */
export default function AdminPage() {
  const { user, sessionKey, setMessage } = useAuth();
  const queryClient = useQueryClient();
  const key = queryKeys.admin(sessionKey);
  const [draft, setDraft] = useState("");
  const [query, setQuery] = useState("");
  const users = useQuery({ queryKey: [...key, "users", query], queryFn: () => api.adminUsers(query) });
  const audit = useQuery({ queryKey: [...key, "audit"], queryFn: () => api.adminAudit() });
  const act = useMutation({
    mutationFn: ({ action, account }: { action: AdminAction; account: Account; done: string }) =>
      api.adminAct(action, account.id),
    onSuccess: async (_, { account, done }) => {
      setMessage(`${account.username} ${done}`);
      await queryClient.invalidateQueries({ queryKey: key });
    },
  });
  if (!user?.is_admin) return null;

  function search(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    setQuery(draft.trim());
  }

  return (
    <section className="card admin" aria-labelledby="admin-title">
      <h2 id="admin-title">Administration</h2>
      <form className="admin-search" role="search" aria-label="Search users" onSubmit={search}>
        <label htmlFor="admin-query">Username starts with</label>
        <input id="admin-query" value={draft} maxLength={64} onChange={(event) => setDraft(event.target.value)} />
        <button type="submit">Search</button>
      </form>
      <table className="admin-users" aria-label="Accounts">
        <thead>
          <tr>
            <th scope="col">User</th>
            <th scope="col">Status</th>
            <th scope="col">Last login</th>
            <th scope="col">Actions</th>
          </tr>
        </thead>
        <tbody>
          {(users.data?.users ?? []).map((account) => (
            <tr key={account.id} aria-label={account.username}>
              <th scope="row">{account.username}</th>
              <td>
                {[account.is_admin && "admin", account.disabled && "disabled"].filter(Boolean).join(", ") || "active"}
              </td>
              <td>{account.last_login_at ? when(account.last_login_at) : "never"}</td>
              <td className="admin-actions">
                {actionsFor(account, account.id === user.id).map(({ action, label, done }) => (
                  <button
                    type="button"
                    key={action}
                    className={action === "disable" ? "danger" : undefined}
                    disabled={act.isPending}
                    onClick={() => act.mutate({ action, account, done })}
                  >
                    {label}
                  </button>
                ))}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {users.data?.next_cursor && <p>More accounts match: narrow the search.</p>}
      <h3 id="audit-title">Audit log</h3>
      <button type="button" onClick={() => void queryClient.invalidateQueries({ queryKey: [...key, "audit"] })}>
        Refresh the audit log
      </button>
      <ol className="audit-log" aria-labelledby="audit-title">
        {(audit.data?.events ?? []).map((event) => (
          <li key={event.id} data-testid="audit-event">
            <code>{event.type}</code> {event.username ?? event.user_id ?? ""}
            {typeof event.detail["count"] === "number" && event.detail["count"] > 1 ? ` ×${event.detail["count"]}` : ""}
            {typeof event.detail["admin"] === "string" ? ` by ${event.detail["admin"]}` : ""}
            <small>
              {" "}
              · {when(event.at)}
              {event.client ? ` · ${event.client}` : ""}
            </small>
          </li>
        ))}
      </ol>
    </section>
  );
}
