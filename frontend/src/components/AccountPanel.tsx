import { useId, useState, type FormEvent } from "react";
import { useAuth } from "../AuthContext";
import Devices from "./Devices";
import Passkeys from "./Passkeys";
import TwoStep from "./TwoStep";

/** A form of password fields. Whatever the outcome (shown in the status line), the fields are
 * cleared: a password never stays on screen. */
function PasswordForm<Name extends string>({
  title,
  fields,
  submitLabel,
  onSubmit,
  danger = false,
}: {
  title: string;
  fields: { name: Name; label: string; autoComplete: string; minLength?: number }[];
  submitLabel: string;
  onSubmit: (values: Record<Name, string>) => Promise<unknown>;
  danger?: boolean;
}) {
  const id = useId();
  const empty = Object.fromEntries(fields.map((field) => [field.name, ""])) as Record<Name, string>;
  const [values, setValues] = useState(empty);
  const [busy, setBusy] = useState(false);

  async function handleSubmit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    setBusy(true);
    await onSubmit(values);
    setBusy(false);
    setValues(empty);
  }

  return (
    <form className="account-form" onSubmit={handleSubmit} aria-labelledby={`${id}-title`}>
      <h3 id={`${id}-title`}>{title}</h3>
      {fields.map((field) => (
        <div className="field" key={field.name}>
          <label htmlFor={`${id}-${field.name}`}>{field.label}</label>
          <input
            id={`${id}-${field.name}`}
            type="password"
            autoComplete={field.autoComplete}
            minLength={field.minLength}
            value={values[field.name]}
            onChange={(event) => setValues({ ...values, [field.name]: event.target.value })}
            required
          />
        </div>
      ))}
      <button type="submit" className={danger ? "danger" : undefined} disabled={busy}>
        {submitLabel}
      </button>
    </form>
  );
}

/** The logged-in user's account: change password, passkeys, two-step verification, log out
 * everywhere, delete the account. */
export default function AccountPanel() {
  const { user, changePassword, deleteAccount, logoutEverywhere } = useAuth();
  const [busy, setBusy] = useState(false);
  if (!user) return null;

  async function handleLogoutEverywhere() {
    setBusy(true);
    await logoutEverywhere();
    setBusy(false);
  }

  return (
    <section className="card" aria-labelledby="account-title">
      <h2 id="account-title">Account</h2>
      <PasswordForm
        title="Change password"
        submitLabel="Change password"
        fields={[
          { name: "current", label: "Current password", autoComplete: "current-password" },
          { name: "next", label: "New password", autoComplete: "new-password", minLength: 8 },
        ]}
        onSubmit={({ current, next }) => changePassword(current, next)}
      />
      <Devices />
      <Passkeys />
      <TwoStep />
      <button type="button" onClick={handleLogoutEverywhere} disabled={busy}>
        Log out everywhere
      </button>
      <PasswordForm
        title="Delete account"
        submitLabel="Delete my account"
        danger
        fields={[{ name: "password", label: "Password to confirm", autoComplete: "current-password" }]}
        onSubmit={({ password }) => deleteAccount(password)}
      />
    </section>
  );
}
