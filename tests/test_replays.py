"""Re-runs and backfills under Airflow (dag.test against the embedded PostgreSQL), and the replay rules themselves:

* re-running an old T alone is refused, with a message naming what to clear, and changes nothing;
* clearing T and every later run (`airflow tasks clear backorder_cycle -s T -y`) and running them again gives exactly
  the tables the first sequence gave;
* a stock-triggered run (no logical date: T = run_after) between scheduled times is just another T in the sequence;
* stock_feed_watch emits the stock asset only when stock landed, and that queues a backorder_cycle run;
* a backfill creates the scheduled times of its range (dry run), which run in order give the scheduled tables;
* every run's figures become the Airflow run's note.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backorders import cycle, embedded_pg, schema
from tests.conftest import Landing, order_message, scratch_database, snapshot_oms, table_rows, utc

ROOT = Path(__file__).resolve().parent.parent
T1, T2, T3 = "2026-03-02T06:00:00+00:00", "2026-03-02T14:00:00+00:00", "2026-03-02T22:00:00+00:00"
T_STOCK = "2026-03-03T01:30:00+00:00"           # a stock-triggered run between two scheduled times
T4 = "2026-03-03T06:00:00+00:00"

# One Airflow process per call: ops are "run:T" (logical date T), "asset:T" (no logical date, run_after T, as an
# asset-triggered run), "watch:T" (stock_feed_watch once), "clearrun:RUN_ID" (clear one run of backorder_cycle),
# "notes" (the notes of backorder_cycle's runs, asset events and queued asset-triggered runs).
DRIVER = r"""
import json, sys
from datetime import datetime
from airflow.utils.cli import get_bagged_dag

dags = {}
def dag(dag_id):
    if dag_id not in dags:
        dags[dag_id] = get_bagged_dag(None, dag_id)
    return dags[dag_id]

for op in sys.argv[1:]:
    kind, _, arg = op.partition(":")
    if kind == "run":
        dr = dag("backorder_cycle").test(logical_date=datetime.fromisoformat(arg))
    elif kind == "asset":
        dr = dag("backorder_cycle").test(logical_date=None, run_after=datetime.fromisoformat(arg))
    elif kind == "watch":
        dr = dag("stock_feed_watch").test(logical_date=datetime.fromisoformat(arg))
    elif kind == "sync":            # parse the DAG and write it to the metadata database
        dag(arg)
    elif kind == "unpause":         # asset events queue runs of unpaused DAGs only
        from sqlalchemy import update
        from airflow.models.dag import DagModel
        from airflow.utils.session import create_session
        with create_session() as s:
            s.execute(update(DagModel).where(DagModel.dag_id == arg).values(is_paused=False))
    elif kind == "clearrun":        # what the UI's "Clear Run" of one Dag run does
        from airflow.models.serialized_dag import SerializedDagModel
        SerializedDagModel.get_dag("backorder_cycle").clear(run_id=arg)
    if kind in ("run", "asset", "watch"):
        tis = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dr.get_task_instances()}
        print("@@RUN " + json.dumps({"op": op, "state": str(getattr(dr.state, "value", dr.state)),
                                     "run_id": dr.run_id, "tasks": tis}), flush=True)
    if kind in ("watch", "notes"):
        from sqlalchemy import select
        from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        with create_session() as s:
            events = [e.extra for e in s.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                      .where(AssetModel.uri == "backorders://landing/stock_levels").order_by(AssetEvent.id))]
            queued = [q.target_dag_id for q in s.scalars(select(AssetDagRunQueue))]
            notes = {r.run_id: r.note for r in s.scalars(select(DagRun).where(DagRun.dag_id == "backorder_cycle"))}
        print("@@STATE " + json.dumps({"events": events, "queued": queued, "notes": notes}, default=str), flush=True)
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    from backorders.cli import airflow_env

    home = tmp_path_factory.mktemp("airflow_home_replays")
    env = airflow_env({k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    env["AIRFLOW_HOME"] = str(home)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True)
    return env


def drive(env: dict, url: str, *ops: str) -> tuple[list[dict], dict, str]:
    env = {**env, "AIRFLOW_CONN_BACKORDERS_DB": embedded_pg.airflow_conn_json(url)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, *ops], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1200, cwd=str(ROOT))
    out = proc.stdout
    logs = sorted(Path(env["AIRFLOW_HOME"]).glob("driver-*.log"))
    (Path(env["AIRFLOW_HOME"]) / f"driver-{len(logs):02d}.log").write_text(" ".join(ops) + "\n" + out)
    assert proc.returncode == 0, out[-5000:]
    runs = [json.loads(l[6:]) for l in proc.stdout.splitlines() if l.startswith("@@RUN ")]
    states = [json.loads(l[8:]) for l in proc.stdout.splitlines() if l.startswith("@@STATE ")]
    return runs, (states[-1] if states else {}), out


