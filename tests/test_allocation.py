"""Example tests of the allocation engine: one per business rule of domain.md section 3 and per interaction."""

from __future__ import annotations

import pandas as pd
import pytest

from backorders.allocation import (
    ALLOCATION_COLUMNS,
    LINE_COLUMNS,
    AllocationResult,
    ChannelPolicy,
    allocate_pool,
)

DEMAND_COLUMNS = [
    "order_id",
    "line_id",
    "line_number",
    "sku",
    "store",
    "priority_tier",
    "origin_date",
    "qty_open",
    "backorderable",
    "shipments_used",
]


def L(order, sku, qty, *, n=1, store="WEB", tier=0, day=1, bo=True, used=0, line_id=None):
    """One demand line; origin_date is 2024-01-<day>."""
    return {
        "order_id": order,
        "line_id": line_id or f"{order}-{n}",
        "line_number": n,
        "sku": sku,
        "store": store,
        "priority_tier": tier,
        "origin_date": pd.Timestamp(f"2024-01-{day:02d}", tz="UTC"),
        "qty_open": qty,
        "backorderable": bo,
        "shipments_used": used,
    }


def demand(*lines) -> pd.DataFrame:
    df = pd.DataFrame(list(lines), columns=DEMAND_COLUMNS)
    df["qty_open"] = df["qty_open"].astype("int64")
    df["origin_date"] = pd.to_datetime(df["origin_date"], utc=True)
    return df


def stock(**by_source) -> pd.DataFrame:
    """stock(W1={"A": 3}, W2={"A": 1, "B": 2})"""
    rows = [(src, sku, q) for src, skus in by_source.items() for sku, q in skus.items()]
    return pd.DataFrame(rows, columns=["source_code", "sku", "qty_available"]).astype({"qty_available": "int64"})


def run(d, s, **policies) -> AllocationResult:
    if not policies:
        policies = {"WEB": ChannelPolicy(("W1", "W2"))}
    return allocate_pool(d, s, policies)


def line(result, line_id) -> dict:
    rows = result.lines[result.lines.line_id == line_id]
    assert len(rows) == 1, rows
    return rows.iloc[0].to_dict()


def allocs(result, line_id) -> dict[str, int]:
    a = result.allocations[result.allocations.line_id == line_id]
    return {str(s): int(q) for s, q in zip(a.source_code, a.qty)}


def check_invariants(d, s, r):
    """Per line conservation and per (source, sku) stock never exceeded."""
    m = d.merge(r.lines, on=["order_id", "line_id"], validate="one_to_one")
    total = m.qty_allocated + m.qty_backordered + m.qty_held + m.qty_cancelled
    assert (total == m.qty_open).all()
    used = r.allocations.groupby(["source_code", "sku"]).qty.sum()
    avail = s.set_index(["source_code", "sku"]).qty_available
    for key, q in used.items():
        assert q <= avail.get(key, 0), key


# --------------------------------------------------------------------------- priority


def test_fifo_older_backorder_beats_newer_order_for_restock():
    # the newer order comes first in the input and has the smaller order id:
    # only origin_date may decide
    d = demand(L("A-new", "TENT", 5, day=9), L("Z-old", "TENT", 5, day=2))
    s = stock(W1={"TENT": 5})
    r = run(d, s)
    assert line(r, "Z-old-1")["outcome"] == "ALLOCATED"
    assert allocs(r, "Z-old-1") == {"W1": 5}
    new = line(r, "A-new-1")
    assert new["outcome"] == "NO_STOCK"
    assert new["qty_backordered"] == 5
    assert new["qty_available_seen"] == 0  # what the older order left
    assert new["reason"] == "waiting for stock: SKU TENT, 0 available at W1, W2"
    check_invariants(d, s, r)


def test_priority_tier_beats_origin_date():
    d = demand(L("old", "A", 2, tier=1, day=1), L("new", "A", 2, tier=0, day=20))
    r = run(d, stock(W1={"A": 2}))
    assert line(r, "new-1")["qty_allocated"] == 2
    assert line(r, "old-1")["outcome"] == "NO_STOCK"


