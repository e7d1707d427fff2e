"""Data-quality gates: Great Expectations checks on PostgreSQL after extract, allocation and load; each gate can fail
and then stops the run with nothing published; block or warn from checks.yaml; results kept (table, pipeline_runs,
HTML report); customer emails masked in results and logs."""
from __future__ import annotations

import logging
import shutil

import pytest

from backorders import cycle, db, masking, quality
from backorders.rules import RulesError, load_rules
from tests.conftest import ROOT, Landing, order_message, scratch_database, table_rows

T1 = "2026-03-02T06:00:00Z"
EMAIL = "dana.reyes@example.com"


@pytest.fixture(autouse=True)
def reports(tmp_path, monkeypatch):
    folder = tmp_path / "reports"
    monkeypatch.setenv("BACKORDERS_DQ_REPORT_DIR", str(folder))
    return folder


@pytest.fixture
def rules_dir(tmp_path, monkeypatch):
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "include" / "rules", folder)
    monkeypatch.setenv("BACKORDERS_RULES_DIR", str(folder))
    return folder


def one_order(landing, origin="2026-03-02T00:30:00+00:00"):
    landing.message(order_message("Q1", origin=origin, lines=[("SKU-Q", 2, None), ("SKU-R", 1, None)],
                                  email=EMAIL), "2026-03-02T01:00:00Z")
    landing.stock([("WH_PDX", "SKU-Q", 5)], "2026-03-02T00:00:00Z")


def dq(url):
    return {r[0]: r[1:] for r in table_rows(url, "SELECT check_id, blocking, success, failing_rows, examples "
                                                 "FROM oms.dq_results")}


# ----------------------------------------------------------------------------------------------- configuration
def test_checks_yaml_names_every_check_and_is_validated(rules_dir):
    text = (rules_dir / "checks.yaml").read_text()
    assert all(f"{c.id}:" in text for c in quality.CHECKS)
    assert load_rules().checks.action("extract.origin_date_not_after_t", "block") == "warn"
    (rules_dir / "checks.yaml").write_text("checks:\n  extract.no_such_check: block\n")
    with pytest.raises(RulesError, match=r"checks.yaml: checks: expected ids of the checks .*no_such_check"):
        load_rules()
    (rules_dir / "checks.yaml").write_text("checks:\n  extract.order_id_unique: sometimes\n")
    with pytest.raises(RulesError, match=r"checks.yaml: checks.extract.order_id_unique: Input should be 'block' or"):
        load_rules()
    (rules_dir / "checks.yaml").write_text("checks:\n  'extract.x; DROP TABLE oms.orders': block\n")
    with pytest.raises(RulesError, match="checks.yaml"):
        load_rules()


def test_every_check_names_a_known_table_and_uses_its_batch():
    for c in quality.CHECKS:
        assert quality.TABLE.match(c.table), c.id
        assert (c.query is None) != (c.expectation is None), c.id
        if c.query is not None:
            assert "{batch}" in c.query, c.id


# ----------------------------------------------------------------------------------------------- a clean run
def test_a_clean_run_passes_every_gate_and_keeps_the_results(landing, migrated_url, reports):
    url = migrated_url
    one_order(landing)
    cycle.run_cycle(url, T1)
    got = dq(url)
    assert set(got) == {c.id for c in quality.CHECKS}
    assert [k for k, v in got.items() if not v[1]] == []
    stages = table_rows(url, "SELECT stage, count(*) FROM oms.dq_results GROUP BY 1 ORDER BY 1")
    assert [s for s, _ in stages] == ["allocate", "extract", "load"]
    (summary,) = table_rows(url, "SELECT dq_results FROM oms.pipeline_runs")[0]
    assert len(summary) == len(quality.CHECKS) and all(r["success"] for r in summary)
    (obs,) = table_rows(url, "SELECT observed FROM oms.dq_results WHERE check_id = 'extract.nothing_lost_messages'")[0]
    assert obs == {"messages_landed": 1, "consumed_by_earlier_runs": 0, "messages_in": 1, "processed": 1,
                   "duplicate": 0, "quarantined": 0, "not_yet_due": 0, "balanced": True}
    page = (reports / "cycle_20260302T060000Z.html").read_text()
    assert "Every check passed." in page and "load.counts_match" in page and "nothing lost" in page.lower()
    assert "cycle_20260302T060000Z.html" in (reports / "index.html").read_text()
    # a re-run of the same T replaces the results instead of adding to them
    cycle.run_cycle(url, T1)
    assert table_rows(url, "SELECT count(*) FROM oms.dq_results") == [(len(quality.CHECKS),)]
    assert table_rows(url, "SELECT jsonb_array_length(dq_results) FROM oms.pipeline_runs") == [(len(quality.CHECKS),)]


