import { createContext, useCallback, useContext, useEffect, useMemo, useState } from "react";
import { anonymousToken, api, on, SessionExpiredError, tokens } from "./api.js";

const EXPIRED_MESSAGE = "Your session has expired or is invalid, please log in again.";

const AuthContext = createContext(null);

export function AuthProvider({ children }) {
  const [user, setUser] = useState(null);
  const [message, setMessage] = useState("");
  // True while a stored session is being checked on load.
  const [checking, setChecking] = useState(() => Boolean(tokens.jwt()));
  // Bumped whenever the identity changes, so that the cart is reloaded.
  const [sessionKey, setSessionKey] = useState(0);

  const endSession = useCallback((text) => {
    tokens.clearSession();
    setUser(null);
    setMessage(text);
    setSessionKey((key) => key + 1);
  }, []);

  useEffect(() => on("expired", () => endSession(EXPIRED_MESSAGE)), [endSession]);

  // On load: resume a stored session, or start as an anonymous visitor.
  useEffect(() => {
    let cancelled = false;
    if (!tokens.jwt()) {
      anonymousToken().catch((error) => {
        if (!cancelled) setMessage(`Could not start a visitor session: ${error.message}`);
      });
      return () => {
        cancelled = true;
      };
    }
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
    tokens.clearSession();
    setUser(null);
    setMessage("Logged out");
    try {
      await anonymousToken();
    } catch (error) {
      setMessage(`Logged out (could not start a visitor session: ${error.message})`);
    }
    setSessionKey((key) => key + 1);
  }, []);

  const value = useMemo(
    () => ({ user, message, setMessage, checking, sessionKey, register, login, logout }),
    [user, message, checking, sessionKey, register, login, logout],
  );
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth() {
  const context = useContext(AuthContext);
  if (!context) throw new Error("useAuth() must be used inside <AuthProvider>");
  return context;
}
