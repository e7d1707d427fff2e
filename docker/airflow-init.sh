#!/usr/bin/env bash
# One-off initialisation of the stack: service airflow-init of docker-compose.yml, run through the image's
# /entrypoint (`bash /usr/local/bin/backorders-airflow-init`). Idempotent: safe on every `docker compose up`.
#   1. airflow db migrate                  the Airflow metadata database (service postgres)
#   2. the simple auth manager's user      password file from AIRFLOW_ADMIN_USERNAME / AIRFLOW_ADMIN_PASSWORD
#   3. python -m backorders db migrate     the business schema (service backorders-db, connection backorders_db)
set -euo pipefail

log() { echo "[airflow-init] $*"; }

: "${AIRFLOW_CONN_BACKORDERS_DB:?must point at the business database (service backorders-db)}"
: "${BACKORDERS_RULES_DIR:?must be the rules folder (/opt/airflow/include/rules)}"

if [ ! -f "${BACKORDERS_RULES_DIR}/channels.yaml" ]; then
  log "no channels.yaml in ${BACKORDERS_RULES_DIR}: is ./include mounted at /opt/airflow/include?" >&2
  exit 1
fi

log "$(airflow version 2>/dev/null | tail -n 1 | sed 's/^/Airflow /')"

log "1/3 migrating the Airflow metadata database"
airflow db migrate

log "2/3 simple auth manager user"
passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}"
if [ -n "${passwords_file}" ] && [ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ]; then
  mkdir -p "$(dirname "${passwords_file}")"
  python - "${passwords_file}" <<'PY'
import json
import os
import sys
from pathlib import Path

path = Path(sys.argv[1])
user = os.environ.get("AIRFLOW_ADMIN_USERNAME") or "admin"
try:
    passwords = json.loads(path.read_text() or "{}")
except (FileNotFoundError, json.JSONDecodeError):
    passwords = {}
passwords[user] = os.environ["AIRFLOW_ADMIN_PASSWORD"]
path.write_text(json.dumps(passwords) + "\n")
path.chmod(0o660)
print(f"[airflow-init] user '{user}' (role admin) can log in with AIRFLOW_ADMIN_PASSWORD")
PY
else
  log "AIRFLOW_ADMIN_PASSWORD empty: the API server generates a password and prints it in its log"
fi

log "3/3 migrating the business database (connection backorders_db)"
python -m backorders db migrate

log "done"
