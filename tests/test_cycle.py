"""The cycle's stages against a real PostgreSQL, without Airflow: extraction, eligibility, FIFO over runs, replays."""
from __future__ import annotations

import pytest

from backorders import cycle
from backorders.rules import load_rules
from tests.conftest import order_message, snapshot_oms, table_rows

T1 = "2026-03-02T06:00:00Z"
T2 = "2026-03-02T14:00:00Z"
T3 = "2026-03-02T22:00:00Z"


def lines(url):
    return {r[0]: r[1:] for r in table_rows(url, """
        SELECT line_id, qty_allocated, qty_backordered, qty_held, qty_cancelled, qty_shipped, status, is_backorder,
               backorder_decided_by FROM oms.order_lines ORDER BY line_id""")}


def test_samples_end_to_end(landing, migrated_url):
    url = migrated_url
    samples = "tests/fixtures/messages/"
    landing.message(open(samples + "order-create-backorder-line.json").read(), "2026-03-02T10:00:00Z")
    landing.message(open(samples + "order-create-no-backorder.json").read(), "2026-03-02T10:40:00Z")
    landing.stock([("WH_PDX", "TENT-2P-GRN", 0), ("WH_PDX", "STAKE-AL-8", 40), ("WH_NJ", "TENT-2P-GRN", 0),
                   ("WH_NJ", "STAKE-AL-8", 12), ("WH_KOELN", "MUG-ENAMEL-BLU", 1)], "2026-03-02T06:00:00Z")
    s = cycle.run_cycle(url, T2)
    assert (s["orders_created"], s["lines_created"], s["messages_quarantined"]) == (2, 3, 0)
    got = lines(url)
    # tent: allowBackorders=true by the line attribute, no stock anywhere -> backorder
    assert got["000100231-1"] == (0, 1, 0, 0, 0, "BACKORDERED", True, "line_attribute")
    # stakes: no attribute, no catalog flag -> the channel decides; 40 at WH_PDX, the first source
    assert got["000100231-2"] == (2, 0, 0, 0, 0, "ALLOCATED", False, "channel")
    # mug: allowBackorders=false, 1 of 3 in stock: 1 allocated, 2 cancelled
    assert got["EU-0004471-1"] == (1, 0, 0, 2, 0, "ALLOCATED", False, "line_attribute")
    assert table_rows(url, "SELECT shipment_request_id, source_code FROM oms.shipment_requests ORDER BY 1") == [
        ("SR-000100231-1", "WH_PDX"), ("SR-EU-0004471-1", "WH_KOELN")]
    assert table_rows(url, "SELECT kind, recipient FROM oms.notifications ORDER BY kind") == [
        ("BACKORDER_NOTICE", "dana.reyes@example.com"), ("CANCELLATION_NOTICE", "jonas.becker@example.org")]
    assert table_rows(url, "SELECT order_id, status FROM oms.orders ORDER BY 1") == [
        ("000100231", "BACKORDERED"), ("EU-0004471", "ALLOCATED")]
    assert table_rows(url, "SELECT line_id, outcome, qty_needed, qty_available FROM oms.backorder_attempts "
                           "ORDER BY 1") == [("000100231-1", "NO_STOCK", 1, 0),
                                             ("EU-0004471-1", "CANCELLED_NOT_BACKORDERABLE", 3, 1)]


def test_only_input_received_up_to_t_is_used(landing, migrated_url):
    landing.message(order_message("A1", lines=[("SKU-A", 1, None)]), "2026-03-02T05:00:00Z")
    landing.message(order_message("A2", lines=[("SKU-A", 1, None)]), "2026-03-02T07:00:00Z")
    landing.stock([("WH_PDX", "SKU-A", 5)], "2026-03-02T05:00:00Z")
    landing.stock([("WH_PDX", "SKU-A", 0)], "2026-03-02T06:30:00Z")   # arrives after T1: not seen by T1
    s = cycle.run_cycle(migrated_url, T1)
    assert s["orders_created"] == 1
    assert lines(migrated_url)["A1-1"][0] == 1
    s = cycle.run_cycle(migrated_url, T2)
    assert s["orders_created"] == 1
    # at T2 the latest feed says 0 on hand: A2 waits
    assert lines(migrated_url)["A2-1"][:2] == (0, 1)


