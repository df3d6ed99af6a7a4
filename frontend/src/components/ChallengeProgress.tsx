import { useEffect, useState } from "react";
import { on } from "../api";

/** "Checking your browser…" while api.ts solves a proof-of-work challenge the server asked for
 * (a login or a new visitor while the service is under pressure). The live region stays in the
 * page, empty when idle, so that screen readers announce the text when it appears. */
export default function ChallengeProgress() {
  const [solving, setSolving] = useState(false);
  useEffect(() => on("challenge", setSolving), []);
  return (
    <p className="challenge-progress" aria-live="polite" data-testid="challenge-progress">
      {solving && (
        <>
          <span className="spinner" aria-hidden="true" /> Checking your browser…
        </>
      )}
    </p>
  );
}
