"""Hostile and broken input through whole cycles: each bad message or stock row is quarantined with a precise reason
(messages also with a REJECTED_MESSAGE exception) while the rest of the run goes on, and nothing is lost: landed =
consumed before + processed + duplicate + quarantined + not yet due, for messages and stock rows alike."""
from __future__ import annotations

import copy
import json
import logging

from hypothesis import HealthCheck, given, settings, strategies as st

from backorders import cycle, db
from tests.conftest import order_message, table_rows, utc

T1 = "2026-03-02T06:00:00Z"
T2 = "2026-03-02T14:00:00Z"


def _mutate(order_id: str, change) -> str:
    msg = json.loads(order_message(order_id, lines=[("SKU-H", 1, None)]))
    change(msg)
    return json.dumps(msg)


def _line(m):
    return m["params"]["order"]["lines"][0]


# name -> (body, substring of the quarantine reason)
HOSTILE = {
    "invalid JSON": ("{not json", "invalid JSON"),
    "wrong method": (_mutate("H-M", lambda m: m.update(method="magento.sales.order_management.delete")),
                     'method: expected "magento.sales.order_management.create"'),
    "wrong JSON-RPC version": (_mutate("H-V", lambda m: m.update(jsonrpc="1.0")), 'jsonrpc: expected "2.0"'),
    "missing store": (_mutate("H-S", lambda m: m["params"]["order"].pop("store")),
                      "params.order.store: required field is missing"),
    "mistyped quantity": (_mutate("H-T", lambda m: _line(m).update(quantity="2")), "lines[0].quantity"),
    "zero quantity": (_mutate("H-Z", lambda m: _line(m).update(quantity=0)), "got 0"),
    "negative quantity": (_mutate("H-N", lambda m: _line(m).update(quantity=-3)), "got -3"),
    "fractional quantity": (_mutate("H-F", lambda m: _line(m).update(quantity=1.5)), "got 1.5"),
    "missing address": (_mutate("H-A", lambda m: _line(m).update(shipping_address_reference="NOPE")),
                        "shipping_address_reference: \"NOPE\" matches no reference"),
    "missing payment": (_mutate("H-P", lambda m: _line(m).update(payment_reference="NOPE")),
                        "payment_reference: \"NOPE\" matches no reference"),
    "date without time zone": (_mutate("H-D", lambda m: m["params"]["order"].update(origin_date="2026-03-02T00:30:00")),
                               "has no time zone offset"),
    "absurdly large": (_mutate("H-L", lambda m: m["params"]["order"].update(blob="x" * 1_100_000)),
                       "message too large"),
    "control character": (_mutate("H-C", lambda m: _line(m).update(sku="SKU\u0007X")), "control character (U+0007)"),
}


def balance(url: str, t: str) -> dict:
    """The nothing-lost figures of the run at t, as the extract gate recorded them."""
    (observed,) = table_rows(url, "SELECT observed FROM oms.dq_results WHERE run_at = %s "
                                  "AND check_id = 'extract.nothing_lost_messages'".replace("%s", f"'{t}'"))[0]
    return observed


def test_each_hostile_message_is_quarantined_with_its_reason_and_the_rest_goes_on(landing, migrated_url, caplog):
    url = migrated_url
    landing.message(order_message("GOOD-1", lines=[("SKU-G", 1, None)]), "2026-03-02T01:00:00Z")
    ids = {}
    for n, (name, (body, _)) in enumerate(HOSTILE.items()):
        landing.message(body, f"2026-03-02T02:{n:02d}:00Z")
        ids[name] = table_rows(url, "SELECT max(message_id) FROM landing.order_messages")[0][0]
    landing.message(order_message("GOOD-2", store="NOT_A_LISTED_STORE", lines=[("SKU-G", 1, None)]),
                    "2026-03-02T03:00:00Z")
    landing.message(order_message("GOOD-1", lines=[("SKU-G", 1, None)]), "2026-03-02T03:01:00Z")    # duplicate
    landing.message(order_message("GOOD-1", lines=[("SKU-G", 2, None)]), "2026-03-02T03:02:00Z")    # conflict
    landing.message(order_message("LATER", lines=[("SKU-G", 1, None)]), "2026-03-02T09:00:00Z")     # not yet due
    with caplog.at_level(logging.WARNING):
        s = cycle.run_cycle(url, T1)
    assert table_rows(url, "SELECT status FROM oms.pipeline_runs") == [("SUCCESS",)]
    reasons = dict(table_rows(url, "SELECT source_ref::bigint, reason FROM oms.quarantine "
                                   "WHERE source = 'landing.order_messages'"))
    for name, (_, expected) in HOSTILE.items():
        assert expected in reasons[ids[name]], (name, reasons[ids[name]])
    assert any(r.startswith("conflict: order GOOD-1") for r in reasons.values())
    # every quarantined message opened a REJECTED_MESSAGE exception
    assert table_rows(url, "SELECT count(*) FROM oms.exceptions WHERE kind = 'REJECTED_MESSAGE'") == [(len(reasons),)]
    # the rest of the run went on: the good order and the unlisted store's order (channel defaults) were processed
    assert sorted(r[0] for r in table_rows(url, "SELECT order_id FROM oms.orders")) == ["GOOD-1", "GOOD-2"]
    assert "use the defaults: NOT_A_LISTED_STORE" in caplog.text
    assert (s["messages_quarantined"], s["messages_duplicate"], s["orders_created"]) == (len(HOSTILE) + 1, 1, 2)
    b = balance(url, T1)
    assert b["balanced"] and (b["processed"], b["duplicate"], b["quarantined"], b["not_yet_due"]) == \
        (2, 1, len(HOSTILE) + 1, 1)
    # the message not yet due is processed by the next run, the duplicate is never processed again
    s2 = cycle.run_cycle(url, T2)
    assert (s2["messages_in"], s2["orders_created"]) == (1, 1)
    assert balance(url, T2)["balanced"]


