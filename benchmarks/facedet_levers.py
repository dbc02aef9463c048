"""Levers on `scenes_map50` beyond the stored detect settings, measured at inference only.

    python benchmarks/facedet_levers.py ensemble --split val|test FACEDET.keras [FACEDET.keras ...]
    python benchmarks/facedet_levers.py fuse --split val|test --crop-model MODEL.keras [--weights 1.0 0.7 ...]
    python benchmarks/facedet_levers.py multiscale --split val|test --sides 320 320,416 320,384,448

All three score mask-scenes-853's ``--split`` (split as the pipeline splits it) with the
registered model's stored settings (``--model``; stills: zoomed pass, mirrored frame), on
the registered detector unless ``--face-model`` names another:

- ``ensemble``: the mean of the output maps of several trained detectors (class maps
  averaged as probabilities, box sizes and offsets averaged), then decoded as one.
- ``fuse``: one box per face; its class distribution is the weighted geometric mean of
  the detector's and a 3-class crop classifier's (``--crop-model``, e.g. the finetune
  output of ``experiment=scenes3``), ``--weights`` being the detector's weight; a
  record per class, so the runner-up classes are ranked too (as per-class peaks are).
  Weight 1.0 is the detector alone under this decoding.
- ``multiscale``: the base pass replaced by the mean of the maps at several long sides
  (resampled to the largest one's grid, box sizes rescaled); the zoomed pass is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
import numpy as np


class MeanOfDetectors:
    """Callable like a Keras model: the mean output map of several facedet models."""

    def __init__(self, models, num_classes: int) -> None:
        self.models, self.n = list(models), num_classes

    def __call__(self, x, training: bool = False):
        import tensorflow as tf

        outs = [m(x, training=False) for m in self.models]
        prob = tf.clip_by_value(tf.add_n([tf.sigmoid(o[..., :self.n]) for o in outs]) / len(outs), 1e-6, 1 - 1e-6)
        rest = tf.add_n([o[..., self.n:] for o in outs]) / len(outs)
        return tf.concat([tf.math.log(prob / (1 - prob)), rest], -1)


def _row(name: str, m: dict, seconds: float, n: int) -> str:
    ap = [m.get(f"scenes_ap50_{c}", float("nan")) for c in ("mask_weared_incorrect", "with_mask", "without_mask")]
    return (f"| {name} | {m['scenes_det_recall']:.3f} | {m['scenes_cls_accuracy']:.3f} | {ap[0]:.3f} | {ap[1]:.3f} | {ap[2]:.3f} "
            f"| **{m['scenes_map50']:.3f}** | {seconds / n * 1000:.0f} |")


def _multiscale(detector, rgb: np.ndarray, sides: list[int], flip: bool):
    """Detections from the mean of the maps at ``sides`` (resampled to the largest grid)."""
    from maskflow.facedet import decode

    n = len(detector.classes)
    outs = [detector.maps(rgb, side, flip) for side in sides]
    out, scale = max(outs, key=lambda o: o[1])
    gh, gw = out.shape[:2]

    def fit(a: np.ndarray, s: float) -> np.ndarray:  # a grid at scale s onto the largest grid
        a = cv2.resize(np.ascontiguousarray(a), (int(round(a.shape[1] * scale / s)), int(round(a.shape[0] * scale / s))))[:gh, :gw]
        return np.pad(a, ((0, gh - a.shape[0]), (0, gw - a.shape[1]), (0, 0)), mode="edge")

    probs = [fit(1 / (1 + np.exp(-o[..., :n])), s) for o, s in outs]
    sizes = [fit(o[..., n:n + 2], s) + np.log(scale / s) for o, s in outs]
    merged = out.copy()
    p = np.clip(np.mean(probs, 0), 1e-6, 1 - 1e-6)
    merged[..., :n] = np.log(p / (1 - p))
    merged[..., n:n + 2] = np.mean(sizes, 0)
    return decode(merged, scale, n, min_score=detector.min_score, image_shape=rgb.shape[:2], nms_iou=detector.nms_iou,
                  per_class=detector.per_class)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lever", choices=("ensemble", "fuse", "multiscale"))
    parser.add_argument("face_models", nargs="*", help="ensemble: the facedet.keras files averaged")
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--face-model", default=None, help="fuse/multiscale: a facedet.keras in place of the registered one")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--crop-model", default=None, help="fuse: a 3-class crop classifier (.keras, scene class names)")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.8, 0.7, 0.6, 0.5])
    parser.add_argument("--sides", nargs="+", default=["320", "320,416", "320,384,448"])
    args = parser.parse_intermixed_args()  # options may come between the lever and the files

    import keras
    from detect_speed import held_out_items

    import maskflow.facedet as facedet
    from maskflow.detect import Classifier, Detector, Frame, crop_face, detector_kwargs
    from maskflow.evaluate_scenes import run_scenes, score_scenes
    from maskflow.imageio import read_image

    items = held_out_items(args.split)
    classifier = Classifier.from_uri(args.model)
    if args.face_model:
        classifier.face_model = args.face_model
    if classifier.face_model is None:
        raise SystemExit(f"{args.model} carries no trained face detector")
    stored = detector_kwargs({**classifier.settings, "backend": "facedet", "labels": "detector"})
    classes = classifier.face_classes
    print(f"{args.lever} on {len(items)} {args.split} scenes; model {args.model}; stored: long_side {stored['long_side']}, "
          f"peaks {stored['peaks']}, stills: zoom_side {stored['zoom_side']}, flip {stored['still_flip']}\n")
    print("| setting | recall | accuracy (matched) | AP incorrect | AP with | AP without | scenes_map50 | ms/scene |")
    print("|---|---|---|---|---|---|---|---|")

    if args.lever == "ensemble":
        loaded = [keras.models.load_model(path, compile=False) for path in args.face_models]
        for k in range(1, len(loaded) + 1):  # the first alone, the first two, ...
            classifier.face_model = loaded[0] if k == 1 else MeanOfDetectors(loaded[:k], len(classes))
            started = time.perf_counter()
            m = run_scenes(Detector(classifier, **stored), items)["metrics"]
            names = " + ".join(Path(p).parent.name if Path(p).name == "facedet.keras" else Path(p).name for p in args.face_models[:k])
            print(_row(names, m, time.perf_counter() - started, len(items)), flush=True)
    elif args.lever == "multiscale":
        detector = Detector(classifier, **stored)
        trained, single = detector.detector, facedet.TrainedFaceDetector._detections
        for spec in args.sides:
            sides = [int(s) for s in spec.split(",")]

            def detections(rgb, long_side, flip, sides=sides):  # the base pass only; the zoomed one as stored
                return _multiscale(trained, rgb, sides, flip) if long_side == sides[0] and len(sides) > 1 else single(trained, rgb, long_side, flip)

            trained._detections = detections
            started = time.perf_counter()
            m = run_scenes(detector, items)["metrics"]
            print(_row(f"base pass at {spec}", m, time.perf_counter() - started, len(items)), flush=True)
    else:
        if not args.crop_model:
            raise SystemExit("fuse needs --crop-model")
        crops_model = Classifier(keras.models.load_model(args.crop_model, compile=False), classes, classifier.input_size)
        detector = Detector(classifier, **{**stored, "peaks": "face"})
        started, found = time.perf_counter(), []
        for path, truths in items:
            rgb = read_image(path).rgb
            faces = detector.find(Frame(str(path), 0, rgb, False))
            found.append((faces, crops_model([crop_face(rgb, f.box, detector.margin, crops_model.input_size) for f in faces]), truths))
        seconds = time.perf_counter() - started
        for w in args.weights:
            results = []
            for faces, crop_probs, truths in found:
                records = []
                for face, q in zip(faces, crop_probs):
                    p = np.exp(w * np.log(np.asarray(face.probs) + 1e-6) + (1 - w) * np.log(q + 1e-6))
                    p /= p.sum()
                    records += [{"box": list(face.box), "label": c, "score": float(p[i]), "detector_score": face.score}
                                for i, c in enumerate(classes)]
                results.append((records, truths))
            print(_row(f"detector weight {w}", score_scenes(results, classes)["metrics"], seconds, len(items)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
