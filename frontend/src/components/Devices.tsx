import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, type AuditEvent, type Session } from "../api";
import { useAuth } from "../AuthContext";
import { queryKeys } from "../queries";

/** A time (epoch seconds) as this browser writes dates; "unknown" for a session older than the field. */
export function when(at: number | null | undefined): string {
  return at ? new Date(at * 1000).toLocaleString() : "unknown";
}

/** What the audit log's event types mean to the account's owner. */
const EVENT_TEXT: Record<string, string> = {
  register: "Account created",
  login: "Signed in",
  login_failed: "Failed sign-in",
  locked: "Sign-ins from an address paused after failures",
  challenge_required: "Sign-ins asked for a challenge after failures",
  logout: "Signed out",
  logout_all: "Signed out everywhere",
  session_ended: "A device was signed out",
  refresh_reuse: "A copied session token was refused (session ended)",
  password_changed: "Password changed",
  account_deleted: "Account deleted",
  admin_disable: "Disabled by an administrator",
  admin_enable: "Enabled by an administrator",
  admin_unlock: "Failed sign-ins cleared by an administrator",
  admin_end_sessions: "Signed out everywhere by an administrator",
  admin_grant: "Made an administrator",
  admin_revoke: "Administrator rights removed",
  passkey_added: "Passkey added",
  passkey_removed: "Passkey removed",
  totp_enabled: "Two-step sign-in (TOTP) turned on",
  totp_disabled: "Two-step sign-in (TOTP) turned off",
};

export function eventText(event: AuditEvent): string {
  const text = EVENT_TEXT[event.type] ?? event.type;
  const count = event.detail["count"];
  return typeof count === "number" && count > 1 ? `${text} (${count} times)` : text;
}

function SessionRow({ session, onSignOut, busy }: { session: Session; onSignOut: () => void; busy: boolean }) {
  return (
    <li className="device" data-testid="device">
      <span className="device-name">{session.user_agent ?? "Unknown device"}</span>
      {session.current && <strong className="this-device"> This device</strong>}
      <br />
      <small>
        {session.client ?? "unknown address"} · last active {when(session.last_used_at)} · signed in{" "}
        {when(session.created_at)}
      </small>
      <button type="button" onClick={onSignOut} disabled={busy} aria-label={`Sign out ${session.current ? "this device" : session.user_agent ?? "device"}`}>
        Sign out
      </button>
    </li>
  );
}

/** The account's devices (one per login session), each with "Sign out", and its recent security activity. */
export default function Devices() {
  const { user, sessionKey, logout, setMessage } = useAuth();
  const queryClient = useQueryClient();
  const key = queryKeys.devices(sessionKey);
  const sessions = useQuery({ queryKey: [...key, "sessions"], queryFn: api.mySessions, enabled: user !== null });
  const activity = useQuery({ queryKey: [...key, "activity"], queryFn: () => api.myActivity(), enabled: user !== null });
  const signOut = useMutation({
    mutationFn: (session: Session) => api.endMySession(session.id),
    onSuccess: async () => {
      setMessage("Signed that device out");
      await queryClient.invalidateQueries({ queryKey: key });
    },
  });
  if (!user) return null;

  return (
    <>
      <section className="account-form" aria-labelledby="devices-title">
        <h3 id="devices-title">Your devices</h3>
        <ul className="devices" aria-label="Your devices">
          {(sessions.data?.sessions ?? []).map((session) => (
            <SessionRow
              key={session.id}
              session={session}
              busy={signOut.isPending}
              onSignOut={() => (session.current ? void logout() : signOut.mutate(session))}
            />
          ))}
        </ul>
      </section>
      <section className="account-form" aria-labelledby="activity-title">
        <h3 id="activity-title">Recent security activity</h3>
        <ul className="activity" aria-label="Recent security activity">
          {(activity.data?.events ?? []).map((event) => (
            <li key={event.id} data-testid="activity-event">
              {eventText(event)}
              <small>
                {" "}
                · {when(event.at)}
                {event.client ? ` · from ${event.client}` : ""}
              </small>
            </li>
          ))}
        </ul>
      </section>
    </>
  );
}
