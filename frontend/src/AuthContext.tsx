// The identity of this browser (a logged-in user, or a visitor), the status line's message, and
// the account actions that change them. Server state the page shows (the shop, the users) is
// fetched through TanStack Query (queries.ts), whose client lives here: a failed fetch or change
// is reported in the status line, and a new identity (`sessionKey`) fetches its own.
import { QueryClientProvider } from "@tanstack/react-query";
import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useState,
  type ReactNode,
} from "react";
import { api, ApiError, on, SecondFactorRequired, SessionExpiredError, tokens, type User } from "./api";
import { newQueryClient } from "./queries";

const EXPIRED_MESSAGE = "Your session has expired or is invalid, please log in again.";
const WRONG_PASSWORD = "The password is wrong";

interface Auth {
  user: User | null;
  message: string;
  setMessage: (text: string) => void;
  /** True while a stored session is being checked on load. */
  checking: boolean;
  /** Bumped whenever the identity changes: the shop and the users are fetched anew. */
  sessionKey: number;
  register: (username: string, password: string) => Promise<boolean>;
  login: (username: string, password: string) => Promise<boolean>;
  /** A password login waiting for its second factor (TOTP on), or null. */
  pendingMfa: { username: string; mfaToken: string } | null;
  completeMfa: (code: string) => Promise<boolean>;
  cancelMfa: () => void;
  /** `autofill`: the passkey picked from the username field's suggestions (conditional UI). */
  loginWithPasskey: (autofill?: boolean) => Promise<boolean>;
  logout: () => Promise<void>;
  logoutEverywhere: () => Promise<boolean>;
  changePassword: (currentPassword: string, newPassword: string) => Promise<boolean>;
  deleteAccount: (password: string) => Promise<boolean>;
}

const AuthContext = createContext<Auth | null>(null);

/** The text of an error for the status line. */
const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error));

