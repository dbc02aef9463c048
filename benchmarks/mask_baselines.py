"""maskflow against a pretrained mask detector on the same held-out scenes.

    python benchmarks/mask_baselines.py [--model models:/maskflow@champion] [--split test]

The baseline is UltraFace RFB-640 "masked" (MIT, ../shared/weights/faces). It labels each
face itself as face or masked face: masked face counts as ``with_mask`` and face as
``without_mask``, each box reported for both classes, scored by that class's
probability. maskflow's model runs as registered. Both are scored per class at IoU 0.5
over ``with_mask`` / ``without_mask`` (the baseline has no third class; truths of
``mask_weared_incorrect`` are left out for both).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from maskflow.annotations import read_scenes
from maskflow.config import CONF_DIR, register_configs
from maskflow.detection.boxes import calibrated
from maskflow.detection.detector import MaskModel, build_detector
from maskflow.detection.finders import build_finder
from maskflow.imageio import Frame, read_image
from maskflow.scoring import score_scenes, split_names

CLASSES = ["with_mask", "without_mask"]


def ultraface_mask_labels(finder, calibration, rgb, still: bool = True) -> list[dict]:
    """UltraFace masked's own labels: each box once per class, scored by that class's
    probability (``still``: with the finder's stills pass; False: its authors' one pass)."""
    h, w = rgb.shape[:2]
    out = []
    for face in finder.find(rgb, still=still):
        box = list(calibrated(face, calibration, w, h).box)
        p_face, p_masked = face.probs
        out += [{"box": box, "label": "with_mask", "score": float(p_masked), "detector_score": face.score},
                {"box": box, "label": "without_mask", "score": float(p_face), "detector_score": face.score}]
    return out


def scored(results) -> dict:
    m = score_scenes(results, CLASSES)["metrics"]
    return {"map50": round(m["scenes_map50"], 4), **{c: round(m[f"scenes_ap50_{c}"], 4) for c in CLASSES},
            "recall": round(m["scenes_det_recall"], 4), "precision": round(m["scenes_det_precision"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config")
    folder = Path(cfg.paths.data_dir) / "mask-scenes-853"
    items = read_scenes(folder).items(split_names(folder, args.split))
    finders = OmegaConf.to_container(cfg.detect.finders, resolve=True)
    baseline = build_finder("ultraface", finders, [cfg.paths.face_weights_dir])
    model = MaskModel.from_uri(args.model)
    detector = build_detector(model.settings, model)
    rows = {"ultraface masked (pretrained, its own labels)": [], f"maskflow {args.model} ({model.settings.backend})": []}
    seconds = {name: 0.0 for name in rows}
    for path, truths in items:
        rgb = read_image(path).rgb
        truths = [(label, box) for label, box in truths if label in CLASSES]
        for name in rows:
            started = time.perf_counter()
            if name.startswith("ultraface"):
                preds = ultraface_mask_labels(baseline, finders["ultraface"].get("box_calibration"), rgb)
            else:
                # mAP ranks every candidate (the full list), not the faces reported at the operating point.
                preds = [p for p in detector.ranked(Frame(str(path), 0, rgb, False)) if p["label"] in CLASSES]
            seconds[name] += time.perf_counter() - started
            rows[name].append((preds, truths))
    for name, results in rows.items():
        print(json.dumps({"detector": name, "split": args.split, "scenes": len(results), **scored(results),
                          "images_per_s": round(len(results) / seconds[name], 2)}))


if __name__ == "__main__":
    main()
