import { useState } from "react";
import Login from "./Login";
import Register from "./Register";

/** Login or Register, with a toggle between the two. */
export default function AuthForms() {
  const [mode, setMode] = useState<"login" | "register">("login");
  const [registeredName, setRegisteredName] = useState("");

  function showLogin(username = "") {
    setRegisteredName(username);
    setMode("login");
  }

  return (
    <div className="auth-forms">
      {mode === "login" ? (
        <>
          <Login key={registeredName} initialUsername={registeredName} />
          <button type="button" className="link" onClick={() => setMode("register")}>
            Create an account
          </button>
        </>
      ) : (
        <>
          <Register onRegistered={showLogin} />
          <button type="button" className="link" onClick={() => showLogin()}>
            I already have an account
          </button>
        </>
      )}
    </div>
  );
}