def test_restock_goes_to_the_oldest_backorder_first(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("OLD", origin="2026-03-01T09:00:00+00:00", lines=[("SKU-R", 2, None)]),
                    "2026-03-01T09:00:00Z")
    landing.stock([("WH_PDX", "SKU-R", 0)], "2026-03-01T00:00:00Z")
    cycle.run_cycle(url, T1)
    assert lines(url)["OLD-1"][:2] == (0, 2)
    # a newer order arrives in the same window as a restock of 2: the older backorder gets it
    landing.message(order_message("NEW", origin="2026-03-02T10:00:00+00:00", lines=[("SKU-R", 2, None)]),
                    "2026-03-02T10:00:00Z")
    landing.stock([("WH_PDX", "SKU-R", 2)], "2026-03-02T12:00:00Z")
    cycle.run_cycle(url, T2)
    got = lines(url)
    assert got["OLD-1"][:2] == (2, 0) and got["OLD-1"][5] == "ALLOCATED"
    assert got["NEW-1"][:2] == (0, 2)
    attempts = table_rows(url, "SELECT line_id, checked_at::text, outcome FROM oms.backorder_attempts "
                               "WHERE line_id = 'OLD-1' ORDER BY checked_at")
    assert [a[2] for a in attempts] == ["NO_STOCK", "ALLOCATED"]
    # the backorder label stays from the first run that could not allocate it until it is allocated
    assert table_rows(url, "SELECT is_backorder, backordered_since IS NULL FROM oms.order_lines "
                           "WHERE line_id = 'OLD-1'") == [(False, True)]
    assert table_rows(url, "SELECT backordered_since = %s::timestamptz FROM oms.order_lines "
                           "WHERE line_id = 'NEW-1'".replace("%s", f"'{T2}'")) == [(True,)]


def test_backorder_email_is_sent_once_per_line(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("E1", lines=[("SKU-E", 1, None), ("SKU-F", 1, None)]), "2026-03-02T05:00:00Z")
    cycle.run_cycle(url, T1)
    cycle.run_cycle(url, T2)
    cycle.run_cycle(url, T3)
    notes = table_rows(url, "SELECT kind, order_id, subject FROM oms.notifications")
    assert notes == [("BACKORDER_NOTICE", "E1", "2 items of your order E1 are on backorder")]
    assert table_rows(url, "SELECT count(*) FROM oms.backorder_attempts") == [(6,)]


def test_catalog_flag_decides_when_the_line_says_nothing(landing, migrated_url):
    url = migrated_url
    landing.catalog([("SKU-NO", False, None), ("SKU-YES", True, 5)])
    landing.message(order_message("EU1", store="EU_WEB", lines=[("SKU-NO", 1, None), ("SKU-YES", 1, None),
                                                                ("SKU-CH", 1, None), ("SKU-NO", 1, True)]),
                    "2026-03-02T05:00:00Z")
    cycle.run_cycle(url, T1)
    got = lines(url)
    assert got["EU1-1"][3:] == (1, 0, "CANCELLED", False, "catalog")
    assert got["EU1-2"][1:] == (1, 0, 0, 0, "BACKORDERED", True, "catalog")
    assert got["EU1-3"][3:] == (1, 0, "CANCELLED", False, "channel")        # EU_WEB: backorders disabled
    assert got["EU1-4"][1:] == (1, 0, 0, 0, "BACKORDERED", True, "line_attribute")


def test_bad_duplicate_and_conflicting_messages(landing, migrated_url):
    url = migrated_url
    good = order_message("D1", lines=[("SKU-D", 1, None)])
    landing.message(good, "2026-03-02T01:00:00Z")
    landing.message(good, "2026-03-02T01:01:00Z")                                   # exact repeat
    landing.message(order_message("D1", lines=[("SKU-D", 9, None)]), "2026-03-02T01:02:00Z")  # same id, other content
    landing.message("{not json", "2026-03-02T01:03:00Z")
    landing.message(order_message("D2", lines=[("SKU-D", 0, None)]), "2026-03-02T01:04:00Z")  # zero quantity
    s = cycle.run_cycle(url, T1)
    assert (s["messages_in"], s["orders_created"], s["messages_duplicate"], s["messages_quarantined"]) == (5, 1, 1, 3)
    reasons = [r[0] for r in table_rows(url, "SELECT reason FROM oms.quarantine ORDER BY source_ref::int")]
    assert reasons[0].startswith("conflict: order D1 was already received in message 1")
    assert reasons[1].startswith("invalid JSON")
    assert "lines[0].quantity" in reasons[2]
    assert table_rows(url, "SELECT count(*) FROM oms.exceptions WHERE kind = 'REJECTED_MESSAGE'") == [(3,)]
    # nothing lost: every message consumed once, in exactly one way
    assert table_rows(url, "SELECT outcome, count(*) FROM oms.consumed_messages GROUP BY 1 ORDER BY 1") == [
        ("DUPLICATE", 1), ("PROCESSED", 1), ("QUARANTINED", 3)]
    # a later run consumes nothing again; a repeat arriving later is a duplicate of the known order
    landing.message(good, "2026-03-02T08:00:00Z")
    s = cycle.run_cycle(url, T2)
    assert (s["messages_in"], s["messages_duplicate"], s["orders_created"]) == (1, 1, 0)


