import { cpSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { createRequire } from "node:module";
import { defineConfig } from "vitest/config";
import react from "@vitejs/plugin-react";

// Swagger UI's files go into dist/swagger/, so FastAPI serves /docs without a CDN (offline too).
const require = createRequire(import.meta.url);
const SWAGGER_DIST = dirname(require.resolve("swagger-ui-dist/package.json"));
const selfHostedSwaggerUi = {
  name: "self-hosted-swagger-ui",
  closeBundle() {
    for (const file of ["swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"]) {
      cpSync(resolve(SWAGGER_DIST, file), resolve("dist/swagger", file));
    }
  },
};

// In development the API runs separately (uvicorn on port 8000); the dev
// server forwards the API paths to it so the SPA can use same-origin URLs.
const API_TARGET = "http://127.0.0.1:8000";
const API_PATHS = [
  "/users",
  "/anonymous-login",
  "/public-data",
  "/items",
  "/cart",
  "/favourites",
  "/preferences",
  "/history",
  "/challenge",
  "/health",
  "/docs",
  "/openapi.json",
];

export default defineConfig({
  plugins: [react(), selfHostedSwaggerUi],
  server: {
    host: "127.0.0.1", // the address the README gives (http://127.0.0.1:5173/)
    proxy: Object.fromEntries(API_PATHS.map((path) => [path, API_TARGET])),
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
  },
  test: {
    environment: "node",
  },
});
