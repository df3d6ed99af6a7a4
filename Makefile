# The two commands of the README: `make run` and `make test`. Everything they need is installed here.
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
SPA    := frontend/dist/index.html
SPA_SRC := $(shell find frontend/src frontend/index.html frontend/package.json frontend/package-lock.json frontend/vite.config.js -type f 2>/dev/null)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench screenshot spa spa-if-npm chromium clean

run: $(VENV)/.installed spa-if-npm
	$(VENV)/bin/uvicorn app:app --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-dev $(SPA) chromium
	cd frontend && npm test
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

$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.installed

# The SPA: built with npm when it is there; without npm the API still runs (app.py says so).
$(SPA): $(SPA_SRC)
	cd frontend && npm ci --no-audit --no-fund && npm run build

spa: $(SPA)

spa-if-npm:
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory spa; \
	else echo "npm not found: serving the API without the SPA (install Node.js 20+ to build it)"; fi

# The browser tests drive Debian's Chromium (no browser download).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf $(VENV) frontend/node_modules frontend/dist .pytest_cache
