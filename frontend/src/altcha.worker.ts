// A Web Worker that solves ALTCHA v1 challenges off the page's thread: altcha-lib's own worker
// (it answers {type: "work", payload} with the solution, or null, and stops on {type: "abort"}).
// Vite bundles it into its own file under assets/, served from 'self' like the page's script.
import "altcha-lib/v1/worker";