def test_a_backlog_in_chunks_ends_in_the_tables_of_one_chunk(pg_admin_url, monkeypatch, caplog):
    """extract_orders reads, parses and stages the messages a chunk at a time, queue_notifications renders the emails
    a chunk of orders at a time (their memory follows the chunk): with chunks of 3, an order's repeat and its
    conflicting version in other chunks than its first message, bad messages and a day of demo orders end in exactly
    the tables that one chunk gives."""
    import logging

    from backorders import db, demo_data, schema
    from backorders.cli import DEMO_START
    from backorders import notifications
    from tests.conftest import Landing, scratch_database

    good = order_message("D1", lines=[("SKU-D", 1, None)])
    data = demo_data.generate_demo(600, seed=5, start=DEMO_START, days=1)
    snapshots, figures = [], []
    for chunk in (None, 3):
        if chunk:
            monkeypatch.setattr(cycle, "EXTRACT_CHUNK_MESSAGES", chunk)
            monkeypatch.setattr(notifications, "NOTICE_CHUNK_ORDERS", chunk)
        with scratch_database(pg_admin_url, f"chunks_{chunk}") as url:
            schema.upgrade(url)
            landing = Landing(url)
            landing.message(good, "2026-03-01T01:00:00Z")
            with db.transaction(url) as conn:
                demo_data.write_landing(conn, data)
            landing.message("{not json", "2026-03-02T01:03:00Z")
            landing.message(good, "2026-03-02T01:04:00Z")                                    # exact repeat
            landing.message(order_message("D1", lines=[("SKU-D", 9, None)]), "2026-03-02T01:05:00Z")  # conflict
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="backorders"):
                figures.append(cycle.run_cycle(url, T1))
            said = [r.getMessage() for r in caplog.records]
            figures[-1]["chunks"] = (sum("staged:" in m for m in said), sum("BACKORDER_NOTICE at" in m for m in said))
            figures[-1]["quarantine"] = table_rows(url, "SELECT reason FROM oms.quarantine WHERE reason LIKE 'conflict%'")
            figures[-1]["notices"] = table_rows(url, "SELECT count(*) FROM oms.notifications WHERE kind = 'BACKORDER_NOTICE'")
            snapshots.append(snapshot_oms(url))
    whole, chunked = figures
    assert whole["chunks"] == (0, 0), whole["chunks"]       # one chunk each: no chunk is reported
    notices = chunked["notices"][0][0]
    assert chunked["chunks"] == (-(-chunked["messages_in"] // 3), -(-notices // 3)), (chunked["chunks"], notices)
    assert chunked["messages_in"] > 60 and notices > 10, (chunked, notices)
    assert chunked["messages_duplicate"] == 1 and chunked["orders_created"] > 50, chunked
    assert len(chunked["quarantine"]) == 1 and "order D1 was already received in message 1 " in chunked["quarantine"][0][0]
    assert snapshots[0] == snapshots[1]


def test_publish_prepares_again_what_a_later_allocation_made_stale(pg_admin_url, monkeypatch, caplog):
    """prepare_publish stages, beside the allocation gate, what publish needs (new shipment requests, touched lines,
    derived quantities); a pool allocated after it drops its marker, and publish then prepares everything again in its
    own transaction. Here the prepared tables are spoiled after prepare_publish and a pool is allocated again: three
    runs of demo days end in exactly the tables of the runs that used what prepare_publish left."""
    import logging

    from backorders import db, demo_data, schema
    from backorders.cli import DEMO_START
    from tests.conftest import scratch_database

    data = demo_data.generate_demo(400, seed=11, start=DEMO_START, days=2)
    real_prepare = cycle.prepare_publish
    spoiled = []

    def prepare_then_allocate_again(url, t):
        figures = real_prepare(url, t)
        stg = cycle.staging_schema(cycle.as_run_time(t))
        with db.transaction(url) as conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {stg}.touched; DELETE FROM {stg}.derived; "
                        f"UPDATE {stg}.new_shipments SET shipment_number = shipment_number + 7")
            spoiled.append(cur.rowcount)
        cycle.allocate(url, t, cycle.list_pools(url, t)[0])
        return figures

    snapshots, said = [], []
    for spoil in (False, True):
        if spoil:
            monkeypatch.setattr(cycle, "prepare_publish", prepare_then_allocate_again)
        with scratch_database(pg_admin_url, f"prepared_{spoil}") as url:
            schema.upgrade(url)
            with db.transaction(url) as conn:
                demo_data.write_landing(conn, data)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="backorders"):
                runs = [cycle.run_cycle(url, t) for t in (T1, T2, "2026-03-03T14:00:00Z")]
            said.append(sum("not prepared beforehand" in r.getMessage() for r in caplog.records))
            assert all(r["seconds"].get("prepare_publish") is not None for r in runs)
            assert sum(r["shipment_requests"] for r in runs) > 20, runs
            snapshots.append(snapshot_oms(url))
    assert said == [0, 3] and all(n > 0 for n in spoiled), (said, spoiled)
    assert snapshots[0] == snapshots[1]


def test_unlisted_store_uses_the_defaults(landing, migrated_url):
    landing.message(order_message("X1", store="MARS_WEB", lines=[("SKU-X", 1, None)]), "2026-03-02T01:00:00Z")
    s = cycle.run_cycle(migrated_url, T1)
    assert s["orders_created"] == 1
    # defaults: backorders enabled, no sources -> a backorder with the reason saying there is no source
    got = lines(migrated_url)["X1-1"]
    assert got[1] == 1 and got[7] == "channel"
    # a later run with no new order of that store: its waiting line is found in the demand and gets the defaults too
    s = cycle.run_cycle(migrated_url, T2)
    assert s["demand_lines"] == 1 and s["lines_backordered"] == 1
    assert table_rows(migrated_url, "SELECT order_id, checked_at FROM oms.backorder_attempts ORDER BY 2") == [
        ("X1", cycle.as_run_time(T1)), ("X1", cycle.as_run_time(T2))]