def test_tie_on_tier_and_date_broken_by_order_id():
    d = demand(L("O2", "A", 2), L("O1", "A", 2))
    r = run(d, stock(W1={"A": 3}))
    assert line(r, "O1-1")["qty_allocated"] == 2
    assert line(r, "O2-1")["qty_allocated"] == 1
    assert line(r, "O2-1")["outcome"] == "PARTIAL"
    assert line(r, "O2-1")["qty_available_seen"] == 1


def test_lines_of_an_order_served_by_line_number():
    # line 2 is listed first and has the smaller line_id: line_number decides
    d = demand(L("O", "A", 2, n=2, line_id="a"), L("O", "A", 2, n=1, line_id="b"))
    r = run(d, stock(W1={"A": 3}))
    assert line(r, "b")["qty_allocated"] == 2
    assert line(r, "a")["qty_allocated"] == 1
    # both lines saw the stock as it was before the order took anything
    assert line(r, "a")["qty_available_seen"] == 3
    assert line(r, "a")["reason"].endswith("the rest taken by an earlier line of the order")


def test_equal_line_numbers_broken_by_line_id():
    d = demand(L("O", "A", 2, n=1, line_id="y"), L("O", "A", 2, n=1, line_id="x"))
    r = run(d, stock(W1={"A": 2}))
    assert line(r, "x")["qty_allocated"] == 2
    assert line(r, "y")["qty_allocated"] == 0


def test_result_does_not_depend_on_input_row_order():
    rows = [
        L("O1", "A", 2, n=1), L("O1", "B", 1, n=2), L("O2", "A", 3, day=3),
        L("O3", "B", 2, tier=1), L("O4", "A", 1, bo=False, day=2),
    ]
    s = stock(W1={"A": 3, "B": 1}, W2={"A": 1, "B": 2})
    r1 = run(demand(*rows), s)
    r2 = run(demand(*reversed(rows)), s.iloc[::-1])
    pd.testing.assert_frame_equal(r1.lines, r2.lines)
    pd.testing.assert_frame_equal(r1.allocations, r2.allocations)


# --------------------------------------------------------------------------- sourcing


def test_fewest_shipments_one_source_serving_all_lines_beats_two():
    # W1 comes first and holds A, but only W2 holds both A and B
    d = demand(L("O", "A", 1, n=1), L("O", "B", 1, n=2))
    r = run(d, stock(W1={"A": 5}, W2={"A": 5, "B": 5}))
    assert allocs(r, "O-1") == {"W2": 1}
    assert allocs(r, "O-2") == {"W2": 1}


def test_fewest_shipments_for_one_line():
    # greedy in source order would ship 2 from W1 and 3 from W2
    d = demand(L("O", "A", 5))
    r = run(d, stock(W1={"A": 2}, W2={"A": 10}))
    assert allocs(r, "O-1") == {"W2": 5}


def test_channel_source_order_among_equals():
    d = demand(L("O", "A", 1, n=1), L("O", "B", 1, n=2))
    s = stock(W1={"A": 5, "B": 5}, W2={"A": 5, "B": 5})
    r = run(d, s)
    assert set(r.allocations.source_code) == {"W1"}
    # the channel's list decides, not the source codes' alphabetical order
    r = allocate_pool(d, s, {"WEB": ChannelPolicy(("W2", "W1"))})
    assert set(r.allocations.source_code) == {"W2"}


def test_more_quantity_beats_fewer_sources():
    # W1 alone ships 2 of 3 units; W1 + W2 ship all 3: quantity first
    d = demand(L("O", "A", 2, n=1), L("O", "B", 1, n=2))
    r = run(d, stock(W1={"A": 2}, W2={"B": 1}))
    assert r.allocations.qty.sum() == 3
    assert (r.lines.outcome == "ALLOCATED").all()


def test_split_lines_allowed():
    d = demand(L("O", "A", 5))
    r = run(d, stock(W1={"A": 3}, W2={"A": 2}))
    assert allocs(r, "O-1") == {"W1": 3, "W2": 2}
    assert line(r, "O-1")["outcome"] == "ALLOCATED"


