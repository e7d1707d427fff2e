"""Property tests of the allocation engine on generated demand, stock and channel policies (hypothesis)."""

from __future__ import annotations

import itertools
from collections import Counter

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backorders.allocation import ChannelPolicy, allocate_pool

SOURCES = ["S1", "S2", "S3", "S4"]
SKUS = ["A", "B", "C"]
STORES = ["WEB", "APP", "B2B"]
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
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MORE = settings(SETTINGS, max_examples=200)

policy_st = st.builds(
    ChannelPolicy,
    sources=st.lists(st.sampled_from(SOURCES), unique=True, max_size=3).map(tuple),
    max_shipments_per_order=st.sampled_from([None, None, 1, 2, 3]),
    hold_incomplete_orders=st.booleans(),
    allow_partial_lines=st.booleans(),
    allow_split_lines=st.booleans(),
)


@st.composite
def problems(draw, max_orders=8):
    """(demand, stock, policies): small, with ties, shared sources, scarce and plentiful stock."""
    policies = draw(st.dictionaries(st.sampled_from(STORES), policy_st, min_size=1, max_size=3))
    stores = sorted(policies)
    rows = []
    for o in range(draw(st.integers(0, max_orders))):
        store = draw(st.sampled_from(stores))
        tier = draw(st.integers(0, 1))
        day = draw(st.integers(1, 3))
        used = draw(st.integers(0, 2))
        for i in range(draw(st.integers(1, 3))):
            rows.append(
                {
                    "order_id": f"O{o}",
                    "line_id": f"O{o}-{i}",
                    "line_number": draw(st.sampled_from([i + 1, i + 1, 1])),  # some equal line numbers
                    "sku": draw(st.sampled_from(SKUS)),
                    "store": store,
                    "priority_tier": tier,
                    "origin_date": pd.Timestamp(f"2024-01-{day:02d}", tz="UTC"),
                    "qty_open": draw(st.integers(1, 5)),
                    "backorderable": draw(st.booleans()),
                    "shipments_used": used,
                }
            )
    demand = pd.DataFrame(rows, columns=DEMAND_COLUMNS)
    demand = demand.astype({"qty_open": "int64", "backorderable": bool})
    demand["origin_date"] = pd.to_datetime(demand["origin_date"], utc=True)
    srows = []
    for src in SOURCES + ["ELSEWHERE"]:
        for sku in SKUS + ["UNUSED"]:
            q = draw(st.sampled_from([None, 0, 0, 1, 2, 3, 5, 100]))
            if q is not None:
                srows.append((src, sku, q))
    stock = pd.DataFrame(srows, columns=["source_code", "sku", "qty_available"]).astype({"qty_available": "int64"})
    return demand, stock, policies


def by_key(df: pd.DataFrame, keys) -> pd.DataFrame:
    return df.sort_values(list(keys)).reset_index(drop=True)


def lines_with_demand(demand, result):
    return demand.merge(result.lines, on=["order_id", "line_id"], validate="one_to_one")


# --------------------------------------------------------------------------- a naive reference