def test_bad_stock_rows_are_quarantined_and_future_rows_wait_until_due(landing, migrated_url):
    url = migrated_url
    landing.message(order_message("S1", lines=[("SKU-S", 2, None)]), "2026-03-02T01:00:00Z")
    landing.stock([("WH_PDX", "SKU-S", 1)], "2026-03-01T00:00:00Z")
    landing._exec("INSERT INTO landing.stock_levels (source_code, sku, quantity, as_of, received_at) "
                  "VALUES (%s, %s, %s, %s, %s)", [
                      ("WH_PDX", "SKU-S", -5, utc("2026-03-02T02:00:00Z"), utc("2026-03-02T02:00:00Z")),
                      ("WH_PDX", "SKU-S", -5, utc("2026-03-02T02:00:00Z"), utc("2026-03-02T02:00:00Z")),  # twice
                      ("WH_MARS", "SKU-S", 50, utc("2026-03-02T02:00:00Z"), utc("2026-03-02T02:00:00Z")),
                      ("WH_PDX", "SKU-S", 2.5, utc("2026-03-02T02:00:00Z"), utc("2026-03-02T02:00:00Z")),
                      ("WH_PDX", "SKU-S", None, utc("2026-03-02T02:00:00Z"), utc("2026-03-02T02:00:00Z")),
                      ("WH_PDX", "SKU-S", 7, utc("2026-03-02T10:00:00Z"), utc("2026-03-02T03:00:00Z"))])  # due after T1
    cycle.run_cycle(url, T1)
    rows = table_rows(url, "SELECT source_ref, reason FROM oms.quarantine WHERE source = 'landing.stock_levels'")
    assert sorted(rows, key=lambda r: r[1]) == [
        ("WH_PDX/SKU-S/2026-03-02T02:00:00Z", "quantity is missing"),
        ("WH_PDX/SKU-S/2026-03-02T02:00:00Z", "quantity is negative: -5"),
        ("WH_PDX/SKU-S/2026-03-02T02:00:00Z", "quantity is negative: -5"),
        ("WH_PDX/SKU-S/2026-03-02T02:00:00Z", "quantity is not a whole number: 2.5"),
        ("WH_MARS/SKU-S/2026-03-02T02:00:00Z", "unknown source WH_MARS: not a source of any channel in channels.yaml"),
    ]
    # the bad rows were ignored: the last good level (1) was used, not -5 or 2.5
    assert table_rows(url, "SELECT qty_allocated, qty_backordered FROM oms.order_lines") == [(1, 1)]
    (obs,) = table_rows(url, "SELECT observed FROM oms.dq_results WHERE check_id = 'extract.nothing_lost_stock'")[0]
    assert (obs["stock_rows_in"], obs["valid"], obs["quarantined"], obs["not_yet_due"], obs["balanced"]) == \
        (7, 1, 5, 1, True)
    # the identical rows are two quarantine entries, numbered among themselves
    ids = table_rows(url, "SELECT quarantine_id FROM oms.quarantine WHERE reason = 'quantity is negative: -5' ORDER BY 1")
    assert len(ids) == 2 and ids[0][0].endswith("-1") and ids[1][0].endswith("-2") and ids[0][0][:-2] == ids[1][0][:-2]
    # at T2 the future row is due and used; nothing is quarantined twice
    cycle.run_cycle(url, T2)
    assert table_rows(url, "SELECT qty_allocated, qty_backordered FROM oms.order_lines") == [(2, 0)]
    assert table_rows(url, "SELECT count(*) FROM oms.quarantine WHERE source = 'landing.stock_levels'") == [(5,)]
    # a re-run of T2 gives the same quarantine (stable ids)
    before = table_rows(url, "SELECT * FROM oms.quarantine ORDER BY 1")
    cycle.run_cycle(url, T2)
    assert table_rows(url, "SELECT * FROM oms.quarantine ORDER BY 1") == before