def test_split_lines_forbidden():
    d = demand(L("O", "A", 5))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), allow_split_lines=False)}
    r = allocate_pool(d, stock(W1={"A": 2}, W2={"A": 3}), pol)
    # one source only: the one that gives the most
    assert allocs(r, "O-1") == {"W2": 3}
    ln = line(r, "O-1")
    assert (ln["outcome"], ln["qty_allocated"], ln["qty_backordered"]) == ("PARTIAL", 3, 2)
    assert "split lines not allowed" in ln["reason"]


def test_split_lines_forbidden_ties_go_to_the_first_source():
    pol = {"WEB": ChannelPolicy(("W1", "W2"), allow_split_lines=False)}
    r = allocate_pool(demand(L("O", "A", 5)), stock(W1={"A": 2}, W2={"A": 2}), pol)
    assert allocs(r, "O-1") == {"W1": 2}
    # the same inside an order that needs both sources (B only at W2, C only at W1)
    d = demand(L("O", "A", 5, n=1), L("O", "B", 1, n=2), L("O", "C", 1, n=3))
    r = allocate_pool(d, stock(W1={"A": 2, "C": 1}, W2={"A": 2, "B": 1}), pol)
    assert allocs(r, "O-1") == {"W1": 2}
    assert allocs(r, "O-2") == {"W2": 1}
    assert allocs(r, "O-3") == {"W1": 1}


def test_split_lines_forbidden_with_two_lines_of_the_order_on_two_sources():
    # split forbidden is per line: the order may still use two sources
    d = demand(L("O", "A", 2, n=1), L("O", "B", 2, n=2))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), allow_split_lines=False)}
    r = allocate_pool(d, stock(W1={"A": 2}, W2={"B": 2}), pol)
    assert allocs(r, "O-1") == {"W1": 2}
    assert allocs(r, "O-2") == {"W2": 2}


def test_partial_lines_allowed():
    d = demand(L("O", "A", 5))
    r = run(d, stock(W1={"A": 3}))
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_backordered"], ln["outcome"]) == (3, 2, "PARTIAL")
    assert ln["reason"] == "waiting for stock: SKU A, 2 of 5 backordered, 3 available at W1, W2"


def test_partial_lines_forbidden_backorderable_waits_for_all():
    d = demand(L("O", "A", 5), L("P", "A", 3, day=2))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), allow_partial_lines=False)}
    r = allocate_pool(d, stock(W1={"A": 2}, W2={"A": 1}), pol)
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_backordered"], ln["qty_held"]) == (0, 5, 0)
    assert ln["outcome"] == "NO_STOCK"
    assert ln["qty_available_seen"] == 3
    assert "partial lines not allowed" in ln["reason"]
    # split lines are allowed: the next order gets its 3 from two sources
    assert allocs(r, "P-1") == {"W1": 2, "W2": 1}


def test_partial_lines_forbidden_not_backorderable_is_cancelled_in_full():
    d = demand(L("O", "A", 5, bo=False))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), allow_partial_lines=False)}
    r = allocate_pool(d, stock(W1={"A": 3}), pol)
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_cancelled"], ln["outcome"]) == (0, 5, "CANCELLED_NOT_BACKORDERABLE")
    assert r.allocations.empty


def test_split_and_partial_forbidden_needs_one_source_with_everything():
    d = demand(L("O", "A", 4))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), allow_split_lines=False, allow_partial_lines=False)}
    r = allocate_pool(d, stock(W1={"A": 3}, W2={"A": 3}), pol)
    assert line(r, "O-1")["outcome"] == "NO_STOCK"
    r = allocate_pool(d, stock(W1={"A": 3}, W2={"A": 4}), pol)
    assert allocs(r, "O-1") == {"W2": 4}


def test_single_source_channel():
    d = demand(L("O", "A", 4, store="EU"), L("P", "A", 4, store="EU", day=2))
    r = allocate_pool(d, stock(K={"A": 6}, W1={"A": 100}), {"EU": ChannelPolicy(("K",))})
    assert allocs(r, "O-1") == {"K": 4}
    assert allocs(r, "P-1") == {"K": 2}


