import { createContext, useCallback, useContext, useEffect, useMemo, useState } from "react";
import { api, on, SessionExpiredError, tokens } from "./api.js";

const EXPIRED_MESSAGE = "Your session has expired or is invalid, please log in again.";
const WRONG_PASSWORD = "The password is wrong";

const AuthContext = createContext(null);

export function AuthProvider({ children }) {
  const [user, setUser] = useState(null);
  const [message, setMessage] = useState("");
  // True while a stored session is being checked on load.
  const [checking, setChecking] = useState(() => Boolean(tokens.jwt()));
  // Bumped whenever the identity changes, so that the cart is reloaded.
  const [sessionKey, setSessionKey] = useState(0);

  /** This browser's session is over: forget its tokens (not the device token, which logins
   * keep sending) and carry on as a visitor. */
  const endSession = useCallback((text) => {
    tokens.clearSession();
    setUser(null);
    setMessage(text);
    setSessionKey((key) => key + 1);
  }, []);

  useEffect(() => on("expired", () => endSession(EXPIRED_MESSAGE)), [endSession]);

  // On load: resume a stored session. A visitor gets an anonymous token only when it first
  // does something the server keeps (api.js).
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
        if (error instanceof SessionExpiredError || [401, 403].includes(error.status)) {
          endSession(EXPIRED_MESSAGE);
        } else {
          setMessage(error.message);
        }
      })
      .finally(() => {
        if (!cancelled) setChecking(false);
      });
    return () => {
      cancelled = true;
    };
  }, [endSession]);

  const register = useCallback(async (username, password) => {
    try {
      const created = await api.register(username, password);
      setMessage(`Registered ${created.username}, please log in`);
      setSessionKey((key) => key + 1);
      return true;
    } catch (error) {
      setMessage(error.message);
      return false;
    }
  }, []);

  const login = useCallback(async (username, password) => {
    try {
      await api.login(username, password);
      const me = await api.me();
      setUser(me);
      setMessage(`Logged in as ${me.username}`);
      setSessionKey((key) => key + 1);
      return true;
    } catch (error) {
      tokens.clearSession(); // no half-open session if /users/me failed after the login
      setMessage(error.message);
      return false;
    }
  }, []);

  const logout = useCallback(async () => {
    try {
      await api.logout();
    } catch {
      // The session ends on this side whatever the server answered.
    }
    endSession("Logged out");
  }, [endSession]);

  /** Runs an account action; true on success, else the error is shown. */
  const attempt = useCallback(async (action) => {
    try {
      await action();
      return true;
    } catch (error) {
      if (error instanceof SessionExpiredError) return false; // "expired" has ended the session
      setMessage(error.status === 401 ? WRONG_PASSWORD : error.message);
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
    (currentPassword, newPassword) =>
      attempt(async () => {
        await api.changePassword(currentPassword, newPassword);
        setMessage("Password changed; your other sessions are logged out");
      }),
    [attempt],
  );

  const deleteAccount = useCallback(
    (password) =>
      attempt(async () => {
        await api.deleteAccount(password);
        endSession("Account deleted");
      }),
    [attempt, endSession],
  );

  const value = useMemo(
    () => ({
      user,
      message,
      setMessage,
      checking,
      sessionKey,
      register,
      login,
      logout,
      logoutEverywhere,
      changePassword,
      deleteAccount,
    }),
    [user, message, checking, sessionKey, register, login, logout, logoutEverywhere, changePassword, deleteAccount],
  );
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth() {
  const context = useContext(AuthContext);
  if (!context) throw new Error("useAuth() must be used inside <AuthProvider>");
  return context;
}
