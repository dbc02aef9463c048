"""Still photos: maskflow's images/s against a pretrained mask detector's own labelling,
on the same images in one run, with the accuracy each setting keeps.

    python benchmarks/stills_speed.py [--model models:/maskflow@champion] [--set upscale_if_face_under=24 ...]
        [--set backend=yunet_n,still_long_side=null]  # another finder, its block from conf/detect

Speed: each contender over the same list (every val and test scene photo), from the file
on disk to its labelled faces, as a user runs it: maskflow as ``maskflow.detect`` does
(the finder on one image overlapping the labelling of the one before), UltraFace in a
plain loop. Contenders:

- UltraFace RFB-640 "masked" (MIT, ../shared/weights/faces) as its authors run it: one
  pass at 640x480 through onnxruntime, labelling each face itself (masked face ->
  ``with_mask``, face -> ``without_mask``);
- maskflow's registered model with its stored settings (``stored``), and with each
  ``--set KEY=VALUE`` applied to its finder's block (a candidate setting).

Accuracy per contender: AP at IoU 0.5 per class on the val and test scenes of
mask-scenes-853 (3 classes for maskflow; UltraFace has no third class, so its mAP is over
two and not comparable), and on the whole close-up test photos of the run's union (found:
a face; right: the top face's label). Settings are chosen on val; test is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from mask_baselines import ultraface_mask_labels  # benchmarks/, this script's folder
from omegaconf import OmegaConf

from maskflow.annotations import read_scenes
from maskflow.config import CONF_DIR, register_configs
from maskflow.contracts import StageContext
from maskflow.data import read_manifest
from maskflow.detection.detector import MaskModel, build_detector, pipelined
from maskflow.detection.finders import build_finder
from maskflow.imageio import DecodeError, Frame, read_image
from maskflow.prepare import run as prepare_run
from maskflow.scoring import paired_bootstrap, scene_metrics, split_names
from maskflow.sources import iter_sources

TWO = ["with_mask", "without_mask"]


def cpu_flags() -> str:
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    return "AVX-512" if "avx512f" in flags else "no AVX-512"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="a candidate: these keys of the model's finder block changed (repeatable)")
    parser.add_argument("--closeups", type=int, default=None, help="at most this many close-up photos (default: all)")
    args = parser.parse_args()

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config")
    folder = Path(cfg.paths.data_dir) / "mask-scenes-853"
    scenes = read_scenes(folder)
    splits = {s: scenes.items(split_names(folder, s)) for s in ("val", "test")}
    ctx = StageContext(run_dir=Path("outputs/stills_speed"), cache_dir=Path(cfg.paths.cache_dir))
    closeups = [r for r in read_manifest(prepare_run(cfg, ctx).manifest, "test") if r["face"] in ("mtcnn", "whole_image")]
    closeups = closeups[: args.closeups]

    finders = OmegaConf.to_container(cfg.detect.finders, resolve=True)
    ultraface = build_finder("ultraface", finders, [cfg.paths.face_weights_dir])
    ultraface_calibration = finders["ultraface"].get("box_calibration")
    model = MaskModel.from_uri(args.model)
    stored = model.settings
    contenders = {"ultraface masked (its own labels, one pass)": None, f"maskflow stored ({stored.backend})": stored}
    for change in args.set:
        values = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in change.split(","))}
        backend = str(values.pop("backend", stored.backend))  # another finder: its block from conf/detect
        blocks = {name: dict(block) for name, block in stored.finders.items()}
        blocks.setdefault(backend, dict(finders[backend]))
        blocks[backend].update(values)
        contenders[f"maskflow {change}"] = replace(stored, backend=backend, finders=blocks)
    dirs = [*model.finder_dirs, str(cfg.paths.face_weights_dir)]
    detectors = {name: build_detector(s, model, finder_dirs=dirs) for name, s in contenders.items() if s is not None}

    # Speed: every scene photo of val and test, each contender over the whole list as a
    # user runs it: maskflow as `maskflow.detect` does (decode, then the finder on one image
    # overlapping the labelling of the one before), UltraFace in a plain loop.
    paths = [str(path) for items in splits.values() for path, _ in items]
    speed = {}
    for name in contenders:
        started = time.perf_counter()
        if name in detectors:
            errors: list[str] = []
            done = sum(1 for _ in pipelined(detectors[name], iter_sources(paths, errors)))
        else:
            done = sum(1 for path in paths if ultraface_mask_labels(ultraface, ultraface_calibration, read_image(path).rgb, still=False) is not None)
        speed[name] = round(done / (time.perf_counter() - started), 2)

    rows = {name: {"contender": name, "images_per_s": speed[name],
                   "speed_vs_ultraface": round(speed[name] / next(iter(speed.values())), 3)} for name in contenders}
    for split, items in splits.items():
        results = {name: [] for name in contenders}
        for path, truths in items:
            rgb = read_image(path).rgb
            for name in contenders:
                if name in detectors:  # mAP ranks every candidate (the full list)
                    preds = detectors[name].ranked(Frame(str(path), 0, rgb, False))
                else:
                    preds = ultraface_mask_labels(ultraface, ultraface_calibration, rgb, still=False)
                results[name].append((preds, truths))
        base = f"maskflow stored ({stored.backend})"
        for name in contenders:
            maskflow = name in detectors
            classes = model.classifier.classes if maskflow else TWO
            runner_up = detectors[name].runner_up if maskflow else None
            metrics = scene_metrics(results[name], classes, runner_up=runner_up, resamples=200)["metrics"]
            row = rows[name]
            for key in ["scenes_map50"] + [f"scenes_ap50_{c}" for c in classes]:
                short = f"{split}_{key.replace('scenes_', '')}"
                row[short] = round(metrics[key], 4)
                row[short + "_ci"] = [round(metrics[f"{key}_ci95_low"], 3), round(metrics[f"{key}_ci95_high"], 3)]
            row[f"{split}_face_recall"] = round(metrics["scenes_det_recall"], 4)
            if maskflow and name != base:  # paired over the same scenes: what the change costs or gains
                delta = paired_bootstrap(results[name], results[base], classes, runner_up=runner_up)
                row[f"{split}_map50_delta"] = [round(delta[k], 4) for k in ("delta", "delta_ci95_low", "delta_ci95_high")]

    for name, settings in contenders.items():
        if settings is None:
            continue
        # As evaluate scores close-ups: every face, no operating point (it was chosen on scenes).
        every_face = build_detector(replace(settings, operating_point=None), model, finder_dirs=dirs)
        found = right = n = 0
        for r in closeups:
            try:
                rgb = read_image(Path(str(cfg.data.root)) / r["path"]).rgb
            except DecodeError:
                continue
            n += 1
            faces = every_face(Frame(r["path"], 0, rgb, False))
            if faces:
                found += 1
                right += int(max(faces, key=lambda f: f["detector_score"])["label"] == r["label"])
        rows[name].update(closeups=n, closeups_found=round(found / max(1, n), 4), closeups_right=round(right / max(1, n), 4))

    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {cpu_flags()}", "model": args.model,
                      "val_scenes": len(splits["val"]), "test_scenes": len(splits["test"])}))
    for row in rows.values():
        print(json.dumps(row))


if __name__ == "__main__":
    main()