def reference(demand, stock, policies):
    """The rules of the allocation module docstring, written plainly: dicts, no fast path, no vectorization."""
    rem = Counter()
    for r in stock.itertuples():
        rem[(r.source_code, r.sku)] += int(r.qty_available)
    orders: dict[str, list[dict]] = {}
    for ln in demand.to_dict("records"):
        orders.setdefault(ln["order_id"], []).append(ln)

    def priority(oid):
        ls = orders[oid]
        return (min(l["priority_tier"] for l in ls), min(l["origin_date"] for l in ls), oid)

    out_lines, out_allocs = [], []
    for oid in sorted(orders, key=priority):
        ls = sorted(orders[oid], key=lambda l: (l["line_number"], l["line_id"]))
        pol = policies[ls[0]["store"]]
        src = pol.sources
        used = max(l["shipments_used"] for l in ls)
        seen = [sum(rem[(s, l["sku"])] for s in src) for l in ls]

        def fill(S, needs):
            taken = Counter()
            res = []
            for l, n in zip(ls, needs):
                avail = {j: rem[(src[j], l["sku"])] - taken[(src[j], l["sku"])] for j in S}
                got = {}
                if n > 0:
                    if pol.allow_split_lines:
                        if pol.allow_partial_lines or sum(avail.values()) >= n:
                            for j in S:
                                t = min(n - sum(got.values()), avail[j])
                                if t > 0:
                                    got[j] = t
                    else:
                        whole = [j for j in S if avail[j] >= n]
                        if whole:
                            got = {whole[0]: n}
                        elif pol.allow_partial_lines:
                            most = max(avail.values())
                            if most > 0:
                                got = {next(j for j in S if avail[j] == most): most}
                for j, t in got.items():
                    taken[(src[j], l["sku"])] += t
                res.append(got)
            return res

        def best(needs, max_size):
            cands = [S for r in range(1, min(max_size, len(src)) + 1) for S in itertools.combinations(range(len(src)), r)]
            scored = [(sum(sum(g.values()) for g in fill(S, needs)), S) for S in cands]
            top = max((t for t, _ in scored), default=0)
            if top == 0:
                return [{} for _ in ls]
            return fill(next(S for t, S in scored if t == top), needs)

        q = [l["qty_open"] for l in ls]
        got = best(q, len(src))
        caps = [sum(g.values()) for g in got]
        nsrc = len({j for g in got for j in g})
        complete = all(c == n or not l["backorderable"] for c, n, l in zip(caps, q, ls))
        k = float("inf") if pol.max_shipments_per_order is None else pol.max_shipments_per_order - used
        if pol.hold_incomplete_orders:
            limit = min(k, 1) if complete else 0
        else:
            limit = k if complete else k - 1
        kind = None
        if nsrc > limit:
            kind = "HELD_SHIP_COMPLETE" if pol.hold_incomplete_orders and not (complete and nsrc <= 1) else "HELD_MAX_SHIPMENTS"
            rest = 0 if pol.hold_incomplete_orders else k - 1
            got = best(caps, rest) if rest >= 1 else [{} for _ in ls]
        for l, g, c, n, sn in zip(ls, got, caps, q, seen):
            a = sum(g.values())
            for j, t in sorted(g.items()):
                rem[(src[j], l["sku"])] -= t
                out_allocs.append((oid, l["line_id"], l["sku"], src[j], t))
            short = n - c
            cancelled = 0 if l["backorderable"] else short
            backordered = short if l["backorderable"] else 0
            held = c - a
            if cancelled:
                outcome = "CANCELLED_NOT_BACKORDERABLE"
            elif held:
                outcome = kind
            elif backordered:
                outcome = "PARTIAL" if a else "NO_STOCK"
            else:
                outcome = "ALLOCATED"
            out_lines.append((oid, l["line_id"], a, backordered, held, cancelled, sn, outcome))
    lines = pd.DataFrame(
        out_lines,
        columns=["order_id", "line_id", "qty_allocated", "qty_backordered", "qty_held", "qty_cancelled",
                 "qty_available_seen", "outcome"],
    )
    allocs = pd.DataFrame(out_allocs, columns=["order_id", "line_id", "sku", "source_code", "qty"])
    return lines, allocs


@MORE
@given(problems())
def test_engine_matches_the_naive_reference(problem):
    demand, stock, policies = problem
    r = allocate_pool(demand, stock, policies)
    ref_lines, ref_allocs = reference(demand, stock, policies)
    keys = ["order_id", "line_id"]
    got = by_key(r.lines[list(ref_lines.columns)], keys).astype({"order_id": object, "line_id": object, "outcome": object})
    pd.testing.assert_frame_equal(got, by_key(ref_lines, keys), check_dtype=False)
    akeys = ["order_id", "line_id", "source_code"]
    pd.testing.assert_frame_equal(
        by_key(r.allocations, akeys).astype(object), by_key(ref_allocs, akeys).astype(object), check_dtype=False
    )


