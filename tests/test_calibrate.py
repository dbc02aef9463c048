"""A scene set's box convention: fitted from finder boxes, scored before and after, and
carried by a registered version that detect uses with no extra flag."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maskflow.annotations import LabelledImage, read_scenes, write_scenes
from maskflow.detection.boxes import calibrate_box
from maskflow.detection.calibration import fit_calibration, match_pairs

from .conftest import SCENES, needs_shared
from .test_detect_cli import yunet_model  # noqa: F401 - the registered tiny model with YuNet, a fixture

# Whole-head boxes: 1.3x wider, 1.5x taller, centred 0.28 of the face's height higher.
HEAD = {"dx": 0.0, "dy": -0.28, "sw": 1.3, "sh": 1.5}


def head_style(images, convention=HEAD) -> list[LabelledImage]:
    from maskflow.annotations import image_size

    out = []
    for im in images:
        width, height = image_size(im.path)
        out.append(LabelledImage(im.path, im.rel, tuple((label, calibrate_box(box, convention, width, height))
                                                         for label, box in im.faces)))
    return out


def test_match_pairs_is_one_to_one_and_most_overlapping_first():
    found = [(0, 0, 10, 10), (1, 0, 10, 10), (50, 50, 10, 10)]
    truths = [(0, 0, 10, 10), (100, 100, 10, 10)]
    assert match_pairs(found, truths, 0.3) == [(0, 0, 1.0)]  # the second box may not take the same face


def test_the_fit_recovers_a_convention_whose_boxes_barely_overlap_the_finders():
    rng = np.random.default_rng(0)
    images = []
    for _ in range(30):
        raw = [(float(x), float(y), float(w), float(w * 1.2)) for x, y, w in zip(rng.uniform(50, 500, 4) // 1,
                                                                                  rng.uniform(100, 300, 4) // 1,
                                                                                  rng.uniform(20, 60, 4) // 1)]
        truths = [calibrate_box((x + rng.normal(0, 1), y + rng.normal(0, 1), w, h), HEAD, 1000, 1000) for x, y, w, h in raw]
        images.append((raw, truths, (1000, 1000)))
    raw_iou = np.median([o for raw, truths, _ in images for *_, o in match_pairs(raw, truths, 0.0)])
    assert raw_iou < 0.5  # at IoU 0.5 the raw boxes would miss almost every face
    calibration, fit = fit_calibration(images)
    assert calibration == pytest.approx(HEAD, abs=0.03)
    assert fit["median_iou"] > 0.85 and fit["pairs"] >= 100
    with pytest.raises(ValueError, match="no finder box overlaps"):
        fit_calibration([([(0, 0, 10, 10)], [(500, 500, 10, 10)], (1000, 1000))])


@needs_shared
def test_a_coco_or_yolo_export_of_a_voc_set_scores_the_same(yunet_model, tmp_path, capsys):  # noqa: F811
    import mlflow

    from maskflow.evaluate_scenes import main

    images = read_scenes(SCENES).images[:6]
    scored = {}
    try:
        for fmt in ("voc", "yolo", "coco"):
            folder = write_scenes(images, tmp_path / fmt, fmt)
            assert main([str(folder), "--split", "all", "--bootstrap", "20", "--model", "models:/m/1",
                         "--tracking-uri", yunet_model, *(["--mlflow"] if fmt == "coco" else [])]) == 0
            out = capsys.readouterr()
            scored[fmt] = json.loads(out.out)
            assert "AP@0.5" in out.err and "mask_weared_incorrect" not in out.err  # a table of the model's classes
        runs = mlflow.search_runs(experiment_names=["maskflow"], filter_string="tags.`maskflow.command` = 'evaluate_scenes'")
        assert len(runs) == 1 and runs["params.model_version"].iloc[0] == "m v1" and runs["params.format"].iloc[0] == "coco"
        assert runs["metrics.scenes_map50"].iloc[0] == pytest.approx(scored["coco"]["scenes_map50"])
    finally:
        mlflow.set_tracking_uri(None)
    assert scored["voc"]["scenes_faces"] > 10 and scored["voc"]["scenes_det_recall"] > 0.3
    metrics = {k: v for k, v in scored["voc"].items() if k not in ("format", "scenes_seconds_per_image")}
    for fmt in ("yolo", "coco"):
        assert {k: v for k, v in scored[fmt].items() if k in metrics} == metrics, fmt
    assert {"scenes_ap30_with_mask", "scenes_map30_ci95_low", "scenes_ap50_without_mask_ci95_high"} <= set(metrics)


@needs_shared
def test_calibrate_registers_a_version_that_answers_in_the_sets_convention(yunet_model, tmp_path, capsys):  # noqa: F811
    """Head-style YOLO labels: the fit on the first images closes the gap at IoU 0.5 on
    the rest; a new version carries the calibration under its alias, the detector built
    from it reports head-style boxes, the champion stays, a second run reuses the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from maskflow.calibrate import main
    from maskflow.detection.detector import MaskModel, build_detector
    from maskflow.imageio import Frame, read_image

    source = read_scenes(SCENES).images[:20]
    folder = write_scenes(head_style(source), tmp_path / "heads", "yolo")
    args = [str(folder), "--model", "models:/m@champion", "--tracking-uri", yunet_model, "--fit", "8", "--bootstrap", "50",
            "--out", str(tmp_path / "out")]
    try:
        mlflow.set_tracking_uri(yunet_model)
        client = MlflowClient()
        client.set_registered_model_alias("m", "champion", "1")
        assert main(args) == 0
        stdout = capsys.readouterr().out
        assert "fitted on the first 8 images" in stdout and "registered m version 2 as @calibrated" in stdout
        assert "AP@0.5 before" in stdout and "AP@0.3 after" in stdout
        report = json.loads((tmp_path / "out" / "calibration.json").read_text())
        before, after = report["before"], report["after"]
        assert report["scored_images"] == 12 and report["calibration"]["sh"] > 1.3  # the head boxes are taller
        assert after["scenes_det_recall"] > before["scenes_det_recall"] + 0.2
        assert after["scenes_det_recall_ci95_low"] <= after["scenes_det_recall"] <= after["scenes_det_recall_ci95_high"]

        version = client.get_model_version_by_alias("m", "calibrated")
        assert str(version.version) == "2" and str(client.get_model_version_by_alias("m", "champion").version) == "1"
        assert version.tags["calibrated_from"] == "m v1" and json.loads(version.tags["calibration"]) == report["calibration"]
        runs = mlflow.search_runs(experiment_names=["maskflow"], filter_string="tags.`maskflow.command` = 'calibrate'")
        assert len(runs) == 1 and runs["metrics.after_scenes_map30"].iloc[0] >= 0

        # What detect, the servers and evaluate_scenes build from the version: the same
        # faces, in head-style boxes, with no option given.
        rgb = read_image(source[0].path).rgb
        boxes = {}
        for alias in ("champion", "calibrated"):
            model = MaskModel.from_uri(f"models:/m@{alias}", yunet_model)
            boxes[alias] = [f["box"] for f in build_detector(model.settings, model).ranked(Frame("a", 0, rgb, False))]
        assert len(boxes["champion"]) == len(boxes["calibrated"]) >= 2
        assert np.median([c[3] / p[3] for p, c in zip(boxes["champion"], boxes["calibrated"])]) > 1.3

        assert main(args) == 0
        assert "registered m version 2 as @calibrated" in capsys.readouterr().out  # the same version, reused
    finally:
        mlflow.set_tracking_uri(None)