def test_channel_without_sources():
    d = demand(L("O", "A", 4), L("P", "B", 1, bo=False))
    r = allocate_pool(d, stock(W1={"A": 6}), {"WEB": ChannelPolicy(())})
    assert line(r, "O-1")["outcome"] == "NO_STOCK"
    assert line(r, "O-1")["reason"] == "waiting for stock: SKU A, 0 available at no source"
    assert line(r, "P-1")["outcome"] == "CANCELLED_NOT_BACKORDERABLE"
    assert r.allocations.empty


def test_channels_sharing_a_source_compete_by_priority():
    d = demand(L("web", "A", 3, store="WEB", day=5), L("app", "A", 3, store="APP", day=1))
    pols = {"WEB": ChannelPolicy(("W1", "W2")), "APP": ChannelPolicy(("W2",))}
    r = allocate_pool(d, stock(W1={"A": 1}, W2={"A": 4}), pols)
    assert allocs(r, "app-1") == {"W2": 3}
    assert allocs(r, "web-1") == {"W1": 1, "W2": 1}
    assert line(r, "web-1")["qty_available_seen"] == 2


# --------------------------------------------------------------------------- cancellation


def test_not_backorderable_shortfall_is_cancelled():
    d = demand(L("O", "A", 3, bo=False))
    r = run(d, stock(W1={"A": 1}))
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_cancelled"], ln["qty_backordered"]) == (1, 2, 0)
    assert ln["outcome"] == "CANCELLED_NOT_BACKORDERABLE"
    assert ln["reason"].startswith("cancelled: not backorderable and 2 of 3 not in stock")


def test_not_backorderable_without_any_stock_is_cancelled_in_full():
    d = demand(L("O", "A", 3, bo=False))
    r = run(d, stock())
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_cancelled"]) == (0, 3)


# --------------------------------------------------------------------------- max shipments


def test_max_shipments_allows_completing_with_the_last_shipments():
    d = demand(L("O", "A", 1, n=1), L("O", "B", 1, n=2))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), max_shipments_per_order=2)}
    r = allocate_pool(d, stock(W1={"A": 1}, W2={"B": 1}), pol)
    assert (r.lines.outcome == "ALLOCATED").all()
    assert set(r.allocations.source_code) == {"W1", "W2"}


def test_max_shipments_counts_earlier_runs():
    # one shipment used in an earlier run: only one left, and the order needs two
    d = demand(L("O", "A", 1, n=1, used=1), L("O", "B", 1, n=2, used=1))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), max_shipments_per_order=2)}
    r = allocate_pool(d, stock(W1={"A": 1}, W2={"B": 1}), pol)
    assert r.allocations.empty
    assert (r.lines.outcome == "HELD_MAX_SHIPMENTS").all()
    assert (r.lines.qty_held == 1).all()
    assert line(r, "O-1")["reason"] == "held: order limited to 2 shipments, 1 used; waiting until one source can ship the rest"
    # as soon as one source can ship the whole rest, it does
    r = allocate_pool(d, stock(W1={"A": 1}, W2={"A": 1, "B": 1}), pol)
    assert (r.lines.outcome == "ALLOCATED").all()
    assert set(r.allocations.source_code) == {"W2"}


def test_max_shipments_keeps_the_last_shipment_for_the_rest():
    # m=2: the order cannot complete now (C has no stock), so it may use only
    # one source now and keep the second for the rest
    d = demand(L("O", "A", 2, n=1), L("O", "B", 1, n=2), L("O", "C", 1, n=3))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), max_shipments_per_order=2)}
    r = allocate_pool(d, stock(W1={"A": 2}, W2={"B": 1}), pol)
    assert allocs(r, "O-1") == {"W1": 2}  # the source that ships the most
    b = line(r, "O-2")
    assert (b["qty_held"], b["outcome"]) == (1, "HELD_MAX_SHIPMENTS")
    assert b["reason"] == "held: order limited to 2 shipments, 0 used; waiting for SKU C"
    c = line(r, "O-3")
    assert (c["qty_backordered"], c["outcome"]) == (1, "NO_STOCK")


