"""``python -m maskflow.batch`` on a local Ray started by the job: every input a row or a
reason, the same faces as ``maskflow.detect``, parts whole or absent, and a job killed
with SIGKILL resumes without a row lost or repeated."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from maskflow.serving.batch import done_sources, list_inputs, read_rows, write_part

from .conftest import SCENES, needs_shared
from .test_detect_cli import yunet_model  # noqa: F401 - the registered tiny model with YuNet


def test_inputs_are_listed_once_and_a_source_that_names_nothing_is_reported(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/x.jpg", "a/sub/y.PNG", "a/clip.mp4", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    inputs, missing = list_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "*.jpg"), str(tmp_path / "nope"),
                                   f"file://{tmp_path}/a/sub/y.PNG"])
    names = [Path(p).name for p in inputs]
    assert sorted(names) == ["clip.mp4", "x.jpg", "y.PNG"] and len(inputs) == 3  # each once, the .txt left out
    assert missing == [(str(tmp_path / "nope"), "not found")]


def test_a_part_is_whole_or_absent_and_a_resumed_job_skips_what_parts_hold(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    face = {"box": [1, 2, 3, 4], "label": "with_mask", "score": 0.9, "detector_score": 0.8,
            "probs": {"with_mask": 0.9, "without_mask": 0.1}}
    write_part(out, [{"source": "a.jpg", "frame": 0, "faces": [], "error": None},
                     {"source": "b.jpg", "frame": 0, "faces": [], "error": "not_an_image"}])
    from maskflow.serving.batch import _row

    write_part(out, [_row("v.mp4", 0, [face]), _row("v.mp4", 5, [])])
    leftover = Path(out) / ".part-0123.parquet.deadbeef.tmp"  # what a job killed while writing leaves
    leftover.write_bytes(b"PAR1 half a file")
    assert done_sources(out) == {"a.jpg", "b.jpg", "v.mp4"}
    assert not leftover.exists()
    rows = read_rows(out)
    assert sorted((r["source"], r["frame"]) for r in rows) == [("a.jpg", 0), ("b.jpg", 0), ("v.mp4", 0), ("v.mp4", 5)]
    assert [r["faces"] for r in rows if r["source"] == "v.mp4" and r["frame"] == 0] == [[face]]


def _corpus(folder: Path) -> list[Path]:
    import cv2

    folder.mkdir()
    images = sorted((SCENES / "images").glob("*.jpg"))[:16]
    for path in images:
        shutil.copy(path, folder / path.name)
    (folder / "text.jpg").write_text("not an image")
    (folder / "cut.jpg").write_bytes(images[0].read_bytes()[:2000])
    cv2.imwrite(str(folder / "tiny.png"), np.full((8, 8, 3), 128, np.uint8))
    scene = cv2.imread(str(images[1]))
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, scene.shape[1::-1])
    for i in range(12):
        writer.write(np.roll(scene, 4 * i, axis=1))
    writer.release()
    return images


def _batch(store: str, cwd: Path, *args: str, background: bool = False):
    command = [sys.executable, "-m", "maskflow.batch", *args, "--model", "models:/m/1", "--tracking-uri", store]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MASKFLOW_FACE_WEIGHTS_DIR": str(cwd / "no-weights-here")}
    if background:  # its own process group, so that SIGKILL takes the driver and its local Ray together
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@needs_shared
def test_batch_killed_mid_job_resumes_and_matches_detect(yunet_model, tmp_path):  # noqa: F811
    images = _corpus(tmp_path / "in")
    out = tmp_path / "out"
    job = _batch(yunet_model, tmp_path, str(tmp_path / "in"), "--out", str(out), "--every", "3", "--part-size", "2",
                 background=True)
    deadline = time.time() + 600
    while time.time() < deadline and job.poll() is None and not list(out.glob("part-*.parquet")):
        time.sleep(0.2)
    assert job.poll() is None, job.communicate()[1][-3000:]  # still running: killed mid-job
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    written_before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert written_before and len(read_rows(str(out))) < 16 + 3 + 4

    proc = _batch(yunet_model, tmp_path, str(tmp_path / "in"), str(tmp_path / "missing"), "--out", str(out),
                  "--every", "3", "--part-size", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]  # inputs failed: rows with reasons, exit 1
    for name, mtime in written_before.items():  # nothing already written is rewritten
        assert (out / name).stat().st_mtime_ns == mtime
    rows = read_rows(str(out))
    keys = Counter((Path(r["source"]).name, r["frame"]) for r in rows)
    assert max(keys.values()) == 1  # no row twice
    expected = {(p.name, 0) for p in images} | {("text.jpg", 0), ("cut.jpg", 0), ("tiny.png", 0), ("missing", 0)} | {
        ("clip.mp4", i) for i in (0, 3, 6, 9)}
    assert set(keys) == expected  # no row lost: every input, every 3rd frame
    reasons = {Path(r["source"]).name: r["error"] for r in rows if r["error"]}
    assert reasons == {"text.jpg": "not_an_image", "cut.jpg": "truncated", "tiny.png": reasons["tiny.png"], "missing": "not found"}
    assert reasons["tiny.png"].startswith("tiny_image")

    # The same faces as maskflow.detect on the same images, with the model's stored settings.
    jsonl = tmp_path / "detect.jsonl"
    detect = subprocess.run([sys.executable, "-m", "maskflow.detect", *map(str, images), "--jsonl", str(jsonl),
                             "--model", "models:/m/1", "--tracking-uri", yunet_model], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert detect.returncode == 0, detect.stderr[-2000:]
    by_detect = {Path(r["source"]).name: r["faces"] for r in map(json.loads, jsonl.read_text().splitlines())}
    by_batch = {Path(r["source"]).name: r["faces"] for r in rows if r["source"].endswith(".jpg") and not r["error"]}
    assert sum(len(f) for f in by_batch.values()) >= 16
    for name, faces in by_detect.items():
        got = by_batch[name]
        assert [(f["box"], f["label"]) for f in got] == [(f["box"], f["label"]) for f in faces], name
        assert np.allclose([f["score"] for f in got], [f["score"] for f in faces], atol=1e-5)

    import mlflow

    mlflow.set_tracking_uri(yunet_model)
    try:
        runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`maskflow.command` = 'batch'")
    finally:
        mlflow.set_tracking_uri(None)
    last = runs.sort_values("start_time").iloc[-1]
    assert last["params.model_version"] == "1" and last["metrics.inputs"] == 16 + 3 + 1 + 1
    assert last["metrics.skipped_done"] >= 1 and last["metrics.scored"] == 21 - last["metrics.skipped_done"] - 1