# ----------------------------------------------------------------------------------------------- each gate can fail
def _corrupt_before(monkeypatch, stage_name: str, sql: str):
    """Run sql (with {stg} and %(t)s) right before the named gate of run_cycle."""
    original = getattr(cycle, stage_name)

    def corrupted(url, t):
        stg = cycle.staging_schema(cycle.as_run_time(t))
        with db.transaction(url) as conn, conn.cursor() as cur:
            cur.execute(sql.replace("{stg}", stg), {"t": cycle.as_run_time(t)})
        return original(url, t)

    monkeypatch.setattr(cycle, stage_name, corrupted)


@pytest.mark.parametrize("gate, sql, failing", [
    ("check_extract", "UPDATE {stg}.stock SET qty_on_hand = -4", {"extract.stock_not_negative",
                                                                   "extract.stock_available_in_range"}),
    ("check_extract", "DELETE FROM {stg}.consumed", {"extract.nothing_lost_messages", "extract.message_outcomes"}),
    ("check_allocation", "UPDATE {stg}.allocations SET qty = qty + 100",
     {"allocate.no_source_over_allocated", "allocate.quantities_add_up"}),
    ("check_load", "DELETE FROM oms.consumed_messages WHERE run_at = %(t)s",
     {"load.messages_published", "load.nothing_lost", "load.counts_match"}),
    # the run's request lines, read by key from its requests: a line with another SKU than its order line
    ("check_load", "UPDATE oms.shipment_request_lines l SET sku = l.sku || '-X' FROM oms.shipment_requests r "
                   "WHERE r.shipment_request_id = l.shipment_request_id AND r.requested_at = %(t)s",
     {"load.shipment_keys_consistent"}),
    # ... and a request line missing: what was allocated is not what was published
    ("check_load", "DELETE FROM oms.shipment_request_lines l USING oms.shipment_requests r "
                   "WHERE r.shipment_request_id = l.shipment_request_id AND r.requested_at = %(t)s",
     {"load.allocations_published"}),
    # an order staged without its document (params.order as received): stopped before publish ...
    ("check_extract", "DELETE FROM {stg}.new_order_documents", {"extract.orders_required"}),
    # ... and one published without it
    ("check_load", "DELETE FROM oms.order_documents WHERE created_run_at = %(t)s", {"load.orders_published"}),
])
def test_each_gate_stops_the_run_on_a_blocking_failure(landing, migrated_url, monkeypatch, reports, gate, sql,
                                                       failing, caplog):
    url = migrated_url
    one_order(landing)
    _corrupt_before(monkeypatch, gate, sql)
    with caplog.at_level(logging.ERROR), pytest.raises(cycle.CheckFailed) as err:
        cycle.run_cycle(url, T1)
    got = dq(url)
    assert {k for k, v in got.items() if not v[1]} == failing
    assert all(got[k][2] > 0 and got[k][3] for k in failing)              # failing rows and examples
    status, error = table_rows(url, "SELECT status, error FROM oms.pipeline_runs")[0]
    assert status == "FAILED" and all(k in error for k in failing) and all(k in str(err.value) for k in failing)
    assert all(k in caplog.text for k in failing)
    if gate != "check_load":            # the extract and allocation gates come before publish: nothing published
        assert table_rows(url, "SELECT count(*) FROM oms.orders") == [(0,)]
        assert table_rows(url, "SELECT count(*) FROM oms.consumed_messages") == [(0,)]
    # the stages after the gate did not run: no customer email was queued
    assert table_rows(url, "SELECT count(*) FROM oms.notifications") == [(0,)]
    page = (reports / "cycle_20260302T060000Z.html").read_text()
    assert "blocking check" in page and "nothing of it was published" in page


