"""Real-browser tests of the SPA (a package, so that its conftest does not shadow tests/conftest.py)."""
