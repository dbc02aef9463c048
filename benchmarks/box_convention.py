"""Scenes labelled in another box convention: re-draw mask-scenes-853's held-out scenes
whole-head style, write them as YOLO and COCO, calibrate on 50, recover the score.

    python benchmarks/box_convention.py [--model models:/maskflow@champion] [--fit 50] [--out DIR]
    python benchmarks/box_convention.py --write DIR    # only write the sets (to try README's "Your own photos")

The held-out scenes (val + test splits, never trained on) are written five times, as a
user's labelling tool would export them: in mask-scenes-853's own convention as VOC, YOLO
and COCO, and with every box re-drawn around the whole head (1.3x wider, 1.5x taller,
centred 0.28 of the face's height higher) as YOLO and COCO. Each set goes through
``python -m maskflow.calibrate --no-register`` as a user runs it: the box calibration is
fitted on the first ``--fit`` images by file name and AP per class at IoU 0.5 and 0.3 is
scored on the rest, before and after, with 95% bootstrap intervals. Beside it, the same
for a pretrained mask detector, UltraFace RFB-640 masked (its own face / masked-face
labels as without_mask / with_mask; its boxes calibrated on the same images), over the
two classes it knows. Targets: after calibrating, mAP@0.5 within 0.05 of mAP@0.3 on the
re-drawn sets, and the original convention's score recovered.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from maskflow.annotations import LabelledImage, image_size, read_scenes, write_scenes
from maskflow.calibrate import main as calibrate
from maskflow.config import CONF_DIR, register_configs
from maskflow.detection.boxes import calibrate_box
from maskflow.detection.calibration import fit_calibration
from maskflow.detection.finders import build_finder
from maskflow.imageio import read_image
from maskflow.scoring import scene_metrics, split_names

HEAD = {"dx": 0.0, "dy": -0.28, "sw": 1.3, "sh": 1.5}
TWO = ["with_mask", "without_mask"]
SETS = [("853 boxes", "voc"), ("853 boxes", "yolo"), ("853 boxes", "coco"), ("whole head", "yolo"), ("whole head", "coco")]


def redrawn(images: list[LabelledImage], convention: dict | None) -> list[LabelledImage]:
    if not convention:
        return images
    out = []
    for im in images:
        width, height = image_size(im.path)
        out.append(LabelledImage(im.path, im.rel, tuple((c, calibrate_box(b, convention, width, height)) for c, b in im.faces)))
    return out


def write_sets(out: Path) -> dict[tuple[str, str], Path]:
    folder = Path(compose_cfg().paths.data_dir) / "mask-scenes-853"
    held = split_names(folder, "val") | split_names(folder, "test")
    images = [im for im in read_scenes(folder).images if im.rel in held]
    return {(kind, fmt): write_scenes(redrawn(images, HEAD if kind == "whole head" else None),
                                      out / f"{kind.replace(' ', '-')}-{fmt}", fmt) for kind, fmt in SETS}


def compose_cfg():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config")


def ultraface(sets: dict, fit: int, resamples: int) -> dict[tuple[str, str], dict]:
    """The pretrained mask detector on each set: its boxes calibrated on the first ``fit``
    images, scored on the rest over with_mask / without_mask (before, after)."""
    cfg = compose_cfg()
    finders = OmegaConf.to_container(cfg.detect.finders, resolve=True)
    finder = build_finder("ultraface", finders, [cfg.paths.face_weights_dir])
    stored = finders["ultraface"].get("box_calibration")
    found: dict[Path, tuple] = {}
    out = {}
    for key, folder in sets.items():
        ordered = sorted(read_scenes(folder).images, key=lambda im: im.rel)
        rows = []
        for im in ordered:
            if im.path not in found:
                rgb = read_image(im.path).rgb
                found[im.path] = (finder.find(rgb, still=True), (rgb.shape[1], rgb.shape[0]))
            faces, size = found[im.path]
            rows.append((im, faces, size))
        calibration, _ = fit_calibration([([f.box for f in faces], [b for _, b in im.faces], size) for im, faces, size in rows[:fit]],
                                         stored)

        def results(cal):
            res = []
            for im, faces, size in rows[fit:]:
                preds = []
                for f in faces:
                    box = list(calibrate_box(f.box, cal, *size))
                    p_face, p_masked = f.probs
                    preds += [{"box": box, "label": "with_mask", "score": float(p_masked), "detector_score": f.score},
                              {"box": box, "label": "without_mask", "score": float(p_face), "detector_score": f.score}]
                res.append((preds, [(c, b) for c, b in im.faces if c in TWO]))
            return res

        out[key] = {"before": scene_metrics(results(stored), TWO, resamples=resamples)["metrics"],
                    "after": scene_metrics(results(calibration), TWO, resamples=resamples)["metrics"]}
    return out


def cell(m: dict, key: str) -> str:
    low, high = m.get(f"{key}_ci95_low"), m.get(f"{key}_ci95_high")
    return f"{m[key]:.3f}" + (f" ({low:.3f}-{high:.3f})" if low is not None else "")


def two_class(m: dict, tag: str) -> float:
    return float(np.mean([m[f"scenes_ap{tag}_{c}"] for c in TWO]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--fit", type=int, default=50)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="where the sets are written (default: a temporary folder)")
    parser.add_argument("--write", type=Path, default=None, help="only write the sets here, and say where")
    args = parser.parse_args()
    if args.write:
        for (kind, fmt), folder in write_sets(args.write).items():
            print(f"{kind}, {fmt}: {folder}")
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="maskflow-conventions-"))
    sets = write_sets(out)
    reports = {}
    for key, folder in sets.items():
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = calibrate([str(folder), "--model", args.model, "--fit", str(args.fit), "--bootstrap", str(args.bootstrap),
                              "--no-register", "--out", str(folder / "calibrated")])
        reports[key] = json.loads((folder / "calibrated" / "calibration.json").read_text())
        reports[key]["seconds"] = time.perf_counter() - started
        print(f"# {key[0]}, {key[1]}: exit {code}, {reports[key]['seconds']:.0f} s, calibration {reports[key]['calibration']}",
              flush=True)
    peers = ultraface(sets, args.fit, args.bootstrap)
    first = reports[SETS[0]]
    print(f"\nmodel {args.model}; {first['fit_images']} images fitted, {first['scored_images']} scored "
          f"(mask-scenes-853 val + test, sorted by file name)\n")
    print("| labels | format | | mAP@0.5 | mAP@0.3 | AP@0.5 with_mask | AP@0.5 without_mask | AP@0.5 mask_weared_incorrect |")
    print("|---|---|---|---|---|---|---|---|")
    for key in SETS:
        for when in ("before", "after"):
            m = reports[key][when]
            print(f"| {key[0]} | {key[1]} | {when} | {cell(m, 'scenes_map50')} | {cell(m, 'scenes_map30')} | "
                  f"{cell(m, 'scenes_ap50_with_mask')} | {cell(m, 'scenes_ap50_without_mask')} | "
                  f"{cell(m, 'scenes_ap50_mask_weared_incorrect')} |")
    print("\nTwo classes (with_mask, without_mask), the same images, against the pretrained mask detector:\n")
    print("| labels | format | detector | mAP@0.5 before | mAP@0.5 after | mAP@0.3 after |")
    print("|---|---|---|---|---|---|")
    for key in SETS:
        maskflow = reports[key]
        print(f"| {key[0]} | {key[1]} | maskflow | {two_class(maskflow['before'], '50'):.3f} | "
              f"{two_class(maskflow['after'], '50'):.3f} | {two_class(maskflow['after'], '30'):.3f} |")
        print(f"| {key[0]} | {key[1]} | UltraFace masked | {two_class(peers[key]['before'], '50'):.3f} | "
              f"{two_class(peers[key]['after'], '50'):.3f} | {two_class(peers[key]['after'], '30'):.3f} |")
    original, head = reports[("853 boxes", "voc")]["before"], reports[("whole head", "yolo")]["after"]
    print(f"\nTargets: whole head (YOLO) after: mAP@0.3 - mAP@0.5 = {head['scenes_map30'] - head['scenes_map50']:.3f} "
          f"(<= 0.05); against the 853 boxes as labelled (VOC, before): {head['scenes_map50'] - original['scenes_map50']:+.3f}. "
          f"COCO and YOLO exports of the VOC set, before: "
          f"{reports[('853 boxes', 'coco')]['before']['scenes_map50']:.4f}, {reports[('853 boxes', 'yolo')]['before']['scenes_map50']:.4f} "
          f"(VOC {original['scenes_map50']:.4f})")


if __name__ == "__main__":
    main()
