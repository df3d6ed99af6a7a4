// Proof of work: solves an ALTCHA v1 challenge (GET /challenge) and turns the solution into the
// payload the server checks (the body field "altcha"). The search runs in Web Workers, so the
// page stays responsive while it works; where there is no Worker (Node, where the unit tests
// run) the same altcha-lib search runs in this thread.
import { solveChallenge, solveChallengeWorkers } from "altcha-lib/v1";

// Workers share the range of numbers to try; more than a few only cost start-up time.
const MAX_WORKERS = 4;

function newWorker() {
  const worker = new Worker(new URL("./altcha.worker.js", import.meta.url), { type: "module" });
  // altcha-lib waits for each worker's answer only: one that fails to load or throws answers
  // "no solution" instead of leaving the search (and the page's "Checking your browser…") hanging.
  worker.addEventListener("error", () => worker.dispatchEvent(new MessageEvent("message", { data: null })));
  return worker;
}

/** The number that solves `challenge` (an ALTCHA v1 challenge as the server sends it), or null. */
async function findNumber({ algorithm, challenge, salt, ...rest }) {
  // Python's altcha writes "maxNumber", altcha-lib "maxnumber".
  const max = rest.maxNumber ?? rest.maxnumber;
  if (typeof Worker === "function") {
    const workers = Math.max(1, Math.min(MAX_WORKERS, globalThis.navigator?.hardwareConcurrency ?? 1));
    const solution = await solveChallengeWorkers(newWorker, workers, challenge, salt, algorithm, max);
    return solution?.number ?? null;
  }
  const solution = await solveChallenge(challenge, salt, algorithm, max).promise;
  return solution?.number ?? null;
}

/** The base64 ALTCHA payload that proves the work for `challenge`; throws if no number solves it. */
export async function solve(challenge) {
  const number = await findNumber(challenge);
  if (number === null) throw new Error("Could not solve the browser check; please try again");
  const { algorithm, salt, signature } = challenge;
  return btoa(JSON.stringify({ algorithm, challenge: challenge.challenge, number, salt, signature }));
}