def test_shipment_confirmation_ships_the_lines(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("S1", lines=[("SKU-S", 3, None)]), "2026-03-02T01:00:00Z")
    landing.stock([("WH_PDX", "SKU-S", 3)], "2026-03-02T00:00:00Z")
    cycle.run_cycle(url, T1)
    assert lines(url)["S1-1"][0] == 3
    landing.confirm("SR-S1-1", "2026-03-02T10:00:00Z")
    s = cycle.run_cycle(url, T2)
    assert s["shipments_confirmed"] == 1
    assert lines(url)["S1-1"][:6] == (0, 0, 0, 0, 3, "SHIPPED")
    assert table_rows(url, "SELECT status FROM oms.shipment_requests") == [("SHIPPED",)]
    # shipped stock is no longer committed: the next feed is what counts
    landing.message(order_message("S2", lines=[("SKU-S", 1, None)]), "2026-03-02T15:00:00Z")
    landing.stock([("WH_PDX", "SKU-S", 1)], "2026-03-02T15:00:00Z")
    cycle.run_cycle(url, T3)
    assert lines(url)["S2-1"][0] == 1


def test_committed_stock_is_not_allocated_twice(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("C1", lines=[("SKU-C", 2, None)]), "2026-03-02T01:00:00Z")
    landing.stock([("WH_PDX", "SKU-C", 3)], "2026-03-02T00:00:00Z")
    cycle.run_cycle(url, T1)
    landing.message(order_message("C2", lines=[("SKU-C", 2, None)]), "2026-03-02T08:00:00Z")
    cycle.run_cycle(url, T2)       # on hand still 3, 2 of them committed to C1 and not shipped
    assert lines(url)["C2-1"][:2] == (1, 1)


def test_rerun_of_the_latest_t_gives_identical_tables(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("R1", lines=[("SKU-1", 2, None), ("SKU-2", 1, False)]), "2026-03-02T01:00:00Z")
    landing.message(order_message("R2", lines=[("SKU-1", 3, None)]), "2026-03-02T09:00:00Z")
    landing.message("garbage", "2026-03-02T09:30:00Z")
    landing.stock([("WH_PDX", "SKU-1", 1), ("WH_NJ", "SKU-1", 1)], "2026-03-02T00:00:00Z")
    landing.stock([("WH_DAL", "SKU-1", 3)], "2026-03-02T12:00:00Z")
    cycle.run_cycle(url, T1)
    cycle.run_cycle(url, T2)
    landing.confirm("SR-R1-1", "2026-03-02T20:00:00Z")
    cycle.run_cycle(url, T3)
    before = snapshot_oms(url)
    cycle.run_cycle(url, T3)
    cycle.run_cycle(url, T3)
    assert snapshot_oms(url) == before


def test_clearing_a_run_and_the_later_ones_replays_the_same_tables(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("P1", lines=[("SKU-1", 2, None)]), "2026-03-02T01:00:00Z")
    landing.message(order_message("P2", lines=[("SKU-1", 2, None)]), "2026-03-02T09:00:00Z")
    landing.stock([("WH_PDX", "SKU-1", 1)], "2026-03-02T00:00:00Z")
    landing.stock([("WH_PDX", "SKU-1", 4)], "2026-03-02T20:00:00Z")
    for t in (T1, T2, T3):
        cycle.run_cycle(url, t)
    final = snapshot_oms(url)
    with pytest.raises(cycle.RunRefused, match="later run"):
        cycle.run_cycle(url, T2)
    assert snapshot_oms(url) == final          # the refusal changed nothing
    cycle.run_cycle(url, T2, allow_rewind_later=True)
    cycle.run_cycle(url, T3)
    assert snapshot_oms(url) == final


def always_failing_check(landing, monkeypatch, check_id: str, description: str):
    """One order and its stock before T1, and a blocking check (of the gate check_id names) that always finds one
    failing row."""
    from backorders import quality

    landing.message(order_message("F1", lines=[("SKU-F", 1, None)]), "2026-03-02T01:00:00Z")
    landing.stock([("WH_PDX", "SKU-F", 1)], "2026-03-02T00:00:00Z")
    broken = quality.Check(check_id, description, "{stg}.demand",
                           query="SELECT count(*) AS x FROM (SELECT * FROM {batch}) d")
    monkeypatch.setattr(quality, "CHECKS", quality.CHECKS + [broken])
    return broken


