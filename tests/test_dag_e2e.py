"""End to end: backorder_cycle runs under Airflow (dag.test) over several T against the embedded PostgreSQL,
fills the contract tables, gives the same tables as the in-process cycle, and a re-run of the same T changes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backorders import cycle, db, demo_data, embedded_pg, schema
from backorders.cli import airflow_env, simulate_logistics
from tests.conftest import scratch_database, snapshot_oms, table_rows, utc

ROOT = Path(__file__).resolve().parent.parent
TIMES = ["2026-03-02T06:00:00+00:00", "2026-03-02T14:00:00+00:00", "2026-03-02T22:00:00+00:00",
         "2026-03-03T06:00:00+00:00"]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_env({k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    env["AIRFLOW_HOME"] = str(home)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True)
    return env


def load_demo(url: str) -> None:
    schema.upgrade(url)
    data = demo_data.generate_demo(600, seed=11, days=2)
    with db.transaction(url) as conn:
        demo_data.write_landing(conn, data)


def run_dag(env: dict, url: str, times: list[str], logistics: bool = True) -> list[dict]:
    env = {**env, "AIRFLOW_CONN_BACKORDERS_DB": embedded_pg.airflow_conn_json(url)}
    cmd = [sys.executable, str(ROOT / "scripts" / "run_dag.py")] + (["--simulate-logistics"] if logistics else []) + times
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    reports = [json.loads(l[6:]) for l in proc.stdout.splitlines() if l.startswith("@@RUN ")]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return reports


def test_dag_runs_fill_the_contract_tables_and_match_the_in_process_cycle(airflow_home, db_url, pg_admin_url):
    load_demo(db_url)
    reports = run_dag(airflow_home, db_url, TIMES)
    assert [r["state"] for r in reports] == ["success"] * len(TIMES)

    runs = table_rows(db_url, "SELECT run_at, status, messages_in, demand_lines, shipment_requests, airflow_run_id "
                              "FROM oms.pipeline_runs ORDER BY run_at")
    assert [r[1] for r in runs] == ["SUCCESS"] * len(TIMES)
    assert [r[0] for r in runs] == [utc(t) for t in TIMES]
    assert all(r[5].startswith("manual__") for r in runs)        # the Airflow run that produced each row
    assert sum(r[2] for r in runs) > 200 and all(r[3] > 0 for r in runs)
    counts = dict(table_rows(db_url, """
        SELECT 'orders', count(*) FROM oms.orders UNION ALL SELECT 'lines', count(*) FROM oms.order_lines
        UNION ALL SELECT 'requests', count(*) FROM oms.shipment_requests
        UNION ALL SELECT 'shipped', count(*) FROM oms.shipment_requests WHERE status = 'SHIPPED'
        UNION ALL SELECT 'attempts', count(*) FROM oms.backorder_attempts
        UNION ALL SELECT 'quarantine', count(*) FROM oms.quarantine
        UNION ALL SELECT 'notices', count(*) FROM oms.notifications
        UNION ALL SELECT 'queue', count(*) FROM oms.allocation_queue
        UNION ALL SELECT 'exceptions', count(*) FROM oms.exception_queue"""))
    assert all(v > 0 for v in counts.values()), counts
    # nothing lost: every message received up to the last T was consumed exactly once
    assert table_rows(db_url, f"""
        SELECT count(*) FROM landing.order_messages m LEFT JOIN oms.consumed_messages c USING (message_id)
        WHERE m.received_at <= '{TIMES[-1]}' AND c.message_id IS NULL""") == [(0,)]
    # the line identity holds for every line
    assert table_rows(db_url, "SELECT count(*) FROM oms.order_lines WHERE qty_ordered <> qty_allocated + "
                              "qty_shipped + qty_backordered + qty_held + qty_cancelled") == [(0,)]

    # the same input through the in-process cycle (the CLI's and the benchmark's path) gives the same tables
    with scratch_database(pg_admin_url, "inproc_demo") as other:
        load_demo(other)
        for t in TIMES:
            simulate_logistics(other, utc(t))
            cycle.run_cycle(other, t)
        assert snapshot_oms(other) == snapshot_oms(db_url)

    # re-running the latest T under Airflow leaves every oms table identical
    before = snapshot_oms(db_url)
    run_dag(airflow_home, db_url, TIMES[-1:], logistics=False)
    assert snapshot_oms(db_url) == before