def airflow(env: dict, url: str, *args: str) -> str:
    env = {**env, "AIRFLOW_CONN_BACKORDERS_DB": embedded_pg.airflow_conn_json(url)}
    proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def scenario(url: str) -> None:
    """Orders and stock over a day, with scarce stock so that the order of the runs matters."""
    schema.upgrade(url)
    land = Landing(url)
    land.stock([("WH_PDX", "SKU-1", 1), ("WH_NJ", "SKU-2", 0)], "2026-03-01T00:00:00Z")
    land.message(order_message("R1", lines=[("SKU-1", 2, None), ("SKU-2", 1, None)]), "2026-03-02T01:00:00Z")
    land.message(order_message("R2", lines=[("SKU-1", 1, None)]), "2026-03-02T09:00:00Z")
    land.message("garbage", "2026-03-02T09:30:00Z")
    land.stock([("WH_PDX", "SKU-1", 3)], "2026-03-02T12:00:00Z")
    land.message(order_message("R3", lines=[("SKU-2", 2, None)]), "2026-03-02T16:00:00Z")
    land.stock([("WH_NJ", "SKU-2", 2)], "2026-03-03T01:00:00Z")          # lands between 22:00 and 06:00


# ------------------------------------------------------------------------------------------------ rules (no Airflow)
def test_replay_decision():
    later = [{"run_at": utc(T3), "airflow_run_id": "scheduled__T3", "status": "SUCCESS"},
             {"run_at": utc(T4), "airflow_run_id": "asset_triggered__T4", "status": "SUCCESS"}]
    d = cycle.replay_decision
    assert d([], {}, "manual", True) == "run"
    assert d(later, {"scheduled__T3": "queued", "asset_triggered__T4": "running"}, "manual", True) == "rewind"
    assert d(later, {"scheduled__T3": "queued", "asset_triggered__T4": "success"}, "manual", True) == "refuse"
    assert d(later, {"scheduled__T3": "queued"}, "scheduled", True) == "refuse"
    # a scheduled or stock-triggered T overtaken by a later run before it ever ran: nothing left to do
    assert d(later, {}, "scheduled", False) == "skip" and d(later, {}, "asset_triggered", False) == "skip"
    assert d(later, {}, "backfill", False) == "refuse" and d(later, {}, "manual", False) == "refuse"
    # a later run outside Airflow never runs again by itself
    assert d([{"run_at": utc(T3), "airflow_run_id": None, "status": "SUCCESS"}], {}, "manual", True) == "refuse"


def test_refusal_message_names_what_to_clear():
    later = [{"run_at": utc(T3), "airflow_run_id": "scheduled__2026-03-02T22:00:00+00:00", "status": "SUCCESS"},
             {"run_at": utc(T_STOCK), "airflow_run_id": "asset_triggered__2026-03-03T01:30:00+00:00",
              "status": "SUCCESS"}]
    msg = cycle.replay_refusal(utc(T2), later, {"scheduled__2026-03-02T22:00:00+00:00": "success"})
    assert msg.startswith(f"run at {utc(T2).isoformat()} refused: 2 later run(s)")
    assert f"`airflow tasks clear backorder_cycle -s {utc(T2).isoformat()} -y`" in msg
    assert "'Future'" in msg and "Airflow state success" in msg
    # runs without a logical date are not cleared by -s: named one by one
    assert "must be cleared each" in msg and "asset_triggered__2026-03-03T01:30:00+00:00" in msg


def test_in_process_replays_and_a_stock_triggered_time(landing, migrated_url):
    url = migrated_url
    scenario(url)
    for t in (T1, T2, T3, T_STOCK, T4):
        cycle.run_cycle(url, t)
    final = snapshot_oms(url)
    # the stock-triggered run allocated the stock that landed at 01:00 before the 06:00 run
    assert table_rows(url, f"SELECT line_id, qty_allocated FROM oms.backorder_attempts WHERE checked_at = '{T_STOCK}' "
                           "AND line_id IN ('R1-2', 'R3-1') ORDER BY 1") == [("R1-2", 1), ("R3-1", 1)]
    with pytest.raises(cycle.RunRefused, match="allow_rewind_later"):
        cycle.run_cycle(url, T2)
    assert snapshot_oms(url) == final
    cycle.run_cycle(url, T2, allow_rewind_later=True)
    for t in (T3, T_STOCK, T4):
        cycle.run_cycle(url, t)
    assert snapshot_oms(url) == final


# ------------------------------------------------------------------------------------------------ under Airflow