def test_failed_check_publishes_nothing(landing, migrated_url, monkeypatch):
    from backorders import quality

    url = migrated_url
    broken = always_failing_check(landing, monkeypatch, "allocate.always_fails", "always fails")
    with pytest.raises(cycle.CheckFailed, match="always fails: 1 rows"):
        cycle.run_cycle(url, T1)
    assert table_rows(url, "SELECT count(*) FROM oms.orders") == [(0,)]
    assert table_rows(url, "SELECT count(*) FROM oms.consumed_messages") == [(0,)]
    status, error, dq = table_rows(url, "SELECT status, error, dq_results::text FROM oms.pipeline_runs")[0]
    assert status == "FAILED" and "always fails" in error and '"failing_rows": 1' in dq
    # after the fault is gone the same T runs and publishes
    monkeypatch.setattr(quality, "CHECKS", [c for c in quality.CHECKS if c is not broken])
    s = cycle.run_cycle(url, T1)
    assert s["orders_created"] == 1 and s["lines_allocated"] == 1


def test_bad_input_is_reported_by_the_extract_gate_even_when_the_allocation_fails(landing, migrated_url, monkeypatch):
    """run_cycle runs the extract gate after the pools' allocations (beside the allocation gate); when an allocation
    fails on input the gate would block, the gate still runs and its failure is the one raised and recorded."""
    url = migrated_url
    always_failing_check(landing, monkeypatch, "extract.always_fails", "input always bad")
    real_allocate = cycle.allocate

    def engine_broke(*args, **kwargs):
        raise ZeroDivisionError("the engine broke on the bad input")

    for allocation_fails in (True, False):
        monkeypatch.setattr(cycle, "allocate", engine_broke if allocation_fails else real_allocate)
        with pytest.raises(cycle.CheckFailed, match="input always bad: 1 rows"):
            cycle.run_cycle(url, T1)
        assert table_rows(url, "SELECT count(*) FROM oms.orders") == [(0,)]
        status, error = table_rows(url, "SELECT status, error FROM oms.pipeline_runs")[0]
        assert status == "FAILED" and "input always bad" in error, allocation_fails


def extract_again(url, t, stage, runs: int) -> None:
    """Open T again (a rewind) and run its extract, with `stage` (one that extract_stock stands in for when it has not
    run) run `runs` times beside the orders' extract."""
    from backorders import lifecycle

    cycle.begin_run(url, t)
    cycle.extract_orders(url, t)
    for _ in range(runs):
        stage(url, t)
    lifecycle.stage_cancellations(url, t, load_rules())
    cycle.extract_stock(url, t)


def test_on_hand_staged_by_its_stage_again_or_by_extract_stock_gives_the_same_stock(landing, migrated_url):
    """stage_on_hand runs next to the orders' extract; run twice it replaces what it staged, and extract_stock stages
    the on hand itself when it has not run: the same intake, quarantine, on hand and stock every way."""
    url = migrated_url
    landing.message(order_message("O1", lines=[("SKU-A", 2, None), ("SKU-B", 1, None)]), "2026-03-02T01:00:00Z")
    landing.stock([("WH_PDX", "SKU-A", 1), ("WH_PDX", "SKU-B", 5), ("WH_NOPE", "SKU-A", 9),
                   ("WH_PDX", "SKU-C", -1)], "2026-03-02T00:00:00Z")
    stg = cycle.staging_schema(cycle.as_run_time(T1))
    tables = {"stock_intake": "source_ref, status", "quarantine": "quarantine_id", "on_hand": "source_code, sku",
              "stock": "source_code, sku"}

    def staged():
        return {t: table_rows(url, f"SELECT * FROM {stg}.{t} ORDER BY {key}") for t, key in tables.items()}

    cycle.run_cycle(url, T1, keep_staging=True)
    expected = staged()
    assert len(expected["stock"]) == 2 and len(expected["quarantine"]) == 2 and len(expected["stock_intake"]) == 4
    for on_hand_runs in (0, 2):                 # the same T again (a rewind): stage_on_hand not at all, or twice
        extract_again(url, T1, cycle.stage_on_hand, on_hand_runs)
        assert staged() == expected, on_hand_runs