# ----------------------------------------------------------------------------------------------- one process, many gates
def test_a_reused_context_sees_the_database_as_it_is_now(landing, migrated_url):
    """The process keeps its GX context between gates: a check that passed and then breaks is reported, a column
    added after GX reflected the table is seen."""
    url = migrated_url
    one_order(landing)
    t = cycle.as_run_time(T1)
    stg = cycle.staging_schema(t)
    from backorders import lifecycle

    cycle.begin_run(url, T1)                                            # the stages of run_cycle up to its first gate
    cycle.extract_orders(url, T1)
    lifecycle.stage_cancellations(url, T1, load_rules())
    cycle.extract_stock(url, T1)
    assert all(r["success"] for r in quality.run_stage(url, T1, "extract"))
    context = quality._CONTEXTS[url]
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {stg}.stock SET qty_on_hand = -4")
        cur.execute(f"ALTER TABLE {stg}.new_orders ADD COLUMN extra integer")
    with pytest.raises(cycle.CheckFailed):
        quality.run_stage(url, T1, "extract")
    assert quality._CONTEXTS[url] is context                         # the same context, not a new one
    got = dq(url)
    assert {k for k, v in got.items() if not v[1]} == {"extract.stock_not_negative", "extract.stock_available_in_range",
                                                     "extract.orders_columns"}
    assert got["extract.stock_not_negative"][2] == 1 and got["extract.stock_not_negative"][3][0]["qty_on_hand"] == -4
    # and back: repaired, the same context passes again
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {stg}.stock SET qty_on_hand = 5")
        cur.execute(f"ALTER TABLE {stg}.new_orders DROP COLUMN extra")
    assert all(r["success"] for r in quality.run_stage(url, T1, "extract"))


@pytest.fixture
def other_url(pg_admin_url, migrated_url, request):
    """A second migrated database next to migrated_url."""
    from backorders import schema

    with scratch_database(pg_admin_url, f"b_{request.node.name[:30]}") as url:
        schema.upgrade(url)
        yield url


