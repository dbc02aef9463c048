"""Scene detection v2: every finder with one registered classifier, on the same data.

    python benchmarks/scene_detection.py --model models:/maskflow/1 [--finders yunet ultraface fusion scrfd mtcnn]
                                         [--splits val test] [--closeups 610] [--frames 150]

For each finder (labels from the model's crop classifier), with the settings stored with
the model and ``--backend`` swapped: ``scenes_map50`` with its 95% bootstrap interval and
AP per class on the val and test splits of mask-scenes-853 (split as the pipeline splits
it), detection recall/precision at IoU 0.5, the close-ups of mask-faces-4k's test split
(whole photo: a face found, the top face labelled right), 640x480 video frames/s
(pipelined, as the CLI runs, scenes with 1-5 faces panned as in ``detect_speed.py``) and
still images/s (the val scenes). Choose on val; test is reported beside it, never tuned on.
SCRFD's terms are non-commercial research only: it is measured, never a default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_speed import held_out_items, run_frames, scene_video  # noqa: E402


def closeup_rows(limit: int | None) -> list[tuple[Path, str]]:
    """(photo, label) of mask-faces-4k's test split, split exactly as the pipeline splits it."""
    import tempfile

    from hydra import compose, initialize_config_dir

    from maskflow.config import CONF_DIR, register_configs
    from maskflow.contracts import StageContext
    from maskflow.data import read_manifest
    from maskflow.prepare import run

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["data=mask-faces-4k"])
    ctx = StageContext(run_dir=Path(tempfile.mkdtemp(prefix="maskflow-closeups-")), cache_dir=Path(cfg.paths.cache_dir))
    rows = read_manifest(run(cfg, ctx).manifest, "test")[:limit]
    return [(Path(cfg.data.root) / r["path"], r["label"]) for r in rows]


def closeups(detector, rows) -> dict[str, float]:
    from maskflow.imageio import Frame, read_image

    found = right = 0
    for path, label in rows:
        faces = detector(Frame(str(path), 0, read_image(path).rgb, False))
        if faces:
            found += 1
            right += int(max(faces, key=lambda f: f["detector_score"] * f["score"])["label"] == label)
    return {"closeups_found": found / len(rows), "closeups_right": right / len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--finders", nargs="+", default=["yunet", "ultraface", "fusion", "scrfd", "mtcnn"])
    parser.add_argument("--splits", nargs="*", default=["val", "test"], help="none: speed and close-ups only")
    parser.add_argument("--closeups", type=int, default=610, help="close-up test photos (0: skip)")
    parser.add_argument("--frames", type=int, default=150, help="640x480 video frames (0: skip speed)")
    parser.add_argument("--long-side", type=int, default=None,
                        help="the finders' video long side (480: YuNet's real-time setting); default: the model's")
    parser.add_argument("--out", type=Path, default=None, help="also write each row as JSON lines here")
    parser.add_argument("--keras", type=Path, default=None,
                        help="a classifier .keras file (e.g. a finetune cache entry) instead of --model, with conf/detect's "
                             "settings; --classes and --input-size describe it")
    parser.add_argument("--classes", nargs="+", default=["with_mask", "without_mask"])
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args()

    from dataclasses import replace

    from maskflow.detection.detector import Classifier, MaskModel, build_detector
    from maskflow.detection.settings import DetectorSettings
    from maskflow.scoring import run_scenes

    if args.keras:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        from maskflow.config import CONF_DIR, register_configs
        from maskflow.evaluate import load_model

        register_configs()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config")
        classifier = MaskModel(Classifier(load_model(args.keras), args.classes, args.input_size),
                               DetectorSettings.from_stored(OmegaConf.to_container(cfg.detect, resolve=True)),
                               finder_dirs=[cfg.paths.face_weights_dir])
        args.model = str(args.keras)
    else:
        classifier = MaskModel.from_uri(args.model)
        # The model carries its own finder's file; the others come from ../shared.
        classifier.finder_dirs.append(str(Path(__file__).resolve().parents[2] / "shared" / "weights" / "faces"))
    stored = classifier.settings
    items = {split: held_out_items(split) for split in args.splits}
    rows = closeup_rows(args.closeups) if args.closeups else []
    video = scene_video(held_out_items("test"), (640, 480), args.frames)[0] if args.frames else []
    print(f"model {args.model} ({classifier.classifier.classes}); {os.cpu_count()} cores; "
          + ", ".join(f"{s}: {len(v)} scenes" for s, v in items.items()) + f"; {len(rows)} close-ups", flush=True)
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    for finder in args.finders:
        settings = replace(stored, backend=finder, labels="classifier")
        if args.long_side and finder in settings.finders:
            settings = replace(settings, finders={**settings.finders, finder: {**settings.finders[finder], "long_side": args.long_side}})
        if finder == "mtcnn":
            settings = replace(settings, min_confidence=DetectorSettings().min_confidence)  # conf/detect/mtcnn.yaml
        detector = build_detector(settings, classifier)
        row: dict = {"finder": finder, "model": args.model}
        for split, scenes in items.items():
            started = time.perf_counter()
            m = run_scenes(detector, scenes, resamples=200)["metrics"]
            row[split] = {k.replace("scenes_", ""): round(v, 4) for k, v in m.items()
                          if k.startswith(("scenes_map50", "scenes_ap50", "scenes_det_"))}
            row[split]["images_per_s"] = round(len(scenes) / (time.perf_counter() - started), 2)
        if rows:
            row.update({k: round(v, 4) for k, v in closeups(detector, rows).items()})
        if video:
            speed, _ = run_frames(detector, video, True, pipeline=True)
            row["video_640x480_fps"] = round(speed["fps"], 1)
        print(json.dumps(row), flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
