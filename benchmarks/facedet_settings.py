"""How the facedet settings in conf/detect/facedet.yaml were chosen (detect=facedet).

    python benchmarks/facedet_settings.py [--model models:/maskflow@champion] [--split val]
        [--face-model cache/facedet/<backbone>-<key>/facedet.keras] [--rows all|stored] [--zoom-side 640 --stills-flip]

The registered model's trained detector alone (its own labels) on mask-scenes-853's
``--split`` (val by default: choose settings there, then report test once), split as the
pipeline splits it, over a grid of input size (``long_side``), kept face score
(``min_confidence``), mirrored-frame averaging (``flip``), label source (``labels``:
the detector's class maps, the crop classifier, or the mean of both) and decoding
(``peaks``: a box per peak of each class map, or one per face) and the extra effort on
still images (``stills``: a zoomed second pass for small faces, mirrored averaging;
``--zoom-side``/``--zoom-face``/``--stills-flip`` replace the stored ones, as ``--long-side``
does the stored input size). Prints detection
recall/precision, accuracy over matched faces, per-class AP, scenes_map50 over the three
scene classes, the same mean over with/without mask only, and ms per scene.
``--face-model`` scores another trained detector (a facedet stage output, e.g. of
``facedet.backbone=mobilenetv2``) in place of the registered one; ``--rows stored`` only
the model's stored settings. ``--headroom`` adds where the gap lies at the stored settings
(one box per face): face AP regardless of class at IoU 0.5 and 0.3, and scenes_map50 had
every matched face been given its true class (:func:`maskflow.evaluate_scenes.headroom`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--split", default="val", choices=("val", "test", "train"))
    parser.add_argument("--face-model", default=None, help="a facedet.keras to score instead of the registered detector")
    parser.add_argument("--rows", default="all", choices=("all", "stored"))
    parser.add_argument("--peaks", default=None, choices=("class", "face"), help="in place of the stored decoding")
    parser.add_argument("--headroom", action="store_true", help="also: face AP and scenes_map50 with true labels")
    parser.add_argument("--exclude", nargs="*", default=[], help="image names left out (e.g. the test split's 115-face crowd)")
    parser.add_argument("--long-side", type=int, default=None, help="in place of the stored long side")
    parser.add_argument("--zoom-side", type=int, default=None, help="stills: zoomed pass's long side, in place of the stored (0: off)")
    parser.add_argument("--zoom-face", type=float, default=None, help="stills: faces under this many px come from the zoomed pass")
    parser.add_argument("--stills-flip", action=argparse.BooleanOptionalAction, default=None, help="stills: mirrored image averaged in")
    args = parser.parse_args()

    from dataclasses import replace

    from detect_speed import held_out_items

    from maskflow.detection.detector import MaskModel, build_detector
    from maskflow.imageio import Frame, read_image
    from maskflow.scoring import headroom, run_scenes

    classifier = MaskModel.from_uri(args.model)
    if args.face_model:
        classifier.face_model = args.face_model
    if classifier.face_model is None:
        raise SystemExit(f"{args.model} carries no trained face detector (registered with detect=mtcnn)")
    excluded = set(args.exclude)
    items = [(path, truths) for path, truths in held_out_items(args.split) if path.name not in excluded]
    stored = classifier.settings.with_options(backend="facedet", labels="detector", peaks=args.peaks, long_side=args.long_side)
    stills = stored.stills
    if args.zoom_side is not None:
        stills = replace(stills, zoom_side=args.zoom_side or None)
    if args.zoom_face is not None:
        stills = replace(stills, zoom_face=args.zoom_face)
    if args.stills_flip is not None:
        stills = replace(stills, flip=args.stills_flip)
    stored = replace(stored, stills=stills)
    print(f"model {args.model}{'; detector ' + args.face_model if args.face_model else ''}; {len(items)} {args.split} scenes"
          f"{' (left out: ' + ', '.join(args.exclude) + ')' if args.exclude else ''}; stored: {stored}\n")
    # (long_side, min_confidence, flip, labels, peaks, stills zoom_side, stills flip)
    grid = [(512, 0.05, False, "detector", "class", None, False), (512, 0.1, False, "detector", "class", None, False),
            (512, 0.2, False, "detector", "class", None, False), (512, 0.3, False, "detector", "class", None, False),
            (512, 0.1, False, "detector", "face", None, False), (512, 0.1, False, "classifier", "face", None, False),
            (512, 0.1, False, "fuse", "face", None, False), (512, 0.1, True, "detector", "class", None, False),
            (640, 0.1, False, "detector", "class", None, False), (416, 0.1, False, "detector", "class", None, False),
            (384, 0.1, False, "detector", "class", None, False), (320, 0.1, False, "detector", "class", None, False),
            (416, 0.1, True, "detector", "class", None, False), (416, 0.1, False, "detector", "class", 640, False),
            (416, 0.1, False, "detector", "class", 640, True), (416, 0.1, False, "detector", "class", 832, True)]
    if args.rows == "stored":
        grid = [(stored.long_side, stored.min_confidence, stored.flip, stored.labels, stored.peaks,
                 stored.stills.zoom_side, stored.stills.flip)]
    print("| long_side | min_confidence | flip | labels | peaks | stills: zoom_side, flip | recall | precision | accuracy (matched) "
          "| AP incorrect | AP with | AP without | scenes_map50 | mean AP with/without | ms/scene |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for side, conf, flip, labels, peaks, zoom, still_flip in grid:
        chosen = replace(stored, long_side=side, min_confidence=conf, flip=flip, labels=labels, peaks=peaks,
                         stills=replace(stored.stills, zoom_side=zoom, flip=still_flip))
        detector = build_detector(chosen, classifier)
        started = time.perf_counter()
        m = run_scenes(detector, items)["metrics"]
        ms = (time.perf_counter() - started) / len(items) * 1000
        ap = [m.get(f"scenes_ap50_{c}", float("nan")) for c in ("mask_weared_incorrect", "with_mask", "without_mask")]
        print(f"| {side} | {conf} | {'yes' if flip else 'no'} | {labels} | {peaks} | {zoom or 'no'}, {'yes' if still_flip else 'no'} "
              f"| {m['scenes_det_recall']:.3f} | {m['scenes_det_precision']:.3f} | "
              f"{m['scenes_cls_accuracy']:.3f} | {ap[0]:.3f} | {ap[1]:.3f} | {ap[2]:.3f} | {m['scenes_map50']:.3f} | "
              f"{(ap[1] + ap[2]) / 2:.3f} | {ms:.0f} |", flush=True)
    if args.headroom:
        detector = build_detector(replace(stored, peaks="face"), classifier)
        results = [(detector(Frame(str(path), 0, read_image(path).rgb, False)), truths) for path, truths in items]
        gaps = headroom(results, detector.classes)
        print(f"\nheadroom at long_side {stored.long_side}, min_confidence {stored.min_confidence}, one box per face: "
              f"face AP50 {gaps['face_ap50']:.3f}, face AP30 {gaps['face_ap30']:.3f}, "
              f"scenes_map50 with true labels {gaps['map50_true_labels']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
