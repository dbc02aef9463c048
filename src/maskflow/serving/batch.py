"""``python -m maskflow.batch SOURCE... --out DIR``: score images and videos on Ray Data.

SOURCE is a folder (recursive), a glob or a file, as a local path or any filesystem URI
fsspec reads (``s3://``, ``gs://``, ``abfs://``, ...; the filesystem's package installed).
A video becomes its frames, every ``--every``-th.

Each actor loads the model once (its files shipped through Ray's object store, so a
cluster's workers need no access to the MLflow store) and runs the detector with the
model's stored settings, exactly as ``maskflow.detect`` does. Actors read the bytes and
decode them with maskflow's own decoder, so every input that fails becomes a row with its
reason: nothing is dropped.

Output: ``DIR/part-<digest>.parquet`` files, one row per image or video frame, in the shape
of ``maskflow.detect --jsonl`` (source, frame, faces with box, label, score,
detector_score and probs) plus ``error`` (null, or why the input gave no faces). An actor
writes a part under a temporary name and renames it when complete, so a part that exists
is whole. A re-run skips every source a part already holds: an interrupted job resumes,
and nothing written is rewritten.

An MLflow run (tag ``maskflow.command=batch``) records the model version, the inputs,
faces per class, errors and throughput. Exit codes: 0 every input scored; 1 some inputs
failed (rows with their reasons); 2 bad arguments or nothing to read.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import logging
import os
import sys
import tempfile
import time
import uuid
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

from maskflow.cache import digest
from maskflow.errors import ModelNotFound, cli
from maskflow.imageio import MIN_IMAGE_SIDE, DecodeError, Frame, decode_image
from maskflow.sources import IMAGE_EXTS, VIDEO_EXTS

# Ray, pyarrow, fsspec, MLflow and the detector are imported inside the functions that
# use them: the actors import what they need, and --help stays fast.

PART_GLOB = "part-*.parquet"
PROG = "maskflow.batch"


def _fs(uri: str):
    """(fsspec filesystem, path within it) for a local path or a URI."""
    import fsspec

    return fsspec.core.url_to_fs(uri)


def _full(fs, path: str) -> str:
    """A path as the user would write it again: the URI for a remote filesystem."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def list_inputs(sources: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The inputs SOURCE names, in order and each once, and (source, reason) for each
    source that names none."""
    inputs: list[str] = []
    missing: list[tuple[str, str]] = []
    media = IMAGE_EXTS | VIDEO_EXTS
    for source in sources:
        fs, path = _fs(source)
        if glob.has_magic(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if Path(p).suffix.lower() in media]
        elif fs.isfile(path):
            found = [path]
        else:
            missing.append((source, "not found"))
            continue
        if not found:
            missing.append((source, "no images or videos in it"))
        inputs.extend(_full(fs, p) for p in sorted(found))
    return list(dict.fromkeys(inputs)), missing


def _schema(classes: Sequence[str] = ()):
    import pyarrow as pa

    face = pa.struct([("box", pa.list_(pa.int32())), ("label", pa.string()), ("score", pa.float64()),
                      ("detector_score", pa.float64()), ("probs", pa.map_(pa.string(), pa.float64()))])
    return pa.schema([("source", pa.string()), ("frame", pa.int64()), ("faces", pa.list_(face)), ("error", pa.string())])


def _row(source: str, frame: int, faces: Sequence[dict] = (), error: str | None = None) -> dict:
    return {"source": source, "frame": frame, "error": error,
            "faces": [{"box": [int(v) for v in f["box"]], "label": f["label"], "score": float(f["score"]),
                       "detector_score": float(f["detector_score"]), "probs": list(f["probs"].items())} for f in faces]}


def write_part(out: str, rows: list[dict]) -> str:
    """Write ``rows`` as one Parquet part, whole or not at all: under a temporary name,
    renamed once complete. The name is a digest of its sources, never one already taken."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = _fs(out)
    name = f"part-{digest(sorted({r['source'] for r in rows}), 16)}.parquet"
    final, temp = f"{root}/{name}", f"{root}/.{name}.{uuid.uuid4().hex}.tmp"
    with fs.open(temp, "wb") as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), handle)
    fs.mv(temp, final)
    return name


def done_sources(out: str) -> set[str]:
    """The sources the complete parts under ``out`` hold (leftover temporary files of a
    killed job are removed: they were never complete)."""
    import pyarrow.parquet as pq

    fs, root = _fs(out)
    if not fs.exists(root):
        return set()
    for temp in fs.glob(f"{root}/.part-*.tmp"):
        fs.rm(temp)
    done: set[str] = set()
    for part in fs.glob(f"{root}/{PART_GLOB}"):
        with fs.open(part, "rb") as handle:
            done.update(pq.read_table(handle, columns=["source"]).column("source").to_pylist())
    return done


