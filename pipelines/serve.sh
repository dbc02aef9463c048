#!/usr/bin/env bash
# REST serving of the registered champion: POST /invocations with base64 images, get the
# same face records as `maskflow.detect --jsonl`. `maskflow.serving.rest` is MLflow's scoring
# protocol with bounded work (503 + Retry-After beyond capacity, 413 over the body limit).
#   pipelines/serve.sh [MODEL_URI] [PORT]
# Example request:
#   python -m maskflow.serving http://127.0.0.1:5001 photo.jpg
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models:/maskflow@champion}"
port="${2:-5001}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"
exec python -m maskflow.serving.rest "${model}" --host "${MLFLOW_HOST:-127.0.0.1}" --port "${port}" \
  --workers "${MLFLOW_WORKERS:-1}" --max-in-flight "${MASKFLOW_MAX_IN_FLIGHT:-4}"
