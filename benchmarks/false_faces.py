"""What a reader gets from a model: the operating point on val, then precision, recall and
F1 of box and label on val and test, and false faces per 100 face-free images.

    python benchmarks/false_faces.py [--model URI] [--rule f1|precision] [--precision 0.9]
                                     [--per-kind 10] [--out DIR] [detector options of maskflow.detect]

For one detector setting (the model's, changed by any ``maskflow.detect`` option):
  1. the val scenes of mask-scenes-853 (split as the pipeline splits them), full ranked list:
     the operating point by ``--rule`` (as the evaluate stage chooses it; ``--min-score``
     fixes it instead), and scenes_map50;
  2. the test scenes at that point: precision, recall, F1 (box and label, IoU 0.5) with 95%
     bootstrap intervals, false faces per image, false without_mask per 100 images;
  3. the face-free set (:mod:`maskflow.facefree`): regions of the val and test scenes with
     no annotated face, and drawn textures: faces reported per 100 images, at the operating
     point and in the full list; with ``--out``, each false face's crop is saved for a look.
Prints Markdown tables and the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path

import cv2

from maskflow import facefree
from maskflow.annotations import read_scenes
from maskflow.detection.detector import MaskModel, build_detector, rank_score, reported
from maskflow.detection.options import add_detector_args, detector_settings
from maskflow.detection.settings import DetectorSettings
from maskflow.imageio import Frame
from maskflow.scoring import (
    at_operating_point,
    choose_operating_point,
    detect_scenes,
    face_outcomes,
    score_scenes,
    split_names,
)

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_timing import cpu  # noqa: E402

SCENES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mask-scenes-853"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--scenes", type=Path, default=SCENES)
    parser.add_argument("--rule", default="f1", choices=("f1", "precision"))
    parser.add_argument("--precision", type=float, default=0.9, help="the target of --rule precision")
    parser.add_argument("--per-kind", type=int, default=20, help="drawn textures of each kind")
    parser.add_argument("--regions", type=int, default=2, help="face-free regions per val or test scene (at most)")
    parser.add_argument("--out", type=Path, default=None, help="save the false faces' crops here")
    parser.add_argument("--detect", default=None,
                        help="detector settings from conf/detect/<NAME>.yaml as the project has them now, instead of the "
                             "model's stored ones (the model's classifier either way)")
    add_detector_args(parser)
    args = parser.parse_args()

    items = {split: read_scenes(args.scenes).items(split_names(args.scenes, split)) for split in ("val", "test")}
    model = MaskModel.from_uri(args.model, args.tracking_uri)
    stored = model.settings if args.detect is None else configured(args.detect)
    settings = detector_settings(args, stored)
    fixed = args.min_score
    detector = build_detector(dataclasses.replace(settings, operating_point=None), model, finder_dirs=args.finder_dir)
    classes = detector.classes

    started = time.perf_counter()
    val_results, _, val_s = detect_scenes(detector, items["val"])
    val = face_outcomes(val_results, classes)
    threshold = fixed if fixed is not None else choose_operating_point(val, args.rule, args.precision)
    test_results, _, test_s = detect_scenes(detector, items["test"])
    rows = []
    for split, results, outcomes in (("val", val_results, val), ("test", test_results, face_outcomes(test_results, classes))):
        at = at_operating_point(outcomes, threshold, resamples=500)
        m = score_scenes(results, classes, runner_up=detector.runner_up)["metrics"]
        rows.append(f"| {split} | {len(results)} | {int(at['faces'])} | {m['scenes_map50']:.3f} | "
                    f"{at['precision']:.3f} ({at['precision_ci95_low']:.3f}-{at['precision_ci95_high']:.3f}) | "
                    f"{at['recall']:.3f} ({at['recall_ci95_low']:.3f}-{at['recall_ci95_high']:.3f}) | "
                    f"{at['f1']:.3f} ({at['f1_ci95_low']:.3f}-{at['f1_ci95_high']:.3f}) | {at['false_per_image']:.2f} | "
                    f"{at['false_without_mask_per_100']:.1f} |")

    free = {"scene regions, val": list(facefree.scene_regions(items["val"], args.regions)),
            "scene regions, test": list(facefree.scene_regions(items["test"], args.regions))}
    for kind in facefree.TEXTURES:
        free[f"drawn: {kind}"] = [(f"{kind}_{s}", facefree.texture(kind, s)) for s in range(args.per_kind)]
    free_rows, total_images, total_op, total_all = [], 0, 0, 0
    for part, images in free.items():
        at_op = every = 0
        labels: Counter = Counter()
        for name, rgb in images:
            faces = detector(Frame(name, 0, rgb, False))
            kept = reported(faces, threshold)
            every += len(faces)
            at_op += len(kept)
            labels.update(f["label"] for f in kept)
            if args.out:
                for k, f in enumerate(kept):
                    x, y, w, h = f["box"]
                    crop = rgb[max(0, y - h // 2): y + h + h // 2, max(0, x - w // 2): x + w + w // 2]
                    (args.out / "false_faces").mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(args.out / "false_faces" / f"{name}_{k}_{f['label']}_{rank_score(f):.2f}.png"),
                                cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        n = max(1, len(images))
        total_images, total_op, total_all = total_images + len(images), total_op + at_op, total_all + every
        free_rows.append(f"| {part} | {len(images)} | {100 * at_op / n:.1f} | {100 * every / n:.1f} | "
                         f"{', '.join(f'{k} {v}' for k, v in sorted(labels.items())) or '-'} |")
    free_rows.append(f"| **all** | {total_images} | **{100 * total_op / max(1, total_images):.1f}** | "
                     f"{100 * total_all / max(1, total_images):.1f} | |")

    options = " ".join(a for a in sys.argv[1:])
    print(f"CPU: {cpu()}; model {args.model}; options: {options or '(the model' + chr(39) + 's settings)'}")
    print(f"operating point {threshold:.4f} ({'fixed by --min-score' if fixed is not None else 'rule ' + args.rule + ' on val'}); "
          f"{val_s:.3f} / {test_s:.3f} s per val / test scene; total {time.perf_counter() - started:.0f} s\n")
    print("| split | scenes | faces | scenes_map50 (full list) | precision | recall | F1 | false faces / image | "
          "false without_mask / 100 images |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| face-free images | n | faces / 100 images at the operating point | in the full list | labels at the point |")
    print("|---|---|---|---|---|")
    print("\n".join(free_rows))
    if args.out:
        (args.out / "summary.json").write_text(json.dumps({"operating_point": threshold, "options": options}))
    return 0


def configured(name: str) -> DetectorSettings:
    """conf/detect/<name>.yaml, composed as the pipeline composes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from maskflow.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"detect={name}"])
    return DetectorSettings.from_stored(OmegaConf.to_container(cfg.detect, resolve=True))


if __name__ == "__main__":
    sys.exit(main())
