"""The README's API table against the app's OpenAPI, the one description of the API.

Every row of the table must be an operation of ``app.openapi()`` declaring every status the row
names, and every operation must have its row: a route added, renamed or given a new status in
the code without the table (or the other way round) fails here. Statuses in a row's answers are
the three-digit numbers that open the cell or follow ``; `` or ``/ `` (``429 / 503``), so figures
such as ``1–100`` are not read as statuses.
"""

import re
from pathlib import Path

from app import create_app
from settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
STATUS = re.compile(r"(?:^|; |/ )([1-5]\d\d)\b")
NOT_IN_OPENAPI = "Not in `/openapi.json`"  # /metrics: answered by a middleware, for operators


def api_table(readme: str) -> dict[tuple[str, str], tuple[set[str], str]]:
    """``(METHOD, path)`` → (statuses, answers cell) for each row of the README's ``## API`` table."""
    section = readme.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], tuple[set[str], str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first, _auth, answers = (cell.strip() for cell in line.strip("|").split(" | ", 2))
        method, path = first.split("`")[1].split()[:2]
        key = (method, path.split("?")[0])
        assert key not in rows, f"{key} has two rows"
        rows[key] = ({m.group(1) for m in STATUS.finditer(answers)}, answers)
    return rows


def test_the_parser_reads_statuses_not_figures() -> None:
    table = api_table("\n## API\n| h |\n|---|\n| `GET /a?limit=` | none | 200 `{}`, `limit` 1–100; 422 for a bad one;"
                      " 429 / 503 + `Retry-After` |\n\n## Next\n| `GET /b` | x | 200 |\n")
    assert table == {("GET", "/a"): ({"200", "422", "429", "503"}, table[("GET", "/a")][1])}


def test_every_route_in_the_readme_table_is_in_openapi_with_its_statuses(tmp_path: Path) -> None:
    spec = create_app(Settings(_env_file=None, users_file=tmp_path / "users.json",  # type: ignore[call-arg]
                               frontend_dir=tmp_path)).openapi()
    operations = {(method.upper(), path): set(operation["responses"])
                  for path, methods in spec["paths"].items() for method, operation in methods.items()}
    table = api_table(README.read_text())
    outside = {key for key, (_, answers) in table.items() if NOT_IN_OPENAPI in answers}
    assert outside == {("GET", "/metrics")}
    assert not outside & operations.keys()
    missing = {key: statuses - operations.get(key, set()) for key, (statuses, _) in table.items()
               if key not in outside and statuses - operations.get(key, set())}
    assert not missing, f"README rows naming a route or status OpenAPI lacks: {missing}"
    assert not (unlisted := operations.keys() - table.keys()), f"operations without a README row: {unlisted}"
    assert all(statuses for statuses, _ in table.values()), "a row that names no status"
