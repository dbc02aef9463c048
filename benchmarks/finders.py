"""Face finders alone on a split of mask-scenes-853: face AP at IoU 0.5 (one class,
ranked by finder score), recall at any score, still images/s, and the box calibration
fitted on the train split (applied before scoring).

    python benchmarks/finders.py --split val [--finders yunet ultraface ...] [--set finders.yunet.still_long_side=null]
    python benchmarks/finders.py --split val --fit   # fit box_calibration on train scenes first

Settings come from conf/detect (Hydra compose), overridden by ``--set``; use the val
split to choose, test only to report.
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
from maskflow.detection.calibration import fit_box_calibration
from maskflow.detection.finders import build_finder
from maskflow.imageio import read_image
from maskflow.scoring import score_scenes, split_names


def face_scores(finder, items, calibration) -> dict:
    results, started = [], time.perf_counter()
    for path, truths in items:
        rgb = read_image(path).rgb
        h, w = rgb.shape[:2]
        faces = [calibrated(f, calibration, w, h) for f in finder.find(rgb, still=True)]
        preds = [{"box": list(f.box), "label": "face", "score": 1.0, "detector_score": f.score} for f in faces]
        results.append((preds, [("face", box) for _, box in truths]))
    seconds = (time.perf_counter() - started) / max(1, len(items))
    m = score_scenes(results, ["face"])["metrics"]
    return {"face_ap50": round(m["scenes_map50"], 4), "recall": round(m["scenes_det_recall"], 4),
            "precision": round(m["scenes_det_precision"], 4), "images_per_s": round(1 / seconds, 2), "faces": int(m["scenes_faces"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--finders", nargs="+", default=["yunet", "ultraface", "scrfd", "fusion"])
    parser.add_argument("--set", nargs="*", default=[], help="Hydra overrides of detect.*, e.g. detect.finders.yunet.min_score=0.2")
    parser.add_argument("--fit", action="store_true", help="fit each finder's box_calibration on 200 train scenes first")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["detect=yunet", *args.set])
    folder = Path(cfg.paths.data_dir) / "mask-scenes-853"
    finders = OmegaConf.to_container(cfg.detect.finders, resolve=True)
    scenes = read_scenes(folder)
    items = scenes.items(split_names(folder, args.split), args.limit)
    train = scenes.items(split_names(folder, "train"), 200) if args.fit else []
    for name in args.finders:
        if args.fit and name != "fusion":
            finders[name]["box_calibration"] = None
            fitted = fit_box_calibration(build_finder(name, finders, [cfg.paths.face_weights_dir]), train)
            fitted.pop("pairs")
            finders[name]["box_calibration"] = fitted
        finder = build_finder(name, finders, [cfg.paths.face_weights_dir])
        calibration = None if name == "fusion" else finders[name].get("box_calibration")
        row = {"finder": name, "split": args.split, "calibration": calibration, **face_scores(finder, items, calibration)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