def read_rows(out: str) -> list[dict]:
    """Every row of every part under ``out`` (for checks and small jobs)."""
    import pyarrow.parquet as pq

    fs, root = _fs(out)
    rows: list[dict] = []
    for part in sorted(fs.glob(f"{root}/{PART_GLOB}")):
        with fs.open(part, "rb") as handle:
            for row in pq.read_table(handle).to_pylist():
                for face in row["faces"]:
                    face["probs"] = dict(face["probs"])
                rows.append(row)
    return rows


def pack_model(model_uri: str) -> bytes:
    """The model's files as one zip, for Ray's object store."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(local))
    return buffer.getvalue()


class Scorer:
    """A Ray Data actor: one model, loaded once; each batch of sources becomes one part."""

    def __init__(self, packed: list, out: str, every: int, cpus: float = 1.0) -> None:
        import cv2
        import ray

        from maskflow.detection.detector import MaskModel, build_detector

        folder = tempfile.mkdtemp(prefix="maskflow-model-")
        data = ray.get(packed[0])
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(folder)
        # The cores this actor reserved, not the machine's: actors side by side do not
        # oversubscribe it (Ray sets OMP_NUM_THREADS, which LiteRT reads, the same way).
        cv2.setNumThreads(max(1, int(cpus)))
        os.environ["OMP_NUM_THREADS"] = str(max(1, int(cpus)))
        model = MaskModel.from_uri(folder)
        # The model's stored settings, operating point included: what `maskflow.detect` runs.
        self.detector = build_detector(model.settings, model)
        self.out, self.every = out, max(1, int(every))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from maskflow.detection.detector import pipelined

        failed: list[dict] = []

        def frames() -> Iterator[Frame]:
            for source in batch["source"]:
                for item in self.read(str(source)):
                    if isinstance(item, Frame):
                        yield item
                    else:
                        failed.append(item)

        # As maskflow.detect runs: the finder on frame n+1 overlaps labelling frame n.
        rows = [_row(frame.source, frame.index, faces) for frame, faces in pipelined(self.detector, frames())]
        rows += failed
        write_part(self.out, rows)
        return {"source": [r["source"] for r in rows], "error": [r["error"] for r in rows],
                # Each row's face labels, one per line (a class name may hold a space, never a newline).
                "labels": ["\n".join(f["label"] for f in r["faces"]) for r in rows]}

    def read(self, source: str) -> Iterator[Frame | dict]:
        """The frames of ``source``, or the row that says why it has none."""
        if Path(source.split("?")[0]).suffix.lower() in VIDEO_EXTS:
            yield from self._video(source)
            return
        try:
            fs, path = _fs(source)
            with fs.open(path, "rb") as handle:
                rgb = decode_image(handle.read()).rgb
        except DecodeError as exc:
            yield _row(source, 0, error=exc.reason)  # as maskflow.detect names it
            return
        except OSError as exc:
            yield _row(source, 0, error=f"unreadable: {exc}")
            return
        if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
            yield _row(source, 0, error=f"tiny_image ({rgb.shape[1]}x{rgb.shape[0]} px, under {MIN_IMAGE_SIDE} px)")
            return
        yield Frame(source, 0, rgb, False)

    def _video(self, source: str) -> Iterator[Frame | dict]:
        import cv2

        fs, path = _fs(source)
        local, temp = path, None
        try:
            if _full(fs, path) != path:  # OpenCV opens files, not URIs: a remote video is copied first
                handle, temp = tempfile.mkstemp(suffix=Path(path).suffix)
                os.close(handle)
                fs.get(path, temp)
                local = temp
        except OSError as exc:
            yield _row(source, 0, error=f"unreadable: {exc}")
            return
        cap = cv2.VideoCapture(local)
        try:
            if not cap.isOpened():
                yield _row(source, 0, error="cannot open video")
                return
            index = kept = 0
            while cap.grab():
                if index % self.every == 0:
                    ok, bgr = cap.retrieve()
                    if ok:
                        kept += 1
                        yield Frame(source, index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), True)
                index += 1
            if kept == 0:
                yield _row(source, 0, error="no decodable frames")
        finally:
            cap.release()
            if temp:
                os.unlink(temp)


def run(sources: Sequence[str], out: str, packed: bytes, actors: int = 1, every: int = 1, part_size: int = 64,
        cpus_per_actor: float | None = None) -> dict[str, Any]:
    """Score the inputs of ``sources`` not yet under ``out`` with the model ``packed``
    (:func:`pack_model`); Ray must be initialised. Returns the job's totals."""
    import ray

    started = time.perf_counter()
    fs, root = _fs(out)
    fs.makedirs(root, exist_ok=True)
    inputs, missing = list_inputs(sources)
    done = done_sources(out)
    todo = [s for s in inputs if s not in done]
    misses = [(s, reason) for s, reason in missing if s not in done]
    if misses:  # a source that names nothing is a row too, so a re-run does not repeat it
        write_part(out, [_row(s, 0, error=reason) for s, reason in misses])
    totals: Counter = Counter()
    rows = errors = faces = 0
    if todo:
        cpus = cpus_per_actor or max(1.0, float(ray.available_resources().get("CPU", 1)) // max(1, actors))
        dataset = ray.data.from_items([{"source": s} for s in todo], override_num_blocks=max(1, len(todo) // part_size))
        # The model goes into the object store once, for every actor (nested in a list, so
        # Ray hands each actor the reference and the actor fetches it).
        scored = dataset.map_batches(Scorer, fn_constructor_args=([ray.put(packed)], out, every, cpus), batch_size=part_size,
                                     compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, batch_format="numpy")
        for row in scored.iter_rows():
            rows += 1
            errors += row["error"] is not None
            labels = [label for label in str(row["labels"]).split("\n") if label]
            faces += len(labels)
            totals.update(labels)
    wall = time.perf_counter() - started
    return {"inputs": len(inputs) + len(missing), "skipped_done": len(inputs) + len(missing) - len(todo) - len(misses),
            "scored": len(todo), "rows": rows + len(misses), "errors": errors + len(misses), "faces": faces,
            "wall_s": round(wall, 2), "rows_per_s": round(rows / wall, 3) if wall > 0 else 0.0,
            **{f"faces_{c}": n for c, n in sorted(totals.items())}}


@cli("maskflow.batch")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="folder, glob or file: a local path or a filesystem URI (s3://...)")
    parser.add_argument("--out", required=True, help="folder (or URI) of the Parquet parts; a re-run resumes there")
    parser.add_argument("--model", default="models:/maskflow@champion", help="MLflow model URI or local MLflow model folder")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else the project's sqlite store")
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster: auto, or ray://HEAD:10001 (default: start Ray on this machine)")
    parser.add_argument("--actors", type=int, default=None,
                        help="model replicas, one model each (default: one per CPU of this machine or cluster)")
    parser.add_argument("--cpus-per-actor", type=float, default=None, help="default: this machine's or cluster's CPUs / actors")
    parser.add_argument("--every", type=int, default=1, help="on video, score every k-th frame")
    parser.add_argument("--part-size", type=int, default=64, help="sources per Parquet part (the unit of resumption)")
    args = parser.parse_args(argv)
    if (args.actors is not None and args.actors < 1) or args.every < 1 or args.part_size < 1:
        parser.error("--actors, --every and --part-size must be 1 or more")

    import mlflow
    import ray

    from maskflow.tracking import command_store, registered_version

    command_store(args.tracking_uri)
    try:  # the model's files, fetched once here and shipped to every actor
        packed = pack_model(args.model)
        version = registered_version(mlflow.MlflowClient(), args.model)[1]
    except Exception as exc:  # noqa: BLE001 - an unknown name, alias, run or folder: MLflow's message says which
        raise ModelNotFound.at(args.model, mlflow.get_tracking_uri(), exc, "pass --model URI") from exc
    # Actors' own output stays in Ray's logs (/tmp/ray/session_latest/logs): every failed
    # input is a row with its reason, and an actor's crash reaches the driver as an error.
    ray.init(address=args.address, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and log paths: not for the reader
    # One single-threaded actor per core beat one actor using every core (BENCHMARKS.md).
    args.actors = args.actors or max(1, int(ray.available_resources().get("CPU", 1)))
    with mlflow.start_run(run_name=f"batch-{digest(args.sources, 8)}", tags={"maskflow.command": "batch"}):
        mlflow.log_params({"model": args.model, "model_version": version or "", "sources": json.dumps(args.sources)[:6000],
                           "out": args.out, "actors": args.actors, "every": args.every, "address": args.address or "local"})
        totals = run(args.sources, args.out, packed, args.actors, args.every, args.part_size, args.cpus_per_actor)
        mlflow.log_metrics({k: float(v) for k, v in totals.items()})
    ray.shutdown()
    print(f"{PROG}: " + " ".join(f"{k}={v}" for k, v in totals.items()), file=sys.stderr)
    return 1 if totals["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
