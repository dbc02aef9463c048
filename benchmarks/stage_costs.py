"""Where one core's time goes per frame: read, decode, find, classify, write. The base of
BENCHMARKS.md's plan for 1 M and 100 M frames.

    python benchmarks/stage_costs.py [--model models:/maskflow@champion] [--images 300]

One process, one thread for each library (OpenCV, LiteRT), on scene photos (still effort:
the upscaled second pass), close-ups, and 640x480 video frames (video effort: one pass).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # one core measured: LiteRT's interpreter reads it too
    import cv2
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    cv2.setNumThreads(1)
    from maskflow.detection.detector import MaskModel, build_detector
    from maskflow.imageio import Frame, decode_image
    from maskflow.serving.batch import _row, _schema

    model = MaskModel.from_uri(args.model)
    detector = build_detector(model.settings, model)
    sets = {
        "scene photos (stills)": (sorted((SHARED / "mask-scenes-853" / "images").glob("*"))[: args.images], False),
        "close-ups (stills)": (sorted((SHARED / "mask-faces-4k").rglob("*.jpg"))[: args.images], False),
        "640x480 frames (video)": (sorted((SHARED / "mask-scenes-853" / "images").glob("*"))[: args.images], True),
    }
    flags = sorted({f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                    for f in line.split(":")[1].split() if f in ("avx2", "avx512f", "fma")})
    print(f"CPU flags {' '.join(flags)}; one thread per library; ms per frame (median over {args.images})\n")
    print("| inputs | read | decode | find | classify | write | total | frames/s per core | faces/frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (paths, video) in sets.items():
        times = {k: [] for k in ("read", "decode", "find", "classify", "write")}
        faces_seen = 0
        for path in paths:
            t0 = time.perf_counter()
            data = path.read_bytes()
            t1 = time.perf_counter()
            rgb = decode_image(data).rgb
            if video:  # a decoded video frame: the cost of decoding is the JPEG's here, resized to 640x480
                rgb = cv2.resize(rgb, (640, 480))
            t2 = time.perf_counter()
            frame = Frame(str(path), 0, rgb, video)
            found = detector.find(frame)
            t3 = time.perf_counter()
            records = detector.report(detector.label(frame, found))
            t4 = time.perf_counter()
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist([_row(str(path), 0, records)], schema=_schema()), buffer)
            t5 = time.perf_counter()
            faces_seen += len(found or [])
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[key].append(value * 1000)
        medians = {k: float(np.median(v)) for k, v in times.items()}
        total = sum(medians.values())
        print(f"| {name} | " + " | ".join(f"{medians[k]:.1f}" for k in times) +
              f" | {total:.1f} | {1000 / total:.1f} | {faces_seen / len(paths):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
