"""MLflow set-up for one pipeline invocation: the store, the experiment, the run.

Default store: ``sqlite:///<project>/mlflow.db`` with artifacts under ``<project>/mlruns/``,
which is what a plain ``mlflow ui`` started in the project root reads. ``tracking=server``
points at a tracking server instead.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from maskflow.cache import file_lock

# MLflow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

log = logging.getLogger(__name__)


def configure(cfg: DictConfig) -> str:
    """Point MLflow at the configured store and make sure the experiment exists."""
    tracking = cfg.tracking
    return use_store(str(tracking.uri), str(tracking.experiment), tracking.get("artifact_root"), tracking.get("registry_uri"))


def use_store(uri: str, experiment: str, artifact_root: str | None = None, registry_uri: str | None = None) -> str:
    """Point MLflow at the store ``uri`` and select ``experiment`` (created with its
    artifacts under ``artifact_root/<experiment>`` when new); its id."""
    import mlflow

    # "Creating initial MLflow database tables" and its migrations, on a new store: MLflow's notes.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    if registry_uri:
        mlflow.set_registry_uri(str(registry_uri))
    if uri.startswith("sqlite:///"):
        # Parallel jobs (joblib multirun, tuning workers) opening a new sqlite store at
        # once would race on its schema migration: the first creates it, the rest wait.
        with file_lock(Path(uri[len("sqlite:///"):] + ".lock")):
            found = mlflow.get_experiment_by_name(experiment)
    else:
        found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        location = Path(artifact_root).resolve().as_uri() + f"/{experiment}" if artifact_root else None
        try:
            experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        except Exception:  # noqa: BLE001 - a parallel multirun job created it first
            experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    else:
        experiment_id = found.experiment_id
    if found is None or "mlflow.experimentKind" not in found.tags:
        # MLflow 3's UI opens an experiment of unknown kind on its GenAI overview (traces,
        # tokens); this one holds training runs, so it opens on the runs table.
        with _quiet_race():
            mlflow.MlflowClient().set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextmanager
def _quiet_race() -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a parallel job tagged it first, or the server refuses: the UI only
        log.debug("experiment kind not set: %s", exc)


def ui_links(experiment_id: str, model_name: str | None = None) -> list[str]:
    """Where to look at this experiment's runs and the registered model in MLflow's UI."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        base, start = uri.rstrip("/"), None
    else:
        base, start = "http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {uri}"
    lines = [f"runs: {base}/#/experiments/{experiment_id}/runs"]
    if model_name:
        lines.append(f"registered model: {base}/#/models/{model_name}")
    return ([f"MLflow UI ({start}, then open):"] if start else ["MLflow UI:"]) + [f"  {line}" for line in lines]


def command_store(tracking_uri: str | None = None) -> str:
    """The MLflow store a command (``calibrate``, ``evaluate_scenes --mlflow``) logs to:
    ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the project's, selected with the
    pipeline's experiment (conf/tracking), so its runs sit beside the training runs."""
    from maskflow.config import PROJECT_ROOT, compose_option

    tracking = compose_option("tracking", "local")
    default = f"sqlite:///{PROJECT_ROOT}/mlflow.db"
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default
    # Artifacts beside the store: the project's mlruns/ for the project's store.
    root = str(PROJECT_ROOT / "mlruns") if uri == default else (
        str(Path(uri[len("sqlite:///"):]).parent / "mlruns") if uri.startswith("sqlite:///") else None)
    use_store(uri, str(tracking.experiment), root)
    return uri


def registered_version(client, uri: str) -> tuple[str | None, str | None]:
    """(registered model name, version) a ``models:/`` URI names; (None, None) otherwise."""
    if not uri.startswith("models:/"):
        return None, None
    name, _, alias = uri[len("models:/"):].partition("@")
    if alias:
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = uri[len("models:/"):].partition("/")
    if version.isdigit():
        return name, version
    latest = client.search_model_versions(f"name = '{name}'")  # models:/name/latest, or models:/name
    return name, str(max(int(v.version) for v in latest)) if latest else None


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pip_requirements() -> list[str]:
    """Pinned requirements of the MLflow models this project logs (no slow inference)."""

    packages = ("ai-edge-litert", "onnxruntime", "tensorflow", "keras", "numpy", "pandas", "pillow", "opencv-python-headless",
                "mlflow", "mtcnn", "omegaconf")
    return [f"{p}=={version(p)}" for p in packages]


def flat_params(cfg: DictConfig, prefix: str = "") -> dict[str, str]:
    """The resolved config as flat ``group.key`` params (MLflow caps values at 6000 chars)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, str] = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        else:
            out[path] = str(node)[:6000]

    walk(container, prefix)
    return out


@contextmanager
def pipeline_run(cfg: DictConfig, root: Path, run_dir: Path) -> Iterator[str]:
    """One MLflow run per pipeline invocation, with config, commit and run folder."""
    import mlflow

    experiment_id = configure(cfg)

    tags = {"git_commit": git_commit(root), "run_dir": str(run_dir), "model": cfg.model.name, "data": cfg.data.name,
            # thread caps set by a launcher (conf/launcher/joblib.yaml), to compare timings fairly
            "tf_intraop_threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default"),
            # who runs it, so a later run can tell a dead run from a live one
            "host": socket.gethostname(), "pid": str(os.getpid())}
    close_dead_runs(experiment_id)
    # SIGTERM (a scheduler, `kill`) ends the run as KILLED instead of leaving it RUNNING;
    # SIGKILL cannot be caught: close_dead_runs marks that run when the next one starts.
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        with mlflow.start_run(run_name=cfg.get("run_name"), tags=tags) as run:
            params = flat_params(cfg)
            items = sorted(params.items())
            for i in range(0, len(items), 90):  # MLflow accepts at most 100 params per batch
                mlflow.log_params(dict(items[i : i + 90]))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            try:
                yield run.info.run_id
            except KeyboardInterrupt:
                mlflow.set_tag("ended_by", "interrupted (SIGINT or SIGTERM)")
                mlflow.end_run("KILLED")
                raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:

    return threading.current_thread() is threading.main_thread()


def _terminate(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt("SIGTERM")


def close_dead_runs(experiment_id: str) -> int:
    """Runs of this experiment left RUNNING by a process of this host that no longer
    exists (killed with SIGKILL, or the machine stopped) are marked KILLED, with a tag
    saying why; runs of live processes and of other hosts are left alone."""

    from mlflow.tracking import MlflowClient

    client, host, closed = MlflowClient(), socket.gethostname(), 0
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=200):
        pid = run.data.tags.get("pid")
        if run.data.tags.get("host") != host or not (pid or "").isdigit() or _alive(int(pid)):
            continue
        client.set_tag(run.info.run_id, "ended_by", f"process {pid} on {host} was gone when a later run started")
        client.set_terminated(run.info.run_id, "KILLED")
        closed += 1
    return closed


def _alive(pid: int) -> bool:

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
