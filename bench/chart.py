"""Draw bench/results.png: /users/me req/s against store size.

Run by the harness with the bench venv's python (matplotlib lives there, never
in the service's requirements)::

    python chart.py results.json results.png
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _stats(results: list[dict]) -> tuple[float, float, float]:
    rps = [r["rps"] for r in results]
    return statistics.median(rps), min(rps), max(rps)


def draw(doc: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for label, key, style in (("ours GET /users/me", "me", "o-"), ("ours GET /health", "health", "s--")):
        sizes, med, lo, hi = [], [], [], []
        for n, entry in sorted(doc["ours"]["sizes"].items(), key=lambda kv: int(kv[0])):
            m, a, b = _stats(entry[key])
            sizes.append(int(n))
            med.append(m)
            lo.append(m - a)
            hi.append(b - m)
        ax.errorbar(sizes, med, yerr=[lo, hi], fmt=style, capsize=4, label=label)
    peer = doc.get("peer")
    if peer:
        for label, key, marker in (("peer GET /users/me", "me", "D"), ("peer GET /health", "health", "^")):
            m, a, b = _stats(peer[key])
            ax.errorbar([peer["size"]], [m], yerr=[[m - a], [b - m]], fmt=marker, capsize=4,
                        markersize=8, label=f"{label} (fastapi-users)")
    ax.set_xscale("log")
    ax.set_xlabel("users in the store")
    ax.set_ylabel("requests per second (median, min–max)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    quick = " — QUICK MODE" if doc["config"]["quick"] else ""
    ax.set_title(f"req/s against store size, one uvicorn worker on one core{quick}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    doc = json.loads(Path(sys.argv[1]).read_text())
    draw(doc, Path(sys.argv[2]))


if __name__ == "__main__":
    main()
