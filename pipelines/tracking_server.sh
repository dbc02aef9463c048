#!/usr/bin/env bash
# A shared MLflow tracking server on this machine: SQL backend (sqlite by default, or a
# PostgreSQL URI) and an artifact store proxied by the server, so clients need no
# filesystem access to artifacts.
#   pipelines/tracking_server.sh [PORT] [BACKEND_URI] [ARTIFACTS_DIR]
#   pipelines/tracking_server.sh 5000 postgresql://mlflow:secret@db/mlflow s3://bucket/mlflow
# Then, from any machine that reaches it:
#   MLFLOW_TRACKING_URI=http://HOST:5000 python -m maskflow.pipeline tracking=server
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-5000}"
backend="${2:-sqlite:///$PWD/server/mlflow.db}"
artifacts="${3:-$PWD/server/artifacts}"
mkdir -p server
exec mlflow server --backend-store-uri "${backend}" --artifacts-destination "${artifacts}" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${port}" --workers "${MLFLOW_WORKERS:-2}"
