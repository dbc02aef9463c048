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
import dataclasses
import json
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
STARTED = time.perf_counter()  # the summary's wall clock covers the whole command

import cv2
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from maskflow.backbones import TFLitePredictor
from maskflow.cache import digest
from maskflow.config import PROJECT_ROOT
from maskflow.detection.boxes import calibrate_box, iou
from maskflow.detection.centernet import CenterNetFinder
from maskflow.detection.finders import FINDERS, ONNX_FINDERS, build_finder, mtcnn_finder
from maskflow.detection.settings import DetectorSettings
from maskflow.faces import Face, crop_face, resize_square
from maskflow.imageio import DecodeError, Frame, read_image

# MLflow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

log = logging.getLogger("maskflow.detect")

MIN_IMAGE_SIDE = 16  # as prepare's data.min_image_side: smaller images get no labels ("tiny_image")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
COLOURS = {"with_mask": (40, 200, 40), "without_mask": (40, 40, 230), "mask_weared_incorrect": (0, 165, 255)}


class Classifier:
    """Face crops (already at ``input_size``) -> class probabilities, one batch per frame.
    Runs ``tflite`` (the same model compiled by finetune, carried by a registered model)
    when given, else the Keras model."""

    def __init__(self, keras_model, classes: Sequence[str], input_size: int, tflite: str | Path | None = None) -> None:
        self.classes = list(classes)
        self.input_size = int(input_size)
        self.runtime = "tflite" if tflite else "keras"
        self._lite = TFLitePredictor(tflite) if tflite else None
        self._call = None if tflite else tf.function(lambda x: keras_model(x, training=False), reduce_retracing=True)

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, len(self.classes)), np.float32)
        batch = np.stack(crops).astype(np.float32)
        return self._lite(batch)[0] if self._lite is not None else self._call(batch).numpy()


def iter_sources(sources: Sequence[str], errors: list[str]) -> Iterator[Frame]:
    for source in sources:
        if source.isdigit() or "://" in source:
            yield from _video(source, errors, camera=source.isdigit())
            continue
        path = Path(source)
        if path.is_dir():
            for p in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS):
                if p.is_file():
                    yield from _file(p, errors)
                elif p.is_dir():
                    _report(errors, str(p), "a directory named like an image or video")
                elif p.is_symlink():
                    _report(errors, str(p), "a dangling or looping symbolic link")
        elif path.is_file():
            yield from _file(path, errors)
        else:
            _report(errors, source, "not found")


def _file(path: Path, errors: list[str]) -> Iterator[Frame]:
    if path.suffix.lower() in VIDEO_EXTS:
        yield from _video(str(path), errors)
        return
    try:
        rgb = read_image(path).rgb
    except (DecodeError, OSError) as exc:
        _report(errors, str(path), getattr(exc, "reason", None) or f"unreadable: {exc}")
        return
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        _report(errors, str(path), f"tiny_image ({rgb.shape[1]}x{rgb.shape[0]} px, under {MIN_IMAGE_SIDE} px)")
        return
    yield Frame(str(path), 0, rgb, False)


