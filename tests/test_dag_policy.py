"""DAG policies: every DAG parses without import errors, has tags, owner, retries and docs, and parses fast."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
HEAVY = ["pandas", "numpy", "great_expectations", "psycopg2", "backorders.cycle", "backorders.allocation", "jinja2"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "backorder_cycle" in dagbag.dags


def test_every_dag_has_tags_owner_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id}: no tags"
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id}: no doc_md"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id}: no owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id}: no retries"


def test_backorder_cycle_shape(dagbag):
    dag = dagbag.dags["backorder_cycle"]
    assert dag.max_active_runs == 1
    tt = dag.timetable          # the cron times, or new stock (an asset), whichever comes first
    assert type(tt).__name__ == "AssetOrTimeSchedule" and "CronTriggerTimetable" in type(tt.timetable).__name__
    assert tt.timetable.summary == "0 6,14,22 * * *"
    groups = {t.task_id.split(".")[0] for t in dag.tasks if "." in t.task_id}
    assert {"extract", "allocate", "load", "side_effects", "report", "deliver"} <= groups
    order = ["extract.load_files", "extract.open_run", "extract.extract_orders", "extract.stage_cancellations",
             "extract.extract_stock", "allocate.list_pools", "allocate.allocate_pool",
             "check_allocation", "load.publish", "check_load", "side_effects.queue_notifications",
             "report.finish_run", "deliver.deliver_notifications"]
    for up, down in zip(order, order[1:]):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} should run right before {down}"
    # the stock intake reads no order: it runs next to the orders' extract, and the demand's stock waits for both
    assert dag.get_task("extract.stage_on_hand").upstream_task_ids == {"extract.open_run"}
    assert dag.get_task("extract.stage_open_lines").upstream_task_ids == {"extract.open_run"}
    assert dag.get_task("extract.extract_stock").upstream_task_ids == {"extract.stage_cancellations",
                                                                        "extract.stage_on_hand",
                                                                        "extract.stage_open_lines"}
    # the extract gate and the allocation both follow the staged input (the allocation writes only staging); the
    # allocation gate and the preparation of publish follow the allocation, side by side (and beside the extract
    # gate, as run_cycle runs them); publish, and all that is prepared beside it, waits for those three
    assert dag.get_task("check_extract").upstream_task_ids == {"extract.extract_stock"}
    assert dag.get_task("allocate.list_pools").upstream_task_ids == {"extract.extract_stock"}
    for task_id in ("check_allocation", "prepare_publish"):
        assert dag.get_task(task_id).upstream_task_ids == {"allocate.allocate_pool"}, task_id
    gates = {"check_extract", "check_allocation", "prepare_publish"}
    assert dag.get_task("load.publish").upstream_task_ids == gates
    # after publish, side by side: the lifecycle, the storefront and the load gate (which checks what publish wrote)
    after = {"load.apply_after_publish", "load.refresh_storefront", "check_load", "load.prepare_payment_requests"}
    assert dag.get_task("load.publish").downstream_task_ids == after
    # the shipment messages are built beside publish (from the staged run); both outboxes' rows only in staging
    assert dag.get_task("load.prepare_shipment_messages").upstream_task_ids == gates
    # so are the settlements (captures per shipment request, refunds); the other payment requests follow from what
    # publish wrote, and take the settlements with them
    assert dag.get_task("load.prepare_settlements").upstream_task_ids == gates
    assert dag.get_task("load.prepare_payment_requests").upstream_task_ids == {"load.publish",
                                                                                "load.prepare_settlements"}
    after = after | {"load.prepare_shipment_messages"}
    # nothing is queued for delivery before the load gate, the lifecycle and the storefront have ended; the three
    # outboxes are queued side by side
    effects = {"side_effects.queue_notifications", "side_effects.queue_payment_requests",
               "side_effects.queue_shipment_messages"}
    assert {t.task_id for t in dag.tasks if t.task_id.startswith("side_effects.")} == effects
    for effect in effects:
        assert dag.get_task(effect).upstream_task_ids == after, effect
        assert dag.get_task(effect).downstream_task_ids == {"report.finish_run"}, effect
    # one allocation task per stock pool, mapped at run time
    assert type(dag.get_task("allocate.allocate_pool")).__name__.endswith("MappedOperator")


def test_schedule_follows_schedule_yaml(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "schedule.yaml").write_text("times: ['05:15', '17:15']\ntimezone: America/New_York\n")
    code = ("from airflow.dag_processing.dagbag import DagBag; b = DagBag(dag_folder=%r); "
            "d = b.dags['backorder_cycle']; print(d.timetable.timetable.summary, d.timetable.timetable._timezone)") % str(DAGS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "BACKORDERS_RULES_DIR": str(rules)}).stdout
    assert "15 5,17 * * *" in out and "America/New_York" in out


def test_parsing_is_fast_and_imports_nothing_heavy():
    code = f"""
import sys, time, json, importlib.util
import airflow.sdk
before = set(sys.modules)
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", {str(DAGS / 'backorder_cycle.py')!r})
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
elapsed = time.perf_counter() - started
new = set(sys.modules) - before
print(json.dumps({{"seconds": elapsed, "heavy": sorted(m for m in {HEAVY!r} if m in new)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    assert result["heavy"] == []
    assert result["seconds"] < 2.0, result
