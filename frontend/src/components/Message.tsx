import { useAuth } from "../AuthContext";

/** The status line: the result of the last action, read out by screen readers. */
export default function Message() {
  const { message } = useAuth();
  return (
    <p className="message" role="status" aria-live="polite" data-testid="message">
      {message}
    </p>
  );
}