# --------------------------------------------------------------------------- invariants


@SETTINGS
@given(problems())
def test_never_allocates_more_than_available(problem):
    demand, stock, policies = problem
    r = allocate_pool(demand, stock, policies)
    avail = stock.set_index(["source_code", "sku"]).qty_available
    for (src, sku), q in r.allocations.groupby(["source_code", "sku"]).qty.sum().items():
        assert q <= avail.get((src, sku), 0)
    assert (r.allocations.qty > 0).all()
    # only from the sources of the line's channel
    m = r.allocations.merge(demand[["order_id", "line_id", "store", "sku"]], on=["order_id", "line_id", "sku"])
    assert len(m) == len(r.allocations)
    for store, src in zip(m.store, m.source_code):
        assert src in policies[store].sources
    assert not r.allocations.duplicated(["order_id", "line_id", "source_code"]).any()


@SETTINGS
@given(problems())
def test_every_open_unit_is_accounted_for_once(problem):
    demand, stock, policies = problem
    r = allocate_pool(demand, stock, policies)
    assert len(r.lines) == len(demand)
    m = lines_with_demand(demand, r)
    assert (m.qty_open == m.qty_allocated + m.qty_backordered + m.qty_held + m.qty_cancelled).all()
    for c in ("qty_allocated", "qty_backordered", "qty_held", "qty_cancelled", "qty_available_seen"):
        assert (m[c] >= 0).all()
    per_line = r.allocations.groupby(["order_id", "line_id"]).qty.sum()
    for oid, lid, a in zip(m.order_id, m.line_id, m.qty_allocated):
        assert per_line.get((oid, lid), 0) == a


@SETTINGS
@given(problems())
def test_backorderable_lines_never_cancelled_others_never_backordered(problem):
    demand, stock, policies = problem
    m = lines_with_demand(demand, allocate_pool(demand, stock, policies))
    bo = m.backorderable.astype(bool)
    assert (m.loc[bo, "qty_cancelled"] == 0).all()
    assert (m.loc[~bo, "qty_backordered"] == 0).all()


@SETTINGS
@given(problems())
def test_outcome_follows_the_quantities(problem):
    demand, stock, policies = problem
    m = lines_with_demand(demand, allocate_pool(demand, stock, policies))
    for r in m.itertuples():
        if r.qty_cancelled:
            assert r.outcome == "CANCELLED_NOT_BACKORDERABLE"
        elif r.qty_held:
            assert r.outcome in ("HELD_MAX_SHIPMENTS", "HELD_SHIP_COMPLETE")
            if r.outcome == "HELD_SHIP_COMPLETE":
                assert policies[r.store].hold_incomplete_orders
            else:
                assert policies[r.store].max_shipments_per_order is not None
        elif r.qty_backordered:
            assert r.outcome == ("PARTIAL" if r.qty_allocated else "NO_STOCK")
        else:
            assert r.outcome == "ALLOCATED"
        assert (r.reason == "") == (r.outcome == "ALLOCATED")


@SETTINGS
@given(problems())
def test_new_shipments_per_order_within_the_limit(problem):
    demand, stock, policies = problem
    r = allocate_pool(demand, stock, policies)
    orders = demand.groupby("order_id").agg(store=("store", "first"), used=("shipments_used", "max"))
    nsrc = r.allocations.groupby("order_id").source_code.nunique()
    for oid, n in nsrc.items():
        pol = policies[orders.store[oid]]
        if pol.max_shipments_per_order is not None:
            assert n <= pol.max_shipments_per_order - orders.used[oid]
        if pol.hold_incomplete_orders:
            assert n == 1