def test_two_databases_in_one_process_each_get_their_own_checks(landing, migrated_url, other_url, monkeypatch):
    a, b = migrated_url, other_url
    one_order(landing)
    one_order(Landing(b))
    cycle.run_cycle(a, T1)                                              # clean: every check passes
    _corrupt_before(monkeypatch, "check_extract", "UPDATE {stg}.stock SET qty_on_hand = -4")
    with pytest.raises(cycle.CheckFailed):
        cycle.run_cycle(b, T1)
    assert {k for k, v in dq(b).items() if not v[1]} == {"extract.stock_not_negative",
                                                       "extract.stock_available_in_range"}
    assert all(v[1] for v in dq(a).values()) and len(dq(a)) == len(quality.CHECKS)
    assert quality._CONTEXTS[a] is not quality._CONTEXTS[b]
    assert quality._CONTEXTS[b].ds.connection_string == b
    # no connection of GX is left open after a gate
    assert table_rows(b, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND pid <> pg_backend_pid()") == [(0,)]


def test_failing_rows_are_counted_beyond_the_examples_read(landing, migrated_url, monkeypatch):
    many = quality.Check("extract.many_failing", "a check failing on more rows than are read as examples",
                         "{stg}.new_orders", query="SELECT o.order_id, g FROM (SELECT * FROM {batch}) o, "
                         "generate_series(1, 450) g ORDER BY 2 DESC", default="warn")
    monkeypatch.setattr(quality, "CHECKS", quality.CHECKS + [many])
    one_order(landing)
    cycle.run_cycle(migrated_url, T1)
    blocking, success, rows, examples = dq(migrated_url)["extract.many_failing"]
    assert (blocking, success, rows) == (False, False, 450)
    assert len(examples) == load_rules().checks.examples and all(e["order_id"] == "Q1" for e in examples)


# ----------------------------------------------------------------------------------------------- block or warn
def test_a_warning_is_recorded_and_the_run_goes_on(landing, migrated_url, caplog):
    url = migrated_url
    one_order(landing, origin="2026-03-02T09:00:00+00:00")              # dated after T
    with caplog.at_level(logging.WARNING):
        s = cycle.run_cycle(url, T1)
    assert s["orders_created"] == 1
    blocking, success, rows, examples = dq(url)["extract.origin_date_not_after_t"]
    assert (blocking, success, rows) == (False, False, 1) and examples[0]["order_id"] == "Q1"
    assert "extract.origin_date_not_after_t warns" in caplog.text


def test_requested_beyond_on_hand_warns_with_the_source_and_sku(landing, migrated_url, monkeypatch):
    """load.committed_within_on_hand sums the open shipment requests' lines per source and SKU (read by key, request by
    request): with the on hand lowered under what this run requested, it warns and names the pair."""
    url = migrated_url
    one_order(landing)                  # 2 of SKU-Q requested from WH_PDX (5 on hand), SKU-R waits
    _corrupt_before(monkeypatch, "check_load", "UPDATE {stg}.stock SET qty_on_hand = 1 WHERE sku = 'SKU-Q'")
    s = cycle.run_cycle(url, T1)
    assert s["lines_allocated"] == 1
    blocking, success, rows, examples = dq(url)["load.committed_within_on_hand"]
    assert (blocking, success, rows) == (False, False, 1)
    assert (examples[0]["source_code"], examples[0]["sku"], examples[0]["requested_not_shipped"]) == \
        ("WH_PDX", "SKU-Q", 2)


def test_checks_yaml_can_make_a_warning_block(landing, migrated_url, rules_dir):
    (rules_dir / "checks.yaml").write_text("checks:\n  extract.origin_date_not_after_t: block\n")
    one_order(landing, origin="2026-03-02T09:00:00+00:00")
    with pytest.raises(cycle.CheckFailed, match="order dates are not after T: 1 rows"):
        cycle.run_cycle(migrated_url, T1)
    assert table_rows(migrated_url, "SELECT count(*) FROM oms.orders") == [(0,)]


# ----------------------------------------------------------------------------------------------- masking
def test_examples_and_logs_never_show_a_customer_email(landing, migrated_url, monkeypatch, caplog, reports):
    url = migrated_url
    leaky = quality.Check("extract.leaky_example", "a check whose failing rows carry the customer's email",
                          "{stg}.new_orders", query="SELECT order_id, customer_email, customer_name, "
                          "'write to ' || customer_email AS note FROM (SELECT * FROM {batch}) o", default="warn")
    monkeypatch.setattr(quality, "CHECKS", quality.CHECKS + [leaky])
    one_order(landing)
    with caplog.at_level(logging.DEBUG):
        cycle.run_cycle(url, T1)
    examples = dq(url)["extract.leaky_example"][3]
    assert examples == [{"order_id": "Q1", "customer_email": "d***@e***.com", "customer_name": "D***",
                         "note": "write to d***@e***.com"}]
    assert "extract.leaky_example" in caplog.text
    assert EMAIL not in caplog.text and not any(EMAIL in r.getMessage() for r in caplog.records)
    assert EMAIL not in (reports / "cycle_20260302T060000Z.html").read_text()


def test_masking_helpers():
    assert masking.mask_email("dana.reyes@example.com") == "d***@e***.com"
    assert masking.mask_text("to a.b@x.org and c@y.co.uk\x07") == "to a***@x***.org and c***@y***.uk\\x07"
    assert masking.mask_value({"street": "Main St 1", "qty": 2, "nested": [{"email": "e@f.io"}]}) == \
        {"street": "M***", "qty": 2, "nested": [{"email": "e***@f***.io"}]}
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "mail %s", ("dana.reyes@example.com",), None)
    masking.MaskingFilter().filter(record)
    assert record.getMessage() == "mail d***@e***.com"


def test_install_masks_every_backorders_log_record(caplog):
    previous = logging.getLogRecordFactory()
    try:
        masking.install()
        masking.install()                       # idempotent
        with caplog.at_level(logging.INFO):
            logging.getLogger("backorders.delivery").info("550 <%s>: recipient rejected", EMAIL)
            logging.getLogger("other.library").info("kept as is: %s", EMAIL)
        assert "550 <d***@e***.com>: recipient rejected" in caplog.text
        assert caplog.text.count(EMAIL) == 1 and "kept as is" in caplog.text
        # a copy of a record, as structlog's formatter makes one (logging.makeLogRecord: first without a name)
        copied = logging.makeLogRecord(caplog.records[0].__dict__)
        assert copied.getMessage() == "550 <d***@e***.com>: recipient rejected"
    finally:
        logging.setLogRecordFactory(previous)
