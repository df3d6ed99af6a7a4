"""A small closed-loop HTTP/1.1 load client in pure Python (asyncio, keep-alive).

Two jobs:

* the login storm: a few clients posting logins non-stop, where we need the
  completion time of every request (to count only the logins that finished
  while wrk was measuring /health), which wrk's Lua cannot give;
* the fallback load generator when wrk cannot be installed. It is much slower
  than wrk and may itself become the bottleneck: the harness says so loudly.

Run as a script (the harness pins it to the load CPU with taskset)::

    python pyload.py --port 8000 --connections 4 --duration 10 \
        --spec '{"method": "POST", "path": "/users/login", "headers": {...}, "body": "..."}'

With ``"unique": true`` every ``{n}`` in the body becomes a fresh short name
(prefix + connection + counter), for registering new users.
It prints one JSON object: start/end (time.monotonic, system-wide on Linux),
``samples`` as [end_time, latency_s, status] and ``socket_errors``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, server_closes_connection)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    chunked = close = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def _client(
    conn_id: int, port: int, spec: dict[str, Any], deadline: float,
    samples: list[tuple[float, float, int]], errors: list[int],
) -> None:
    head_base = f"{spec.get('method', 'GET')} {spec['path']} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    for name, value in (spec.get("headers") or {}).items():
        head_base += f"{name}: {value}\r\n"
    body_template: str = spec.get("body") or ""
    unique = bool(spec.get("unique"))
    prefix = str(spec.get("prefix", "u"))
    counter = 0
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            counter += 1
            body = body_template.replace("{n}", f"{prefix}{conn_id}_{counter}") if unique else body_template
            payload = body.encode()
            request = (head_base + f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
            t0 = time.monotonic()
            writer.write(request)
            status, close = await asyncio.wait_for(_read_response(reader), timeout=60)
            t1 = time.monotonic()
            samples.append((t1, t1 - t0, status))
            if close:
                writer.close()
                writer = None
        except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            errors[0] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def run(port: int, spec: dict[str, Any], connections: int, duration: float) -> dict[str, Any]:
    samples: list[tuple[float, float, int]] = []
    errors = [0]
    start = time.monotonic()
    deadline = start + duration
    await asyncio.gather(*(_client(i, port, spec, deadline, samples, errors) for i in range(connections)))
    return {"start": start, "end": time.monotonic(), "samples": samples, "socket_errors": errors[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop HTTP load client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True, help="JSON request spec")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args()
    runner: Any = asyncio.run
    try:
        import uvloop  # a faster loop when the interpreter has it

        runner = uvloop.run
    except ImportError:
        pass
    result = runner(run(args.port, json.loads(args.spec), args.connections, args.duration))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
