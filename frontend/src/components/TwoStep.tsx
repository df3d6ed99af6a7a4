import QRCode from "qrcode";
import { useCallback, useEffect, useId, useState, type FormEvent } from "react";
import { api } from "../api";
import { useAuth } from "../AuthContext";

/** The QR code of `text`, drawn here as SVG squares: the secret never leaves the page. */
function QrCode({ text }: { text: string }) {
  const { modules } = QRCode.create(text, { errorCorrectionLevel: "M" });
  const size = modules.size;
  const squares = [];
  for (let row = 0; row < size; row++) {
    for (let column = 0; column < size; column++) {
      if (modules.get(row, column)) squares.push(<rect key={`${row}-${column}`} x={column} y={row} width={1} height={1} />);
    }
  }
  return (
    <svg className="qr" viewBox={`-4 -4 ${size + 8} ${size + 8}`} width={200} height={200} role="img"
         aria-label="QR code for your authenticator app">
      <rect x={-4} y={-4} width={size + 8} height={size + 8} fill="#fff" />
      <g fill="#000">{squares}</g>
    </svg>
  );
}

type Step = { kind: "off" } | { kind: "setup"; secret: string; uri: string } | { kind: "codes"; codes: string[] } | { kind: "on" };

/** Two-step verification (TOTP): turn it on (password, QR code, a first code, the recovery codes
 * shown once) and off (password and a code). */
export default function TwoStep() {
  const { setMessage } = useAuth();
  const id = useId();
  const [step, setStep] = useState<Step | null>(null);
  const [password, setPassword] = useState("");
  const [code, setCode] = useState("");
  const [busy, setBusy] = useState(false);

  const reload = useCallback(async () => {
    try {
      setStep((await api.accountData()).totp_enabled ? { kind: "on" } : { kind: "off" });
    } catch (error) {
      setMessage(error instanceof Error ? error.message : String(error));
    }
  }, [setMessage]);

  useEffect(() => {
    void reload();
  }, [reload]);

  async function run(event: FormEvent<HTMLFormElement>, action: () => Promise<void>) {
    event.preventDefault();
    setBusy(true);
    try {
      await action();
    } catch (error) {
      setMessage(error instanceof Error ? error.message : String(error));
    }
    setPassword("");
    setCode("");
    setBusy(false);
  }

  if (step === null) return null;
  const field = (name: string, label: string, value: string, set: (v: string) => void, type = "text", autoComplete = "off") => (
    <div className="field">
      <label htmlFor={`${id}-${name}`}>{label}</label>
      <input id={`${id}-${name}`} type={type} autoComplete={autoComplete} value={value}
             onChange={(event) => set(event.target.value)} required />
    </div>
  );

  return (
    <div className="account-form" role="group" aria-labelledby={`${id}-title`}>
      <h3 id={`${id}-title`}>Two-step verification</h3>
      {step.kind === "off" && (
        <form onSubmit={(event) => run(event, async () => {
          const setup = await api.beginTotp(password);
          setStep({ kind: "setup", secret: setup.secret, uri: setup.otpauth_uri });
          setMessage("Scan the QR code with your authenticator app, then enter its code");
        })}>
          <p>Off: your password alone signs you in.</p>
          {field("password", "Password to turn it on", password, setPassword, "password", "current-password")}
          <button type="submit" disabled={busy}>Turn on two-step verification</button>
        </form>
      )}
      {step.kind === "setup" && (
        <form onSubmit={(event) => run(event, async () => {
          const { recovery_codes } = await api.confirmTotp(code);
          setStep({ kind: "codes", codes: recovery_codes });
          setMessage("Two-step verification is on; your other sessions are logged out");
        })}>
          <QrCode text={step.uri} />
          <p>Or type this key into the app: <code className="totp-secret">{step.secret}</code></p>
          {field("code", "Code from the app", code, setCode, "text", "one-time-code")}
          <button type="submit" disabled={busy}>Confirm</button>
        </form>
      )}
      {step.kind === "codes" && (
        <div>
          <p>Recovery codes: each signs you in once without the app. Keep them safe; they are not shown again.</p>
          <ul className="recovery-codes">
            {step.codes.map((c) => <li key={c}><code>{c}</code></li>)}
          </ul>
          <button type="button" onClick={() => setStep({ kind: "on" })}>I have kept them</button>
        </div>
      )}
      {step.kind === "on" && (
        <form onSubmit={(event) => run(event, async () => {
          await api.disableTotp(password, code);
          setStep({ kind: "off" });
          setMessage("Two-step verification is off; your other sessions are logged out");
        })}>
          <p>On: signing in with the password also asks for a code.</p>
          {field("off-password", "Password", password, setPassword, "password", "current-password")}
          {field("off-code", "Code from the app, or a recovery code", code, setCode, "text", "one-time-code")}
          <button type="submit" className="danger" disabled={busy}>Turn off two-step verification</button>
        </form>
      )}
    </div>
  );
}
