"""The prepare stage on real photos and deliberately broken files: every file accounted
for, crops cached by content, interrupted runs resumed."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from maskflow import prepare
from maskflow.annotations import parse_voc, read_scenes
from maskflow.contracts import StageContext

from .conftest import copy_real_faces, needs_shared


def _broken_files(folder: Path) -> dict[str, str]:
    """Write the files of the acceptance check; return name -> expected outcome."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    (folder / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.jpg").write_text("not an image at all\n" * 10)
    Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257)).save(folder / "deep16.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")
    photo.convert("RGBA").save(folder / "rgba.png")
    photo.convert("P").save(folder / "palette.png")
    return {"zero.jpg": "empty_file", "truncated.jpg": "truncated", "notes.jpg": "not_an_image", "bomb.png": "too_large",
            "deep16.png": "ok", "cmyk.jpg": "ok", "rgba.png": "ok", "palette.png": "ok"}


def _manifest(result) -> dict[str, dict[str, str]]:
    with open(result.manifest, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


@needs_shared
def test_prepare_real_and_broken_files(tmp_path, cfg_factory):
    data = copy_real_faces(tmp_path / "data", per_class=6)
    expected = _broken_files(data / "without_mask")
    cfg = cfg_factory([f"data.root={data}", "data.workers=1"])
    ctx = StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")

    first = prepare.run(cfg, ctx)
    rows = _manifest(first)
    listed = {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}
    assert set(rows) == listed  # every file is in the manifest, kept or skipped
    for name, outcome in expected.items():
        row = rows[f"without_mask/{name}"]
        assert (row["status"] if outcome == "ok" else row["reason"]) == outcome, row
    report = json.loads(first.report.read_text())
    assert report["skip_reasons"] == {"empty_file": 1, "truncated": 1, "not_an_image": 1, "too_large": 1}
    assert report["files_processed"] == len(listed) and report["files_from_cache"] == 0
    real = [r for r in rows.values() if r["status"] == "ok" and r["path"].split("/")[1] not in expected]
    assert any(r["face"] == "mtcnn" for r in real)  # the real MTCNN found faces in real photos
    assert all(len(r["sha256"]) == 64 and r["split"] in ("train", "val", "test") for r in real)
    crop = Image.open(real[0]["crop"])
    assert crop.size == (256, 256)
    assert (ctx.run_dir / "prepare" / "samples.png").stat().st_size > 0
    md = (ctx.run_dir / "prepare" / "data_report.md").read_text()
    assert "without_mask/bomb.png" in md and "too_large" in md

    # Warm: nothing recomputed, same result.
    second = prepare.run(cfg, ctx)
    report2 = json.loads(second.report.read_text())
    assert report2["files_processed"] == 0 and second.digest == first.digest

    # "Interrupted": drop two cached records; only those two are processed again.
    records = sorted((tmp_path / "cache" / "crops").rglob("*.json"))
    for path in records[:2]:
        path.unlink()
    third = prepare.run(cfg, ctx)
    assert json.loads(third.report.read_text())["files_processed"] == 2
    assert third.digest == first.digest


@needs_shared
def test_prepare_with_two_worker_processes(tmp_path, cfg_factory):
    data = copy_real_faces(tmp_path / "data", per_class=4, offset=1)
    cfg = cfg_factory([f"data.root={data}", "data.workers=2"])
    result = prepare.run(cfg, StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache"))
    assert json.loads(result.report.read_text())["samples_kept"] == 8


@needs_shared
def test_prepare_scenes_three_classes_split_by_scene(tmp_path, cfg_factory):
    cfg = cfg_factory(["data=mask-scenes-853", "data.limit_per_class=60", "data.workers=1"])
    result = prepare.run(cfg, StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache"))
    rows = [r for r in _manifest_rows(result.manifest) if r["status"] == "ok"]
    assert set(result.classes) <= {"with_mask", "without_mask", "mask_weared_incorrect"}
    assert len(result.classes) >= 2
    by_scene: dict[str, set[str]] = {}
    for r in rows:
        by_scene.setdefault(r["path"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_scene.values())  # all faces of a scene on one side
    report = json.loads(result.report.read_text())
    assert report["skip_reasons"].get("box_too_small", 0) > 0  # tiny faces are counted, not hidden


def _manifest_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_voc_parsing(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><filename>a.jpg</filename><object><name>with_mask</name><bndbox><xmin>1</xmin>"
                   "<ymin>2</ymin><xmax>11</xmax><ymax>22</ymax></bndbox></object></annotation>")
    assert parse_voc(xml) == ("a.jpg", [("with_mask", (1, 2, 10, 20))], None)


@needs_shared
def test_union_of_both_sets_keeps_each_parts_split_and_adds_finder_crops(tmp_path, cfg_factory):
    """data=mask-union: each part prepared by its own rules (a small real subset), one
    manifest with the union's three classes, unique sample ids, and scene faces cut a
    second time around the finder's box (same label, same split as the annotated crop)."""
    cfg = cfg_factory(["data=mask-union", "data.limit_per_class=4", "data.parts.faces.workers=1", "data.parts.scenes.workers=1"])
    ctx = StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    result = prepare.run(cfg, ctx)
    assert result.classes == ("mask_weared_incorrect", "with_mask", "without_mask")
    with open(result.manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert {r["part"] for r in rows} == {"faces", "scenes"}
    assert all(r["path"].startswith(("mask-faces-4k/", "mask-scenes-853/")) for r in rows)
    kept = [r for r in rows if r["status"] == "ok"]
    finder = [r for r in kept if r["face"].startswith("finder_box")]
    assert finder and all(Path(r["crop"]).is_file() for r in kept)
    by_scene = {}
    for r in kept:
        if r["part"] == "scenes":
            by_scene.setdefault(r["path"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in by_scene.values())  # a scene's crops never straddle splits
    # ... and the finder's extra crops do not move any scene: the split is the plain set's.
    plain = prepare.run(cfg_factory(["data=mask-scenes-853", "data.limit_per_class=4", "data.workers=1"]),
                        StageContext(run_dir=tmp_path / "plain", cache_dir=tmp_path / "cache"))
    with open(plain.manifest, newline="", encoding="utf-8") as f:
        plain_split = {"mask-scenes-853/" + r["path"]: r["split"] for r in csv.DictReader(f) if r["status"] == "ok"}
    assert {p: s.pop() for p, s in by_scene.items()} == plain_split
    # The parts' own results are reused by stages that ask for a part by name (no second prepare).
    assert ctx.results["data:mask-scenes-853"][1].digest
    again = prepare.run(cfg, StageContext(run_dir=tmp_path / "run2", cache_dir=tmp_path / "cache"))
    assert again.digest == result.digest


def test_voc_files_naming_one_image_are_merged_and_ids_stay_unique(tmp_path):
    root = tmp_path / "scenes"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (200, 100), (90, 90, 90)).save(root / "images" / "s.jpg")

    def voc(name: str, boxes: list[tuple[int, int, int, int]]) -> None:
        objects = "".join(f"<object><name>with_mask</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                          f"<ymax>{d}</ymax></bndbox></object>" for a, b, c, d in boxes)
        (root / "annotations" / name).write_text(f"<annotation><filename>s.jpg</filename>{objects}</annotation>")

    voc("a.xml", [(10, 10, 40, 40), (50, 10, 80, 40)])
    voc("b.xml", [(50, 10, 80, 40), (100, 10, 130, 40)])  # one face repeated, one new
    (image,) = read_scenes(root).images
    assert len(image.faces) == 3


def test_a_folder_with_no_usable_file_stops_with_a_clear_message(tmp_path, cfg_factory):
    import pytest

    data = tmp_path / "data"
    (data / "with_mask").mkdir(parents=True)
    (data / "with_mask" / "empty.jpg").write_bytes(b"")
    cfg = cfg_factory([f"data.root={data}", "data.workers=1"])
    with pytest.raises(ValueError, match="no usable sample.*empty_file"):
        prepare.run(cfg, StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache"))


@needs_shared
def test_a_class_with_no_usable_file_stops_before_training(tmp_path, cfg_factory):
    """Folder classes: a class whose files all fail is listed with its reasons, not dropped,
    and the tune stage refuses to start; a configured class the data lacks too."""
    import pytest

    from maskflow import tune

    data = copy_real_faces(tmp_path / "data", per_class=6)
    (data / "mask_weared_incorrect").mkdir()
    (data / "mask_weared_incorrect" / "zero.jpg").write_bytes(b"")
    (data / "mask_weared_incorrect" / "notes.jpg").write_text("not an image\n")
    ctx = StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    cfg = cfg_factory([f"data.root={data}", "data.workers=1"])
    ctx.results["prepare"] = prepared = prepare.run(cfg, ctx)
    assert prepared.classes == ("mask_weared_incorrect", "with_mask", "without_mask")
    with pytest.raises(ValueError, match=r"no usable training sample: 'mask_weared_incorrect'.*"
                                         r"(empty_file.*not_an_image|not_an_image.*empty_file)"):
        tune.run(cfg, ctx)
    assert not (tmp_path / "cache" / "embeddings").exists()  # stopped before any work

    shutil.rmtree(data / "mask_weared_incorrect")
    named = cfg_factory([f"data.root={data}", "data.workers=1", "data.classes=[with_mask,without_mask,mask_weared_incorrect]"])
    ctx.results["prepare"] = prepare.run(named, ctx)
    with pytest.raises(ValueError, match=r"'mask_weared_incorrect': 0 kept"):
        tune.run(named, ctx)


def _log_same_datasets(uri: str, barrier, failures) -> None:
    import logging

    import mlflow
    import pandas as pd

    logging.disable(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("race")
    for i in range(10):
        dataset = mlflow.data.from_pandas(pd.DataFrame({"a": [i, 1], "label": [0, 1]}), source="/x", name=f"d{i}", targets="label")
        with mlflow.start_run():
            barrier.wait()
            try:
                prepare._log_input(dataset, context="training")
            except Exception:  # noqa: BLE001 - counted: the assertion below names the failure
                failures.value += 1


def test_parallel_jobs_logging_the_same_dataset_both_succeed(tmp_path):
    """Two jobs of a parallel multirun (one sqlite store) log the same dataset at the same
    moment. Plain ``mlflow.log_input`` lost about half of such calls here (14 of 30, sqlite
    UNIQUE constraint) and failed the job; prepare's retry links the row the other job made."""
    import multiprocessing

    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("race")  # the store's tables exist before the two jobs start
    mlflow.set_tracking_uri(None)
    spawn = multiprocessing.get_context("spawn")
    barrier, failures = spawn.Barrier(2), spawn.Value("i", 0)
    jobs = [spawn.Process(target=_log_same_datasets, args=(uri, barrier, failures)) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
    assert [job.exitcode for job in jobs] == [0, 0]
    assert failures.value == 0


@needs_shared
def test_a_worker_that_cannot_start_stops_prepare_with_a_message_instead_of_hanging(tmp_path):
    # Its workers inherit the parent's sys.path, where an empty 'maskflow' comes first (as
    # after loading a registered model whose packaged code differs): none can import the
    # work. A multiprocessing.Pool replaced them forever; the stage must stop and say so.
    import os
    import subprocess
    import sys

    data = copy_real_faces(tmp_path / "data", per_class=4)
    (tmp_path / "shadow" / "maskflow").mkdir(parents=True)
    (tmp_path / "shadow" / "maskflow" / "__init__.py").write_text("")
    script = (f"import sys, maskflow.pipeline; sys.path.insert(0, {str(tmp_path / 'shadow')!r}); "
              "sys.argv = ['pipeline'] + sys.argv[1:]; maskflow.pipeline.main()")
    overrides = ["stages=[prepare]", "data=mask-faces-4k", f"data.root={data}", "data.workers=2",
                 f"paths.cache_dir={tmp_path}/cache", f"paths.output_dir={tmp_path}/outputs",
                 f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns"]
    proc = subprocess.run([sys.executable, "-c", script, *overrides], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode != 0
    assert "a worker process died" in proc.stdout + proc.stderr and "data.workers=1" in proc.stdout + proc.stderr