# ----------------------------------------------------------------------------------------------- fuzz
_TEMPLATE = json.loads(order_message("FZ", lines=[("SKU-Z", 2, None), ("SKU-Y", 1, True)]))
_PATHS = [("jsonrpc",), ("method",), ("params", "order", "id"), ("params", "order", "store"),
          ("params", "order", "origin_date"), ("params", "order", "lines", 0, "quantity"),
          ("params", "order", "lines", 0, "sku"), ("params", "order", "lines", 1, "line_number"),
          ("params", "order", "lines", 0, "shipping_address_reference"), ("params", "order", "addresses", 0, "email"),
          ("params", "order", "payments"), ("params", "order", "lines")]
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=False, width=32),
                    st.text(max_size=12), st.just([]), st.just({}), st.just("2026-03-02T00:00:00"))


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(["mutate", "mutate", "raw", "same"]))
    if kind == "raw":
        return draw(st.text(max_size=40))
    msg = copy.deepcopy(_TEMPLATE)
    msg["params"]["order"]["id"] = f"FZ-{draw(st.integers(0, 3))}"
    if kind == "mutate":
        path = draw(st.sampled_from(_PATHS))
        target = msg
        try:
            for p in path[:-1]:
                target = target[p]
            if draw(st.booleans()):
                target[path[-1]] = draw(_VALUES)
            elif isinstance(target, dict):
                target.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            pass
    text = json.dumps(msg)
    if draw(st.booleans()):          # truncate or splice garbage
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=5))
    return text


stock_rows = st.tuples(st.sampled_from(["WH_PDX", "WH_NJ", "WH_MARS", "", None]),
                       st.sampled_from(["SKU-Z", "SKU-Y", "", None]),
                       st.one_of(st.none(), st.integers(-10, 10), st.decimals(-10, 10, places=2, allow_nan=False)),
                       st.sampled_from(["2026-03-01T00:00:00Z", "2026-03-02T05:59:59Z", "2026-03-02T07:00:00Z", None]),
                       st.sampled_from(["2026-03-02T01:00:00Z", "2026-03-02T07:00:00Z"]))


def _reset(url: str) -> None:
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') FROM pg_tables "
                    "WHERE schemaname IN ('landing', 'oms') AND tablename <> 'run_lock'")
        cur.execute(f"TRUNCATE {cur.fetchone()[0]} RESTART IDENTITY CASCADE")
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'stg\\_%'")
        for (name,) in cur.fetchall():
            cur.execute(f"DROP SCHEMA {name} CASCADE")


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(bodies=st.lists(messages(), min_size=1, max_size=6), stock=st.lists(stock_rows, max_size=6),
       received=st.lists(st.sampled_from(["2026-03-02T01:00:00Z", "2026-03-02T05:00:00Z", "2026-03-02T07:00:00Z"]),
                         min_size=6, max_size=6))
def test_fuzzed_input_never_crashes_the_run_and_nothing_is_lost(migrated_url, bodies, stock, received):
    url = migrated_url
    _reset(url)
    with db.transaction(url) as conn, conn.cursor() as cur:
        for body, at in zip(bodies, received):
            cur.execute("INSERT INTO landing.order_messages (received_at, body) VALUES (%s, %s)",
                        (utc(at), body.replace("\x00", "")))
        for source, sku, qty, as_of, at in stock:
            cur.execute("INSERT INTO landing.stock_levels (source_code, sku, quantity, as_of, received_at) "
                        "VALUES (%s, %s, %s, %s, %s)", (source, sku, qty, as_of and utc(as_of), utc(at)))
    s = cycle.run_cycle(url, T1)                   # never raises: every check passes on whatever came in
    landed = len(bodies)
    not_due = sum(1 for at in received[:landed] if utc(at) > utc(T1))
    assert s["messages_in"] == landed - not_due
    assert s["messages_in"] == s["orders_created"] + s["messages_duplicate"] + s["messages_quarantined"]
    b = balance(url, T1)
    assert b["balanced"] and b["messages_landed"] == b["processed"] + b["duplicate"] + b["quarantined"] + \
        b["not_yet_due"] and b["not_yet_due"] == not_due
    (obs,) = table_rows(url, "SELECT observed FROM oms.dq_results WHERE check_id = 'extract.nothing_lost_stock'")[0]
    in_window = sum(1 for *_, at in stock if utc(at) <= utc(T1))
    assert obs["stock_rows_in"] == in_window == obs["valid"] + obs["quarantined"] + obs["not_yet_due"]
    assert table_rows(url, "SELECT count(*) FROM oms.dq_results WHERE NOT success AND blocking") == [(0,)]
