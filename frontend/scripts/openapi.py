"""Writes the API's OpenAPI document, the source of the SPA's generated types (``make api-types``).

The document comes from the FastAPI app as its module builds it at import, without serving: the
same text as ``GET /openapi.json``, indented so that a change to the API reads as a small diff.
Usage: ``python frontend/scripts/openapi.py OUT.json`` from the repository's root.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root: app.py

from app import app


def main(out: str) -> None:
    Path(out).write_text(json.dumps(app.openapi(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: openapi.py OUT.json")
    main(sys.argv[1])
