"""``python -m maskflow.detect SOURCE [SOURCE ...]``: detect faces, classify masks.

SOURCE is an image, a folder of images (recursive), a video file, a camera index or a
stream URL. The model's face finder (YuNet by default) finds faces; their crops (cut
exactly as in training) are classified in one batch. Boxes are in the original pixels.
On video, detection can run every k-th frame with the labelled boxes carried over in
between (``--detect-every``). Bad inputs are reported and skipped; a video that breaks
mid-way keeps what was processed.

What is reported: one record per face, at the model's operating point (a threshold on
score x detector_score chosen on the val scenes and stored with the model); ``--min-score``
sets another, ``--all`` gives every candidate (the ranked list mAP tools want). Each
record holds ``box``, ``label`` (the most likely class), ``score``, ``detector_score`` and
``probs`` (every class's probability).

stdout: one line per input with its faces per class (a video: per frame, mean and most).
stderr: one summary line at the end: frames, faces, wall seconds, frames/s.

Exit codes: 0 every input was read; 1 at least one input could not be read (missing,
unreadable, not an image, too small, a camera or stream that would not open: each named
on stderr with its reason, the others still processed and written); 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
STARTED = time.perf_counter()  # the summary's wall clock covers the whole command

import cv2
import numpy as np
from tqdm import tqdm

from maskflow.cache import digest
from maskflow.detection.boxes import iou
from maskflow.detection.detector import MaskModel, build_detector, class_counts, pipelined
from maskflow.detection.options import add_detector_args, detector_settings
from maskflow.errors import cli
from maskflow.imageio import Frame
from maskflow.sources import iter_sources

# MLflow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

COLOURS = {"with_mask": (40, 200, 40), "without_mask": (40, 40, 230), "mask_weared_incorrect": (0, 165, 255)}


def annotate(rgb: np.ndarray, faces: list[dict], min_score: float = 0.0) -> np.ndarray:
    """Boxes coloured by class with label and score, for faces whose detector score is at
    least ``min_score`` (the JSON lines keep every face, for ranking metrics)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(max(rgb.shape[:2]) / 400))
    drawn: list[list[int]] = []
    for face in sorted(faces, key=lambda f: -f["detector_score"] * f["score"]):
        # One box per face: a second, less likely label of the same face is not drawn.
        if face["detector_score"] < min_score or any(iou(face["box"], box) > 0.5 for box in drawn):
            continue
        drawn.append(face["box"])
        x, y, w, h = face["box"]
        colour = COLOURS.get(face["label"], (255, 255, 255))
        cv2.rectangle(bgr, (x, y), (x + w, y + h), colour, thickness)
        cv2.putText(bgr, f"{face['label']} {face['score']:.2f}", (x, max(10, y - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, colour, thickness)
    return bgr


class Tally:
    """The counts a person asks for, one line per input on stdout: an image's faces per
    class; a video's (or camera's) faces per frame, mean and most, once it ends. Frames are
    counted, not people: telling one person across frames needs tracking."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self._video: str | None = None
        self._frames = 0
        self._sums: dict[str, int] = {}
        self._most: dict[str, int] = {}

    def add(self, frame: Frame, counts: Mapping[str, int]) -> list[str]:
        """Lines to print after this frame: the image's, or the video's that just ended."""
        lines = self.close() if self._video is not None and (not frame.is_video or frame.source != self._video) else []
        if not frame.is_video:
            per_class = ", ".join(f"{c} {counts.get(c, 0)}" for c in self.classes)
            return lines + [f"{frame.source}: {sum(counts.values())} faces: {per_class}"]
        if self._video is None:
            self._video, self._frames, self._sums, self._most = frame.source, 0, {c: 0 for c in self.classes}, {c: 0 for c in self.classes}
        self._frames += 1
        for c in self.classes:
            self._sums[c] += counts.get(c, 0)
            self._most[c] = max(self._most[c], counts.get(c, 0))
        return lines

    def close(self) -> list[str]:
        """The line of the video in progress, if any."""
        if self._video is None:
            return []
        n = max(1, self._frames)
        per_class = ", ".join(f"{c} mean {self._sums[c] / n:.2f} max {self._most[c]}" for c in self.classes)
        line = (f"{self._video}: video, {self._frames} frames; faces per frame (each frame counted, "
                f"not people): {per_class}")
        self._video = None
        return [line]



@cli("maskflow.detect")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskflow.detect", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="image, folder, video file, camera index or stream URL")
    parser.add_argument("--model", default="models:/maskflow@champion", help="MLflow model URI or local MLflow model folder")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else the project's sqlite store")
    parser.add_argument("--jsonl", type=Path, default=None, help="write one JSON object per image or video frame")
    parser.add_argument("--faces-only", action="store_true", help="inputs are face crops: classify the whole image")
    parser.add_argument("--out", type=Path, default=None, help="write annotated images / videos here")
    parser.add_argument("--show", action="store_true", help="show a live window (needs a display)")
    parser.add_argument("--detect-every", type=int, default=1, help="on video, run the detector every k-th frame")
    parser.add_argument("--draw-confidence", type=float, default=0.0,
                        help="--out/--show draw only the reported faces with at least this detector score (default: all)")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                        help="detect and classify one frame after the other (default: overlapped on two threads)")
    add_detector_args(parser)
    args = parser.parse_args(argv)

    model = MaskModel.from_uri(args.model, args.tracking_uri)
    detector = build_detector(detector_settings(args, model.settings), model, args.faces_only, args.detect_every,
                              args.finder_dir)
    show = args.show and (os.environ.get("DISPLAY") or sys.platform in ("win32", "darwin"))
    if args.show and not show:
        print("maskflow.detect: --show ignored: no display", file=sys.stderr)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    jsonl = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None
    writers: dict[str, cv2.VideoWriter] = {}
    taken: set[Path] = set()  # outputs written by this run
    roots = [s for s in args.sources if Path(s).is_dir()]
    errors: list[str] = []
    frames = faces_total = 0
    tally = Tally(detector.classes)
    started = time.perf_counter()
    try:
        frames_in = iter_sources(args.sources, errors)
        labelled = pipelined(detector, frames_in) if args.pipeline else ((f, detector(f)) for f in frames_in)
        # Progress on a terminal only: the JSON lines and the summary stay clean in pipes.
        for frame, faces in tqdm(labelled, desc="detect", unit="frame", disable=None, leave=False):
            frames += 1
            faces_total += len(faces)
            counts = class_counts(faces, detector.classes)
            for line in tally.add(frame, counts):
                print(line, flush=True)
            if jsonl:
                jsonl.write(json.dumps({"source": frame.source, "frame": frame.index, "faces": faces, "counts": counts}) + "\n")
            if args.out or show:
                drawn = annotate(frame.rgb, faces, args.draw_confidence)
                if args.out:
                    _write(args.out, frame, drawn, writers, roots, taken)
                if show:
                    cv2.imshow("maskflow", drawn)
                    if cv2.waitKey(1) & 0xFF == ord("q"):
                        break
    except KeyboardInterrupt:
        print("maskflow.detect: interrupted", file=sys.stderr)
    finally:
        for writer in writers.values():
            writer.release()
        if jsonl:
            jsonl.close()
    for line in tally.close():
        print(line, flush=True)
    now = time.perf_counter()
    wall, processing = now - STARTED, now - started
    # fps over the whole command (imports and model load included) agrees with an outside
    # clock; stream_fps is the steady rate once the model is loaded.
    print(f"maskflow.detect: frames={frames} faces={faces_total} errors={len(errors)} wall_s={wall:.2f} "
          f"fps={frames / wall if wall > 0 else 0.0:.2f} load_s={started - STARTED:.2f} "
          f"stream_fps={frames / processing if processing > 0 else 0.0:.2f}", file=sys.stderr)
    return 1 if errors else 0



def output_path(out: Path, source: str, roots: Sequence[str], suffix: str, taken: set[Path]) -> Path:
    """Where the annotated copy of ``source`` goes: its path under the folder it was found
    in (the input tree mirrored), its full name kept (``a.png`` -> ``a.png.jpg``, so
    ``a.jpg`` and ``a.png`` stay apart); a file already there that this run did not write
    is never replaced: ``-1``, ``-2``, ... are added instead."""
    if "://" in source or source.isdigit():
        rel = Path(f"camera{source}" if source.isdigit() else f"stream-{digest(source, 8)}")
    else:
        path = Path(source)
        rel = Path(path.name)
        for root in roots:
            try:
                rel = path.resolve().relative_to(Path(root).resolve().parent)
                break
            except ValueError:
                continue
    name = rel.name if rel.name.lower().endswith(suffix) else rel.name + suffix
    target = out / rel.parent / name
    n = 0
    while target in taken or target.exists():
        n += 1
        target = out / rel.parent / f"{Path(name).stem}-{n}{suffix}"
    taken.add(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _write(out: Path, frame: Frame, bgr: np.ndarray, writers: dict[str, cv2.VideoWriter], roots: Sequence[str],
           taken: set[Path]) -> None:
    if not frame.is_video:
        cv2.imwrite(str(output_path(out, frame.source, roots, ".jpg", taken)), bgr)
        return
    if frame.source not in writers:
        h, w = bgr.shape[:2]
        target = output_path(out, frame.source, roots, ".mp4", taken)
        writers[frame.source] = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    writers[frame.source].write(bgr)


if __name__ == "__main__":
    sys.exit(main())
