"""How the MTCNN settings in conf/detect/mtcnn.yaml were chosen (detect=mtcnn).

    python benchmarks/detector_settings.py [--model models:/maskflow@champion]

Detect-then-classify on every held-out (test) scene of mask-scenes-853 with a grid of
settings: MTCNN thresholds, minimum face size, and the box calibration (fitted on the
train split only). Prints detection recall/precision, accuracy over matched faces,
per-class AP and scenes_map50, and the time per scene. The lowest thresholds show how
many annotated faces MTCNN can propose at all.
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
    args = parser.parse_args()

    from dataclasses import replace

    from detect_speed import held_out_items

    from maskflow.detection.calibration import fit_box_calibration
    from maskflow.detection.detector import MaskModel, build_detector
    from maskflow.scoring import run_scenes

    classifier = MaskModel.from_uri(args.model)
    test, train = held_out_items("test"), held_out_items("train")
    stored = replace(classifier.settings, backend="mtcnn", labels="classifier", runner_up=None)  # the MTCNN study
    base = {"max_side": 640, "min_face": 12.0, "thresholds": [0.6, 0.7, 0.8], "min_confidence": 0.8}
    fitted = fit_box_calibration(build_detector(replace(stored, **base, box_calibration=None), classifier).finder, train[:300])
    calibration = {k: v for k, v in fitted.items() if k != "pairs"}
    print(f"model {args.model}; {len(test)} test scenes; box calibration fitted on {fitted['pairs']} faces of "
          f"{min(300, len(train))} train scenes: {calibration}\n")
    low = {"thresholds": [0.5, 0.6, 0.5], "min_confidence": 0.5}
    grid = [
        ("mtcnn defaults (0.6/0.7/0.8), min_face 12, raw boxes", {**base, "box_calibration": None}),
        ("same, calibrated boxes", {**base, "box_calibration": calibration}),
        ("thresholds 0.5/0.6/0.5, calibrated", {**base, **low, "box_calibration": calibration}),
        ("thresholds 0.5/0.6/0.5, min_face 9, calibrated (conf/detect)", {**base, **low, "min_face": 9.0, "box_calibration": calibration}),
        ("thresholds 0.5/0.6/0.5, min_face 6, calibrated", {**base, **low, "min_face": 6.0, "box_calibration": calibration}),
        ("thresholds 0.5/0.4/0.2, min_face 9, calibrated", {**base, "thresholds": [0.5, 0.4, 0.2], "min_confidence": 0.2,
                                                          "min_face": 9.0, "box_calibration": calibration}),
        ("thresholds 0.4/0.3/0.05, min_face 9, calibrated", {**base, "thresholds": [0.4, 0.3, 0.05], "min_confidence": 0.05,
                                                           "min_face": 9.0, "box_calibration": calibration}),
    ]
    print("| setting | recall | precision | accuracy (matched) | AP with_mask | AP without_mask | scenes_map50 | ms/scene |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kwargs in grid:
        started = time.perf_counter()
        m = run_scenes(build_detector(replace(stored, **kwargs), classifier), test)["metrics"]
        ms = (time.perf_counter() - started) / len(test) * 1000
        print(f"| {name} | {m['scenes_det_recall']:.3f} | {m['scenes_det_precision']:.3f} | {m['scenes_cls_accuracy']:.3f} | "
              f"{m.get('scenes_ap50_with_mask', 0):.3f} | {m.get('scenes_ap50_without_mask', 0):.3f} | "
              f"{m['scenes_map50']:.3f} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
