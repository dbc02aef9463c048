"""Wall time of prepare/tune/finetune for the default model, cold and warm cache.

    python benchmarks/pipeline_timing.py [--out DIR] [extra Hydra overrides ...]

Runs the pipeline three times in subprocesses against a fresh cache and MLflow store
under --out (default: a temporary folder), so the project's own cache is not used:
  cold     empty cache: MTCNN crops, embeddings, search and fine-tuning all computed
  warm     same command again: everything comes from the content-addressed cache
  retrain  warm crops and embeddings, a new search (tune.patience changed) + fine-tuning
and prints a Markdown table of per-stage seconds (from MLflow) and wall seconds, plus
seconds per tuning trial against seconds per fine-tuning epoch through the backbone.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("prepare", "tune", "finetune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args, overrides = parser.parse_known_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="maskflow-bench-"))
    base = [sys.executable, "-m", "maskflow.pipeline", f"stages=[{','.join(STAGES)}]",
            f"paths.cache_dir={out}/cache", f"paths.output_dir={out}/outputs",
            f"tracking.uri=sqlite:///{out}/mlflow.db", f"tracking.artifact_root={out}/mlruns", *overrides]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    for name, extra in (("cold", []), ("warm", []), ("retrain", ["tune.patience=5"])):
        started = time.perf_counter()
        proc = subprocess.run(base + extra + [f"run_name=bench-{name}"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"{name} run failed:\n{proc.stderr[-3000:]}")
        rows.append((name, wall, _metrics(out, f"bench-{name}")))
        print(f"{name}: {wall:.1f} s", file=sys.stderr)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; overrides: {overrides or 'none'}\n")
    print("| run | " + " | ".join(f"{s} s" for s in STAGES) + " | wall s |")
    print("|---|" + "---|" * (len(STAGES) + 1))
    for name, wall, m in rows:
        print(f"| {name} | " + " | ".join(f"{m.get(f'{s}_time_s', float('nan')):.1f}" for s in STAGES) + f" | {wall:.1f} |")
    cold = rows[0][2]
    trial = rows[2][2].get("tune_trial_mean_s") or cold.get("tune_trial_mean_s")
    epoch = cold["train_time_s"] / max(1.0, cold.get("epochs_run", 1.0))
    print(f"\nembeddings (cold): {cold.get('tune_embed_time_s', float('nan')):.1f} s; "
          f"tuning trials: {cold.get('tune_trials', 0):.0f}, {trial:.2f} s each on cached embeddings; "
          f"fine-tuning: {epoch:.1f} s per epoch through the backbone -> a trial is {epoch / trial:.0f}x cheaper")
    print(f"val_accuracy (cold run): {cold.get('val_accuracy', float('nan')):.4f}")


def _metrics(out: Path, run_name: str) -> dict[str, float]:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    client = MlflowClient()
    exp = client.get_experiment_by_name("maskflow")
    (run,) = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{run_name}'")
    return run.data.metrics


if __name__ == "__main__":
    main()
