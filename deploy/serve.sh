#!/usr/bin/env bash
# Serve the champion of a registered model over HTTP on loopback.
#
#   deploy/serve.sh [MODEL_NAME] [PORT]          # defaults: activessf-classifier 5001
#   MLFLOW_TRACKING_URI=http://mlflow:5000 deploy/serve.sh          # a shared tracking server
#
# Without MLFLOW_TRACKING_URI it reads the local store of `make demo`
# (sqlite:///$PWD/work/mlflow.db). --env-manager local serves with this
# environment (no downloads). POST /invocations with JSON
#   {"dataframe_split": {"columns": ["image", "kind"], "data": [["<base64 PNG/JPEG>", "field"]]}}
# and get one row per cell: image, cell, x, y, w, h, subtype, confidence, p_<subtype>...
# Put a reverse proxy with a request-size limit in front of it before exposing it
# beyond this machine; the model itself refuses oversized and undecodable images with 400.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-activessf-classifier}
PORT=${2:-5001}
ALIAS=${ALIAS:-champion}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/work/mlflow.db}
# mlflow starts uvicorn from PATH: the project's environment comes first.
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"
MLFLOW=${MLFLOW:-mlflow}
echo "serving models:/${NAME}@${ALIAS} from ${MLFLOW_TRACKING_URI} on http://127.0.0.1:${PORT}" >&2
exec "$MLFLOW" models serve -m "models:/${NAME}@${ALIAS}" --env-manager local --host 127.0.0.1 --port "$PORT"
