"""Command line of the project: the embedded database, migrations, one cycle, and the demo over days of simulated operation."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, time as dtime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from backorders.settings import CONN_ENV, PROJECT_ROOT

DEMO_START = datetime(2026, 3, 2, tzinfo=timezone.utc)


def _say(msg: str) -> None:
    print(msg, flush=True)


def schedule_times(start: datetime, days: int, rules=None) -> list[datetime]:
    """The scheduled run times of `days` days from the start date, in the schedule's time zone, as UTC."""
    from backorders.rules import load_schedule

    sched = load_schedule() if rules is None else rules.schedule
    tz = ZoneInfo(sched.timezone)
    first_day = start.astimezone(tz).date()
    out = []
    for d in range(days):
        day = first_day + timedelta(days=d)
        for t in sorted(sched.times):
            local = datetime.combine(day, dtime.fromisoformat(t), tzinfo=tz)
            out.append(local.astimezone(timezone.utc))
    return sorted(out)


# ----------------------------------------------------------------------------------------------- db
def cmd_db(args) -> int:
    from backorders import embedded_pg, schema

    if args.action == "start":
        url = embedded_pg.start()
        _say(f"embedded PostgreSQL running; data in {embedded_pg.EMBEDDED_PGDATA}")
        _say(f"URL: {url}")
        _say(f"export {CONN_ENV}='{embedded_pg.airflow_conn_json(url)}'")
    elif args.action == "stop":
        _say("embedded PostgreSQL stopped" if embedded_pg.stop() else "embedded PostgreSQL was not running")
    elif args.action == "status":
        url = embedded_pg.running_url()
        _say(f"embedded PostgreSQL: {'running at ' + url if url else 'not running'}")
        if os.environ.get(CONN_ENV):
            _say(f"{CONN_ENV} is set: the project uses that database")
    elif args.action == "url":
        _say(embedded_pg.ensure_database())
    elif args.action == "airflow-conn":
        url = embedded_pg.ensure_database()
        print(os.environ.get(CONN_ENV) or embedded_pg.airflow_conn_json(url))
    elif args.action == "migrate":
        url = embedded_pg.ensure_database()
        schema.upgrade(url)
        _say(f"schema at revision {schema.current_revision(url)} (head {schema.head_revision()})")
    return 0


# ----------------------------------------------------------------------------------------------- one cycle
def cmd_run(args) -> int:
    from backorders import cycle, embedded_pg

    url = embedded_pg.ensure_database()
    summary = cycle.run_cycle(url, args.at, allow_rewind_later=args.rewind_later)
    _say(cycle.format_summary(summary))
    return 0


# ----------------------------------------------------------------------------------------------- demo
def reset_business_database(url: str) -> None:
    """Drop every schema of the project and migrate again (demo only)."""
    from backorders import db, schema

    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname IN ('landing', 'oms') OR nspname LIKE 'stg\\_%'")
        for (name,) in cur.fetchall():
            cur.execute(f'DROP SCHEMA "{name}" CASCADE')
        cur.execute("DROP TABLE IF EXISTS public.alembic_version")
    schema.upgrade(url)


def simulate_logistics(url: str, t: datetime, after_hours: float = 16.0) -> int:
    """Demo stand-in for the logistics provider: confirms, received before T, the shipment requests older than
    `after_hours` (shipped 12 hours after the request). Deterministic in T."""
    from backorders import db

    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO landing.shipment_confirmations (shipment_request_id, shipped_at, received_at)
            SELECT r.shipment_request_id, r.requested_at + interval '12 hours', r.requested_at + interval '13 hours'
            FROM oms.shipment_requests r
            WHERE r.status = 'REQUESTED' AND r.requested_at <= %s - make_interval(secs => %s)
              AND NOT EXISTS (SELECT 1 FROM landing.shipment_confirmations c
                              WHERE c.shipment_request_id = r.shipment_request_id)""", (t, after_hours * 3600))
        return cur.rowcount


def airflow_env(base: dict | None = None) -> dict:
    """Environment for Airflow commands of this project: its own AIRFLOW_HOME, DAGs and plugins, no examples."""
    env = dict(base or os.environ)
    home = Path(env.get("AIRFLOW_HOME", PROJECT_ROOT / ".airflow"))
    env.setdefault("AIRFLOW_HOME", str(home))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_ROOT / "dags"))
    env.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(PROJECT_ROOT / "plugins"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    env.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
    env.setdefault("PYTHONPATH", str(PROJECT_ROOT))
    return env


def run_dag_times(times: list[datetime], env: dict, log_file: Path, simulate_logistics: bool = True):
    """Run backorder_cycle at each T with dag.test in one Airflow process (scripts/run_dag.py); yields each run's
    report as it finishes. Airflow's task logs go to log_file."""
    import json

    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(PROJECT_ROOT / "scripts" / "run_dag.py")]
    cmd += ["--simulate-logistics"] if simulate_logistics else []
    cmd += [t.isoformat() for t in times]
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if line.startswith("@@RUN "):
                yield json.loads(line[6:])
            else:
                log.write(line)
        proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-40:])
        raise RuntimeError(f"backorder_cycle failed (exit {proc.returncode}); Airflow log: {log_file}\n{tail}")