@SETTINGS
@given(problems())
def test_an_incomplete_order_keeps_its_last_shipment(problem):
    # an order that does not complete now never uses its last permitted shipment
    demand, stock, policies = problem
    r = allocate_pool(demand, stock, policies)
    m = lines_with_demand(demand, r)
    for oid, g in m.groupby("order_id"):
        pol = policies[g.store.iloc[0]]
        if pol.max_shipments_per_order is None:
            continue
        incomplete = (g.qty_backordered + g.qty_held).sum() > 0
        n = r.allocations[r.allocations.order_id == oid].source_code.nunique()
        if incomplete and n:
            assert n <= pol.max_shipments_per_order - g.shipments_used.max() - 1


@SETTINGS
@given(problems())
def test_ship_complete_orders_all_or_nothing(problem):
    demand, stock, policies = problem
    m = lines_with_demand(demand, allocate_pool(demand, stock, policies))
    for _, g in m.groupby("order_id"):
        if not policies[g.store.iloc[0]].hold_incomplete_orders:
            continue
        remaining = (g.qty_open - g.qty_cancelled).sum()
        assert g.qty_allocated.sum() in (0, remaining)


@SETTINGS
@given(problems())
def test_line_rules_split_and_partial(problem):
    demand, stock, policies = problem
    r = allocate_pool(demand, stock, policies)
    m = lines_with_demand(demand, r)
    nsrc = r.allocations.groupby(["order_id", "line_id"]).source_code.nunique()
    for row in m.itertuples():
        pol = policies[row.store]
        if not pol.allow_split_lines:
            assert nsrc.get((row.order_id, row.line_id), 0) <= 1
        if not pol.allow_partial_lines:
            assert row.qty_allocated in (0, row.qty_open)
            assert row.qty_cancelled in (0, row.qty_open)


@SETTINGS
@given(problems())
def test_available_seen_is_the_stock_left_by_earlier_orders(problem):
    demand, stock, policies = problem
    r = allocate_pool(demand, stock, policies)
    avail = stock.groupby(["source_code", "sku"]).qty_available.sum()
    # priority of each order, and what each order took per (source, sku)
    pri = demand.groupby("order_id").agg(t=("priority_tier", "min"), d=("origin_date", "min"))
    pri = pri.reset_index().sort_values(["t", "d", "order_id"]).order_id.tolist()
    rank = {o: i for i, o in enumerate(pri)}
    took = r.allocations.assign(rank=r.allocations.order_id.map(rank))
    m = lines_with_demand(demand, r)
    for row in m.itertuples():
        earlier = took[(took["rank"] < rank[row.order_id]) & (took.sku == row.sku)]
        expected = 0
        for src in policies[row.store].sources:
            expected += avail.get((src, row.sku), 0) - earlier[earlier.source_code == src].qty.sum()
        assert row.qty_available_seen == expected


@SETTINGS
@given(problems(), st.randoms(use_true_random=False))
def test_shuffling_input_rows_changes_nothing(problem, rnd):
    demand, stock, policies = problem
    r1 = allocate_pool(demand, stock, policies)
    order = list(range(len(demand)))
    rnd.shuffle(order)
    sorder = list(range(len(stock)))
    rnd.shuffle(sorder)
    shuffled_policies = dict(sorted(policies.items(), reverse=True))
    r2 = allocate_pool(demand.iloc[order].reset_index(drop=True), stock.iloc[sorder], shuffled_policies)
    # the output is in priority order, so it must be identical, not just equal once sorted
    pd.testing.assert_frame_equal(r1.lines, r2.lines)
    pd.testing.assert_frame_equal(r1.allocations, r2.allocations)


@SETTINGS
@given(problems())
def test_deterministic(problem):
    demand, stock, policies = problem
    r1 = allocate_pool(demand, stock, policies)
    r2 = allocate_pool(demand.copy(), stock.copy(), dict(policies))
    pd.testing.assert_frame_equal(r1.lines, r2.lines)
    pd.testing.assert_frame_equal(r1.allocations, r2.allocations)


def _with_setting(name, value, *args):
    import backorders.allocation as engine

    saved = getattr(engine, name)
    setattr(engine, name, value)
    try:
        return allocate_pool(*args)
    finally:
        setattr(engine, name, saved)


