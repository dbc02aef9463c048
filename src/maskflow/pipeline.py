"""``python -m maskflow.pipeline``: the Hydra entry point that runs the configured stages.

Stages run in their canonical order; a stage whose upstream was not asked for runs that
upstream too (cheap: every stage is cached by content). Each stage's time is logged as
``<stage>_time_s`` and its outputs as artifacts under ``<stage>/`` in one MLflow run.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars on stderr for each model read back

from maskflow.detection.litert import native_stderr_muted  # noqa: E402 - light (numpy only)

# TensorFlow's C++ prints its oneDNN, CUDA-driver and CPU-feature notes before any log
# setting applies, and on a machine without a GPU a failed cuInit when it first looks for
# one: both done once here with stderr muted, so the stages' imports are silent.
with native_stderr_muted():
    import tensorflow  # noqa: E402

    tensorflow.config.list_physical_devices("GPU")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from maskflow import tracking
from maskflow.backbones import resolve_weights
from maskflow.config import CONF_DIR, PROJECT_ROOT, compose_option, register_configs
from maskflow.contracts import StageContext, to_jsonable
from maskflow.detection.finders import file_sha256, finder_files
from maskflow.detection.weights import resolve
from maskflow.errors import UserError, full_error, one_line, report

# MLflow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

log = logging.getLogger("maskflow")

STAGES = ("prepare", "tune", "finetune", "ensemble", "facedet", "evaluate", "export", "promote")
REQUIRES = {"tune": ["prepare"], "finetune": ["tune"], "ensemble": ["finetune"], "facedet": ["prepare"],
            "evaluate": ["ensemble", "facedet"],
            "export": ["evaluate"], "promote": ["export"]}


def plan(requested: list[str]) -> list[str]:
    """Requested stages plus their upstream stages, in canonical order."""
    unknown = [s for s in requested if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    needed = set()

    def add(stage: str) -> None:
        if stage not in needed:
            needed.add(stage)
            for up in REQUIRES.get(stage, []):
                add(up)

    for stage in requested:
        add(stage)
    return [s for s in STAGES if s in needed]


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the stages of ``cfg.stages`` inside one MLflow run; return the stage outputs."""
    import mlflow

    stages = plan(list(cfg.stages))
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # TF's INFO ("Assets written to ..."): not for users
    if {"tune", "finetune"} & set(stages):
        # Fail fast, before any data work, when the backbone's weights cannot be had.
        resolve_weights(cfg.model, list(cfg.paths.weights_dirs))
    if "facedet" in stages and str(cfg.detect.get("backend", "mtcnn")) == "facedet":
        resolve_weights(compose_option("model", str(cfg.facedet.backbone)), list(cfg.paths.weights_dirs))
    if {"prepare", "evaluate", "export"} & set(stages):
        # A pretrained finder's files are checked (sha256) before any work, not at evaluate.
        finders = cfg.detect.get("finders") or {}
        backend = str(cfg.detect.get("backend", "mtcnn"))
        names = finder_files(backend, finders)
        for part in (cfg.data.get("parts") or {}).values():
            if part.get("finder_boxes"):
                names += finder_files(str(part.finder_boxes), finders)
        for name in sorted(set(names)):
            resolve(name, file_sha256(finders, name), [cfg.paths.face_weights_dir])
    cache_dir = Path(cfg.paths.cache_dir)
    ctx = StageContext(run_dir=run_dir, cache_dir=cache_dir)
    with tracking.pipeline_run(cfg, PROJECT_ROOT, run_dir) as run_id:
        ctx.run_id = run_id
        log.info("MLflow run %s; stages %s; output %s", run_id, stages, run_dir)
        for stage in stages:
            module = importlib.import_module(f"maskflow.{stage}")
            started = time.perf_counter()
            result = module.run(cfg, ctx)
            elapsed = time.perf_counter() - started
            ctx.results[stage] = result
            mlflow.log_metric(f"{stage}_time_s", round(elapsed, 3))
            summary = to_jsonable(result)
            (run_dir / f"{stage}.json").write_text(json.dumps(summary, indent=1, default=str))
            mlflow.log_dict(summary, f"{stage}/result.json")
            log.info("stage %s done in %.1f s", stage, elapsed)
            if stage == "tune" and result.head_model is None:
                log.info("distributed-tuning worker: done; the chief runs the stages after tune")
                break
    return ctx.results


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run_pipeline(cfg, run_dir)
    except UserError as exc:
        # One line and the exit code (a multirun's job is reported by Hydra and the sweep goes on).
        if full_error() or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(report("maskflow.pipeline", exc))
    import mlflow

    experiment = mlflow.get_experiment_by_name(str(cfg.tracking.experiment))
    exported = results.get("export")
    for line in tracking.ui_links(experiment.experiment_id, getattr(exported, "registered_model", None)):
        print(line)
    # A sweeper (Optuna, Ax) can optimise this value across a multirun.
    evaluation = results.get("evaluate") or results.get("finetune")
    metrics = getattr(evaluation, "metrics", None) or {}
    return metrics.get(cfg.get("optimized_metric", "")) if cfg.get("optimized_metric") else None


def override_error(argv: list[str]) -> str | None:
    """Why these command-line overrides cannot run, before any work: an option or key that
    does not exist, a malformed override, or a value of the wrong type for its key (the
    default's type: ``seed=abc``); None when they compose. Sweeps (``-m``) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return None  # a sweep, --cfg, --help, ...: Hydra's own handling
    overrides = [a for a in argv if "=" in a]
    if not overrides:
        return None  # the shipped defaults compose (tests/test_configs.py): no check to pay for
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            default = compose(config_name="config")
            chosen = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        return one_line(exc)
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        before = OmegaConf.select(default, key, throw_on_resolution_failure=False)
        after = OmegaConf.select(chosen, key, throw_on_resolution_failure=False)
        for kind, name in ((bool, "true or false"), (int, "an integer"), (float, "a number")):
            if isinstance(before, kind) and not isinstance(after, kind) and not (kind is float and isinstance(after, int)):
                return f"{key}={value}: expected {name}, like its default {key}={before}"
            if isinstance(before, kind):
                break
    return None


def cli() -> None:
    error = override_error(sys.argv[1:])
    if error and not full_error():
        print(f"maskflow.pipeline: error: {error} (python -m maskflow.pipeline --help lists the options)", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
