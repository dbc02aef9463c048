"""Runs a killed process left RUNNING are closed by the next run; SIGTERM ends a run as KILLED."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from .conftest import ROOT, compose


def test_the_next_run_closes_runs_of_dead_processes_only(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from maskflow import tracking

    cfg = compose(tmp_path)
    experiment_id = tracking.configure(cfg)
    client = MlflowClient()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    orphan = client.create_run(experiment_id, tags={"host": host, "pid": str(dead.pid)}).info.run_id
    alive = client.create_run(experiment_id, tags={"host": host, "pid": str(os.getpid())}).info.run_id
    elsewhere = client.create_run(experiment_id, tags={"host": "another-host", "pid": str(dead.pid)}).info.run_id
    try:
        with tracking.pipeline_run(cfg, ROOT, tmp_path) as run_id:
            assert mlflow.active_run().info.run_id == run_id
        assert client.get_run(orphan).info.status == "KILLED"
        assert "was gone" in client.get_run(orphan).data.tags["ended_by"]
        assert client.get_run(alive).info.status == "RUNNING" and client.get_run(elsewhere).info.status == "RUNNING"
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(None)


def test_sigterm_ends_the_pipeline_run_as_killed(tmp_path):
    """A real pipeline process, terminated while it works: its MLflow run says KILLED."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "maskflow.pipeline", "data=mask-faces-4k", "stages=[prepare]", "data.workers=1",
           f"paths.cache_dir={tmp_path}/cache", f"paths.output_dir={tmp_path}/outputs",
           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.time()
    for line in proc.stdout:  # wait until the run exists and the stage works
        if "prepare:" in line or time.time() - started > 120:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        client = MlflowClient()
        (run,) = client.search_runs([client.get_experiment_by_name("maskflow").experiment_id])
        assert run.info.status == "KILLED" and "interrupted" in run.data.tags["ended_by"]
    finally:
        mlflow.set_tracking_uri(None)
