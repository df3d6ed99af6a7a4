"""Where does the time go? py-spy on ours while the harness's load runs.

For a target that run.py reports as missed, e.g.::

    .venv/bin/python bench/profile.py me --size 100000
    .venv/bin/python bench/profile.py storm
    .venv/bin/python bench/profile.py register --size 100000

It starts ours exactly as run.py does (same stores, pinning and flags), puts
the scenario's load on it with wrk, samples the server with py-spy (from
bench/.venv-peer, built by run.py; py-spy runs on the load CPU and does not
pause the server) and prints the functions with the most samples, self and
inclusive. The collapsed stacks are kept (``--out``, default /tmp) for a
flame graph.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import PASSWORD, STORM_USER, StoreFactory, username_of
from load import Loader, RequestSpec
from run import login_ours
from servers import (
    LOAD_CPU,
    OURS_PYTHON,
    PEER_VENV,
    ROOT,
    ensure_peer_venv,
    ensure_wrk,
    http_request,
    start_ours,
    stop_all,
)

PY_SPY = PEER_VENV / "bin" / "py-spy"
LINE_NUMBER = re.compile(r" \(([^:()]+):\d+\)$")


def summarize(collapsed: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in {LINE_NUMBER.sub(r" (\1)", f) for f in frames}:  # inclusive: per function
            incl_counts[frame] += count
    if not total:
        return "no samples (was the server busy?)"
    out = [f"{total} samples"]
    for title, counter in (("self (leaf) time", self_counts), ("inclusive time", incl_counts)):
        out.append(f"\n{title}:")
        # Frames in nearly every sample (the event loop, uvicorn's runner) say nothing.
        shown = [(f, n) for f, n in counter.most_common() if n < 0.95 * total][:top]
        out += [f"  {n / total:6.1%}  {frame}" for frame, n in shown]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["health", "me", "register", "storm", "cart", "anonymous", "item", "items"])
    p.add_argument("--size", type=int, default=1000, help="users in the store")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = p.parse_args()

    ensure_peer_venv()
    wrk = ensure_wrk()
    loader = Loader(wrk, OURS_PYTHON)
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    stores = StoreFactory(OURS_PYTHON, workdir)
    storm = args.scenario == "storm"
    store = stores.fresh(args.size, with_storm_user=storm)
    collapsed = args.out / f"profile-{args.scenario}-{args.size}.txt"
    try:
        srv = start_ours(ROOT, store, "p" * 48, 12 if storm else 4, workdir / "server.log")
        token = login_ours(srv.port, username_of(1))
        auth = {"Authorization": f"Bearer {token}"}
        json_type = {"Content-Type": "application/json"}
        spec = {
            "health": RequestSpec("/health"),
            "me": RequestSpec("/users/me", headers=auth),
            "register": RequestSpec("/users/register", "POST", json_type,
                                    json.dumps({"username": "{n}", "password": PASSWORD}), unique=True, prefix="pf"),
            "storm": RequestSpec("/health"),
            "cart": RequestSpec("/cart/items/1", "PUT", {**auth, **json_type}, '{"quantity": 1}'),
            "anonymous": RequestSpec("/anonymous-login", "POST"),
            "item": RequestSpec("/items/7", headers=auth),
            "items": RequestSpec("/items/", headers=auth),
        }[args.scenario]
        if args.scenario in ("item", "items"):  # rows 9 and 10: a full history, as run.py sets it up
            for item_id in range(1, 17):
                http_request(srv.port, "GET", f"/items/{item_id}", headers=auth)
            for item_id in (1, 2, 3):
                http_request(srv.port, "PUT", f"/favourites/{item_id}", headers=auth)
            http_request(srv.port, "PUT", "/cart/items/2", b'{"quantity": 1}', {**auth, **json_type})
        background = None
        if storm:
            login = RequestSpec("/users/login", "POST", json_type,
                                json.dumps({"username": STORM_USER, "password": PASSWORD}))
            background = loader.background(srv.port, login, 4, args.duration + 3)
            time.sleep(1)
        spy = subprocess.Popen(
            ["taskset", "-c", LOAD_CPU, str(PY_SPY), "record", "--pid", str(srv.pid), "--duration",
             str(args.duration), "--rate", "200", "--nonblocking", "--threads", "--format", "raw",
             "--output", str(collapsed)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        result = loader.run(srv.port, spec, 32, args.duration)
        _, err = spy.communicate(timeout=args.duration + 60)
        if background is not None:
            background.result()
        print(f"{args.scenario} at {args.size:,} users: {result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms, "
              f"{result.errors} failed")
        if spy.returncode != 0:
            print(f"py-spy failed: {err}")
            return 1
        print(summarize(collapsed, args.top))
        print(f"\ncollapsed stacks: {collapsed}")
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
