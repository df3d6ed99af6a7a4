"""Load generation: wrk (preferred) or the pure-Python client, always on the load CPU.

wrk is driven through a generated Lua script whose ``done`` hook prints one
JSON line, so nothing depends on wrk's human-readable output. Requests that
need a fresh body each time (registrations) are built in Lua's ``request``
hook from a counter and the thread id. Throughput and latency are closed-loop
figures: C connections each send their next request as soon as the previous
answer arrives (wrk's latency is therefore queueing-dominated at saturation;
we only compare such figures with each other).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from servers import LOAD_CPU

PYLOAD = Path(__file__).resolve().parent / "pyload.py"


@dataclass
class RequestSpec:
    """One kind of request, sent over and over."""

    path: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    unique: bool = False  # replace "{n}" in the body with a fresh name per request
    prefix: str = "b"  # first characters of those names; vary it between runs

    def as_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class LoadResult:
    """What one load run measured (latencies in ms)."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def _lua_str(text: str) -> str:
    """A Lua long-bracket literal; our strings never contain ']==]'."""
    assert "]==]" not in text
    return f"[==[{text}]==]"


# wrk's done() hook: one machine-readable line instead of wrk's human summary.
LUA_REPORT = (
    "  io.write(string.format('BENCHJSON {\"requests\": %.0f, \"duration_us\": %.0f, "
    "\"connect\": %.0f, \"read\": %.0f, \"write\": %.0f, \"status\": %.0f, \"timeout\": %.0f, "
    "\"p50_us\": %.1f, \"p99_us\": %.1f, \"mean_us\": %.1f, \"max_us\": %.1f}\\n', "
    "summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, "
    "latency:percentile(50), latency:percentile(99), latency.mean, latency.max))"
)


def wrk_script(spec: RequestSpec) -> str:
    lines = [f"wrk.method = {_lua_str(spec.method)}"]
    for name, value in spec.headers.items():
        lines.append(f"wrk.headers[ {_lua_str(name)} ] = {_lua_str(value)}")
    if spec.body is not None and not spec.unique:
        lines.append(f"wrk.body = {_lua_str(spec.body)}")
    if spec.unique:
        lines += [
            f"local template = {_lua_str(spec.body or '')}",
            f"local prefix = {_lua_str(spec.prefix)}",
            "local counter = 0",
            "tid = 0",
            "next_tid = 0",
            "function setup(thread)",
            "  thread:set('tid', next_tid)",
            "  next_tid = next_tid + 1",
            "end",
            "function request()",
            "  counter = counter + 1",
            "  local body = template:gsub('{n}', prefix .. tid .. '_' .. counter)",
            "  return wrk.format(nil, nil, nil, body)",
            "end",
        ]
    lines += ["function done(summary, latency, requests)", "  local e = summary.errors", LUA_REPORT, "end"]
    return "\n".join(lines) + "\n"


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize_samples(
    samples: list[list[float]], start: float, end: float, socket_errors: int, tool: str
) -> LoadResult:
    """Turn pyload's per-request samples into a LoadResult for the window [start, end]."""
    inside = [s for s in samples if start <= s[0] <= end]
    lat = sorted(s[1] * 1000 for s in inside)
    bad = sum(1 for s in inside if not 200 <= s[2] < 400)
    return LoadResult(
        requests=len(inside), seconds=end - start, errors=bad + socket_errors,
        p50_ms=_percentile(lat, 50), p99_ms=_percentile(lat, 99),
        mean_ms=statistics.fmean(lat) if lat else 0.0, max_ms=lat[-1] if lat else 0.0, tool=tool,
    )


class Background:
    """A pyload run in the background (the login storm)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def result(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=600)
        if self.proc.returncode != 0:
            raise RuntimeError(f"pyload failed ({self.proc.returncode}): {err}")
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Loader:
    """Runs load against a port with wrk, or with pyload when wrk is missing."""

    def __init__(self, wrk: str | None, python: Path) -> None:
        self.wrk = wrk
        self.python = python

    @property
    def tool(self) -> str:
        return "wrk" if self.wrk else "pyload (Python fallback)"

    def run(self, port: int, spec: RequestSpec, connections: int, duration: float) -> LoadResult:
        if self.wrk:
            return self._run_wrk(port, spec, connections, duration)
        data = self.background(port, spec, connections, duration).result()
        return summarize_samples(data["samples"], data["start"], data["end"], data["socket_errors"], "pyload")

    def _run_wrk(self, port: int, spec: RequestSpec, connections: int, duration: float) -> LoadResult:
        assert self.wrk is not None
        seconds = max(1, round(duration))
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(wrk_script(spec))
            script = f.name
        try:
            cmd = [
                "taskset", "-c", LOAD_CPU, self.wrk, "-t1", f"-c{connections}", f"-d{seconds}s",
                "--timeout", "30s", "-s", script, f"http://127.0.0.1:{port}{spec.path}",
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                                 check=False)
        finally:
            Path(script).unlink(missing_ok=True)
        for line in out.stdout.splitlines():
            if line.startswith("BENCHJSON "):
                d = json.loads(line[len("BENCHJSON "):])
                errors = int(d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"])
                return LoadResult(
                    requests=int(d["requests"]), seconds=d["duration_us"] / 1e6, errors=errors,
                    p50_ms=d["p50_us"] / 1000, p99_ms=d["p99_us"] / 1000,
                    mean_ms=d["mean_us"] / 1000, max_ms=d["max_us"] / 1000, tool="wrk",
                )
        raise RuntimeError(f"wrk printed no result (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")

    def background(self, port: int, spec: RequestSpec, connections: int, duration: float) -> Background:
        cmd = [
            "taskset", "-c", LOAD_CPU, str(self.python), str(PYLOAD), "--port", str(port),
            "--connections", str(connections), "--duration", str(duration), "--spec", spec.as_json(),
        ]
        return Background(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
