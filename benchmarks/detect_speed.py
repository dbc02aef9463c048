"""Detect-then-classify speed on this CPU, and the recall each speed trick costs.

    python benchmarks/detect_speed.py [--model models:/maskflow@champion] [--frames 150]

Builds test videos from real scene images of mask-scenes-853 (scenes with 1-5 faces,
each held for 10 frames with a slow pan, so boxes move as in video) at 640x480 and
1280x720, and a set of the scene images at their own mixed sizes. For each setting it
reports frames/s and p50/p95 per-frame latency (decode excluded for video, included for
images), and detection recall / scenes_map50 on 60 held-out scene images.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENES = Path(os.environ.get("MASKFLOW_DATA_DIR", ROOT.parent / "shared" / "data")) / "mask-scenes-853"


def scene_frames(size: tuple[int, int], frames: int, hold: int = 10) -> list[np.ndarray]:
    from maskflow.evaluate_scenes import voc_items
    from maskflow.imageio import read_image

    items = [it for it in voc_items(SCENES) if 1 <= len(it[1]) <= 5]
    w, h = size
    out = []
    for path, _ in items:
        rgb = read_image(path).rgb
        scale = max(w / rgb.shape[1], h / rgb.shape[0]) * 1.1
        big = cv2.resize(rgb, (int(rgb.shape[1] * scale) + 1, int(rgb.shape[0] * scale) + 1))
        for k in range(hold):  # a slow pan across the slightly larger scene
            x = min(big.shape[1] - w, k * 3)
            y = min(big.shape[0] - h, k * 2)
            out.append(np.ascontiguousarray(big[y : y + h, x : x + w]))
            if len(out) == frames:
                return out
    return out


def time_frames(detector, frames: list[np.ndarray], is_video: bool) -> dict[str, float]:
    from maskflow.detect import Frame

    detector(Frame("warmup", 0, frames[0], False))
    per_frame, faces = [], 0
    started = time.perf_counter()
    for i, rgb in enumerate(frames):
        t = time.perf_counter()
        faces += len(detector(Frame("bench", i, rgb, is_video)))
        per_frame.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return {"fps": len(frames) / wall, "p50_ms": float(np.median(per_frame) * 1000),
            "p95_ms": float(np.percentile(per_frame, 95) * 1000), "faces_per_frame": faces / len(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--recall-images", type=int, default=60)
    args = parser.parse_args()

    from maskflow.detect import Classifier, Detector
    from maskflow.evaluate_scenes import run_scenes, voc_items
    from maskflow.imageio import read_image

    t = time.perf_counter()
    classifier = Classifier.from_uri(args.model)
    load_s = time.perf_counter() - t
    print(f"model load: {load_s:.2f} s ({args.model}); machine: {os.cpu_count()} cores\n")

    video = {"640x480": scene_frames((640, 480), args.frames), "1280x720": scene_frames((1280, 720), args.frames)}
    mixed = [read_image(p).rgb for p, _ in voc_items(SCENES)[200 : 200 + 40]]
    held_out = voc_items(SCENES)[-args.recall_images :]
    settings = [  # (name, max_side, min_face, detect_every)
        ("full-res, every frame", 1280, 20, 1),
        ("max_side 640, every frame", 640, 20, 1),
        ("max_side 480, every frame", 480, 20, 1),
        ("max_side 480, every 3rd frame", 480, 20, 3),
        ("max_side 480, every 5th frame", 480, 20, 5),
        ("max_side 320, every 5th frame", 320, 20, 5),
    ]
    print("| setting | 640x480 fps | p50/p95 ms | 1280x720 fps | p50/p95 ms | mixed images fps | scenes recall | scenes_map50 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, max_side, min_face, every in settings:
        detector = Detector(classifier, max_side=max_side, min_face=min_face, min_confidence=0.8, detect_every=every)
        v1 = time_frames(detector, video["640x480"], True)
        v2 = time_frames(detector, video["1280x720"], True)
        im = time_frames(detector, mixed, False)
        scored = run_scenes(Detector(classifier, max_side=max_side, min_face=min_face, min_confidence=0.8), held_out)["metrics"]
        print(f"| {name} | {v1['fps']:.1f} | {v1['p50_ms']:.0f}/{v1['p95_ms']:.0f} | {v2['fps']:.1f} | "
              f"{v2['p50_ms']:.0f}/{v2['p95_ms']:.0f} | {im['fps']:.1f} | {scored['scenes_det_recall']:.3f} | "
              f"{scored['scenes_map50']:.3f} |", flush=True)
    print("\nrecall/mAP are per detection setting on every frame (carrying boxes over frames has no "
          "effect on single images); 640x480 frames hold 1-5 annotated faces.")


if __name__ == "__main__":
    sys.exit(main())
