"""Row 1 (``/users/me`` ÷ ``/health``) for several versions of the service, in one interleaved run.

For deciding whether a change to the request path is worth its code: each version is a source
tree (a directory, or a git ref exported to a temporary one); each gets its own server on the
same 1,000-user store, and every repetition alternates 1 s wrk slices between all the servers'
``/health`` and ``/users/me``, as ``run.py`` does for row 1. Every ratio is per repetition,
between figures of the same server measured seconds apart (the machine's speed drifts)::

    .venv/bin/python bench/ab.py before=git:HEAD~1 after=. --reps 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import StoreFactory, username_of
from load import Loader, RequestSpec
from run import FULL, Target, interleaved, login_ours, say
from servers import OURS_PYTHON, ROOT, ensure_wrk, start_ours, stop_all


def source_tree(spec: str, workdir: Path, name: str) -> Path:
    """``git:REF`` exported (``git archive``) under ``workdir``, or a directory as it is."""
    if not spec.startswith("git:"):
        return Path(spec).resolve()
    out = workdir / "src" / name
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", spec[4:]], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="+", metavar="NAME=DIR|NAME=git:REF")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per target per repetition")
    args = parser.parse_args(argv)
    wrk = ensure_wrk(say)
    if not wrk:
        say("ERROR: wrk is needed (the Python load client saturates before the server)")
        return 2
    cfg = replace(FULL, reps=args.reps, duration=args.duration)
    loader = Loader(wrk, OURS_PYTHON)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    try:
        stores = StoreFactory(OURS_PYTHON, workdir)
        targets: dict[str, Target] = {}
        names = []
        for version in args.versions:
            name, _, spec = version.partition("=")
            tree = source_tree(spec, workdir, name)
            srv = start_ours(tree, stores.fresh(args.users), "ab-" * 16, 4, workdir / "logs" / f"{name}.log")
            auth = {"Authorization": f"Bearer {login_ours(srv.port, username_of(1))}"}
            targets[f"{name} health"] = (srv.port, RequestSpec("/health"))
            targets[f"{name} me"] = (srv.port, RequestSpec("/users/me", headers=auth))
            names.append(name)
            say(f"{name}: {tree} on port {srv.port}")
        say(f"interleaving {len(targets)} targets: {cfg.reps} x {cfg.duration:g} s each, in {cfg.chunk:g} s slices")
        res = interleaved(loader, targets, cfg)
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nrow 1 at {args.users:,} users, {cfg.reps} repetitions of {cfg.duration:g} s (median, min-max, per rep)")
    ratios = {}
    for name in names:
        health = [r["rps"] for r in res[f"{name} health"]]
        me = [r["rps"] for r in res[f"{name} me"]]
        ratios[name] = [m / h for m, h in zip(me, health, strict=True)]
        errors = sum(r["errors"] for r in res[f"{name} me"] + res[f"{name} health"])
        r = ratios[name]
        print(f"  {name:>12}: row 1 {statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f}) "
              f"[{' '.join(f'{x:.3f}' for x in r)}]; /health {statistics.median(health):,.0f} req/s, "
              f"/users/me {statistics.median(me):,.0f} req/s" + (f"; {errors} FAILED" if errors else ""))
    first = names[0]
    for name in names[1:]:
        per_rep = [b / a for a, b in zip(ratios[first], ratios[name], strict=True)]
        print(f"  {name} ÷ {first}: {statistics.median(per_rep):.3f} ({min(per_rep):.3f}-{max(per_rep):.3f}) per rep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