def test_max_shipments_with_partial_lines_over_several_runs():
    pol = {"WEB": ChannelPolicy(("W1", "W2", "W3"), max_shipments_per_order=2)}
    # run 1: 10 needed, 4 + 3 + 3 available; completing needs 3 shipments > 2
    r = allocate_pool(demand(L("O", "A", 10)), stock(W1={"A": 4}, W2={"A": 3}, W3={"A": 3}), pol)
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_held"], ln["qty_backordered"]) == (4, 6, 0)
    assert allocs(r, "O-1") == {"W1": 4}
    assert ln["outcome"] == "HELD_MAX_SHIPMENTS"
    # run 2: 6 left, one shipment left; 3 + 3 at two sources is not enough
    r = allocate_pool(demand(L("O", "A", 6, used=1)), stock(W2={"A": 3}, W3={"A": 3}), pol)
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_held"]) == (0, 6)
    # run 3: one source holds all 6
    r = allocate_pool(demand(L("O", "A", 6, used=1)), stock(W2={"A": 3}, W3={"A": 7}), pol)
    assert allocs(r, "O-1") == {"W3": 6}


def test_max_shipments_held_and_backordered_in_one_line():
    # 10 needed, 4 + 3 available: 3 short (backordered), and of the 7 that
    # could ship only one source's worth may ship now (the order is not complete)
    pol = {"WEB": ChannelPolicy(("W1", "W2"), max_shipments_per_order=2)}
    r = allocate_pool(demand(L("O", "A", 10)), stock(W1={"A": 4}, W2={"A": 3}), pol)
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_held"], ln["qty_backordered"]) == (4, 3, 3)
    assert ln["outcome"] == "HELD_MAX_SHIPMENTS"


def test_max_shipments_all_used_holds_everything():
    pol = {"WEB": ChannelPolicy(("W1",), max_shipments_per_order=1)}
    r = allocate_pool(demand(L("O", "A", 2, used=1)), stock(W1={"A": 9}), pol)
    ln = line(r, "O-1")
    assert (ln["qty_allocated"], ln["qty_held"], ln["outcome"]) == (0, 2, "HELD_MAX_SHIPMENTS")
    assert ln["reason"] == "held: order limited to 1 shipment, 1 used"


def test_max_one_shipment_and_not_backorderable_line():
    # the not-backorderable short line is cancelled, so the order completes
    # from one source and ships
    d = demand(L("O", "A", 1, n=1), L("O", "B", 2, n=2, bo=False))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), max_shipments_per_order=1)}
    r = allocate_pool(d, stock(W1={"A": 1, "B": 1}), pol)
    assert allocs(r, "O-1") == {"W1": 1}
    b = line(r, "O-2")
    assert (b["qty_allocated"], b["qty_cancelled"]) == (1, 1)


# --------------------------------------------------------------------------- ship complete


def test_ship_complete_with_several_sources_holds_the_order():
    d = demand(L("O", "A", 1, n=1), L("O", "B", 1, n=2))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), hold_incomplete_orders=True)}
    r = allocate_pool(d, stock(W1={"A": 1}, W2={"B": 1}), pol)
    assert r.allocations.empty
    assert (r.lines.outcome == "HELD_SHIP_COMPLETE").all()
    assert (r.lines.qty_held == 1).all()
    assert line(r, "O-1")["reason"] == "held: ship complete; no single source holds the whole order (W1, W2)"
    # one source with everything: shipped complete
    r = allocate_pool(d, stock(W1={"A": 1}, W2={"A": 1, "B": 1}), pol)
    assert set(r.allocations.source_code) == {"W2"}
    assert (r.lines.outcome == "ALLOCATED").all()


def test_ship_complete_waits_for_missing_stock():
    d = demand(L("O", "A", 2, n=1), L("O", "B", 1, n=2))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), hold_incomplete_orders=True)}
    r = allocate_pool(d, stock(W1={"A": 2}), pol)
    a, b = line(r, "O-1"), line(r, "O-2")
    assert (a["qty_held"], a["outcome"]) == (2, "HELD_SHIP_COMPLETE")
    assert a["reason"] == "held: ship complete; waiting for SKU B at W1, W2"
    assert (b["qty_backordered"], b["outcome"]) == (1, "NO_STOCK")