@pytest.mark.e2e
def test_reruns_under_airflow(airflow_home, migrated_url):
    url = migrated_url
    scenario(url)
    runs, state, _ = drive(airflow_home, url, f"run:{T1}", f"run:{T2}", f"run:{T3}", f"asset:{T_STOCK}", "notes")
    assert [r["state"] for r in runs] == ["success"] * 4
    assert table_rows(url, "SELECT run_at, status FROM oms.pipeline_runs ORDER BY run_at") == [
        (utc(t), "SUCCESS") for t in (T1, T2, T3, T_STOCK)]
    final = snapshot_oms(url)
    # each run's figures are its note
    notes = state["notes"]
    assert all(n and n.startswith("**backorder_cycle at ") and "lines in demand" in n for n in notes.values()), notes

    t3_run_id, stock_run_id = runs[2]["run_id"], runs[3]["run_id"]   # (re-running the latest T: test_dag_e2e.py)

    # re-running an old T alone is refused, says what to clear, changes nothing
    runs, _, out = drive(airflow_home, url, f"run:{T2}")
    assert runs[0]["state"] == "failed" and runs[0]["tasks"]["extract.open_run"] == "failed"
    assert "refused: 2 later run(s)" in out
    assert f"airflow tasks clear backorder_cycle -s {utc(T2).isoformat()} -y" in out
    # the stock-triggered run has no logical date: `-s` does not reach it, it is named; the T3 run is not
    assert "must be cleared each" in out and out.count(stock_run_id) >= 2
    assert stock_run_id in out.split("must be cleared each", 1)[1]
    assert t3_run_id not in out.split("must be cleared each", 1)[1].split("Outside Airflow", 1)[0]
    assert snapshot_oms(url) == final
    assert table_rows(url, "SELECT count(*) FROM oms.run_lock WHERE held_by_run_at IS NOT NULL") == [(0,)]

    # clearing with -s T2 alone leaves the stock-triggered run (no logical date): still refused, naming it
    airflow(airflow_home, url, "tasks", "clear", "backorder_cycle", "-s", utc(T2).isoformat(), "-y")
    runs, _, out = drive(airflow_home, url, f"run:{T2}")
    assert runs[0]["state"] == "failed" and "Airflow state queued" in out and stock_run_id in out
    assert snapshot_oms(url) == final
    # clear T2 and every later run (what the message says), then they run again in order: the same tables
    airflow(airflow_home, url, "tasks", "clear", "backorder_cycle", "-s", utc(T2).isoformat(), "-y")
    runs, _, out = drive(airflow_home, url, f"clearrun:{stock_run_id}", f"run:{T2}", f"run:{T3}", f"asset:{T_STOCK}")
    assert [r["state"] for r in runs] == ["success"] * 3, out[-3000:]
    assert "rewinding them first" in out
    assert snapshot_oms(url) == final


@pytest.mark.e2e
def test_stock_feed_watch_emits_the_asset_only_when_stock_landed(airflow_home, migrated_url):
    url = migrated_url
    scenario(url)
    runs, state, _ = drive(airflow_home, url, "sync:backorder_cycle", "unpause:backorder_cycle",
                           "watch:2026-03-02T10:00:00+00:00")
    assert runs[0]["state"] == "success" and runs[0]["tasks"]["detect_new_stock"] == "success"
    assert len(state["events"]) == 1 and state["events"][0]["rows"] == 4
    assert state["events"][0]["watermark"] == "2026-03-03T01:00:00+00:00"
    assert "backorder_cycle" in state["queued"]                            # the scheduler will create its run

    # nothing new: skipped, no event
    runs, state, _ = drive(airflow_home, url, "watch:2026-03-02T10:05:00+00:00")
    assert runs[0]["tasks"]["detect_new_stock"] == "skipped" and len(state["events"]) == 1

    # a new drop: one more event, with the new watermark
    Landing(url).stock([("WH_DAL", "SKU-9", 5)], "2026-03-03T02:00:00Z")
    runs, state, _ = drive(airflow_home, url, "watch:2026-03-02T10:10:00+00:00")
    assert runs[0]["tasks"]["detect_new_stock"] == "success"
    assert [e["rows"] for e in state["events"]] == [4, 1]
    assert state["events"][1]["since"] == "2026-03-03T01:00:00+00:00"


@pytest.fixture
def fresh_url(pg_admin_url, request):
    """A second empty database."""
    with scratch_database(pg_admin_url, f"fresh_{request.node.name[:30]}") as url:
        yield url


@pytest.mark.e2e
def test_backfill_creates_the_scheduled_times_which_run_in_order_give_the_scheduled_tables(airflow_home, fresh_url,
                                                                                          migrated_url):
    db_url = fresh_url
    # the scheduled sequence, in process
    scenario(migrated_url)
    for t in (T1, T2, T3):
        cycle.run_cycle(migrated_url, t)
    scheduled = snapshot_oms(migrated_url)
    # a fresh database: the backfill's runs, one at a time in order (--max-active-runs 1), under Airflow
    scenario(db_url)
    drive(airflow_home, db_url, "sync:backorder_cycle")                      # parses and serializes the DAG
    out = airflow(airflow_home, db_url, "backfill", "create", "--dag-id", "backorder_cycle", "--from-date",
                  "2026-03-02T00:00:00+00:00", "--to-date", "2026-03-02T23:59:00+00:00", "--max-active-runs", "1",
                  "--reprocess-behavior", "completed", "--dry-run")
    for t in (T1, T2, T3):
        assert datetime.fromisoformat(t).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") in out, out
    # run one after the other, those times are the scheduled sequence (under Airflow: tests/test_dag_e2e.py)
    for t in (T1, T2, T3):
        cycle.run_cycle(db_url, t)
    assert snapshot_oms(db_url) == scheduled
