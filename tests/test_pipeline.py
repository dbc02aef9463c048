"""The Hydra app end to end on a CI-sized real subset, in a subprocess from another
working directory, with the real MLflow sqlite store and model registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskflow.pipeline import plan

from .conftest import copy_real_faces, needs_shared


def test_plan_adds_upstream_stages_in_order():
    assert plan(["prepare"]) == ["prepare"]
    assert plan(["finetune"]) == ["prepare", "tune", "finetune"]
    assert plan(["evaluate"]) == ["prepare", "tune", "finetune", "ensemble", "facedet", "evaluate"]
    assert plan(["export", "prepare"]) == ["prepare", "tune", "finetune", "ensemble", "facedet", "evaluate", "export"]
    assert plan(["facedet"]) == ["prepare", "facedet"]
    with pytest.raises(ValueError):
        plan(["deploy"])


def run_pipeline(tmp_path: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    flags = [o for o in overrides if o == "-m"]  # Hydra's flags go before the overrides
    overrides = [o for o in overrides if o != "-m"]
    if any(o.startswith("data.root=") for o in overrides) and not any(o.startswith("data=") for o in overrides):
        overrides.insert(0, "data=mask-faces-4k")  # a folder of real photos, not the default union
    cmd = [sys.executable, "-m", "maskflow.pipeline", *flags,
           f"paths.cache_dir={tmp_path}/cache", f"paths.output_dir={tmp_path}/outputs",
           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns", *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _truncated_video(path: Path, image: Path) -> None:
    """A short MJPEG AVI of one real image, cut in the middle of its data."""
    import cv2

    frame = cv2.resize(cv2.imread(str(image)), (160, 120))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(20):
        writer.write(np.roll(frame, i, axis=1))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


def _client(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return MlflowClient()


@needs_shared
def test_prepare_only_from_another_directory(tmp_path):
    data = copy_real_faces(tmp_path / "data", per_class=5)
    proc = run_pipeline(tmp_path, "stages=[prepare]", f"data.root={data}", "data.workers=1")
    assert "stage prepare done" in proc.stdout + proc.stderr
    client = _client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("maskflow").experiment_id])
    assert "prepare_time_s" in run.data.metrics and run.data.params["data_digest"]
    assert run.data.tags["git_commit"] and run.data.params["model.name"] == "mobilenetv2_128"
    assert run.inputs.dataset_inputs  # the dataset digest, through mlflow.data
    assert not any(p for p in Path(tmp_path).glob("stage_*"))


@needs_shared
def test_missing_weights_fail_fast_with_clear_message(tmp_path, monkeypatch):
    proc = run_pipeline(tmp_path, "model=xception", "paths.weights_dirs=[]", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in output
    assert "model.weights=null" in output
    assert "stage prepare" not in output  # stopped before any work


@pytest.mark.slow
@needs_shared
def test_full_pipeline_registers_and_promotes(tmp_path):
    data = copy_real_faces(tmp_path / "data", per_class=30)
    common = ("debug=tiny", "model=mobilenet_025", f"data.root={data}", "data.limit_per_class=null",
              "evaluate.extra=[]", "export.eval_limit=20")
    cold = run_pipeline(tmp_path, *common)
    # stderr holds maskflow's own lines only: no third-party notes (TF, Keras, MLflow, sklearn).
    assert [line for line in cold.stderr.splitlines() if line.strip()] == [], cold.stderr[-3000:]
    client = _client(tmp_path)
    champion = client.get_model_version_by_alias("maskflow", "champion")
    (run,) = client.search_runs([client.get_experiment_by_name("maskflow").experiment_id])
    metrics = run.data.metrics
    for key in ("test_accuracy", "test_f1_macro", "test_roc_auc", "test_ece", "latency_ms_b1", "throughput_b32",
                "params_total", "val_accuracy", "train_time_s", "tune_trials", "export_tflite_int8_test_accuracy",
                "prepare_time_s", "tune_time_s", "finetune_time_s", "evaluate_time_s", "export_time_s",
                "scenes_map50", "scenes_map50_ci95_low", "xtest_mask_faces_4k_detect_found", "operating_point",
                "scenes_val_op_f1", "scenes_op_precision", "scenes_op_f1_ci95_low", "scenes_val_map50"):
        assert key in metrics, key
    assert champion.tags["backbone"] == "mobilenet_025"

    # Re-run with nothing changed: every stage from the cache, and the training cost it
    # reports is what the first run spent, not the seconds of reading the cache.
    run_pipeline(tmp_path, *common)
    warm = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time DESC"])[0].data.metrics
    cost = ("tune_embed_compute_s", "tune_search_compute_s", "train_time_s")
    assert [warm[k] for k in cost] == [metrics[k] for k in cost] and metrics["tune_search_compute_s"] > 0
    assert (warm["tune_cached"], warm["finetune_cached"], metrics["tune_cached"]) == (1.0, 1.0, 0.0)
    assert warm["tune_time_s"] < metrics["tune_time_s"]

    # A fresh process loads the champion and classifies real face images.
    faces = sorted((data / "with_mask").iterdir())[:2] + sorted((data / "without_mask").iterdir())[:2]
    script = (
        "import json,sys,mlflow; from maskflow.serving import encode_images;"
        f"mlflow.set_tracking_uri('sqlite:///{tmp_path}/mlflow.db');"
        "m=mlflow.pyfunc.load_model('models:/maskflow@champion');"
        "crops=m.predict(encode_images(sys.argv[1:]), params={'faces_only': True});"
        "found=m.predict(encode_images(sys.argv[1:]), params={'all': True});"
        "answer=m.predict(encode_images(sys.argv[1:]));"
        "op=m.unwrap_python_model().detector_settings.get('operating_point');"
        "print(json.dumps([r['faces'][0] for r in crops])); print(json.dumps(found)); print(json.dumps([answer, op]))"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, faces)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records, found, (answer, op) = (json.loads(line) for line in proc.stdout.strip().splitlines()[-3:])
    assert len(records) == 4
    assert all(r["label"] in ("with_mask", "without_mask") and 0.5 <= r["score"] <= 1.0 for r in records)
    # Without faces_only the same model finds faces with the registered finder (YuNet, its
    # file inside the model): one record per image, same shape as detect --jsonl.
    assert [r["source"] for r in found] == [f"row-{i}" for i in range(4)] and all(r["frame"] == 0 for r in found)
    assert sum(len(r["faces"]) for r in found) >= 3
    assert all(f["label"] in ("with_mask", "without_mask") and len(f["box"]) == 4 for r in found for f in r["faces"])
    # By default the answer is what a reader gets: the faces at the operating point that
    # evaluate chose on the val scenes and export stored with the model, counted per class.
    assert op == pytest.approx(metrics["operating_point"]) and 0 < op < 1
    for every, chosen in zip(found, answer):
        at_point = [f for f in every["faces"] if f["score"] * f["detector_score"] >= op and not f.get("implausible")]
        assert chosen["faces"] == at_point
        assert sum(chosen["counts"].values()) == len(at_point) and set(chosen["counts"]) == {"with_mask", "without_mask"}
    # The scene numbers travel with the version, so promote_metric=scenes_map50 works.
    assert float(champion.tags["scenes_map50"]) == pytest.approx(metrics["scenes_map50"], abs=1e-5)

    # A re-run with nothing changed takes every stage from the cache, evaluate and export too.
    proc = run_pipeline(tmp_path, *common)
    assert "evaluate: cached result" in proc.stderr + proc.stdout and "export: cached" in proc.stderr + proc.stdout

    # The detect CLI on face crops (+ a corrupt image and a truncated video): JSON lines
    # in the documented shape, bad inputs reported, a summary line on stderr.
    inputs = tmp_path / "detect_in"
    inputs.mkdir()
    for p in faces:
        (inputs / p.name).write_bytes(p.read_bytes())
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff broken")
    _truncated_video(inputs / "clip.avi", faces[0])
    jsonl = tmp_path / "faces.jsonl"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "maskflow.detect", str(inputs), "--faces-only", "--jsonl", str(jsonl),
                           "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--out", str(tmp_path / "annotated")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 1, proc.stderr[-3000:]  # one input (corrupt.jpg) could not be read; the rest were written
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    images = [r for r in lines if not r["source"].endswith(".avi")]
    assert len(images) == 4 and all(r["frame"] == 0 and len(r["faces"]) == 1 for r in images)
    face = images[0]["faces"][0]
    assert set(face) == {"box", "label", "score", "detector_score", "probs"} and len(face["box"]) == 4
    assert sum(r["source"].endswith(".avi") for r in lines) >= 5  # frames before the break were kept
    outside = time.perf_counter() - started
    assert "corrupt.jpg" in proc.stderr and "frames=" in proc.stderr.splitlines()[-1]
    summary = dict(item.split("=") for item in proc.stderr.splitlines()[-1].split(": ", 1)[1].split())
    assert int(summary["frames"]) == len(lines)
    # The summary's wall clock is the command's (start-up and model load included).
    assert outside - 5.0 <= float(summary["wall_s"]) <= outside  # less interpreter start-up
    assert float(summary["fps"]) == pytest.approx(len(lines) / float(summary["wall_s"]), rel=0.02)

    # A worse configuration (random weights, no fine-tuning; the trained CenterNet as its
    # detector, one tiny epoch) must not take the champion alias.
    run_pipeline(tmp_path, *common, "model.weights=null", "train.epochs=0", "tune.max_trials=1", "experiment=centernet")
    again = client.get_model_version_by_alias("maskflow", "champion")
    if again.version != champion.version:  # only allowed if it truly scored higher
        assert float(again.tags["test_accuracy"]) > float(champion.tags["test_accuracy"])
    versions = client.search_model_versions("name = 'maskflow'")
    assert len(versions) == 2
    (latest,) = [v for v in versions if v.version != champion.version]
    assert latest.tags["facedet_val_map50"]  # the CenterNet's numbers travel with its version

    # The comparison report is read back from the MLflow runs.
    proc = subprocess.run([sys.executable, "-m", "maskflow.report", "--out", str(tmp_path / "cmp"),
                           "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| mobilenet_025 |" in table and (tmp_path / "cmp" / "comparison.png").stat().st_size > 0


@needs_shared
def test_joblib_multirun_runs_jobs_in_parallel_processes(tmp_path):
    """Two prepare jobs through the joblib launcher: separate processes, one TF thread
    each (conf/launcher/joblib.yaml), both runs in the one sqlite store."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    data = copy_real_faces(tmp_path / "data", per_class=4)
    proc = run_pipeline(tmp_path, "-m", "launcher=joblib", "stages=[prepare]", f"data.root={data}", "seed=1,2",
                        f"hydra.sweep.dir={tmp_path}/sweep")
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("maskflow").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2"]
    assert {r.data.tags["tf_intraop_threads"] for r in runs} == {"1"}
    assert {r.data.params["data.workers"] for r in runs} == {"1"}
    assert len({r.data.tags["run_dir"] for r in runs}) == 2


