"""A registered maskflow model read from its files, without importing MLflow, where that is safe.

Resolving ``models:/maskflow@champion`` through MLflow costs about 1.5 s of a 1.9 s start
(importing MLflow and its sqlite store), paid by every ``maskflow.detect`` call, batch
actor and server; the model itself is a folder of files. So:

- a model folder written by MLflow (it holds an ``MLmodel``) is read directly;
- a ``models:/`` URI in a sqlite store is resolved through MLflow once, and the folder it
  resolves to is kept in a file beside the store with the store's size and modification
  time: any write to the store (an alias moved, a version registered or deleted) makes
  the next start resolve it again.

Only versions whose classifier runs through LiteRT are read this way; older (Keras)
versions and the trained face detector load through MLflow as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

from maskflow.cache import atomic_write_json

log = logging.getLogger(__name__)


def _memo(store: Path) -> Path:
    """Where a store's resolved URIs are kept: beside it (``mlflow.db.maskflow-uris.json``), rewritten whole."""
    return store.with_name(store.name + ".maskflow-uris.json")


def artifact_files(model_dir: str | Path) -> dict[str, str] | None:
    """The pyfunc artifacts (name -> file) of a maskflow model folder whose classifier runs
    through LiteRT, or None where the folder is anything else (MLflow then loads it)."""
    model_dir = Path(model_dir)
    try:
        import yaml

        spec = yaml.safe_load((model_dir / "MLmodel").read_text())
        flavor = spec["flavors"]["python_function"]
        artifacts = {name: str(model_dir / entry["path"]) for name, entry in flavor["artifacts"].items()}
    except (OSError, KeyError, TypeError, AttributeError, ValueError):
        return None
    if flavor.get("loader_module") != "mlflow.pyfunc.model" or "face_detector" in artifacts:
        return None
    if not {"meta", "tflite_model"} <= artifacts.keys() or not all(Path(p).is_file() for p in artifacts.values()):
        return None
    return artifacts


def store_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else None (a server: never remembered)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = Path(tracking_uri[len("sqlite:///"):].split("?")[0])
    return path if path.is_file() else None


def _stamp(store: Path) -> list:
    """What changes with every write to a sqlite store: its file's and its write-ahead log's size and time."""
    stamp = []
    for path in (store, store.with_name(store.name + "-wal")):
        if path.exists():
            info = path.stat()
            stamp.append([path.name, info.st_size, info.st_mtime_ns])
    return stamp


def _entries(store: Path) -> dict:
    try:
        return json.loads(_memo(store).read_text())
    except (OSError, ValueError):
        return {}


def remembered(uri: str, tracking_uri: str) -> Path | None:
    """The folder ``uri`` resolved to, if the store has not been written since."""
    store = store_file(tracking_uri)
    if store is None or not uri.startswith("models:/"):
        return None
    entry = _entries(store).get(uri)
    if not entry or entry.get("stamp") != _stamp(store):
        return None
    return Path(entry["folder"])


def remember(uri: str, tracking_uri: str) -> None:
    """Resolve ``uri`` through MLflow (already imported by the caller) and keep its folder,
    where it is a local one. A cache only: a failure to write it is logged, not raised."""
    store = store_file(tracking_uri)
    if store is None or not uri.startswith("models:/"):
        return
    try:
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        stamp = _stamp(store)  # before resolving: a write meanwhile makes the entry stale, never wrong
        location = urlparse(ModelsArtifactRepository.get_underlying_uri(uri))
        if location.scheme not in ("", "file") or artifact_files(unquote(location.path)) is None:
            return
        entries = _entries(store)
        entries[uri] = {"stamp": stamp, "folder": unquote(location.path)}
        atomic_write_json(_memo(store), entries)
    except Exception as exc:  # noqa: BLE001 - the model is loaded already; only the next start is slower
        log.debug("model URI %s not remembered: %s", uri, exc)