def test_ship_complete_with_a_short_not_backorderable_line():
    # B is not backorderable: its missing quantity is cancelled, and what is
    # left of the order ships complete from W1
    d = demand(L("O", "A", 1, n=1), L("O", "B", 3, n=2, bo=False))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), hold_incomplete_orders=True)}
    r = allocate_pool(d, stock(W1={"A": 1, "B": 1}), pol)
    b = line(r, "O-2")
    assert (b["qty_allocated"], b["qty_cancelled"], b["outcome"]) == (1, 2, "CANCELLED_NOT_BACKORDERABLE")
    assert allocs(r, "O-1") == {"W1": 1}
    # the B unit is at another source: no single source ships the rest, held
    r = allocate_pool(d, stock(W1={"A": 1}, W2={"B": 1}), pol)
    a, b = line(r, "O-1"), line(r, "O-2")
    assert (a["qty_held"], a["outcome"]) == (1, "HELD_SHIP_COMPLETE")
    assert (b["qty_held"], b["qty_cancelled"], b["outcome"]) == (1, 2, "CANCELLED_NOT_BACKORDERABLE")
    assert "held: ship complete" in b["reason"]
    assert r.allocations.empty


def test_ship_complete_and_max_shipments_stricter_wins():
    d = demand(L("O", "A", 1, n=1, used=1), L("O", "B", 1, n=2, used=1))
    s = stock(W1={"A": 1, "B": 1})
    # ship complete alone would ship from W1, but the one allowed shipment is used
    pol = {"WEB": ChannelPolicy(("W1", "W2"), hold_incomplete_orders=True, max_shipments_per_order=1)}
    r = allocate_pool(d, s, pol)
    assert r.allocations.empty
    assert (r.lines.outcome == "HELD_MAX_SHIPMENTS").all()
    # the same with a newer order competing for A (decided in the order loop)
    r = allocate_pool(pd.concat([d, demand(L("P", "A", 1, day=9))]), s, pol)
    assert line(r, "O-1")["outcome"] == line(r, "O-2")["outcome"] == "HELD_MAX_SHIPMENTS"
    assert allocs(r, "P-1") == {"W1": 1}
    # a generous limit does not relax ship complete
    d2 = demand(L("O", "A", 1, n=1), L("O", "B", 1, n=2))
    pol = {"WEB": ChannelPolicy(("W1", "W2"), hold_incomplete_orders=True, max_shipments_per_order=5)}
    r = allocate_pool(d2, stock(W1={"A": 1}, W2={"B": 1}), pol)
    assert (r.lines.outcome == "HELD_SHIP_COMPLETE").all()


def test_stock_a_held_order_does_not_take_stays_free_for_the_next():
    d = demand(
        L("old", "A", 2, n=1, day=1), L("old", "B", 1, n=2, day=1),  # B out of stock: held
        L("new", "A", 2, day=5),
    )
    pol = {"WEB": ChannelPolicy(("W1", "W2"), hold_incomplete_orders=True)}
    r = allocate_pool(d, stock(W1={"A": 2}), pol)
    assert line(r, "old-1")["outcome"] == "HELD_SHIP_COMPLETE"
    assert allocs(r, "new-1") == {"W1": 2}
    assert line(r, "new-1")["qty_available_seen"] == 2


def test_max_shipments_held_stock_stays_free_for_the_next():
    d = demand(L("old", "A", 1, used=1, day=1), L("new", "A", 1, day=5))
    pol = {"WEB": ChannelPolicy(("W1",), max_shipments_per_order=1)}
    r = allocate_pool(d, stock(W1={"A": 1}), pol)
    assert line(r, "old-1")["qty_held"] == 1
    assert allocs(r, "new-1") == {"W1": 1}


# --------------------------------------------------------------------------- plumbing


