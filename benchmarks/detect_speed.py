"""Detect-then-classify speed on this CPU, and the recall each speed trick costs.

    python benchmarks/detect_speed.py [--model models:/maskflow@champion] [--frames 150] [--face-model PATH]

Everything is measured on mask-scenes-853's held-out (test) split, as prepared by the
pipeline. Test videos are built from those scene images (scenes with 1-5 faces, each
held for 11 frames (a prime, so no detect-every-k setting lines up with
the cuts) with a slow pan, so boxes move as in video) at 640x480 and 1280x720;
their annotated boxes are carried through the same pan, so every video frame is scored
too. For each setting: frames/s and p50/p95 per-frame time (decoded frames; the
CLI rows at the end include decoding), detection recall and scenes_map50 over all 640x480 video
frames (this is where detecting every k-th frame costs recall), and the same on the
held-out still images. Last, the CLI end to end on a 640x480 video file: its summary
line against the wall clock of the whole command.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def held_out_items(split: str = "test") -> list[tuple[Path, list]]:
    """The VOC items of mask-scenes-853's ``split``, split as the pipeline splits it."""
    from maskflow.annotations import read_scenes
    from maskflow.scoring import split_names

    root = Path(os.environ.get("MASKFLOW_DATA_DIR", ROOT.parent / "shared" / "data")) / "mask-scenes-853"
    return read_scenes(root).items(split_names(root, split))


def scene_video(items, size: tuple[int, int], frames: int, hold: int = 11) -> tuple[list[np.ndarray], list[list]]:
    """Frames panning across scenes, and each frame's annotated boxes moved with the pan."""
    from maskflow.imageio import read_image

    w, h = size
    out, truths = [], []
    for path, boxes in (it for it in items if 1 <= len(it[1]) <= 5):
        rgb = read_image(path).rgb
        scale = max(w / rgb.shape[1], h / rgb.shape[0]) * 1.1
        big = cv2.resize(rgb, (int(rgb.shape[1] * scale) + 1, int(rgb.shape[0] * scale) + 1))
        for k in range(hold):
            x, y = min(big.shape[1] - w, k * 3), min(big.shape[0] - h, k * 2)
            out.append(np.ascontiguousarray(big[y : y + h, x : x + w]))
            moved = []
            for label, (bx, by, bw, bh) in boxes:
                x0, y0 = max(0.0, bx * scale - x), max(0.0, by * scale - y)
                x1, y1 = min(float(w), (bx + bw) * scale - x), min(float(h), (by + bh) * scale - y)
                if (x1 - x0) * (y1 - y0) > 0.5 * bw * bh * scale * scale:  # mostly inside the frame
                    moved.append((label, (x0, y0, x1 - x0, y1 - y0)))
            truths.append(moved)
            if len(out) == frames:
                return out, truths
    return out, truths


def run_frames(detector, frames: list[np.ndarray], is_video: bool, pipeline: bool = False) -> tuple[dict[str, float], list[list[dict]]]:
    """Per-frame times are the intervals between successive outputs (with ``pipeline``,
    detection of the next frame overlaps them, as in the CLI)."""
    from maskflow.detection.detector import pipelined
    from maskflow.imageio import Frame

    detector(Frame("warmup", 0, frames[0], False))
    stream = (Frame("bench", i, rgb, is_video) for i, rgb in enumerate(frames))
    labelled = pipelined(detector, stream) if pipeline else ((f, detector(f)) for f in stream)
    per_frame, predictions = [], []
    started = t = time.perf_counter()
    for _, faces in labelled:
        predictions.append(faces)
        now = time.perf_counter()
        per_frame.append(now - t)
        t = now
    wall = time.perf_counter() - started
    return {"fps": len(frames) / wall, "p50_ms": float(np.median(per_frame) * 1000),
            "p95_ms": float(np.percentile(per_frame, 95) * 1000)}, predictions


def cli_on_video(frames: list[np.ndarray], model: str, extra: list[str]) -> tuple[str, float]:
    """``python -m maskflow.detect VIDEO`` in a subprocess: its summary line, and the wall
    clock from the first decoded frame's process start to exit (model load included)."""
    path = Path(tempfile.mkdtemp(prefix="bench-")) / "scenes_640x480.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "maskflow.detect", str(path), "--model", model, *extra],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    summary = next((line for line in proc.stderr.splitlines() if "frames=" in line), proc.stderr[-300:])
    return summary.replace("maskflow.detect: ", ""), wall