@pytest.mark.slow
@needs_shared
def test_ensemble_stage_trains_a_member_per_further_seed_and_caches_the_average(tmp_path):
    """train.ensemble_seeds: the further seed trains in a nested MLflow run, the stage
    returns the averaged model (what evaluate and export use), and a re-run takes it all
    from the cache, the members' training cost kept."""
    data = copy_real_faces(tmp_path / "data", per_class=12)
    common = ("debug=tiny", "model=mobilenet_025", "model.input_size=96", f"data.root={data}", "train.ensemble_seeds=[7]",
              "stages=[prepare,tune,finetune,ensemble]")
    run_pipeline(tmp_path, *common)
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("maskflow").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (member,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert member.data.params["seed"] == "7" and "train_time_s" in member.data.metrics
    assert parent.data.metrics["ensemble_members"] == 2.0 and parent.data.metrics["ensemble_members_compute_s"] > 0
    result = json.loads(next((tmp_path / "outputs").rglob("ensemble.json")).read_text())
    finetuned = json.loads(next((tmp_path / "outputs").rglob("finetune.json")).read_text())
    assert "/ensemble/" in result["model_path"] and result["model_path"] != finetuned["model_path"]
    assert Path(result["tflite_path"]).is_file()

    run_pipeline(tmp_path, *common)
    warm = client.search_runs([experiment], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    warm_parent = next(r for r in warm if "mlflow.parentRunId" not in r.data.tags and r.info.run_id != parent.info.run_id)
    assert warm_parent.data.metrics["ensemble_members_compute_s"] == parent.data.metrics["ensemble_members_compute_s"]
    assert warm_parent.data.metrics["ensemble_time_s"] < parent.data.metrics["ensemble_time_s"]