def test_calibrate_refuses_a_fit_that_leaves_nothing_to_score(tmp_path, capsys):
    from maskflow.calibrate import main

    folder = write_scenes([LabelledImage(p, p.name, (("with_mask", (10, 10, 20, 20)),)) for p in
                           [_image(tmp_path / f"{n}.jpg") for n in "ab"]], tmp_path / "set", "coco")
    assert main([str(folder), "--fit", "2"]) == 2
    assert "2 usable labelled images, and --fit 2 leaves none to score" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _image(path):
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 90, 90)).save(path)
    return path


@needs_shared
def test_the_pipeline_fits_the_calibration_on_a_scene_parts_train_split_and_export_stores_it(tmp_path, cfg_factory):
    """evaluate.box_calibration.data names a scene set (a user's, in YOLO here): evaluate
    fits the finder's calibration on its train split only, and export stores it where the
    finder reads it, the rest of the detector settings as configured."""
    from omegaconf import OmegaConf

    from maskflow import prepare
    from maskflow.contracts import StageContext
    from maskflow.data import read_manifest
    from maskflow.detection.detector import Classifier, MaskModel, build_detector
    from maskflow.detection.settings import DetectorSettings
    from maskflow.evaluate import _fit_box_calibration, load_model

    from .test_serving import tiny_keras_model

    folder = write_scenes(head_style(read_scenes(SCENES).images[:30]), tmp_path / "heads", "yolo")
    cfg = cfg_factory(["data=mask-scenes-853", f"data.root={folder}", "data.format=yolo", "data.workers=1",
                       "detect=yunet", "evaluate.box_calibration.data=mask-scenes-853"])
    ctx = StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    ctx.results["prepare"] = prepared = prepare.run(cfg, ctx)
    settings = DetectorSettings.from_stored(OmegaConf.to_container(cfg.detect, resolve=True))
    model = MaskModel(Classifier(load_model(tiny_keras_model(tmp_path / "m.keras")), ["with_mask", "without_mask"], 32),
                      settings, finder_dirs=[str(cfg.paths.face_weights_dir)])
    fitted = _fit_box_calibration(cfg, ctx, build_detector(settings, model))
    train = {r["path"] for r in read_manifest(prepared.manifest, "train")}
    assert fitted["box_calibration_images"] == len(train) < 30  # the train split alone
    assert fitted["box_calibration_sh"] > 1.3 * settings.calibration()["sh"] and fitted["box_calibration_dy"] < 0

    calibration = {k: fitted[f"box_calibration_{k}"] for k in ("dx", "dy", "sw", "sh")}
    stored = DetectorSettings.from_stored(OmegaConf.to_container(cfg.detect, resolve=True)).with_calibration(calibration)
    assert stored.calibration() == calibration and stored.finders["ultraface"] == settings.finders["ultraface"]
    assert DetectorSettings.from_stored(stored.to_dict()) == stored  # what the registered model's meta holds
