#!/usr/bin/env bash
# KerasTuner's distributed mode on one machine: a chief (runs the oracle, then the rest of
# the pipeline with the best head) and N workers (run trials), sharing ./cache.
#   pipelines/tune_distributed.sh [N_WORKERS] [extra Hydra overrides...]
#   pipelines/tune_distributed.sh 2 model=mobilenetv2_035 tune.max_trials=48
# On several machines: start the same commands there with tune.distributed.host=<chief's
# address>, a unique tune.distributed.worker_id each, and paths.cache_dir on storage all
# of them share (the workers' checkpoints are read back by the chief).
set -euo pipefail
cd "$(dirname "$0")/.."
workers="${1:-2}"
shift || true
port="${KERASTUNER_PORT:-8000}"
dist=(tune.distributed.host=127.0.0.1 "tune.distributed.port=${port}")
# Prepare once, before anyone tunes, so the workers don't all redo it.
python -m maskflow.pipeline stages=[prepare] "$@"
mkdir -p outputs
pids=()
for i in $(seq 1 "${workers}"); do
  # One TF thread per worker: N workers share the cores instead of oversubscribing them.
  TF_NUM_INTRAOP_THREADS="${WORKER_THREADS:-1}" TF_NUM_INTEROP_THREADS=1 \
    python -m maskflow.pipeline stages=[tune] tune.distributed.role=worker "tune.distributed.worker_id=worker${i}" \
    "${dist[@]}" "$@" > "outputs/tune-worker${i}.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
python -m maskflow.pipeline tune.distributed.role=chief "${dist[@]}" "$@"
wait "${pids[@]}"
