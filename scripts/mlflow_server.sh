#!/usr/bin/env bash
# The cluster's MLflow tracking server, behind MLflow's basic-auth app. cluster.yaml starts it on
# the head; run it from the folder that keeps its user database (mlflow-auth.db).
#
#   bash scripts/mlflow_server.sh HOST PORT BACKEND_STORE_URI ARTIFACTS_DESTINATION
#
# Its admin login is the one every node derives from the cluster's Ray auth token
# (biocap-ray mlflow-credentials), so no password is kept in a file or printed; clients send it
# as HTTP basic auth inside the cluster's security group. Nothing reaches the server without it.
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 HOST PORT BACKEND_STORE_URI ARTIFACTS_DESTINATION" >&2
  exit 2
fi
credentials="$(biocap-ray mlflow-credentials)"  # fails the script when no token is found
eval "$credentials"
export MLFLOW_AUTH_CONFIG_PATH
MLFLOW_AUTH_CONFIG_PATH="$(cd "$(dirname "$0")/.." && pwd)/biocap_ray/configs/mlflow_auth.ini"
export MLFLOW_AUTH_ADMIN_USERNAME="$MLFLOW_TRACKING_USERNAME" MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_TRACKING_PASSWORD"
# MLflow reads the admin login only when it creates its user database; a database kept from an
# earlier start would keep the login of an earlier Ray token. The one login is all it holds.
rm -f mlflow-auth.db
# signs the app's sessions and CSRF tokens; a new one at every start (logins use basic auth)
MLFLOW_FLASK_SERVER_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_hex(32))')"
export MLFLOW_FLASK_SERVER_SECRET_KEY
exec mlflow server --app-name basic-auth --host "$1" --port "$2" --backend-store-uri "$3" \
  --artifacts-destination "$4"
