"""Load test of the REST server: concurrent requests, oversized bodies, clients that leave.

    python benchmarks/serving_load.py [--model models:/maskflow@champion] [--server maskflow|mlflow]
                                      [--requests 100] [--timeout 60]

Starts ``python -m maskflow.serving.rest`` (or ``mlflow models serve`` for comparison) with one
worker on a free loopback port, then:

1. sends ``--requests`` valid requests at once (one mask-scenes-853 image each, client
   timeout ``--timeout`` s) and counts the answers by status, with their latencies;
2. right after, times a bad request (it should answer at once, not after a backlog);
3. sends an 84 MB body and reports the status and the server's memory growth;
4. sends requests and closes them before an answer, then reads the server's counters;
5. sends an empty list of rows.

Prints a Markdown report; exits 1 when the server stopped answering.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serving_check import served  # a sibling script: its folder is on sys.path when run

ROOT = Path(__file__).resolve().parents[1]


def post(url: str, body: bytes, timeout: float) -> tuple[int | str, float, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read()
            return r.status, time.perf_counter() - started, dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - started, {**{k.lower(): v for k, v in exc.headers.items()},
                                                         "body": exc.read().decode(errors="replace")[:300]}
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        return type(exc).__name__, time.perf_counter() - started, {}


def post_raw(port: int, body: bytes) -> tuple[str, float]:
    """POST over a socket, reading the answer even when the server stops reading the body
    early (a 413 sent before the upload ends)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        raw.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode())
        try:
            raw.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = raw.recv(200).decode(errors="replace")
        except ConnectionResetError:
            answer = "reset"
    return (answer.split()[1] if answer.startswith("HTTP/") else answer), time.perf_counter() - started


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn runs the app in a child)."""
    total = 0
    out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)], capture_output=True, text=True).stdout
    for line in out.split():
        total += int(line)
    return total / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--server", choices=("maskflow", "mlflow"), default="maskflow")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--scenes", type=Path, default=ROOT.parent / "shared" / "data" / "mask-scenes-853" / "images")
    args = parser.parse_args()

    name = "python -m maskflow.serving.rest" if args.server == "maskflow" else "mlflow models serve"
    lines = [f"# REST load test: `{name} {args.model}`, one worker, {os.cpu_count()} CPUs", ""]
    with served(args.model, args.server) as server:
        url, port = server.url, server.port
        images = sorted(p for p in args.scenes.iterdir() if p.suffix.lower() in (".png", ".jpg"))[: args.requests]
        bodies = [json.dumps({"dataframe_records": [{"image": base64.b64encode(p.read_bytes()).decode(), "source": p.name}]}).encode()
                  for p in images]
        post(url, bodies[0], args.timeout)  # warm-up
        rss_before = rss_mib(server.process.pid)

        started = time.perf_counter()
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: post(url, b, args.timeout), bodies))
        wall = time.perf_counter() - started
        bad_status, bad_latency, _ = post(url, json.dumps({"dataframe_records": [{"image": "@@"}]}).encode(), args.timeout)
        by_status: dict[str, list[float]] = {}
        for status, latency, _ in answers:
            by_status.setdefault(str(status), []).append(latency)
        retry_after = sorted({h.get("retry-after") for s, _, h in answers if s == 503} - {None})
        refusals = sorted({h["body"] for s, _, h in answers if isinstance(s, int) and s >= 400 and s != 503})
        lines += [f"## {len(bodies)} concurrent requests, one scene image each, client timeout {args.timeout:g} s", "",
                  f"All answered within {wall:.1f} s.", "", "| answer | count | median s | max s |", "|---|---|---|---|"]
        for status, latencies in sorted(by_status.items()):
            lines.append(f"| {status} | {len(latencies)} | {statistics.median(latencies):.2f} | {max(latencies):.2f} |")
        lines += ["", f"Retry-After values on 503: {retry_after or 'none'}.",
                  *[f"Refused as bad: {r}" for r in refusals], f"A bad request right after: HTTP {bad_status} in {bad_latency:.2f} s.", ""]

        big = b'{"dataframe_records": [{"image": "' + b"A" * (84 * 10**6) + b'"}]}'
        rss_before = rss_mib(server.process.pid)
        status, latency = post_raw(port, big)
        rss_after = rss_mib(server.process.pid)
        lines += [f"## An 84 MB body: HTTP {status} in {latency:.2f} s; server memory {rss_before:.0f} -> {rss_after:.0f} MiB", ""]

        # Clients that leave: two close halfway through sending their body, two wait behind
        # two real requests and give up. None of the four may be scored.
        heavy = json.dumps({"dataframe_records": [r for b in bodies[:8] for r in json.loads(b)["dataframe_records"]]}).encode()
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(post, url, heavy, args.timeout) for _ in range(2)]
            time.sleep(0.3)
            for i, body in enumerate(bodies[2:6]):
                with socket.create_connection(("127.0.0.1", port)) as raw:
                    raw.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                + f"Content-Length: {len(body)}\r\n\r\n".encode() + (body[: len(body) // 2] if i < 2 else body))
                    time.sleep(0.1)
            [f.result() for f in busy]
        time.sleep(2)
        try:
            counters = json.loads(urllib.request.urlopen(f"{url}/limits", timeout=10).read())
            lines += [f"## Clients that left: server counters {counters}", ""]
        except urllib.error.HTTPError:
            lines += ["## Clients that left: this server has no counters", ""]

        status, latency, _ = post(url, b'{"dataframe_records": []}', args.timeout)
        try:
            message = urllib.request.urlopen(urllib.request.Request(
                f"{url}/invocations", data=b'{"dataframe_records": []}', headers={"Content-Type": "application/json"})).read()
        except urllib.error.HTTPError as exc:
            message = exc.read()
        lines += [f"## Empty list of rows: HTTP {status}: {message.decode(errors='replace')[:200]}", ""]
        alive, _, _ = post(url, bodies[0], args.timeout)
        ok = alive == 200
        lines.append(f"Server still answering: {'yes' if ok else f'no ({alive})'}.")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
