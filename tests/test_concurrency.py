"""Two runs against the same database at once: the run lock (oms.run_lock lease + advisory xact lock) lets one work,
the other waits or is refused, and stock is never allocated twice."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from backorders import cycle, db, run_lock
from tests.conftest import Landing, order_message, scratch_database, snapshot_oms, table_rows, utc

T0 = "2026-03-02T02:00:00Z"
T1 = "2026-03-02T06:00:00Z"
T2 = "2026-03-02T14:00:00Z"


@pytest.fixture
def other_url(pg_admin_url, request):
    """A second empty database, for the same input run one run after the other."""
    with scratch_database(pg_admin_url, f"seq_{request.node.name[:30]}") as url:
        yield url


def scarce_stock(url: str) -> None:
    """3 units of SKU-C; an order of 2 before T1 and another of 2 before T2: together they want more than there is."""
    from backorders import schema

    schema.upgrade(url)
    land = Landing(url)
    land.stock([("WH_PDX", "SKU-C", 3)], "2026-03-01T00:00:00Z")
    land.message(order_message("C1", lines=[("SKU-C", 2, None)]), "2026-03-02T01:00:00Z")
    land.message(order_message("C2", lines=[("SKU-C", 2, None)]), "2026-03-02T08:00:00Z")


def allocated_units(url: str) -> int:
    return table_rows(url, "SELECT coalesce(sum(quantity), 0) FROM oms.shipment_request_lines WHERE sku = 'SKU-C'")[0][0]


def lease(url: str):
    return run_lock.current(url)


def slow_allocation(monkeypatch, started: threading.Event, seconds: float = 3.0):
    real = cycle.allocate

    def slow(*args, **kw):
        started.set()
        time.sleep(seconds)
        return real(*args, **kw)

    monkeypatch.setattr(cycle, "allocate", slow)


def run_in_thread(fn, *args, **kw):
    out: dict = {}

    def target():
        try:
            out["result"] = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, out


def test_a_second_run_is_refused_while_the_first_allocates(migrated_url, other_url, monkeypatch, caplog):
    url = migrated_url
    scarce_stock(url)
    allocating = threading.Event()
    slow_allocation(monkeypatch, allocating)
    th, first = run_in_thread(cycle.run_cycle, url, T1)
    assert allocating.wait(60)
    held = lease(url)
    assert held.run_at == utc(T1) and held.holder.startswith("inprocess:")

    caplog.set_level(logging.INFO, logger="backorders")
    with pytest.raises(run_lock.RunLocked) as refused:
        cycle.run_cycle(url, T2, lock_wait=0)
    assert f"run at {utc(T2).isoformat()}" in str(refused.value)
    assert f"held by the run at {utc(T1).isoformat()}" in str(refused.value)
    assert "waits: oms.run_lock" in caplog.text
    # the refused run wrote nothing: no run row, the lease still with T1
    assert table_rows(url, "SELECT run_at FROM oms.pipeline_runs ORDER BY run_at") == [(utc(T1),)]
    assert lease(url).run_at == utc(T1)

    th.join(120)
    assert "error" not in first, first.get("error")
    assert not lease(url).held                                  # given back by finish_run
    cycle.run_cycle(url, T2, lock_wait=0)
    assert allocated_units(url) == 3                            # never more than the 3 on hand

    # exactly what running T1 then T2 one after the other gives
    monkeypatch.undo()
    scarce_stock(other_url)
    cycle.run_cycle(other_url, T1)
    cycle.run_cycle(other_url, T2)
    assert snapshot_oms(other_url) == snapshot_oms(url)


def test_a_second_run_waits_for_the_lock_and_then_runs_on_the_first_ones_result(migrated_url, monkeypatch, caplog):
    url = migrated_url
    scarce_stock(url)
    allocating = threading.Event()
    slow_allocation(monkeypatch, allocating, seconds=2.0)
    caplog.set_level(logging.INFO, logger="backorders")
    th1, first = run_in_thread(cycle.run_cycle, url, T1)
    assert allocating.wait(60)
    th2, second = run_in_thread(cycle.run_cycle, url, T2, lock_wait=120)
    th1.join(120)
    th2.join(120)
    assert "error" not in first and "error" not in second, (first, second)
    assert "waiting up to" in caplog.text and "for the run lock" in caplog.text
    assert table_rows(url, "SELECT run_at, status FROM oms.pipeline_runs ORDER BY run_at") == [
        (utc(T1), "SUCCESS"), (utc(T2), "SUCCESS")]
    assert allocated_units(url) == 3
    got = dict((r[0], r[1:]) for r in table_rows(url, "SELECT line_id, qty_allocated, qty_backordered FROM "
                                                      "oms.order_lines ORDER BY 1"))
    assert got == {"C1-1": (2, 0), "C2-1": (1, 1)}


def test_an_earlier_t_started_while_a_later_run_works_is_refused_by_the_replay_rule(migrated_url, monkeypatch):
    url = migrated_url
    scarce_stock(url)
    allocating = threading.Event()
    slow_allocation(monkeypatch, allocating, seconds=2.0)
    th, first = run_in_thread(cycle.run_cycle, url, T1)
    assert allocating.wait(60)
    with pytest.raises(cycle.RunRefused, match="later run"):
        cycle.run_cycle(url, T0, lock_wait=0)
    th.join(120)
    assert "error" not in first
    assert table_rows(url, "SELECT run_at FROM oms.pipeline_runs") == [(utc(T1),)]


def test_publish_refuses_when_the_run_lost_the_lease(migrated_url, monkeypatch):
    url = migrated_url
    scarce_stock(url)
    real = cycle.check_allocation

    def break_the_lease(*args, **kw):
        # an operator broke the lease (or another run took it over as stale) while this run allocated
        with db.transaction(url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE oms.run_lock SET held_by_run_at = %s, airflow_run_id = 'someone-else'", (utc(T2),))
        return real(*args, **kw)

    monkeypatch.setattr(cycle, "check_allocation", break_the_lease)
    with pytest.raises(run_lock.RunLocked, match="does not hold oms.run_lock"):
        cycle.run_cycle(url, T1, lock_wait=0)
    assert table_rows(url, "SELECT count(*) FROM oms.shipment_requests") == [(0,)]
    assert table_rows(url, "SELECT status FROM oms.pipeline_runs") == [("FAILED",)]
    assert lease(url).run_at == utc(T2)                       # the failed run gave back nothing it did not hold


def test_a_stale_lease_is_taken_over(migrated_url, caplog):
    url = migrated_url
    scarce_stock(url)
    caplog.set_level(logging.INFO, logger="backorders")
    # a run that ended (FAILED) without giving the lease back
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO oms.pipeline_runs (run_id, run_at, status) VALUES ('cycle_x', %s, 'FAILED')",
                    (utc(T0),))
        cur.execute("INSERT INTO oms.run_lock (lock_name, held_by_run_at, airflow_run_id, acquired_at) "
                    "VALUES ('backorder_cycle', %s, 'manual__x', now()) ON CONFLICT (lock_name) DO UPDATE SET "
                    "held_by_run_at = excluded.held_by_run_at, airflow_run_id = excluded.airflow_run_id, "
                    "acquired_at = excluded.acquired_at", (utc(T0),))
    cycle.run_cycle(url, T1, lock_wait=0)
    assert "taking over the lease" in caplog.text and "its run is FAILED" in caplog.text
    # a RUNNING holder whose in-process owner has no process any more
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE oms.pipeline_runs SET status = 'RUNNING' WHERE run_at = %s", (utc(T1),))
        cur.execute("UPDATE oms.run_lock SET held_by_run_at = %s, airflow_run_id = %s, acquired_at = now()",
                    (utc(T1), f"inprocess:{__import__('socket').gethostname()}:999999999"))
    cycle.run_cycle(url, T2, lock_wait=0)
    assert "its process has ended" in caplog.text
    assert not lease(url).held


def test_a_failure_callback_of_another_airflow_run_does_not_touch_the_holder(migrated_url):
    url = migrated_url
    scarce_stock(url)
    cycle.begin_run(url, T1, airflow_run_id="scheduled__T1")
    # the run at the same T but from another Airflow run (e.g. refused while waiting) fails: the holder stays
    cycle.fail_run(url, T1, "task open_run failed", airflow_run_id="manual__other")
    assert lease(url).run_at == utc(T1)
    assert table_rows(url, "SELECT status FROM oms.pipeline_runs") == [("RUNNING",)]
    cycle.fail_run(url, T1, "task publish failed", airflow_run_id="scheduled__T1")
    assert not lease(url).held
    assert table_rows(url, "SELECT status FROM oms.pipeline_runs") == [("FAILED",)]