def _video(source: str, errors: list[str], camera: bool = False) -> Iterator[Frame]:
    """Frames decoded on a reader thread (OpenCV releases the GIL), so decoding overlaps
    detection and classification on the other core."""
    cap = cv2.VideoCapture(int(source) if camera else source)
    if not cap.isOpened():
        _report(errors, source, "cannot open camera" if camera else "cannot open video or stream")
        return
    frames: queue.Queue = queue.Queue(maxsize=8)

    def read() -> None:
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.put((index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            index += 1
        frames.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    count = 0
    while (item := frames.get()) is not None:
        count += 1
        yield Frame(source, item[0], item[1], True)
    reader.join()
    cap.release()
    if count == 0:
        _report(errors, source, "no decodable frames")


def _report(errors: list[str], source: str, reason: str) -> None:
    errors.append(f"{source}: {reason}")
    print(f"maskflow.detect: skipped {source}: {reason}", file=sys.stderr)


def rank_score(record: Mapping) -> float:
    """What ranks a face and what the operating point thresholds: the finder's confidence
    that it is a face times the classifier's confidence in its label."""
    return float(record["detector_score"]) * float(record["score"])


def reported(records: Sequence[dict], min_score: float | None, same_face_iou: float = 0.5) -> list[dict]:
    """The records at an operating point: ranking score at least ``min_score``, not marked
    ``implausible`` by the finder's landmark check, and one per face (a box overlapping a
    higher-ranked one by more than ``same_face_iou``, as the trained detector's per-class
    peaks do, is the same face). None: all, the ranked list."""
    if min_score is None:
        return list(records)
    kept: list[dict] = []
    for r in sorted((r for r in records if rank_score(r) >= min_score and not r.get("implausible")), key=lambda r: -rank_score(r)):
        if all(iou(r["box"], k["box"]) <= same_face_iou for k in kept):
            kept.append(r)
    chosen = {id(r) for r in kept}
    return [r for r in records if id(r) in chosen]  # in the finder's order


def reporting_threshold(stored: float | None, min_score: float | None = None, every: bool = False) -> float | None:
    """The threshold a caller's answer is reported at: none with ``every`` (the full
    list), else ``min_score`` when given, else the model's stored operating point."""
    if every:
        return None
    return float(min_score) if min_score is not None else None if stored is None else float(stored)


def class_counts(records: Sequence[Mapping], classes: Sequence[str]) -> dict[str, int]:
    """Faces per class among the reported records (every class named, zeros included)."""
    counts = {c: 0 for c in classes}
    for r in records:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return counts


def one_per_face(records: list[dict]) -> list[dict]:
    """Each face's most likely record. Records are one per face; files written before
    2026-12-04 may hold a record per class of one face (same box and finder score), and
    counting faces counts such a face once."""
    best: dict[tuple, dict] = {}
    for r in records:
        face = (tuple(r["box"]), r["detector_score"])
        if face not in best or r["score"] > best[face]["score"]:
            best[face] = r
    return list(best.values())


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


@dataclass
class MaskModel:
    """What a registered maskflow model carries: the crop classifier, the detector settings
    it was evaluated with, the trained CenterNet (``experiment=centernet``) and the folders
    holding the pretrained finders' files (its own copies first)."""

    classifier: Classifier
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    face_model: Any = None
    face_classes: list[str] = field(default_factory=list)
    finder_dirs: list[str] = field(default_factory=list)

    @classmethod
    def from_uri(cls, uri: str, tracking_uri: str | None = None) -> "MaskModel":
        """From an MLflow model URI (``models:/maskflow@champion``) or local model folder."""
        import mlflow

        if tracking_uri or not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(tracking_uri or f"sqlite:///{PROJECT_ROOT}/mlflow.db")
        path = list(sys.path)
        model = mlflow.pyfunc.load_model(uri).unwrap_python_model().mask_model()
        # MLflow put the model's packaged code first on sys.path. This process already runs
        # maskflow, but processes it spawns later (prepare's workers, a batch's actors)
        # would import that older copy instead: take it off again.
        sys.path[:] = path
        return model


def build_detector(settings: DetectorSettings, model: MaskModel, faces_only: bool = False, detect_every: int = 1,
                   finder_dirs: Sequence[str] = ()) -> "Detector":
    """The one place that chooses a finder for ``settings.backend``: the trained CenterNet
    the model carries (``facedet``), MTCNN, or a pretrained finder or fusion
    (:func:`maskflow.detection.finders.build_finder`, files from ``finder_dirs``, else the
    model's own), paired with the model's classifier."""
    labels = settings.labels if settings.backend == "facedet" and not faces_only else "classifier"
    calibration = settings.calibration()  # the finder's boxes -> the annotations' convention
    if faces_only:
        finder = None
    elif settings.backend == "facedet":
        if model.face_model is None:
            raise ValueError("detect.backend=facedet, but this model carries no trained face detector "
                             "(register one with the pipeline's facedet stage, or use --backend yunet)")
        if settings.peaks not in ("class", "face"):
            raise ValueError(f"unknown peaks {settings.peaks!r} (class | face)")
        # Per-class peaks name their class, so they only make sense with the detector's labels.
        finder = CenterNetFinder.from_settings(model.face_model, model.face_classes, settings,
                                               per_class=settings.peaks == "class" and labels == "detector")
    elif settings.backend == "mtcnn":
        finder = mtcnn_finder({"min_face": settings.min_face, "max_side": settings.max_side, "thresholds": settings.thresholds})
    elif settings.backend in FINDERS:
        finder = build_finder(settings.backend, settings.finders, list(finder_dirs) or model.finder_dirs)
    else:
        raise ValueError(f"unknown detector backend {settings.backend!r} (facedet | {' | '.join(FINDERS)})")
    return Detector(model.classifier, finder, settings, labels=labels, box_calibration=calibration, faces_only=faces_only,
                    detect_every=detect_every, face_classes=model.face_classes)


class Detector:
    """Find-then-label for one frame at a time, with optional box carry-over on video.

    ``finder`` (a :class:`maskflow.detection.Finder`) finds faces; ``labels`` says who
    labels them: ``classifier`` classifies their crops in one batch, ``detector`` takes the
    trained CenterNet's class maps (no crops), ``fuse`` averages the two distributions (a
    class one model lacks has probability 0 there). Build one with :func:`build_detector`."""

    def __init__(self, classifier: Classifier, finder, settings: DetectorSettings, labels: str = "classifier",
                 box_calibration: Mapping | None = None, faces_only: bool = False, detect_every: int = 1,
                 face_classes: Sequence[str] = ()) -> None:
        self.classifier = classifier
        self.face_classes = list(face_classes)  # the trained detector's classes (labels detector | fuse)
        self.finder = finder
        self.settings = settings
        self.labels = labels
        self.faces_only = faces_only
        self.min_confidence = settings.min_confidence
        self.margin = settings.margin
        self.box_calibration = dict(box_calibration) if box_calibration else None
        self.detect_every = max(1, detect_every)
        # Scoring only: the probability from which a face also stands for another class (mAP).
        self.runner_up = float(settings.runner_up) if settings.runner_up else None
        # The operating point: faces ranked below it are not reported (None: the full ranked list).
        # A face crop (faces_only) is one face by definition: always reported.
        self.min_score = None if settings.operating_point is None or faces_only else float(settings.operating_point)
        self._last_found: tuple[str, int] | None = None  # (source, frame) of the last detection
        self._last_labels: list[dict] = []  # records of the last labelled detection

    @property
    def classes(self) -> list[str]:
        """The labels this detector can output."""
        if self.labels == "detector":
            return self.face_classes
        if self.labels == "fuse":
            return self.face_classes + [c for c in self.classifier.classes if c not in self.face_classes]
        return self.classifier.classes

    def __call__(self, frame: Frame) -> list[dict]:
        """The faces of one frame a reader gets (at the operating point); on video between
        detections, the last frame's."""
        return self.report(self.ranked(frame))

    def ranked(self, frame: Frame) -> list[dict]:
        """Every candidate face of one frame, the ranked list that mAP is computed from."""
        return self.label(frame, self.find(frame))

    def report(self, records: list[dict]) -> list[dict]:
        """The records at this detector's operating point (all of them when it has none)."""
        return reported(records, self.min_score)

    def find(self, frame: Frame) -> list[Face] | None:
        """The faces of a frame (the face detector), or None on a video frame between detections."""
        last = self._last_found
        if frame.is_video and last and last[0] == frame.source and frame.index - last[1] < self.detect_every:
            return None
        self._last_found = (frame.source, frame.index)
        h, w = frame.rgb.shape[:2]
        if self.faces_only:
            return [Face((0, 0, w, h), 1.0)]
        # A still image gets the finder's stills effort (upscaling, tiles, zoomed pass).
        found = self.finder.find(frame.rgb, still=not frame.is_video)
        return [f for f in found if f.score >= self.min_confidence]

    def label(self, frame: Frame, faces: list[Face] | None) -> list[dict]:
        """Classify the found faces in one batch, one record each, every candidate (None:
        repeat the last labelled frame's); :meth:`report` applies the operating point."""
        if faces is None:
            return [dict(face) for face in self._last_labels]
        h, w = frame.rgb.shape[:2]
        classes = self.classes
        if self.labels == "detector":  # the detector's own class maps: no crops to classify
            probs = np.array([f.probs for f in faces], np.float64).reshape(len(faces), len(classes))
        else:
            size = self.classifier.input_size
            if self.faces_only:
                crops = [resize_square(frame.rgb, size)]
            else:
                crops = [crop_face(frame.rgb, f.box, self.margin, size) for f in faces]
            probs = self.classifier(crops)  # every face of the frame in one batch
        if self.labels == "fuse":
            probs = np.array([_fuse(f.probs, self.face_classes, p, self.classifier.classes, classes)
                              for f, p in zip(faces, probs)]).reshape(len(faces), len(classes))
        out = []
        for face, p in zip(faces, probs):
            k = face.class_index() if self.labels == "detector" else int(np.argmax(p))
            box = face.box if self.faces_only else calibrate_box(face.box, self.box_calibration, w, h)
            record = {"box": [int(v) for v in box], "label": classes[k], "score": round(float(p[k]), 6),
                      "detector_score": round(float(face.score), 6),
                      "probs": {c: round(float(v), 6) for c, v in zip(classes, p)}}
            if not face.plausible:  # the finder's landmark check: in the ranked list only
                record["implausible"] = True
            out.append(record)
        self._last_labels = out
        return out


def _fuse(p_det: Sequence[float], det_classes: Sequence[str], p_cls: Sequence[float], cls_classes: Sequence[str],
          classes: Sequence[str]) -> np.ndarray:
    """The mean of two class distributions over ``classes`` (absent classes count as 0)."""
    a, b = dict(zip(det_classes, p_det)), dict(zip(cls_classes, p_cls))
    return np.array([(a.get(c, 0.0) + b.get(c, 0.0)) / 2 for c in classes], np.float32)


def pipelined(detector: Detector, frames: Iterator[Frame]) -> Iterator[tuple[Frame, list[dict]]]:
    """(frame, records) in order, with MTCNN on frame n+1 (a worker thread) overlapping
    the classification and output of frame n (this thread); TF releases the GIL, so the
    two run on both cores. Decoding already runs on its own reader thread."""
    with ThreadPoolExecutor(1, thread_name_prefix="detect") as pool:
        pending: deque = deque()
        for frame in frames:
            pending.append((frame, pool.submit(detector.find, frame)))
            if len(pending) > 1:
                done, found = pending.popleft()
                yield done, detector.report(detector.label(done, found.result()))
        while pending:
            done, found = pending.popleft()
            yield done, detector.report(detector.label(done, found.result()))


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


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    """Detector options; unset ones come from the model's stored settings (conf/detect)."""
    parser.add_argument("--backend", choices=("facedet",) + FINDERS, default=None,
                        help="face finder: yunet | ultraface | scrfd (non-commercial research use only) | fusion | "
                             "mtcnn | facedet (the trained CenterNet registered with the model); default: the model's")
    parser.add_argument("--finder-dir", action="append", default=[],
                        help="a folder with the finders' model files, searched before the model's own copies")
    parser.add_argument("--still-long-side", type=int, default=None,
                        help="yunet/ultraface/scrfd, still images: upscale to this long side for small faces (0: off)")
    parser.add_argument("--labels", choices=("detector", "classifier", "fuse"), default=None,
                        help="facedet: label faces by the detector's class maps, the crop classifier, or the mean of both")
    parser.add_argument("--long-side", type=int, default=None,
                        help="frames are resized to this long side (facedet, yunet, ultraface, scrfd); 480: yunet's real-time setting")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="facedet: also run the mirrored frame and average (more accurate, 2x the cost)")
    parser.add_argument("--zoom-side", type=int, default=None,
                        help="facedet, still images: a second pass at this long side for small faces (0: off)")
    parser.add_argument("--stills-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="facedet, still images: also run the mirrored image and average")
    parser.add_argument("--peaks", choices=("class", "face"), default=None,
                        help="facedet: a box per peak of each class map (a face may carry a second, lower-ranked "
                             "label) | one box per face, its most likely class")
    parser.add_argument("--max-side", type=int, default=None, help="mtcnn: frames are downscaled to this long side for detection")
    parser.add_argument("--min-face", type=float, default=None, help="mtcnn: smallest face (px, after downscaling) to look for")
    parser.add_argument("--min-confidence", type=float, default=None, help="face score (detector confidence) to keep a face")
    parser.add_argument("--runner-up", type=float, default=None,
                        help="scoring (mAP) only: a face also stands, ranked lower, for each other class whose "
                             "probability is at least this (0: never)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="report faces whose score x detector_score is at least this (default: the operating point "
                             "stored with the model, chosen on val)")
    parser.add_argument("--all", dest="all_faces", action="store_true",
                        help="report every candidate face, the full ranked list (for mAP tools)")


def detector_settings(args: argparse.Namespace, stored: DetectorSettings) -> DetectorSettings:
    """The model's stored detector settings, with the options given on the command line."""
    finders = {k: dict(v) for k, v in stored.finders.items()}
    if args.long_side is not None:  # the finder's frame size too (yunet/ultraface/scrfd)
        for name in ONNX_FINDERS:
            finders.setdefault(name, {})["long_side"] = args.long_side
    if args.still_long_side is not None:
        for name in ONNX_FINDERS:
            finders.setdefault(name, {})["still_long_side"] = args.still_long_side or None
    stills = stored.stills
    if args.zoom_side is not None:
        stills = dataclasses.replace(stills, zoom_side=args.zoom_side or None)  # 0: off
    if args.stills_flip is not None:
        stills = dataclasses.replace(stills, flip=args.stills_flip)
    chosen = stored.with_options(max_side=args.max_side, min_face=args.min_face, min_confidence=args.min_confidence,
                                 backend=args.backend, labels=args.labels, long_side=args.long_side, flip=args.flip,
                                 peaks=args.peaks, runner_up=args.runner_up)
    return dataclasses.replace(chosen, stills=stills, finders=finders,
                               operating_point=reporting_threshold(stored.operating_point, args.min_score, args.all_faces))


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
