"""``python -m maskflow.detect`` with a registered model that carries a pretrained finder:
the finder's file travels inside the model, every input gets a row or a reason, exit
codes as documented, outputs never overwrite one another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskflow.detect import output_path

from .conftest import SCENES, compose, needs_shared
from .test_serving import tiny_keras_model


def test_output_paths_mirror_the_tree_and_never_collide(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    out, taken = tmp_path / "out", set()
    names = [output_path(out, str(root / n), [str(root)], ".jpg", taken) for n in ("a.jpg", "a.png", "sub/a.jpg")]
    assert len(set(names)) == 3 and names[1].name == "a.png.jpg" and names[2].parent.name == "sub"
    (out / "in").mkdir(parents=True, exist_ok=True)
    (out / "in" / "b.jpg").write_bytes(b"from an earlier run")
    assert output_path(out, str(root / "b.jpg"), [str(root)], ".jpg", taken).name == "b-1.jpg"  # never replaced


@pytest.fixture(scope="module")
def yunet_model(tmp_path_factory):
    """A tiny classifier registered with detect=yunet in a sqlite store; returns the store URI."""
    import mlflow
    from omegaconf import OmegaConf

    from maskflow import serving
    from maskflow.export import _finder_files, register_pyfunc

    tmp = tmp_path_factory.mktemp("yunet_model")
    cfg = compose(tmp, ["detect=yunet"])
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("t")
    try:
        model = tiny_keras_model(tmp / "model.keras")
        meta = serving.meta_for(["with_mask", "without_mask"], 32, "tiny", OmegaConf.to_container(cfg.detect, resolve=True))
        files = _finder_files(cfg)
        assert [p.name for p in files] == [cfg.detect.finders.yunet.file]
        with mlflow.start_run():
            register_pyfunc("m", model, meta, tmp / "meta.json", [SCENES / "images" / "maksssksksss0.jpg"], {}, finder_files=files)
    finally:
        mlflow.set_tracking_uri(None)
    return uri


def _detect(uri: str, *args: str, cwd: Path, model: str = "models:/m/1") -> subprocess.CompletedProcess:
    # No ../shared weights at run time: the finder must come from the model itself.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MASKFLOW_FACE_WEIGHTS_DIR": str(cwd / "no-weights-here")}
    return subprocess.run([sys.executable, "-m", "maskflow.detect", *args, "--model", model, "--tracking-uri", uri],
                          capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@needs_shared
def test_detect_reports_one_record_per_face_at_the_stored_operating_point(yunet_model, tmp_path):
    import mlflow
    from omegaconf import OmegaConf

    from maskflow import serving
    from maskflow.export import _finder_files, register_pyfunc

    scene = SCENES / "images" / "maksssksksss0.jpg"

    def faces(*args: str, model: str = "models:/m/1") -> tuple[list[dict], subprocess.CompletedProcess]:
        jsonl = tmp_path / f"{len(list(tmp_path.glob('*.jsonl')))}.jsonl"
        proc = _detect(yunet_model, str(scene), "--jsonl", str(jsonl), *args, cwd=tmp_path, model=model)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (record,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert record["counts"] == {c: sum(f["label"] == c for f in record["faces"]) for c in ("with_mask", "without_mask")}
        return record["faces"], proc

    every, _ = faces()  # version 1 stores no operating point: every candidate
    assert len(every) >= 3 and len({tuple(f["box"]) for f in every}) == len(every)  # one record per face
    assert all(set(f["probs"]) == {"with_mask", "without_mask"} and f["probs"][f["label"]] == f["score"] for f in every)
    ranks = sorted(f["score"] * f["detector_score"] for f in every)
    point = ranks[len(ranks) // 2]
    cfg = compose(tmp_path, ["detect=yunet"])
    detector = {**OmegaConf.to_container(cfg.detect, resolve=True), "operating_point": point}
    mlflow.set_tracking_uri(yunet_model)
    mlflow.set_experiment("t")
    try:
        with mlflow.start_run():
            version = register_pyfunc("m", tiny_keras_model(tmp_path / "m.keras"),
                                      serving.meta_for(["with_mask", "without_mask"], 32, "tiny", detector),
                                      tmp_path / "meta.json", [scene], {}, finder_files=_finder_files(cfg))
    finally:
        mlflow.set_tracking_uri(None)
    model = f"models:/m/{version}"
    chosen, proc = faces(model=model)
    expected = [f for f in every if f["score"] * f["detector_score"] >= point and not f.get("implausible")]
    assert chosen == expected and 0 < len(chosen) < len(every)
    counts = {c: sum(f["label"] == c for f in chosen) for c in ("with_mask", "without_mask")}
    assert f"{scene}: {len(chosen)} faces: with_mask {counts['with_mask']}, without_mask {counts['without_mask']}" in proc.stdout
    assert faces("--all", model=model)[0] == every  # the full ranked list, for mAP tools


@needs_shared
def test_detect_cli_reports_every_bad_input_and_exits_1(yunet_model, tmp_path):
    import cv2

    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    scene = SCENES / "images" / "maksssksksss0.jpg"
    shutil.copy(scene, inputs / "a.jpg")
    cv2.imwrite(str(inputs / "a.png"), cv2.imread(str(scene)))
    shutil.copy(scene, inputs / "sub" / "a.jpg")
    cv2.imwrite(str(inputs / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    (inputs / "folder.jpg").mkdir()
    os.symlink(inputs / "gone.jpg", inputs / "dangling.jpg")
    jsonl, out = tmp_path / "faces.jsonl", tmp_path / "out"
    proc = _detect(yunet_model, str(inputs), str(tmp_path / "missing.jpg"), "--jsonl", str(jsonl), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    for reason in ("tiny.png: tiny_image", "folder.jpg: a directory", "dangling.jpg: a dangling", "missing.jpg: not found"):
        assert reason in proc.stderr, reason
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(Path(r["source"]).relative_to(inputs).as_posix() for r in records) == ["a.jpg", "a.png", "sub/a.jpg"]
    assert all(len(r["faces"]) >= 2 for r in records)  # YuNet, loaded from the model's own copy, found the faces
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["in/a.jpg", "in/a.png.jpg", "in/sub/a.jpg"]
    assert "errors=4" in proc.stderr.splitlines()[-1]

    good = _detect(yunet_model, str(inputs / "a.jpg"), cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-2000:]


@needs_shared
def test_scene_evaluation_names_unreadable_images_and_exits_1(yunet_model, tmp_path):
    """An annotation whose image is truncated or missing is named on stderr and counted;
    the rest is scored; the exit code says some input failed."""
    folder = tmp_path / "voc"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    for name in ("maksssksksss0", "maksssksksss1", "maksssksksss2"):
        shutil.copy(SCENES / "annotations" / f"{name}.xml", folder / "annotations")
    shutil.copy(SCENES / "images" / "maksssksksss0.jpg", folder / "images")
    (folder / "images" / "maksssksksss1.jpg").write_bytes((SCENES / "images" / "maksssksksss1.jpg").read_bytes()[:500])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "maskflow.evaluate_scenes", str(folder), "--split", "all", "--bootstrap", "0",
                           "--model", "models:/m/1", "--tracking-uri", yunet_model],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "maksssksksss1.jpg: unreadable" in proc.stderr  # the image: named when it is decoded
    assert "annotations/maksssksksss2.xml: image_missing" in proc.stderr  # the label file: named when it is read
    metrics = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert (metrics["scenes_images"], metrics["scenes_images_skipped"], metrics["labels_skipped"]) == (1, 1, 1)


@needs_shared
def test_one_loaded_model_answers_concurrent_calls_as_it_answers_them_one_by_one(yunet_model):
    # Servers (mlflow models serve, a thread pool, a Spark UDF) call one loaded model from
    # many threads; the finder and the interpreter keep per-call state.
    from concurrent.futures import ThreadPoolExecutor

    import mlflow
    from PIL import Image

    from maskflow.serving import encode_images

    mlflow.set_tracking_uri(yunet_model)
    try:
        model = mlflow.pyfunc.load_model("models:/m/1")
    finally:
        mlflow.set_tracking_uri(None)
    paths = [SCENES / "images" / f"maksssksksss{i}.jpg" for i in range(6)]
    assert len({Image.open(p).size for p in paths}) >= 2  # the finder's input size changes between calls
    requests = [encode_images([p]) for p in paths]
    one_by_one = [model.predict(r, params={"all": True}) for r in requests]
    assert sum(len(r[0]["faces"]) for r in one_by_one) >= 6
    with ThreadPoolExecutor(6) as pool:
        at_once = list(pool.map(lambda r: model.predict(r, params={"all": True}), requests * 3))
    assert at_once == one_by_one * 3


@needs_shared
def test_loading_a_model_leaves_no_packaged_code_on_the_path_for_spawned_processes(yunet_model):
    from maskflow.detection.detector import MaskModel

    before = list(sys.path)
    try:
        model = MaskModel.from_uri("models:/m/1", yunet_model)
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
    assert model.classifier.classes == ["with_mask", "without_mask"] and model.finder_dirs
    assert sys.path == before  # the model's code/ folder is not left in front of the project's maskflow


@needs_shared
def test_a_resolved_model_uri_starts_without_mlflow_until_the_store_is_written(tmp_path):
    """Start-up: a models:/ URI resolved once is read from its folder without importing
    MLflow, the same model as MLflow loads; moving the alias (a write to the store) makes
    the next start resolve it again, and a model folder never needs MLflow."""
    import keras
    import mlflow
    from omegaconf import OmegaConf

    from maskflow import serving
    from maskflow.backbones import to_tflite
    from maskflow.export import _finder_files, register_pyfunc

    cfg = compose(tmp_path, ["detect=yunet"])
    store = f"sqlite:///{tmp_path}/mlflow.db"
    keras_path = tiny_keras_model(tmp_path / "m.keras")
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(to_tflite(keras.models.load_model(keras_path)))
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("t")
    try:
        for point in (0.25, 0.75):  # two versions told apart by their stored operating point
            detector = {**OmegaConf.to_container(cfg.detect, resolve=True), "operating_point": point}
            with mlflow.start_run():
                register_pyfunc("m", keras_path, serving.meta_for(["with_mask", "without_mask"], 32, "tiny", detector),
                                tmp_path / f"meta{point}.json", [SCENES / "images" / "maksssksksss0.jpg"], {},
                                finder_files=_finder_files(cfg), tflite=tflite)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("m", "champion", "1")
        folder = mlflow.artifacts.download_artifacts("models:/m/2", dst_path=str(tmp_path / "copy"))
    finally:
        mlflow.set_tracking_uri(None)

    def start(uri: str) -> tuple[float, bool, str]:
        code = ("import sys; from maskflow.detection.detector import MaskModel; m = MaskModel.from_uri(sys.argv[1], sys.argv[2]); "
                "print(m.settings.operating_point, 'mlflow' in sys.modules, m.classifier.runtime, m.classifier.classes, "
                "[p.rsplit('/', 1)[-1] for p in m.finder_dirs], sep='|')")
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        proc = subprocess.run([sys.executable, "-c", code, uri, store], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        point, imported, *rest = proc.stdout.strip().splitlines()[-1].split("|")
        return float(point), imported == "True", "|".join(rest)

    first, again = start("models:/m@champion"), start("models:/m@champion")
    assert first[:2] == (0.25, True) and again[:2] == (0.25, False)  # resolved once through MLflow, then read
    assert first[2] == again[2] and again[2].startswith("tflite|['with_mask', 'without_mask']|")  # the same model
    mlflow.set_tracking_uri(store)
    try:
        mlflow.MlflowClient().set_registered_model_alias("m", "champion", "2")
    finally:
        mlflow.set_tracking_uri(None)
    assert start("models:/m@champion")[:2] == (0.75, True)  # the alias moved: resolved again, never stale
    assert start("models:/m@champion")[:2] == (0.75, False)
    assert start(folder)[:2] == (0.75, False)


@pytest.mark.slow
@needs_shared
def test_mlflow_models_serve_answers_20_concurrent_requests_as_it_answers_them_one_by_one(yunet_model, tmp_path):
    """MLflow's own server (what `mlflow models build-docker` images and managed targets
    run) calls predict from many threads: 20 requests at once all get 200, with the faces
    the same requests get one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from .test_serving import free_port, post, rows, start, stop, wait_http

    port, log = free_port(), tmp_path / "serve.log"
    proc = start(["mlflow", "models", "serve", "-m", "models:/m/1", "--env-manager", "local", "--host", "127.0.0.1",
                  "--port", str(port)], log, env={"MLFLOW_TRACKING_URI": yunet_model})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/ping", proc, 240, log)
        images = sorted((SCENES / "images").glob("*.jpg"))[:20]  # sizes differ: the finder's input size changes
        one_by_one = [post(url, rows([p])) for p in images]
        assert all(status == 200 for status, _ in one_by_one), one_by_one[:2]
        assert sum(len(body["predictions"][0]["faces"]) for _, body in one_by_one) >= 10
        with ThreadPoolExecutor(20) as pool:
            at_once = list(pool.map(lambda p: post(url, rows([p])), images))
        assert [status for status, _ in at_once] == [200] * 20, [b for s, b in at_once if s != 200][:2]
        assert [body for _, body in at_once] == [body for _, body in one_by_one]
    finally:
        stop(proc)
