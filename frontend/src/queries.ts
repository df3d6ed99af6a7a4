// Server state through TanStack Query: the client the page's queries and changes share, and
// their keys. It behaves as the page's plain fetches did: one try per call (api.ts renews a
// token or solves a challenge itself, and a second try would be a second request the server
// counts), no refetch on focus or reconnect, and data fresh until the identity changes: the
// keys carry AuthContext's `sessionKey`, so a login, a logout or an ended session fetches anew.
import { MutationCache, QueryCache, QueryClient } from "@tanstack/react-query";

/** A query client that reports every failed query or change to `onError`. */
export function newQueryClient(onError: (error: Error) => void): QueryClient {
  return new QueryClient({
    queryCache: new QueryCache({ onError }),
    mutationCache: new MutationCache({ onError }),
    defaultOptions: {
      queries: {
        retry: false,
        staleTime: Infinity,
        refetchOnWindowFocus: false,
        refetchOnReconnect: false,
        networkMode: "always", // the browser's online flag does not hold a call back
      },
      mutations: { retry: false, networkMode: "always" },
    },
  });
}

export const queryKeys = {
  /** What the shop shows of an identity: catalogue, cart, favourites, preferences. */
  shop: (sessionKey: number) => ["shop", sessionKey] as const,
  /** The registered users, as a logged-in user sees them. */
  users: (sessionKey: number) => ["users", sessionKey] as const,
  /** The account's sessions (devices) and its recent security events. */
  devices: (sessionKey: number) => ["devices", sessionKey] as const,
  /** The Administration page: the accounts found for a query, and the audit log. */
  admin: (sessionKey: number) => ["admin", sessionKey] as const,
};
