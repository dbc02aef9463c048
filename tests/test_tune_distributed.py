"""KerasTuner's distributed mode through the pipeline: a chief and two workers on
loopback share one search, each trial fitted exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .conftest import copy_real_faces, needs_shared
from .test_serving import free_port

TRIALS = 6


def launch(tmp_path: Path, name: str, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "TF_NUM_INTRAOP_THREADS": "1"}
    cmd = [sys.executable, "-m", "maskflow.pipeline", "stages=[tune]", "debug=tiny", "model=mobilenetv2_035",
           "model.weights=null", "model.input_size=64", "data=mask-faces-4k", f"data.root={tmp_path}/data", "data.workers=1",
           f"tune.max_trials={TRIALS}", "tune.epochs=2", f"paths.cache_dir={tmp_path}/cache",
           f"paths.output_dir={tmp_path}/outputs", f"hydra.run.dir={tmp_path}/{name}",
           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns", *overrides]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=(tmp_path / f"{name}.log").open("w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
@needs_shared
def test_chief_and_two_workers_share_trials(tmp_path):
    copy_real_faces(tmp_path / "data", per_class=8)
    port = free_port()
    dist = ["tune.distributed.host=127.0.0.1", f"tune.distributed.port={port}"]
    procs = {"chief": launch(tmp_path, "chief", "tune.distributed.role=chief", *dist)}
    for worker in ("w1", "w2"):
        procs[worker] = launch(tmp_path, worker, "tune.distributed.role=worker", f"tune.distributed.worker_id={worker}", *dist)
    try:
        for name, proc in procs.items():
            assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-4000:]
    finally:
        for proc in procs.values():
            proc.kill() if proc.poll() is None else None

    trials = json.loads((tmp_path / "chief" / "tune" / "trials.json").read_text())
    completed = [t for t in trials if t["status"] == "COMPLETED"]
    assert len(completed) == TRIALS
    fitted = {w: json.loads((tmp_path / w / "tune" / f"worker-{w}.json").read_text())["trials"] for w in ("w1", "w2")}
    assert all(len(f) >= 1 for f in fitted.values()), {w: len(f) for w, f in fitted.items()}  # both did work

    def key(hp: dict) -> str:
        return json.dumps(hp, sort_keys=True)

    # Every trial the chief recorded was fitted by exactly one worker, none twice.
    by_workers = Counter(key(hp) for f in fitted.values() for hp in f)
    assert by_workers == Counter(key(t["hyperparameters"]) for t in completed)
    assert max(by_workers.values()) == 1
    assert not (tmp_path / "chief" / "tune" / "worker-chief.json").exists()

    result = json.loads((tmp_path / "chief" / "tune.json").read_text())
    assert Path(result["head_model"]).is_file()  # the chief loaded the best worker checkpoint
    chief_log = (tmp_path / "chief.log").read_text()
    assert "distributed search as chief" in chief_log
    assert "the chief runs the stages after tune" in (tmp_path / "w1.log").read_text()
