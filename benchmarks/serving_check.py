"""Serve the champion with ``mlflow models serve`` and exercise it over HTTP.

    python benchmarks/serving_check.py [--model models:/maskflow@champion] [--images 20]

Starts the server on a free loopback port (``--env-manager local``), sends N real scene
images from mask-scenes-853 one request each (latency per request), then bad payloads
(each must get a 4xx), then checks that the server still answers. Prints a Markdown
summary; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


def post(url: str, body: bytes) -> tuple[int, dict | str, float]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), time.perf_counter() - started


def record(image: bytes, name: str = "x") -> bytes:
    return json.dumps({"dataframe_records": [{"image": base64.b64encode(image).decode(), "source": name}]}).encode()


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    startup_s: float


@contextmanager
def served(model: str, server: str = "mlflow", timeout: float = 300) -> Iterator[Server]:
    """``model`` served on a free loopback port by ``mlflow models serve`` or
    ``python -m maskflow.serving.rest`` (one worker), up and answering /ping; stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ([sys.executable, "-m", "maskflow.serving.rest", model, "--port", str(port), "--workers", "1"] if server == "maskflow"
               else [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"])
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/mlflow.db")}
    log = Path(tempfile.mkdtemp()) / "server.log"
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError(f"{' '.join(command[1:4])} did not come up:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        yield Server(url, port, process, time.perf_counter() - started)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--scenes", type=Path, default=ROOT.parent / "shared" / "data" / "mask-scenes-853" / "images")
    args = parser.parse_args()

    failures = []
    with served(args.model) as server:
        url, startup = server.url, server.startup_s
        images = sorted(p for p in args.scenes.iterdir() if p.suffix.lower() in (".png", ".jpg"))[-args.images:]
        latencies, faces = [], 0
        for path in images:
            status, body, seconds = post(url, record(path.read_bytes(), path.name))
            if status != 200:
                failures.append(f"{path.name}: HTTP {status}")
                continue
            latencies.append(seconds)
            faces += len(body["predictions"][0]["faces"])
            if not body["predictions"][0]["faces"]:
                failures.append(f"{path.name}: no faces returned")
        good = sum(1 for _ in latencies)

        bad = {
            "not base64": json.dumps({"dataframe_records": [{"image": "not base64 at all!"}]}).encode(),
            "text, not an image": record(b"just some text, not an image" * 10),
            "truncated JPEG": record(images[0].read_bytes()[:1500]),
            "over 16 MiB": json.dumps({"dataframe_records": [{"image": "A" * (23 * 2**20)}]}).encode(),  # 17 MiB decoded
            "no image column": json.dumps({"dataframe_records": [{"photo": "abc"}]}).encode(),
            "not JSON": b"{{{ nope",
        }
        rows = []
        for name, body in bad.items():
            status, answer, _ = post(url, body)
            message = answer if isinstance(answer, str) else answer.get("message", json.dumps(answer))
            message = message.split("Error: ", 1)[-1]  # MLflow prefixes the request's data
            rows.append((name, status, message[:110].replace("|", "/").replace("\n", " ")))
            if not 400 <= status < 500:
                failures.append(f"bad payload {name!r}: HTTP {status}")
        status, _, _ = post(url, record(images[0].read_bytes(), images[0].name))
        alive = server.process.poll() is None and status == 200
        if not alive:
            failures.append("server not answering after bad payloads")

    print(f"model `{args.model}`; server up in {startup:.1f} s (model load included)\n")
    print(f"- good images: {good}/{len(images)} answered 200, {faces} faces in total")
    if latencies:
        q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
        print(f"- latency per single-image request: p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p95 {q[18] * 1000:.0f} ms (first request {latencies[0] * 1000:.0f} ms)")
    print(f"- server still serving after the bad payloads: {alive}\n")
    print("| bad payload | HTTP | message (start) |\n|---|---|---|")
    for name, status, message in rows:
        print(f"| {name} | {status} | {message} |")
    if failures:
        print("\nFAILED:\n- " + "\n- ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
