#!/usr/bin/env bash
# The project's commands. `./dev.sh demo` runs the product on demo data; `./dev.sh test` runs the tests.
# Both create the virtual environment (.venv) and install everything on first use.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$PWD"
VENV="$ROOT/.venv"

pick_python() {
  for p in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$p" ] || continue
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2; return 1
}

ensure_venv() {
  local stamp="$VENV/.installed"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt requirements.txt ] \
     && [ "$stamp" -nt constraints.txt ] && [ "$stamp" -nt pyproject.toml ]; then
    return 0
  fi
  local py; py="$(pick_python)"
  echo "[setup] creating $VENV with $("$py" --version) and installing requirements (first run takes a few minutes) ..."
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt -c constraints.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  touch "$stamp"
  echo "[setup] done"
}

airflow_env() {
  export PATH="$VENV/bin:$PATH"
  export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
  export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
  export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$ROOT/.pgruntime}"
  mkdir -p "$AIRFLOW_HOME"; mkdir -p -m 700 "$XDG_RUNTIME_DIR"
}

py() { "$VENV/bin/python" "$@"; }

cmd="${1:-help}"; shift || true
case "$cmd" in
  demo)
    ensure_venv; airflow_env
    py -m backorders demo "$@" ;;
  test)
    ensure_venv; airflow_env
    py -m pytest "$@" ;;
  ui)
    ensure_venv; airflow_env
    if [ -z "${AIRFLOW_CONN_BACKORDERS_DB:-}" ]; then
      AIRFLOW_CONN_BACKORDERS_DB="$(py -m backorders db airflow-conn)"; export AIRFLOW_CONN_BACKORDERS_DB
    fi
    export AIRFLOW__API__PORT="${AIRFLOW_PORT:-8080}"
    echo "[ui] Airflow standalone on http://localhost:${AIRFLOW__API__PORT} (user admin; password printed below and in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)"
    exec "$VENV/bin/airflow" standalone ;;
  db)
    ensure_venv; airflow_env
    py -m backorders db "${1:-status}" ;;
  run)
    ensure_venv; airflow_env
    py -m backorders run "$@" ;;
  bench)
    ensure_venv; airflow_env
    py -m bench.benchmark "$@" ;;
  psql)
    ensure_venv; airflow_env
    url="$(py -m backorders db url)"
    exec psql "$url" "$@" ;;
  airflow)
    ensure_venv; airflow_env
    if [ -z "${AIRFLOW_CONN_BACKORDERS_DB:-}" ]; then
      AIRFLOW_CONN_BACKORDERS_DB="$(py -m backorders db airflow-conn)"; export AIRFLOW_CONN_BACKORDERS_DB
    fi
    exec "$VENV/bin/airflow" "$@" ;;
  *)
    cat <<USAGE
usage: ./dev.sh COMMAND
  demo [--lines N --days D --seed S --engine airflow|inprocess]   set up, generate demo data, run the cycle, print summaries
  test [pytest args]      run the tests (what CI runs)
  ui                      Airflow standalone (UI on :8080) against the same business database
  db start|stop|status|migrate|url
  run --at T              one cycle at T in-process
  bench [--open-lines N --history-lines H --repeat R]   benchmark of the cycle (docs/performance.md)
  psql                    SQL shell on the business database
  airflow ARGS            the airflow CLI with this project's environment (e.g. airflow dags test backorder_cycle T)
USAGE
    ;;
esac