def cmd_demo(args) -> int:
    from backorders import cycle, db, demo_data, embedded_pg

    started = time.perf_counter()
    url = embedded_pg.ensure_database()
    external = bool(os.environ.get(CONN_ENV) and embedded_pg.running_url() is None) or bool(os.environ.get("BACKORDERS_DB_URL"))
    if external and not args.yes_reset:
        _say("The demo resets the landing and oms schemas of the configured backorders_db database. "
             "Re-run with --yes-reset to confirm, or unset AIRFLOW_CONN_BACKORDERS_DB to use the embedded server.")
        return 2
    _say(f"[demo] business database: {url.split('?')[0]}{' (embedded)' if not external else ''}")
    reset_business_database(url)
    _say(f"[demo] generating {args.lines:,} order lines over {args.days} days (seed {args.seed}) ...")
    data = demo_data.generate_demo(args.lines, seed=args.seed, start=DEMO_START, days=args.days)
    with db.transaction(url) as conn:
        counts = demo_data.write_landing(conn, data)
    _say("[demo] landing tables: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if args.files:
        files = demo_data.write_files(PROJECT_ROOT / ".demo" / "landing", data)
        _say(f"[demo] file drop written: {len(files)} files in .demo/landing/")

    times = schedule_times(DEMO_START, args.days)
    env = None
    if args.engine == "airflow":
        env = airflow_env()
        env[CONN_ENV] = os.environ.get(CONN_ENV) or embedded_pg.airflow_conn_json(url)
        _say(f"[demo] preparing Airflow's metadata database (airflow db migrate; SQLite in {env['AIRFLOW_HOME']}) ...")
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _say(f"[demo] running backorder_cycle at {len(times)} scheduled times "
         f"({'Airflow dag.test, task logs in .demo/logs/' if env else 'in-process, no Airflow'})")

    def report(i: int, t: datetime, seconds: float, confirmed: int) -> None:
        with db.transaction(url) as conn:
            row = db.read_frame(conn, "SELECT * FROM oms.pipeline_runs WHERE run_at = %(t)s", {"t": t})
        summary = row.iloc[0].to_dict()
        summary["run_at"] = t.isoformat()
        _say(f"[{i}/{len(times)}] {cycle.format_summary(summary)}  ({seconds:.1f}s"
             f"{', ' + str(confirmed) + ' shipments confirmed by logistics before the run' if confirmed else ''})")

    if env is not None:
        log_file = PROJECT_ROOT / ".demo" / "logs" / "backorder_cycle.log"
        _say("[demo] starting Airflow (the first run includes its start-up) ...")
        for i, (t, r) in enumerate(zip(times, run_dag_times(times, env, log_file)), 1):
            report(i, t, r["seconds"], r["confirmed"])
    else:
        for i, t in enumerate(times, 1):
            confirmed = simulate_logistics(url, t)
            t0 = time.perf_counter()
            cycle.run_cycle(url, t)
            report(i, t, time.perf_counter() - t0, confirmed)
    _print_totals(url)
    _say(f"[demo] done in {time.perf_counter() - started:.0f}s. Explore: ./dev.sh ui (Airflow UI), "
         f"./dev.sh psql (SQL on the oms tables)")
    return 0


def _print_totals(url: str) -> None:
    from backorders import db

    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*), sum(qty_ordered) FROM oms.order_lines GROUP BY 1 ORDER BY 1")
        lines = cur.fetchall()
        cur.execute("SELECT count(*), count(*) FILTER (WHERE label = 'BACKORDER') FROM oms.allocation_queue")
        queue = cur.fetchone()
        cur.execute("SELECT kind, severity, count(*) FROM oms.exception_queue GROUP BY 1, 2 ORDER BY 1, 2")
        exc = cur.fetchall()
        cur.execute("SELECT kind, status, count(*) FROM oms.notifications GROUP BY 1, 2 ORDER BY 1, 2")
        notes = cur.fetchall()
        cur.execute("SELECT count(*), count(*) FILTER (WHERE status = 'SHIPPED') FROM oms.shipment_requests")
        sr = cur.fetchone()
    _say("[demo] lines by status: " + ", ".join(f"{s} {n:,} ({q:,} units)" for s, n, q in lines))
    _say(f"[demo] allocation queue: {queue[0]:,} lines waiting ({queue[1]:,} backorders, {queue[0] - queue[1]:,} on hold)")
    _say(f"[demo] shipment requests: {sr[0]:,} ({sr[1]:,} shipped)")
    _say("[demo] open exceptions: " + (", ".join(f"{k}/{s} {n:,}" for k, s, n in exc) or "none"))
    _say("[demo] outbox: " + (", ".join(f"{k} {s} {n:,}" for k, s, n in notes) or "empty"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backorders", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="the business database: start/stop the embedded server, migrate")
    p.add_argument("action", choices=["start", "stop", "status", "url", "airflow-conn", "migrate"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("run", help="run one cycle at T in this process (no Airflow)")
    p.add_argument("--at", required=True, help="run time T, ISO 8601 with a time zone, e.g. 2026-03-02T06:00:00Z")
    p.add_argument("--rewind-later", action="store_true", help="allow undoing runs later than T")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="generate demo data and run backorder_cycle over days of simulated operation")
    p.add_argument("--lines", type=int, default=5000, help="order lines to generate (default 5000)")
    p.add_argument("--days", type=int, default=3, help="days of operation, three runs a day (default 3)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--engine", choices=["airflow", "inprocess"], default="airflow",
                   help="airflow: each run is `airflow dags test backorder_cycle T` (default); inprocess: no Airflow")
    p.add_argument("--files", action="store_true", help="also write the demo's file drop to .demo/landing/")
    p.add_argument("--yes-reset", action="store_true", help="allow resetting a configured (non-embedded) database")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("BACKORDERS_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
