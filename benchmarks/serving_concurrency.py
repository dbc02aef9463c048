"""Requests/s of one loaded model at 1, 4 and 20 concurrent clients: in process (three ways
to share the model between threads) and behind ``mlflow models serve``.

    python benchmarks/serving_concurrency.py [--model models:/maskflow@champion] [--requests 40]

In process, each client thread calls ``predict`` on one scene photo per request:
- ``none``: no guard, as before 2026-12-02 (concurrent calls race on the finder's input
  size and the TFLite interpreter: errors, or wrong faces);
- ``lock``: one prediction at a time per loaded model (shipped);
- ``per_thread``: one detector (finder + interpreter) per thread, no lock.
A call counts as right when it returns the faces the same request gets alone.
Then ``mlflow models serve --env-manager local`` (the shipped model) under the same loads.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENES = ROOT.parent / "shared" / "data" / "mask-scenes-853" / "images"


def load(model_uri: str):
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT}/mlflow.db")
    return mlflow.pyfunc.load_model(model_uri)


def share(model, how: str) -> None:
    """Make the loaded model share itself between threads ``how``."""
    inner = model.unwrap_python_model()
    inner._detectors = {}
    if how == "lock":
        inner._lock = threading.Lock()
        inner.__dict__.pop("detector", None)
        return
    inner._lock = contextlib.nullcontext()
    if how == "per_thread":
        local = threading.local()
        build = type(inner).detector

        def detector(faces_only: bool = False):
            if not hasattr(local, "built"):
                local.built = {}
            if faces_only not in local.built:
                # A fresh cache per thread: build_detector makes a new finder and interpreter.
                saved, inner._detectors = inner._detectors, {}
                try:
                    local.built[faces_only] = build(inner, faces_only)
                finally:
                    inner._detectors = saved
            return local.built[faces_only]

        inner.detector = detector


def in_process(model, frames, expected, clients: int, requests: int) -> dict:
    def call(i: int):
        try:
            return model.predict(frames[i % len(frames)]) == expected[i % len(frames)]
        except Exception:  # noqa: BLE001 - what the race does: counted, not raised
            return None

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(call, range(requests)))
    wall = time.perf_counter() - started
    right = sum(r is True for r in results)
    return {"ok": right, "wrong": sum(r is False for r in results), "errors": sum(r is None for r in results),
            "req_s": right / wall}


def served(model_uri: str, images: list[Path], expected: list, loads: list[int], requests: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT}/mlflow.db"}
    proc = subprocess.Popen(["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            time.sleep(0.5)
        bodies = [json.dumps({"dataframe_records": [{"image": base64.b64encode(p.read_bytes()).decode()}]}).encode()
                  for p in images]

        def post(i: int):
            request = urllib.request.Request(f"{url}/invocations", data=bodies[i % len(bodies)],
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=300) as r:
                    return json.loads(r.read())["predictions"] == expected[i % len(bodies)]
            except urllib.error.HTTPError:
                return None

        out = []
        for clients in loads:
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(post, range(requests)))
            wall = time.perf_counter() - started
            right = sum(r is True for r in results)
            out.append({"clients": clients, "ok": right, "wrong": sum(r is False for r in results),
                        "errors": sum(r is None for r in results), "req_s": right / wall})
        return out
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args()
    from maskflow.serving import encode_images

    images = sorted(SCENES.glob("*.jpg"))[: args.images]
    frames = [encode_images([p]) for p in images]
    model = load(args.model)
    share(model, "lock")
    expected = [model.predict(f) for f in frames]  # each request alone
    flags = sorted({f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                    for f in line.split(":")[1].split() if f in ("avx2", "avx512f", "fma")})
    print(f"CPU: {os.cpu_count()} cores, flags {' '.join(flags)}; {args.requests} requests per load, "
          f"{len(images)} scene photos in turn, one per request\n")
    print("| where | sharing | clients | right | wrong | errors | requests/s |\n|---|---|---|---|---|---|---|")
    loads = [1, 4, 20]
    for how in ("none", "lock", "per_thread"):
        share(model, how)
        for clients in loads:
            r = in_process(model, frames, expected, clients, args.requests)
            print(f"| in process | {how} | {clients} | {r['ok']} | {r['wrong']} | {r['errors']} | {r['req_s']:.2f} |", flush=True)
    for r in served(args.model, images, expected, loads, args.requests):
        print(f"| mlflow models serve | lock (shipped) | {r['clients']} | {r['ok']} | {r['wrong']} | {r['errors']} | "
              f"{r['req_s']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