def test_demand_from_the_open_lines_staged_by_their_stage_again_or_by_extract_stock_is_the_same(landing,
                                                                                                   migrated_url):
    """stage_open_lines stages the waiting lines from oms beside the orders' extract and extract_stock turns them into
    the demand in place (less the cancellations of T, plus the new lines). Staged once, twice or not at all (then
    extract_stock stages them): the same demand."""
    url = migrated_url
    for order_id, sku, qty in (("W1", "SKU-A", 3), ("W2", "SKU-B", 2), ("W3", "SKU-A", 1)):
        landing.message(order_message(order_id, lines=[(sku, qty, None)]), "2026-03-02T01:00:00Z")
    landing.stock([("WH_PDX", "SKU-A", 0), ("WH_PDX", "SKU-B", 0)], "2026-03-02T00:00:00Z")
    cycle.run_cycle(url, T1)
    assert lines(url)["W2-1"][:3] == (0, 2, 0)                     # all three wait
    landing.message(order_message("N1", lines=[("SKU-A", 2, None), ("SKU-C", 1, None)]), "2026-03-02T08:00:00Z")
    landing.response("W2", "cancel", "2026-03-02T09:00:00Z")        # W2 drops out of the demand at T2
    stg = cycle.staging_schema(cycle.as_run_time(T2))

    def demand():
        return table_rows(url, f"SELECT * FROM {stg}.demand ORDER BY order_id, line_id")

    cycle.run_cycle(url, T2, keep_staging=True)
    expected = demand()
    assert [(r[0], r[1], r[8], r[11]) for r in expected] == [       # order, line, qty_open, is_new
        ("N1", "N1-1", 2, True), ("N1", "N1-2", 1, True), ("W1", "W1-1", 3, False), ("W3", "W3-1", 1, False)]
    for open_lines_runs in (0, 1, 2):
        extract_again(url, T2, cycle.stage_open_lines, open_lines_runs)
        assert demand() == expected, open_lines_runs
    # extract_stock again after it succeeded (its open lines are the demand now): refused, saying what to do instead
    with pytest.raises(cycle.RunRefused, match="clear the run from open_run"):
        cycle.extract_stock(url, T2)
    assert demand() == expected


def test_run_time_resolution():
    from datetime import datetime, timezone

    assert cycle.resolve_run_time(None, datetime(2026, 3, 2, 7, 1, tzinfo=timezone.utc)).hour == 7
    assert cycle.resolve_run_time("2026-03-02T06:00:00+01:00", None).hour == 5
    with pytest.raises(ValueError, match="time zone"):
        cycle.as_run_time("2026-03-02T06:00:00")
    with pytest.raises(ValueError):
        cycle.resolve_run_time(None, None)


def stage_up_to_publish(url, t):
    """Run T's stages before publish, as run_cycle does (one after the other)."""
    from backorders import lifecycle

    cycle.begin_run(url, t)
    cycle.extract_orders(url, t)
    lifecycle.stage_cancellations(url, t, load_rules())
    cycle.extract_stock(url, t)
    cycle.check_extract(url, t)
    cycle.prepare_allocation(url, t)
    for pool in cycle.list_pools(url, t):
        cycle.allocate(url, t, pool)
    cycle.check_allocation(url, t)


def two_orders(landing):
    """R1 (2 units, one of them in stock) and R2 (1 unit of a SKU with none): an allocation, a backorder, attempts."""
    landing.message(order_message("R1", lines=[("SKU-A", 2, None)]), "2026-03-02T01:00:00Z")
    landing.message(order_message("R2", lines=[("SKU-B", 1, None)]), "2026-03-02T02:00:00Z")
    landing.stock([("WH_PDX", "SKU-A", 1), ("WH_PDX", "SKU-B", 0)], "2026-03-02T00:00:00Z")


@pytest.mark.parametrize("set_based", [True, False], ids=["set-based", "row-by-row"])
def test_publish_rolls_back_when_a_row_would_reference_nothing(landing, migrated_url, set_based):
    """An order missing from what publish inserts (as a bug upstream of publish would leave it): its line and its
    shipment request would reference nothing. Checked set-based or by PostgreSQL's triggers, publish raises and writes
    nothing."""
    import psycopg2

    url = migrated_url
    two_orders(landing)
    t = cycle.as_run_time(T1)
    stage_up_to_publish(url, t)
    table_rows(url, f"DELETE FROM {cycle.staging_schema(t)}.new_orders WHERE order_id = 'R1' RETURNING 1")
    expected = (cycle.ReferencesBroken, r"order_documents -> orders: 1 rows reference no row \(e\.g\. R1\); "
                r"order_lines -> orders: 1 rows reference no row \(e\.g\. R1\); "
                r"shipment_requests -> orders: 1 rows reference no row \(e\.g\. R1\)$") if set_based else \
        (psycopg2.errors.ForeignKeyViolation, "order_documents_order_id_fkey")
    with pytest.raises(expected[0], match=expected[1]):
        cycle.publish(url, t, set_based_references=set_based)
    assert table_rows(url, "SELECT (SELECT count(*) FROM oms.orders) + (SELECT count(*) FROM oms.order_lines) + "
                           "(SELECT count(*) FROM oms.shipment_requests) + (SELECT count(*) FROM "
                           "oms.backorder_attempts) + (SELECT count(*) FROM oms.order_documents)") == [(0,)]


def test_publish_set_based_or_row_by_row_gives_the_same_tables(landing, migrated_url, monkeypatch, caplog):
    import logging

    from backorders import db

    url = migrated_url
    two_orders(landing)
    landing.message(order_message("R3", lines=[("SKU-A", 1, None), ("SKU-C", 1, None)]), "2026-03-02T09:00:00Z")
    landing.stock([("WH_PDX", "SKU-A", 3), ("WH_PDX", "SKU-C", 1)], "2026-03-02T08:00:00Z")
    caplog.set_level(logging.INFO, logger="backorders")
    for t in (T1, T2):
        cycle.run_cycle(url, t)
    assert "checked row by row" not in caplog.text          # the superuser of the test server: set-based
    set_based = snapshot_oms(url)
    assert len(set_based["backorder_attempts"]) == 4 and len(set_based["shipment_request_lines"]) == 4
    monkeypatch.setattr(db, "why_row_triggers_needed", lambda cur, tables: "the test says so")
    for t in (T1, T2):
        cycle.run_cycle(url, t, allow_rewind_later=True)
    assert "foreign keys checked row by row as well (the test says so)" in caplog.text
    assert snapshot_oms(url) == set_based


