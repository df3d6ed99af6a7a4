# The two commands of the README: `make run` and `make test`. Everything they need is installed here.
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
SPA    := frontend/dist/index.html
SPA_SRC := $(shell find frontend/src frontend/index.html frontend/package.json frontend/package-lock.json \
             frontend/vite.config.ts frontend/tsconfig.json frontend/tsconfig.node.json -type f 2>/dev/null)
# npm ci writes this file: node_modules is as package-lock.json says.
NODE_MODULES := frontend/node_modules/.package-lock.json
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench screenshot spa spa-if-npm api-types api-types-check chromium postgres icu migrate import-json \
        admin clean

# /metrics sums the workers' figures through files in METRICS_DIR (prometheus-client's multiprocess
# mode): emptied at each start, as a restarted service's counters start from zero. The app writes the
# access log itself (logs.py), in place of uvicorn's.
WORKERS     ?= 1
METRICS_DIR ?= $(CURDIR)/.metrics
run: $(VENV)/.installed spa-if-npm
	rm -rf $(METRICS_DIR) && mkdir -p $(METRICS_DIR)
	PROMETHEUS_MULTIPROC_DIR=$(METRICS_DIR) $(VENV)/bin/uvicorn app:app --host $(HOST) --port $(PORT) \
	  --workers $(WORKERS)

test: $(VENV)/.installed-dev $(SPA) api-types-check chromium postgres
	cd frontend && npm run typecheck && npm test
	$(PY) -m pytest

# The README's picture of the SPA, taken by the same browser the tests use.
screenshot: $(VENV)/.installed-dev $(SPA) chromium
	$(PY) tests/browser/make_screenshot.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) bench/run.py

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(PY) icu
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(PY) icu
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.installed

# The SPA: built with npm when it is there; without npm the API still runs (app.py says so).
$(NODE_MODULES): frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund

$(SPA): $(SPA_SRC) $(NODE_MODULES)
	cd frontend && npm run build

spa: $(SPA)

# The SPA's types of the API: frontend/openapi.json is the app's OpenAPI document (the text of
# GET /openapi.json, written without a server), frontend/src/api/schema.d.ts what openapi-typescript
# generates from it; both are committed. `make api-types` writes them anew after a change to the
# API; `make test` fails while they differ from what the code generates.
API_DOC   := frontend/openapi.json
API_TYPES := frontend/src/api/schema.d.ts
api-types: $(VENV)/.installed $(NODE_MODULES)
	$(PY) frontend/scripts/openapi.py $(API_DOC)
	cd frontend && npx --no-install openapi-typescript openapi.json -o src/api/schema.d.ts

api-types-check: $(VENV)/.installed $(NODE_MODULES)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) frontend/scripts/openapi.py "$$tmp/openapi.json" && \
	(cd frontend && npx --no-install openapi-typescript "$$tmp/openapi.json" -o "$$tmp/schema.d.ts" >/dev/null) && \
	if cmp -s "$$tmp/openapi.json" $(API_DOC) && cmp -s "$$tmp/schema.d.ts" $(API_TYPES); then \
	  echo "API types: up to date with the app's OpenAPI document"; \
	else \
	  diff -u $(API_DOC) "$$tmp/openapi.json" | head -n 40; diff -u $(API_TYPES) "$$tmp/schema.d.ts" | head -n 40; \
	  echo "generated API types are stale: run \`make api-types\` (and commit $(API_DOC) and $(API_TYPES))"; \
	  exit 1; \
	fi

spa-if-npm:
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory spa; \
	else echo "npm not found: serving the API without the SPA (install Node.js 20+ to build it)"; fi

# PyICU (look-alike usernames, usernames.py) is built against the system's ICU: Debian's headers,
# pkg-config and a C++ compiler when ICU's pkg-config entry is missing.
icu:
	@pkg-config --exists icu-i18n 2>/dev/null && command -v g++ >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libicu-dev pkg-config g++ >/dev/null; }

# The browser tests drive Debian's Chromium (no browser download).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# PostgreSQL for the tests (the suite runs every HTTP test on both backends): Debian's package when
# pg_ctlcluster is missing, its newest cluster started (a running one is left alone), then a login
# role that may create the tests' throw-away databases. Test-only credentials, on loopback only; the
# tests find the server through TEST_DATABASE_URL (default below). A server that cannot start fails.
PG_ROLE     ?= farm
PG_PASSWORD ?= farm
PG_PORT     ?= 5432
export TEST_DATABASE_URL ?= postgresql://$(PG_ROLE):$(PG_PASSWORD)@127.0.0.1:$(PG_PORT)/postgres
postgres:
	@command -v pg_ctlcluster >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }
	@ver=$$(ls /usr/lib/postgresql | sort -n | tail -n 1); \
	[ -n "$$ver" ] || { echo "postgres: no PostgreSQL server installed under /usr/lib/postgresql"; exit 1; }; \
	pg_lsclusters -h | awk '{print $$1, $$2}' | grep -qx "$$ver main" || $(SUDO) pg_createcluster $$ver main >/dev/null; \
	pg_lsclusters -h | awk '$$1 == "'$$ver'" && $$2 == "main" {print $$4}' | grep -qx online || \
	  $(SUDO) pg_ctlcluster $$ver main start; \
	for i in $$(seq 1 60); do pg_isready -q -h 127.0.0.1 -p $(PG_PORT) && break; sleep 0.5; done; \
	pg_isready -h 127.0.0.1 -p $(PG_PORT) || { echo "postgres: cluster $$ver/main does not accept connections"; \
	  exit 1; }; \
	$(SUDO) runuser -u postgres -- psql -q -p $(PG_PORT) -v ON_ERROR_STOP=1 -c \
	  "DO \$$\$$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$(PG_ROLE)') THEN \
	   CREATE ROLE $(PG_ROLE) LOGIN CREATEDB PASSWORD '$(PG_PASSWORD)'; END IF; END \$$\$$;"

# The PostgreSQL backend's schema (DATABASE_URL from the environment or .env); the service also
# migrates at start-up. `make import-json FILE=users.json` copies a JSON store in (idempotent).
migrate: $(VENV)/.installed
	$(PY) -m store.pg_tools migrate

FILE ?= users.json
import-json: $(VENV)/.installed
	$(PY) -m store.pg_tools import-json $(FILE)

# The first administrator (or another): `make admin NAME=alice` creates the account if missing
# (password prompted) and grants it admin rights; safe while the service runs (manage.py).
admin: $(VENV)/.installed
	@test -n "$(NAME)" || { echo "usage: make admin NAME=<username>"; exit 2; }
	$(PY) manage.py create-user "$(NAME)" --exists-ok
	$(PY) manage.py grant-admin "$(NAME)"

clean:
	rm -rf $(VENV) frontend/node_modules frontend/dist .pytest_cache