@SETTINGS
@given(problems())
def test_sparse_pair_index_gives_the_same_result(problem):
    # large catalogues number only the (source, sku) pairs in use instead of all of them
    r1 = allocate_pool(*problem)
    r2 = _with_setting("_DENSE_LIMIT", 0, *problem)
    pd.testing.assert_frame_equal(r1.lines, r2.lines)
    pd.testing.assert_frame_equal(r1.allocations, r2.allocations)


@MORE
@given(problems())
def test_vectorized_orders_match_the_order_loop(problem):
    r1 = allocate_pool(*problem)
    r2 = _with_setting("_VECTORIZED_ORDERS", False, *problem)
    pd.testing.assert_frame_equal(r1.lines, r2.lines)
    pd.testing.assert_frame_equal(r1.allocations, r2.allocations)


@SETTINGS
@given(problems())
def test_inputs_are_not_modified(problem):
    demand, stock, policies = problem
    d0, s0 = demand.copy(), stock.copy()
    allocate_pool(demand, stock, policies)
    pd.testing.assert_frame_equal(demand, d0)
    pd.testing.assert_frame_equal(stock, s0)


# --------------------------------------------------------------------------- an independent oracle


@st.composite
def fifo_problems(draw):
    """One source, one-line orders, backorderable, no split rules: plain FIFO."""
    n = draw(st.integers(1, 12))
    rows = [
        {
            "order_id": f"O{draw(st.integers(0, 99)):02d}-{i}",
            "line_id": f"L{i}",
            "line_number": 1,
            "sku": draw(st.sampled_from(SKUS)),
            "store": "WEB",
            "priority_tier": draw(st.integers(0, 2)),
            "origin_date": pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=draw(st.integers(0, 5))),
            "qty_open": draw(st.integers(1, 6)),
            "backorderable": True,
            "shipments_used": 0,
        }
        for i in range(n)
    ]
    stock = {sku: draw(st.integers(0, 12)) for sku in SKUS}
    return pd.DataFrame(rows, columns=DEMAND_COLUMNS), stock


@SETTINGS
@given(fifo_problems())
def test_single_source_is_plain_fifo(problem):
    demand, levels = problem
    stock = pd.DataFrame([("W", k, v) for k, v in levels.items()], columns=["source_code", "sku", "qty_available"])
    r = allocate_pool(demand, stock, {"WEB": ChannelPolicy(("W",))})
    left = dict(levels)
    expected = {}
    for row in demand.sort_values(["priority_tier", "origin_date", "order_id"]).itertuples():
        take = min(row.qty_open, left[row.sku])
        left[row.sku] -= take
        expected[row.order_id] = take
    got = dict(zip(r.lines.order_id, r.lines.qty_allocated))
    assert got == expected


@pytest.mark.parametrize("n_sources", [1, 2, 5, 8, 14, 61])
def test_many_sources_exact_search(n_sources):
    # an order whose lines sit at the last sources only: the search still finds the fewest
    srcs = tuple(f"S{i}" for i in range(n_sources))
    pol = {"WEB": ChannelPolicy(srcs)}
    skus = [f"K{i}" for i in range(n_sources)]
    demand = pd.DataFrame(
        [
            {"order_id": "O", "line_id": f"L{i}", "line_number": i + 1, "sku": s, "store": "WEB",
             "priority_tier": 0, "origin_date": pd.Timestamp("2024-01-01", tz="UTC"), "qty_open": 1,
             "backorderable": True, "shipments_used": 0}
            for i, s in enumerate(skus)
        ],
        columns=DEMAND_COLUMNS,
    )
    # every source holds one SKU; the last source holds them all
    rows = [(srcs[i], skus[i], 1) for i in range(n_sources)] + [(srcs[-1], s, 1) for s in skus[:-1]]
    r = allocate_pool(demand, pd.DataFrame(rows, columns=["source_code", "sku", "qty_available"]), pol)
    assert set(r.allocations.source_code) == {srcs[-1]}
    assert (r.lines.outcome == "ALLOCATED").all()