def audit_inserts(url, table, column):
    """A trigger someone else added: every row inserted into oms.<table> leaves its <column> in public.<table>_audit."""
    table_rows(url, f"""
        CREATE TABLE public.{table}_audit ({column} text);
        CREATE FUNCTION public.audit_{table}() RETURNS trigger LANGUAGE plpgsql AS
          $$BEGIN INSERT INTO public.{table}_audit VALUES (NEW.{column}); RETURN NEW; END$$;
        CREATE TRIGGER audit AFTER INSERT ON oms.{table} FOR EACH ROW EXECUTE FUNCTION public.audit_{table}();
        SELECT 1""")


def test_a_trigger_of_someone_else_keeps_the_row_by_row_path_and_fires(landing, migrated_url):
    """session_replication_role = replica would skip any trigger, not only the foreign keys': a table with one of
    its own (an audit trigger a DBA added, say) is written with every trigger on."""
    from backorders import db

    url = migrated_url
    two_orders(landing)
    audit_inserts(url, "backorder_attempts", "line_id")
    with db.transaction(url) as conn, conn.cursor() as cur:
        assert db.why_row_triggers_needed(cur, cycle.REFERENCING_TABLES) == \
            "trigger audit on oms.backorder_attempts would be skipped too"
        assert db.why_row_triggers_needed(cur, ["oms.shipment_requests"]) is None
    cycle.run_cycle(url, T1)
    assert table_rows(url, "SELECT line_id FROM public.backorder_attempts_audit ORDER BY 1") == \
        table_rows(url, "SELECT line_id FROM oms.backorder_attempts ORDER BY 1") == [("R1-1",), ("R2-1",)]


def test_only_the_inserts_with_foreign_keys_run_without_row_triggers(landing, migrated_url, caplog):
    """A trigger on a table publish writes outside those inserts (here oms.orders) does not stop the set-based path,
    and still fires: session_replication_role is switched only around the inserts of REFERENCING_TABLES."""
    import logging

    url = migrated_url
    two_orders(landing)
    audit_inserts(url, "orders", "order_id")
    caplog.set_level(logging.INFO, logger="backorders")
    cycle.run_cycle(url, T1)
    assert "checked row by row" not in caplog.text
    assert table_rows(url, "SELECT order_id FROM public.orders_audit ORDER BY 1") == [("R1",), ("R2",)]


def test_a_role_that_may_not_switch_triggers_off_is_told_so(migrated_url):
    import uuid

    from backorders import db

    role = "bo_test_" + uuid.uuid4().hex[:8]
    conn = db.connect(migrated_url)
    try:                                # everything below is rolled back, the role included
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {role}; GRANT USAGE ON SCHEMA oms TO {role}; SET ROLE {role}")
            assert db.why_row_triggers_needed(cur, cycle.REFERENCING_TABLES) == \
                "the role may not set session_replication_role"
            cur.execute(f"RESET ROLE; GRANT SET ON PARAMETER session_replication_role TO {role}; SET ROLE {role}")
            assert db.why_row_triggers_needed(cur, cycle.REFERENCING_TABLES) is None
    finally:
        conn.rollback()
        conn.close()


def differ_from_their_events(url, t):
    """The lines and orders whose stored quantities, status or labels differ from what their events give:
    refresh_lines.sql over every line, none derived, in a transaction that is rolled back."""
    from backorders import db
    from backorders.settings import read_sql

    conn = db.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE SCHEMA stg_every_line; "
                        "CREATE TABLE stg_every_line.touched AS SELECT order_id, line_id FROM oms.order_lines")
            cur.execute(read_sql("refresh_lines").replace("{stg}", "stg_every_line"), {"t": t})
            cur.execute("SELECT order_id, line_id, qa, qs, qc, held, bo, wait_reason, backordered_since "
                        "FROM stg_every_line.refreshed ORDER BY 1, 2")
            lines = cur.fetchall()
            cur.execute("SELECT order_id, status FROM stg_every_line.refreshed_orders ORDER BY 1")
            orders = cur.fetchall()
    finally:
        conn.rollback()
        conn.close()
    return lines, orders