export function AuthProvider({ children }: { children: ReactNode }) {
  const [user, setUser] = useState<User | null>(null);
  const [message, setMessage] = useState("");
  // Queries and changes report their errors here; an expired session is reported by "expired".
  const [queryClient] = useState(() =>
    newQueryClient((error) => {
      if (!(error instanceof SessionExpiredError)) setMessage(errorText(error));
    }),
  );
  // True while a stored session is being checked on load.
  const [checking, setChecking] = useState(() => Boolean(tokens.jwt()));
  const [sessionKey, setSessionKey] = useState(0);

  /** This browser's session is over: forget its tokens (not the device token, which logins
   * keep sending) and carry on as a visitor. */
  const endSession = useCallback((text: string) => {
    tokens.clearSession();
    setUser(null);
    setMessage(text);
    setSessionKey((key) => key + 1);
  }, []);

  useEffect(() => on("expired", () => endSession(EXPIRED_MESSAGE)), [endSession]);

  // On load: resume a stored session. A visitor gets an anonymous token only when it first
  // does something the server keeps (api.ts).
  useEffect(() => {
    if (!tokens.jwt()) return undefined;
    let cancelled = false;
    api
      .me()
      .then((me) => {
        if (cancelled) return;
        setUser(me);
        setMessage(`Welcome back, ${me.username}!`);
      })
      .catch((error) => {
        if (cancelled) return;
        if (error instanceof SessionExpiredError || (error instanceof ApiError && [401, 403].includes(error.status))) {
          endSession(EXPIRED_MESSAGE);
        } else {
          setMessage(errorText(error));
        }
      })
      .finally(() => {
        if (!cancelled) setChecking(false);
      });
    return () => {
      cancelled = true;
    };
  }, [endSession]);

  const register = useCallback(async (username: string, password: string) => {
    try {
      const created = await api.register(username, password);
      setMessage(`Registered ${created.username}, please log in`);
      setSessionKey((key) => key + 1);
      return true;
    } catch (error) {
      setMessage(errorText(error));
      return false;
    }
  }, []);

  const [pendingMfa, setPendingMfa] = useState<{ username: string; mfaToken: string } | null>(null);

  /** After any login: who it is, and the page fetched anew as that account. */
  const loggedIn = useCallback(async () => {
    const me = await api.me();
    setUser(me);
    setMessage(`Logged in as ${me.username}`);
    setSessionKey((key) => key + 1);
  }, []);

  const login = useCallback(
    async (username: string, password: string) => {
      try {
        await api.login(username, password);
        await loggedIn();
        return true;
      } catch (error) {
        tokens.clearSession(); // no half-open session if /users/me failed after the login
        if (error instanceof SecondFactorRequired) {
          setPendingMfa({ username, mfaToken: error.mfaToken });
          setMessage("Enter the code from your authenticator app");
          return true;
        }
        setMessage(errorText(error));
        return false;
      }
    },
    [loggedIn],
  );

  const completeMfa = useCallback(
    async (code: string) => {
      if (!pendingMfa) return false;
      try {
        await api.loginMfa(pendingMfa.username, pendingMfa.mfaToken, code);
        await loggedIn();
        setPendingMfa(null);
        return true;
      } catch (error) {
        tokens.clearSession();
        setMessage(errorText(error));
        if (error instanceof ApiError && /mfa_token/.test(errorText(error))) setPendingMfa(null); // log in again
        return false;
      }
    },
    [pendingMfa, loggedIn],
  );

  const cancelMfa = useCallback(() => setPendingMfa(null), []);

  const loginWithPasskey = useCallback(
    async (autofill = false) => {
      try {
        await api.loginWithPasskey(autofill);
        await loggedIn();
        return true;
      } catch (error) {
        // The user closing the browser's dialog, or the autofill request given up for another:
        // nothing happened, and another login may be under way (its tokens stay).
        if (autofill && !(error instanceof ApiError)) {
          // The background request of conditional UI ended without the user picking a passkey
          // (the form went away, another request replaced it): nothing to say.
        } else if (error instanceof Error && ["NotAllowedError", "AbortError"].includes(error.name)) {
          setMessage("No passkey was used");
        } else {
          tokens.clearSession();
          setMessage(errorText(error));
        }
        return false;
      }
    },
    [loggedIn],
  );

  const logout = useCallback(async () => {
    try {
      await api.logout();
    } catch {
      // The session ends on this side whatever the server answered.
    }
    endSession("Logged out");
  }, [endSession]);

  /** Runs an account action; true on success, else the error is shown. */
  const attempt = useCallback(async (action: () => Promise<unknown>) => {
    try {
      await action();
      return true;
    } catch (error) {
      if (error instanceof SessionExpiredError) return false; // "expired" has ended the session
      setMessage(error instanceof ApiError && error.status === 401 ? WRONG_PASSWORD : errorText(error));
      return false;
    }
  }, []);

  const logoutEverywhere = useCallback(
    () =>
      attempt(async () => {
        await api.logoutAll();
        endSession("Logged out on every device");
      }),
    [attempt, endSession],
  );

  const changePassword = useCallback(
    (currentPassword: string, newPassword: string) =>
      attempt(async () => {
        await api.changePassword(currentPassword, newPassword);
        setMessage("Password changed; your other sessions are logged out");
      }),
    [attempt],
  );

  const deleteAccount = useCallback(
    (password: string) =>
      attempt(async () => {
        await api.deleteAccount(password);
        endSession("Account deleted");
      }),
    [attempt, endSession],
  );

  const value = useMemo<Auth>(
    () => ({
      user,
      message,
      setMessage,
      checking,
      sessionKey,
      register,
      login,
      pendingMfa,
      completeMfa,
      cancelMfa,
      loginWithPasskey,
      logout,
      logoutEverywhere,
      changePassword,
      deleteAccount,
    }),
    [
      user,
      message,
      checking,
      sessionKey,
      register,
      login,
      pendingMfa,
      completeMfa,
      cancelMfa,
      loginWithPasskey,
      logout,
      logoutEverywhere,
      changePassword,
      deleteAccount,
    ],
  );
  return (
    <QueryClientProvider client={queryClient}>
      <AuthContext.Provider value={value}>{children}</AuthContext.Provider>
    </QueryClientProvider>
  );
}

export function useAuth(): Auth {
  const context = useContext(AuthContext);
  if (!context) throw new Error("useAuth() must be used inside <AuthProvider>");
  return context;
}
