// Proof of work: solves an ALTCHA v1 challenge (GET /challenge) and turns the solution into the
// payload the server checks (the body field "altcha"). The search runs in Web Workers, so the
// page stays responsive while it works; where there is no Worker (Node, where the unit tests
// run) the same altcha-lib search runs in this thread.
import { solveChallenge, solveChallengeWorkers } from "altcha-lib/v1";
import type { components } from "./api/schema";

/** A challenge as GET /challenge sends it; Python's altcha writes "maxNumber", altcha-lib
 * "maxnumber", and either is taken. */
export type ServerChallenge = Omit<components["schemas"]["Challenge"], "maxNumber"> & {
  maxNumber?: number;
  maxnumber?: number;
};

// Workers share the range of numbers to try; more than a few only cost start-up time.
const MAX_WORKERS = 4;

function newWorker(): Worker {
  const worker = new Worker(new URL("./altcha.worker.ts", import.meta.url), { type: "module" });
  // altcha-lib waits for each worker's answer only: one that fails to load or throws answers
  // "no solution" instead of leaving the search (and the page's "Checking your browser…") hanging.
  worker.addEventListener("error", () => worker.dispatchEvent(new MessageEvent("message", { data: null })));
  return worker;
}

/** The number that solves `challenge`, or null. */
async function findNumber(challenge: ServerChallenge): Promise<number | null> {
  const { algorithm, salt } = challenge;
  const max = challenge.maxNumber ?? challenge.maxnumber;
  if (typeof Worker === "function") {
    const workers = Math.max(1, Math.min(MAX_WORKERS, globalThis.navigator?.hardwareConcurrency ?? 1));
    const solution = await solveChallengeWorkers(newWorker, workers, challenge.challenge, salt, algorithm, max);
    return solution?.number ?? null;
  }
  const solution = await solveChallenge(challenge.challenge, salt, algorithm, max).promise;
  return solution?.number ?? null;
}

/** The base64 ALTCHA payload that proves the work for `challenge`; throws if no number solves it. */
export async function solve(challenge: ServerChallenge): Promise<string> {
  const number = await findNumber(challenge);
  if (number === null) throw new Error("Could not solve the browser check; please try again");
  const { algorithm, salt, signature } = challenge;
  return btoa(JSON.stringify({ algorithm, challenge: challenge.challenge, number, salt, signature }));
}