def test_lines_derived_at_publish_equal_their_events_recomputed(migrated_url, monkeypatch):
    """Publish derives most touched lines from their rows and the run's own rows (derive_lines.sql) instead of
    recomputing them from all their events; after days of demo operation (shipments, cancellations, holds, backorders
    that wait over runs), recomputing every line from its events must change nothing."""
    from backorders import db, demo_data
    from backorders.cli import DEMO_START, schedule_times, simulate_logistics

    url = migrated_url
    data = demo_data.generate_demo(1500, seed=11, start=DEMO_START, days=3)
    with db.transaction(url) as conn:
        demo_data.write_landing(conn, data)
    published, real_publish = [], cycle.publish
    monkeypatch.setattr(cycle, "publish", lambda *a, **k: published.append(real_publish(*a, **k)) or published[-1])
    times = schedule_times(DEMO_START, 3)
    for t in times:
        simulate_logistics(url, t)
        cycle.run_cycle(url, t)
    assert len(published) == len(times)
    derived = sum(f["lines_derived"] for f in published)
    recomputed = sum(f["lines_touched"] - f["lines_derived"] for f in published)
    assert derived > 1000 and recomputed > 0, (derived, recomputed)     # both paths ran
    kinds = table_rows(url, """SELECT count(*) FILTER (WHERE qty_shipped > 0), count(*) FILTER (WHERE qty_cancelled > 0),
                                      count(*) FILTER (WHERE qty_held > 0), count(*) FILTER (WHERE qty_backordered > 0)
                               FROM oms.order_lines""")[0]
    assert min(kinds) > 0, kinds
    assert differ_from_their_events(url, times[-1]) == ([], [])


def test_statistics_refreshed_after_publish_when_autovacuum_would_analyze(migrated_url):
    """cycle.tables_to_analyze applies autovacuum's rule: a table is analyzed when never analyzed, or when the rows
    changed since its last analyze plus this run's exceed autovacuum_analyze_threshold (50) +
    autovacuum_analyze_scale_factor (0.1) x its rows, with the table's own settings where it has them."""
    import time

    from backorders import db

    url = migrated_url
    conn = db.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.sampled (i integer)")
        assert cycle.tables_to_analyze(cur, {"public.sampled": 0}, ("public.sampled",)) == ["public.sampled"]
        cur.execute("INSERT INTO public.sampled SELECT generate_series(1, 1000)")
    conn.close()
    conn = db.connect(url)              # the inserts counted by the statistics (a closed session reports them)
    conn.autocommit = True
    with conn.cursor() as cur:
        for _ in range(100):
            cur.execute("SELECT pg_stat_clear_snapshot(); "
                        "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'sampled'")
            if cur.fetchone()[0] == 1000:
                break
            time.sleep(0.1)
        cur.execute("ANALYZE public.sampled; SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT reltuples, n_mod_since_analyze FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid "
                    "WHERE c.relname = 'sampled'")
        assert cur.fetchone() == (1000, 0)

        def analyzed(written):
            return cycle.tables_to_analyze(cur, {"public.sampled": written}, ("public.sampled",)) == ["public.sampled"]

        assert [analyzed(n) for n in (0, 150, 151)] == [False, False, True]
        cur.execute("ALTER TABLE public.sampled SET (autovacuum_analyze_scale_factor = 0.5)")
        assert [analyzed(n) for n in (151, 550, 551)] == [False, False, True]
        cur.execute("ALTER TABLE public.sampled SET (autovacuum_analyze_threshold = 0)")
        assert [analyzed(n) for n in (500, 501)] == [False, True]
    conn.close()


def test_publish_counts_the_rows_it_wrote_for_the_statistics(landing, migrated_url, monkeypatch):
    """publish passes analyze_published the rows it inserted, updated or deleted per oms table in its transaction:
    here, at the second run, a restock allocates one of two backordered lines."""
    url = migrated_url
    landing.message(order_message("A", lines=[("SKU-R", 2, None), ("SKU-S", 1, None)]), "2026-03-02T01:00:00Z")
    landing.stock([("WH_PDX", "SKU-R", 0), ("WH_PDX", "SKU-S", 0)], "2026-03-01T00:00:00Z")
    cycle.run_cycle(url, T1)
    landing.stock([("WH_PDX", "SKU-R", 2)], "2026-03-02T12:00:00Z")
    seen = []
    real = cycle.analyze_published
    monkeypatch.setattr(cycle, "analyze_published", lambda url, written=None: seen.append(written) or real(url, written))
    cycle.run_cycle(url, T2)
    assert len(seen) == 1
    at_t2 = table_rows(url, f"""
        SELECT (SELECT count(*) FROM oms.shipment_requests WHERE requested_at = '{T2}'),
               (SELECT count(*) FROM oms.shipment_request_lines l JOIN oms.shipment_requests r USING (shipment_request_id)
                WHERE r.requested_at = '{T2}'),
               (SELECT count(*) FROM oms.backorder_attempts WHERE checked_at = '{T2}'),
               (SELECT count(*) FROM oms.order_lines WHERE updated_at = '{T2}')""")[0]
    assert at_t2 == (1, 1, 2, 1), at_t2
    written = seen[0]
    assert tuple(written.get(f"oms.{table}", 0) for table in ("shipment_requests", "shipment_request_lines",
                                                              "backorder_attempts", "order_lines")) == at_t2, written
    # the order stays BACKORDERED (its other line waits): not written
    assert written.get("oms.order_documents", 0) == written.get("oms.orders", 0) == 0, written
