"""``maskflow.batch`` against ``maskflow.detect`` on the same inputs, 1 and 2 actors, memory
per actor, and a job killed with SIGKILL and resumed.

    python benchmarks/batch_scale.py [--images 2000] [--work /tmp/batch_scale]

Inputs: every mask-scenes-853 photo, then close-ups of mask-faces-4k up to ``--images``,
1% of them replaced by corrupt files (text, truncated JPEGs), and one 640x480 video of 100
frames. Throughput counts rows (images and video frames) per wall second of the whole
command, start-up included, as ``maskflow.detect`` reports it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def corpus(folder: Path, n: int) -> int:
    import cv2

    if folder.exists():
        shutil.rmtree(folder)
    (folder / "scenes").mkdir(parents=True)
    (folder / "closeups").mkdir()
    scenes = sorted((SHARED / "mask-scenes-853" / "images").glob("*"))[:n]
    closeups = sorted((SHARED / "mask-faces-4k").rglob("*.jpg"))[: max(0, n - len(scenes))]
    chosen = [(p, folder / "scenes" / p.name) for p in scenes] + [(p, folder / "closeups" / f"{p.parent.name}-{p.name}")
                                                                    for p in closeups]
    for i, (source, target) in enumerate(chosen):
        if i % 100 == 50:  # 1%: half text named .jpg, half truncated
            target.write_bytes(b"not an image" if i % 200 == 50 else source.read_bytes()[:1500])
        else:
            shutil.copy(source, target)
    scene = cv2.resize(cv2.imread(str(scenes[3])), (640, 480))
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 480))
    for i in range(100):
        writer.write(np.roll(scene, 3 * i, axis=1))
    writer.release()
    return len(chosen)


def peak_rss_of(pattern: str, stop: threading.Event, peaks: dict) -> None:
    """Peak resident MiB of each process whose command line contains ``pattern``."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if pattern in cmd:
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                    peaks[pid] = max(peaks.get(pid, 0.0), rss)
            except OSError:
                continue
        stop.wait(0.5)


def timed(command: list[str], pattern: str | None = None) -> tuple[subprocess.CompletedProcess, float, dict]:
    stop, peaks = threading.Event(), {}
    watcher = threading.Thread(target=peak_rss_of, args=(pattern, stop, peaks), daemon=True) if pattern else None
    if watcher:
        watcher.start()
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - started
    stop.set()
    return proc, wall, peaks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/batch_scale"))
    parser.add_argument("--model", default="models:/maskflow@champion")
    args = parser.parse_args()
    from maskflow.serving.batch import read_rows

    folder = args.work / "in"
    n = corpus(folder, args.images)
    flags = sorted({f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                    for f in line.split(":")[1].split() if f in ("avx2", "avx512f", "fma")})
    print(f"CPU: {os.cpu_count()} cores, flags {' '.join(flags)}; {n} images ({n // 100} corrupt) + a 100-frame 640x480 video\n")

    jsonl = args.work / "detect.jsonl"
    proc, wall, _ = timed([sys.executable, "-m", "maskflow.detect", str(folder), "--jsonl", str(jsonl), "--model", args.model])
    detect_rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    detect_rate = len(detect_rows) / wall
    print("| command | rows | error rows | wall s | rows/s | vs detect | peak MiB per actor |\n|---|---|---|---|---|---|---|")
    print(f"| `maskflow.detect` | {len(detect_rows)} | (stderr: {proc.stderr.count('skipped')}) | {wall:.1f} | "
          f"{detect_rate:.2f} | 1.00 | |", flush=True)
    results = {}
    for actors in (1, 2):
        out = args.work / f"out{actors}"
        shutil.rmtree(out, ignore_errors=True)
        proc, wall, peaks = timed([sys.executable, "-m", "maskflow.batch", str(folder), "--out", str(out), "--actors",
                                   str(actors), "--model", args.model], pattern="MapWorker")
        rows = read_rows(str(out))
        results[actors] = rows
        errors = sum(1 for r in rows if r["error"])
        memory = ", ".join(f"{v:.0f}" for v in sorted(peaks.values())) or "?"
        print(f"| `maskflow.batch --actors {actors}` | {len(rows)} | {errors} | {wall:.1f} | {len(rows) / wall:.2f} | "
              f"{len(rows) / wall / detect_rate:.2f} | {memory} |", flush=True)

    # The same faces as detect, image by image (video frames: detect has them too).
    by_detect = {(str(Path(r["source"]).resolve()), r["frame"]): [(f["box"], f["label"]) for f in r["faces"]] for r in detect_rows}
    by_batch = {(r["source"], r["frame"]): [(f["box"], f["label"]) for f in r["faces"]] for r in results[1] if not r["error"]}
    same = sum(by_batch.get(k) == v for k, v in by_detect.items() if k[0].endswith((".jpg", ".png", ".jpeg")))
    images = sum(1 for k in by_detect if k[0].endswith((".jpg", ".png", ".jpeg")))
    print(f"\nSame faces (box and label) as maskflow.detect: {same} of {images} images")

    # Killed with SIGKILL mid-job, then resumed.
    out = args.work / "killed"
    shutil.rmtree(out, ignore_errors=True)
    job = subprocess.Popen([sys.executable, "-m", "maskflow.batch", str(folder), "--out", str(out), "--model", args.model],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while job.poll() is None and len(list(out.glob("part-*.parquet"))) < 10:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    before = len(read_rows(str(out)))
    proc, wall, _ = timed([sys.executable, "-m", "maskflow.batch", str(folder), "--out", str(out), "--model", args.model])
    rows = read_rows(str(out))
    keys = Counter((r["source"], r["frame"]) for r in rows)
    expected = set((r["source"], r["frame"]) for r in results[1])
    print(f"Killed after {before} rows were written; the re-run (exit {proc.returncode}, {wall:.1f} s) left {len(rows)} rows: "
          f"{sum(v > 1 for v in keys.values())} repeated, {len(expected - set(keys))} missing, "
          f"{len(set(keys) - expected)} unexpected; every error row has a reason: "
          f"{all(r['error'] for r in rows if not r['faces'] and r['error'] is not None)}")
    print(f"Error reasons: {dict(Counter(r['error'].split(' (')[0] for r in rows if r['error']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