def test_output_columns_and_types():
    d = demand(L("O", "A", 3), L("P", "B", 1))
    r = run(d, stock(W1={"A": 2}))
    assert list(r.allocations.columns) == list(ALLOCATION_COLUMNS)
    assert list(r.lines.columns) == list(LINE_COLUMNS)
    assert r.allocations.qty.dtype == "int64"
    for c in ("qty_allocated", "qty_backordered", "qty_held", "qty_cancelled", "qty_available_seen"):
        assert r.lines[c].dtype == "int64", c
    assert line(r, "O-1")["reason"] != "" and line(r, "P-1")["reason"] != ""


def test_allocated_line_has_empty_reason():
    r = run(demand(L("O", "A", 1)), stock(W1={"A": 1}))
    assert line(r, "O-1")["reason"] == ""


def test_empty_demand():
    r = run(demand(), stock(W1={"A": 1}))
    assert r.allocations.empty and r.lines.empty
    assert list(r.lines.columns) == list(LINE_COLUMNS)
    assert list(r.allocations.columns) == list(ALLOCATION_COLUMNS)


def test_extra_columns_are_ignored():
    d = demand(L("O", "A", 1))
    d["product_name"] = ["whatever"]
    r = run(d, stock(W1={"A": 1}).assign(note="x"))
    assert line(r, "O-1")["qty_allocated"] == 1


def test_unknown_store_is_an_error_naming_it():
    with pytest.raises(ValueError, match="NOWHERE"):
        run(demand(L("O", "A", 1, store="NOWHERE")), stock())


def test_order_in_two_stores_is_an_error():
    with pytest.raises(ValueError, match="more than one store"):
        allocate_pool(
            demand(L("O", "A", 1, n=1), L("O", "B", 1, n=2, store="APP")),
            stock(),
            {"WEB": ChannelPolicy(("W1",)), "APP": ChannelPolicy(("W1",))},
        )


def test_duplicate_line_is_an_error():
    with pytest.raises(ValueError, match="duplicate line"):
        run(demand(L("O", "A", 1), L("O", "B", 1)), stock())


def test_duplicate_stock_row_is_an_error():
    s = pd.concat([stock(W1={"A": 1}), stock(W1={"A": 2})])
    with pytest.raises(ValueError, match="more than one row"):
        run(demand(L("O", "A", 1)), s)


@pytest.mark.parametrize("qty", [0, -1])
def test_non_positive_open_quantity_is_an_error(qty):
    with pytest.raises(ValueError, match="qty_open"):
        run(demand(L("O", "A", qty)), stock())


def test_negative_stock_is_an_error():
    with pytest.raises(ValueError, match="qty_available"):
        run(demand(L("O", "A", 1)), stock(W1={"A": -1}))


def test_policy_validation():
    assert ChannelPolicy(["W1", "W2"]).sources == ("W1", "W2")
    with pytest.raises(ValueError):
        ChannelPolicy(("W1", "W1"))
    with pytest.raises(ValueError):
        ChannelPolicy(("W1",), max_shipments_per_order=0)
    with pytest.raises(ValueError):
        ChannelPolicy("W1")


def test_static_and_sequential_paths_agree(monkeypatch):
    # with plenty of stock every order is decided without the order loop;
    # with scarce stock (W2 holds 2 A for 3 wanted) the last order wanting A goes through it
    import backorders.allocation as engine

    looped = []
    real = engine._run_orders

    def spy(starts, *args):
        looped.append(len(starts))
        return real(starts, *args)

    monkeypatch.setattr(engine, "_run_orders", spy)
    rows = [L("O1", "A", 2, n=1), L("O1", "B", 1, n=2), L("O2", "A", 1, day=2), L("O3", "C", 1, day=3)]
    d = demand(*rows)
    plenty = run(d, stock(W1={"A": 100}, W2={"A": 100, "B": 100, "C": 100}))
    assert looped == []
    tight = run(d, stock(W1={"A": 100}, W2={"A": 2, "B": 1, "C": 1}))
    assert looped and looped[0] >= 1
    cols = ["order_id", "line_id", "qty_allocated", "outcome"]
    pd.testing.assert_frame_equal(plenty.lines[cols], tight.lines[cols])
    pd.testing.assert_frame_equal(plenty.allocations, tight.allocations)
    assert allocs(plenty, "O2-1") == {"W1": 1}