def detector_for_stills(classifier, settings, compiled: bool):
    from maskflow.detection.detector import Detector, build_detector
    from maskflow.detection.mtcnn import FaceDetector

    if not compiled and settings.backend == "mtcnn":  # MTCNN layer by layer (eager), for comparison
        finder = FaceDetector(min_face_size=settings.min_face, max_side=settings.max_side,
                              thresholds=settings.thresholds, compiled=False)
        return Detector(classifier.classifier, finder, settings, box_calibration=settings.box_calibration)
    return build_detector(settings, classifier)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--face-model", default=None,
                        help="a facedet.keras (facedet stage output) in place of the registered detector; no CLI rows")
    args = parser.parse_args()

    from dataclasses import replace

    from maskflow.detection.detector import MaskModel
    from maskflow.detection.settings import DetectorSettings
    from maskflow.imageio import read_image
    from maskflow.scoring import run_scenes, score_scenes

    t = time.perf_counter()
    classifier = MaskModel.from_uri(args.model)
    if args.face_model:
        classifier.face_model = args.face_model
    load_s = time.perf_counter() - t
    held_out = held_out_items()
    print(f"model load: {load_s:.2f} s ({args.model}); machine: {os.cpu_count()} cores; "
          f"{len(held_out)} held-out scenes\n")

    video, video_truths = scene_video(held_out, (640, 480), args.frames)
    video_720, _ = scene_video(held_out, (1280, 720), args.frames)
    mixed = [read_image(p).rgb for p, _ in held_out[:40]]
    # conf/detect, as registered with the model; every candidate kept, since mAP is scored here
    stored = replace(classifier.settings, operating_point=None)
    mtcnn = replace(stored, backend="mtcnn", labels="classifier", min_confidence=DetectorSettings().min_confidence)
    mtcnn_fast = replace(mtcnn, max_side=480, min_face=20)
    def side(n: int) -> DetectorSettings:  # frames at n px long side, for facedet and for the finder's block
        finders = {k: ({**v, "long_side": n} if k == stored.backend else dict(v)) for k, v in stored.finders.items()}
        return replace(stored, long_side=n, finders=finders)

    settings = [  # (name, settings, detect_every, compiled MTCNN, pipelined)
        (f"{stored.backend}, stored defaults (conf/detect)", stored, 1, True, False),
        (f"{stored.backend}, stored defaults, pipelined (CLI default)", stored, 1, True, True),
        *[(f"{stored.backend}, long side {n}, pipelined", side(n), 1, True, True)
          for n in (512, 416, 384, 320) if n != stored.long_side],  # the stored one is above
        (f"{stored.backend}, long side 512, pipelined, every 2nd frame", side(512), 2, True, True),
        (f"{stored.backend}, long side 384, pipelined, every 2nd frame", side(384), 2, True, True),
        ("mtcnn + classifier (conf/detect/mtcnn), compiled, pipelined", mtcnn, 1, True, True),
        ("mtcnn + classifier, max_side 480, min_face 20, pipelined, every 2nd frame", mtcnn_fast, 2, True, True),
    ]
    print("| setting | 640x480 fps | p50/p95 ms | 1280x720 fps | p50/p95 ms | mixed images fps | "
          "video recall | video map50 | stills recall | stills map50 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    stills_by_setting: dict = {}
    for name, chosen, every, compiled, pipeline in settings:
        detector = detector_for_stills(classifier, chosen, compiled)
        detector.detect_every = every
        v1, predictions = run_frames(detector, video, True, pipeline)
        v2, _ = run_frames(detector, video_720, True, pipeline)
        im, _ = run_frames(detector, mixed, False, pipeline)
        on_video = score_scenes(list(zip(predictions, video_truths)), detector.classes, runner_up=detector.runner_up)["metrics"]
        key = (repr(chosen), compiled)  # detecting every k-th frame changes nothing on stills
        if key not in stills_by_setting:
            stills_by_setting[key] = run_scenes(detector_for_stills(classifier, chosen, compiled), held_out)["metrics"]
        stills = stills_by_setting[key]
        print(f"| {name} | {v1['fps']:.1f} | {v1['p50_ms']:.0f}/{v1['p95_ms']:.0f} | {v2['fps']:.1f} | "
              f"{v2['p50_ms']:.0f}/{v2['p95_ms']:.0f} | {im['fps']:.1f} | {on_video['scenes_det_recall']:.3f} | "
              f"{on_video['scenes_map50']:.3f} | {stills['scenes_det_recall']:.3f} | {stills['scenes_map50']:.3f} |", flush=True)

    if args.face_model:  # the CLI runs registered models only
        return
    print("\nThe CLI end to end on the same 640x480 video (MJPG file; decode on a reader thread):\n")
    for extra in ([], ["--long-side", "384", "--detect-every", "2"]):
        summary, wall = cli_on_video(video, args.model, extra)
        frames = int(re.search(r"frames=(\d+)", summary).group(1)) if "frames=" in summary else 0
        print(f"- `python -m maskflow.detect video.avi {' '.join(extra)}`: `{summary}`; whole command "
              f"{wall:.1f} s wall (process start and model load included), {frames / wall:.1f} frames/s over it")


if __name__ == "__main__":
    sys.exit(main())
