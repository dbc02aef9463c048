"""A real ``mlflow server`` (sqlite backend, proxied artifacts) and the champion served by
``python -m maskflow.serving.rest`` (MLflow's scoring protocol with bounded work), both on loopback.

The pipeline's own tracking calls (run, params, config artifact, pyfunc logging,
registration, promotion aliases) run against the server; the served champion is then
sent real images and bad payloads over HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .conftest import SCENES, compose, needs_shared

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # two servers start: about 40 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """``mlflow server`` as pipelines/tracking_server.sh starts it, on a free port."""
    root = tmp_path_factory.mktemp("tracking")
    port = free_port()
    log = root / "server.log"
    proc = start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                  "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1"], log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 120, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def tiny_keras_model(path: Path, size: int = 32) -> Path:
    """A small real Keras classifier (random weights), saved as the pipeline saves models."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Rescaling(1 / 127.5, offset=-1),
        keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.save(path)
    return path


def scene_images(n: int) -> list[Path]:
    return sorted(p for p in (SCENES / "images").iterdir() if p.suffix.lower() in (".png", ".jpg"))[:n]


@pytest.fixture(scope="module")
def registered(tracking_server, tmp_path_factory):
    """The pipeline's tracking calls against the server: a run with the config, a pyfunc
    registered twice (the second scores worse), champion/challenger aliases."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from maskflow import serving, tracking
    from maskflow.export import register_pyfunc
    from maskflow.promote import decide

    tmp = tmp_path_factory.mktemp("registered")
    cfg = compose(tmp, ["tracking=server", f"tracking.uri={tracking_server}"])
    examples = scene_images(2)
    versions = []
    for i, accuracy in enumerate((0.9, 0.8)):
        model_path = tiny_keras_model(tmp / f"model{i}.keras")
        with tracking.pipeline_run(cfg, ROOT, tmp) as run_id:
            mlflow.log_metric("test_accuracy", accuracy)
            meta = serving.meta_for(["with_mask", "without_mask"], 32, "tiny", {"max_side": 480, "min_face": 12,
                                                                               "min_confidence": 0.8, "margin": 0.2})
            version = register_pyfunc("maskflow", model_path, meta, tmp / f"meta{i}.json", examples,
                                      {"test_accuracy": str(accuracy), "data_digest": "d", "run_id": run_id})
            versions.append((version, run_id, decide(MlflowClient(), "maskflow", version, "test_accuracy")))
    return tracking_server, versions


def test_pipeline_tracking_calls_against_a_tracking_server(registered):
    from mlflow.tracking import MlflowClient

    uri, versions = registered
    (v1, run1, (alias1, _)), (v2, run2, (alias2, _)) = versions
    assert (alias1, alias2) == ("champion", "challenger")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(run1)
    assert run.data.metrics["test_accuracy"] == 0.9
    assert run.data.params["tracking.uri"] == uri and run.data.tags["registered_version"] == v1
    artifacts = {a.path for a in client.list_artifacts(run1)}
    assert "config.yaml" in artifacts  # stored through the server's artifact proxy
    assert client.get_model_version_by_alias("maskflow", "champion").version == v1
    assert client.get_model_version_by_alias("maskflow", "challenger").version == v2
    tags = client.get_model_version("maskflow", v1).tags
    assert tags["model_sha256"] and tags["classifier_sha256"] and tags["pyfunc_api"] == "5"


@pytest.fixture(scope="module")
def served(registered, tmp_path_factory):
    uri, _ = registered
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    log = root / "serve.log"
    # One request admitted at a time, bodies up to 32 MiB (the per-image limit is 16 MiB).
    proc = start([sys.executable, "-m", "maskflow.serving.rest", "models:/maskflow@champion", "--port", str(port),
                  "--max-in-flight", "1", "--max-body-mib", "32"], log, env={"MLFLOW_TRACKING_URI": uri})
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, 240, log)
        yield f"http://127.0.0.1:{port}", proc, log
    finally:
        stop(proc)


def post(url: str, body: bytes | dict) -> tuple[int, dict | str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except json.JSONDecodeError:
            return exc.code, text


def rows(paths: list[Path]) -> dict:
    return {"dataframe_records": [{"image": base64.b64encode(p.read_bytes()).decode(), "source": p.name} for p in paths]}


@needs_shared
def test_served_champion_detects_faces_and_refuses_bad_payloads(served, tmp_path):
    import cv2

    url, proc, log = served
    images = scene_images(4)
    status, body = post(url, rows(images))
    assert status == 200, body
    records = body["predictions"]
    assert [r["source"] for r in records] == [p.name for p in images] and all(r["frame"] == 0 for r in records)
    assert sum(len(r["faces"]) for r in records) >= 2  # real MTCNN on real scenes
    for record, path in zip(records, images):
        h, w = cv2.imread(str(path)).shape[:2]
        for face in record["faces"]:
            x, y, bw, bh = face["box"]
            assert set(face) == {"box", "label", "score", "detector_score", "probs"}
            assert face["label"] in ("with_mask", "without_mask") and 0.5 <= face["score"] <= 1.0
            assert 0 <= x < w and 0 <= y < h and bw > 0 and bh > 0 and face["detector_score"] >= 0.8

    # Each answer counts its faces per class; min_score sets the threshold a request reports at.
    assert all(r["counts"] == {c: sum(f["label"] == c for f in r["faces"]) for c in ("with_mask", "without_mask")}
               for r in records)
    status, strict = post(url, {**rows(images), "params": {"min_score": 0.9}})
    assert status == 200
    assert [r["faces"] for r in strict["predictions"]] == [
        [f for f in r["faces"] if f["score"] * f["detector_score"] >= 0.9] for r in records]

    # faces_only: each image is one face, box = the whole image.
    status, body = post(url, {**rows(images[:1]), "params": {"faces_only": True}})
    h, w = cv2.imread(str(images[0])).shape[:2]
    assert status == 200 and body["predictions"][0]["faces"][0]["box"] == [0, 0, w, h]

    bomb = tmp_path / "bomb.png"  # 20000 x 20000 pixels, a few kB compressed
    cv2.imwrite(str(bomb), np.zeros((20000, 20000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    truncated = images[0].read_bytes()[:2000]
    bad = {
        "not base64": {"dataframe_records": [{"image": "this is not base64!"}]},
        "not an image": {"dataframe_records": [{"image": base64.b64encode(b"hello, world" * 50).decode()}]},
        "truncated": {"dataframe_records": [{"image": base64.b64encode(truncated).decode()}]},
        "too many pixels": rows([bomb]),
        "too many bytes": {"dataframe_records": [{"image": "A" * (23 * 2**20)}]},  # 17 MiB decoded
        "no image column": {"dataframe_records": [{"picture": "abc"}]},
        "not json": b"{this is not json",
        "one bad row refuses the request": {"dataframe_records": rows(images[:1])["dataframe_records"] + [{"image": "@@"}]},
    }
    for name, payload in bad.items():
        status, body = post(url, payload)
        assert 400 <= status < 500, (name, status, str(body)[:300])
        message = body.get("message", "") if isinstance(body, dict) else body
        assert message, name
    assert "row 1" in post(url, bad["one bad row refuses the request"])[1]["message"]
    assert "pixel" in post(url, bad["too many pixels"])[1]["message"].lower()
    assert "MiB limit" in post(url, bad["too many bytes"])[1]["message"]

    # Still serving, with the same answers as the model loaded in this process.
    assert proc.poll() is None
    status, body = post(url, rows(images))
    assert status == 200 and body["predictions"] == records


@needs_shared
def test_served_champion_bounds_its_work(served):
    """Beyond capacity: 503 with Retry-After at once; a body over the limit: 413 unread; an
    empty list of rows: 400 that says so; the server answers throughout."""
    from concurrent.futures import ThreadPoolExecutor

    url, proc, _ = served
    body = json.dumps(rows(scene_images(4))).encode()

    def timed_post(_):
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, None, time.perf_counter() - started
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Retry-After"), time.perf_counter() - started

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(timed_post, range(6)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}, answers
    slowest_200 = max(seconds for status, _, seconds in answers if status == 200)
    for status, retry_after, seconds in answers:
        if status == 503:
            assert retry_after and int(retry_after) >= 1 and seconds < slowest_200

    # Content-Length over the 32 MiB limit: refused before the body is sent.
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as raw:
        raw.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 40000000\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):  # the server closes the connection after its answer
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and "MiB limit" in answer

    status, message = post(url, {"dataframe_records": []})
    assert status == 400 and "no rows" in message["message"]
    status, message = post(url, {"dataframe_split": {"columns": ["image"], "data": []}})
    assert status == 400 and "no rows" in message["message"]
    assert proc.poll() is None and post(url, rows(scene_images(1)))[0] == 200


def test_a_version_is_reused_only_for_the_same_files_and_settings(tmp_path):
    """Re-running export with the same model and settings reuses its version; changed
    detector settings (stored in the pyfunc's metadata) register a new one."""
    import mlflow

    from maskflow import serving
    from maskflow.export import register_pyfunc

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("t")
    try:
        model_path = tiny_keras_model(tmp_path / "model.keras")
        versions = []
        for i, peaks in enumerate(("face", "face", "class")):
            meta = serving.meta_for(["with_mask", "without_mask"], 32, "tiny", {"backend": "mtcnn", "peaks": peaks})
            with mlflow.start_run():
                versions.append(register_pyfunc("m", model_path, meta, tmp_path / f"meta{i}.json", scene_images(1), {}))
        assert versions[0] == versions[1] != versions[2]
    finally:
        mlflow.set_tracking_uri(None)


def test_a_version_left_without_its_tags_is_found_and_finished(tmp_path):
    """A run killed between register_model and the tags: the next export finds the
    version by the identity tags set with the registration, and completes its tags."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from maskflow import serving
    from maskflow.export import register_pyfunc

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("t")
    try:
        model_path = tiny_keras_model(tmp_path / "model.keras")
        meta = serving.meta_for(["with_mask", "without_mask"], 32, "tiny", {"backend": "mtcnn"})
        with mlflow.start_run():
            first = register_pyfunc("m", model_path, meta, tmp_path / "meta.json", scene_images(1), {"test_accuracy": "0.9"})
        client = MlflowClient()
        client.delete_model_version_tag("m", first, "test_accuracy")  # as if killed before the tags
        with mlflow.start_run():
            again = register_pyfunc("m", model_path, meta, tmp_path / "meta.json", scene_images(1), {"test_accuracy": "0.9"})
        assert again == first and len(client.search_model_versions("name = 'm'")) == 1
        assert client.get_model_version("m", first).tags["test_accuracy"] == "0.9"
    finally:
        mlflow.set_tracking_uri(None)
