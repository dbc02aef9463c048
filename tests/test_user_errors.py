"""A user's mistake ends in one line that names the problem and the fix, exit code 2 (a bad
option or override) or 1 (data, weights, model, machine), and no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from .conftest import needs_shared

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("HYDRA_FULL_ERROR", None)


def _run(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**ENV, **(env or {})})


def _one_line(proc: subprocess.CompletedProcess, prog: str, *words: str) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("override, words", [
    ("seed=abc", ("seed=abc", "an integer", "seed=42")),
    ("model=nope", ("model/nope", "mobilenetv2")),  # the options it could have been
    ("train.epochz=3", ("train.epochz", "+train.epochz")),
])
def test_a_bad_override_is_one_line_and_exit_2_before_any_work(tmp_path, override, words):
    proc = _run("maskflow.pipeline", override, f"paths.output_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    _one_line(proc, "maskflow.pipeline", *words)
    assert "stage prepare" not in proc.stderr + proc.stdout


def test_a_bad_override_still_gives_the_full_traceback_when_asked(tmp_path):
    proc = _run("maskflow.pipeline", "paths.weights_dirs=[]", "model=xception", f"paths.output_dir={tmp_path}",
                env={"HYDRA_FULL_ERROR": "1"}, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@needs_shared
def test_no_usable_data_is_one_line_and_exit_1(tmp_path):
    folder = tmp_path / "empty"
    for name in ("with_mask/a.jpg", "without_mask/b.jpg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    proc = _run("maskflow.pipeline", "data=mask-faces-4k", f"data.root={folder}", "stages=[prepare]",
                f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache", cwd=tmp_path,
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert proc.returncode == 1
    _one_line(proc, "maskflow.pipeline", "no usable sample", "empty_file", "data.root")


def test_missing_weights_are_one_line_and_exit_1(tmp_path):
    proc = _run("maskflow.pipeline", "model=xception", "paths.weights_dirs=[]", f"paths.output_dir={tmp_path}", cwd=tmp_path,
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert proc.returncode == 1
    _one_line(proc, "maskflow.pipeline", "xception", "model.weights=null")


@needs_shared
@pytest.mark.parametrize("command", [("maskflow.detect", "IMAGE"), ("maskflow.evaluate_scenes", "SCENES"),
                                     ("maskflow.batch", "IMAGE", "--out", "OUT")])
def test_a_model_uri_that_does_not_resolve_is_one_line_and_exit_1_or_2(tmp_path, command):
    from .conftest import SCENES

    values = {"IMAGE": str(SCENES / "images" / "maksssksksss0.jpg"), "SCENES": str(SCENES), "OUT": str(tmp_path / "out")}
    proc = _run(*[values.get(a, a) for a in command], "--model", "models:/nope@champion", "--tracking-uri",
                f"sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    assert proc.returncode in (1, 2)
    prog = "maskflow.batch" if command[0] == "maskflow.batch" else command[0]
    _one_line(proc, prog, "models:/nope@champion", "python -m maskflow.pipeline")


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run("maskflow.serving.rest", "--port", str(port), cwd=tmp_path)
    assert proc.returncode == 1
    _one_line(proc, "maskflow.serving.rest", f"127.0.0.1:{port}", "--port")
