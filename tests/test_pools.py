"""Tests of stock pools: channels sharing a source form one pool, and pools are independent problems."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backorders.allocation import ChannelPolicy, allocate_pool
from backorders.pools import pool_sources, stock_pools

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


def test_channels_sharing_a_source_are_one_pool():
    pols = {
        "US_WEB": ChannelPolicy(("WH_PDX", "WH_NJ")),
        "US_APP": ChannelPolicy(("WH_NJ",)),
        "EU_WEB": ChannelPolicy(("WH_KOELN",)),
    }
    assert stock_pools(pols) == {"US_WEB": "pool-WH_NJ", "US_APP": "pool-WH_NJ", "EU_WEB": "pool-WH_KOELN"}


def test_pools_are_transitive():
    # A and C share no source, but both share one with B
    pols = {
        "A": ChannelPolicy(("S3", "S1")),
        "B": ChannelPolicy(("S1", "S5")),
        "C": ChannelPolicy(("S5", "S2")),
        "D": ChannelPolicy(("S4",)),
    }
    pools = stock_pools(pols)
    assert pools["A"] == pools["B"] == pools["C"] == "pool-S1"
    assert pools["D"] == "pool-S4"
    assert pool_sources(pols) == {"pool-S1": ("S1", "S2", "S3", "S5"), "pool-S4": ("S4",)}


def test_transitive_through_a_later_channel():
    # the link between the first two channels appears only with the last one
    pols = {
        "A": ChannelPolicy(("S9",)),
        "B": ChannelPolicy(("S2",)),
        "C": ChannelPolicy(("S2", "S9")),
    }
    assert set(stock_pools(pols).values()) == {"pool-S2"}


def test_channels_without_sources_are_pools_of_their_own():
    pols = {"X": ChannelPolicy(()), "Y": ChannelPolicy(()), "Z": ChannelPolicy(("S1",))}
    pools = stock_pools(pols)
    assert pools == {"X": "nosource-X", "Y": "nosource-Y", "Z": "pool-S1"}
    assert pool_sources(pols)["nosource-X"] == ()


def test_pool_ids_do_not_depend_on_declaration_order():
    pols = {"A": ChannelPolicy(("S2", "S1")), "B": ChannelPolicy(("S3", "S2")), "C": ChannelPolicy(("S4",))}
    assert stock_pools(pols) == stock_pools(dict(reversed(list(pols.items()))))


def test_empty():
    assert stock_pools({}) == {}


# --------------------------------------------------------------------------- independence

SOURCES = ["S1", "S2", "S3", "S4", "S5"]
STORES = ["WEB", "APP", "B2B", "EU"]
policy_st = st.builds(
    ChannelPolicy,
    sources=st.lists(st.sampled_from(SOURCES), unique=True, max_size=2).map(tuple),
    max_shipments_per_order=st.sampled_from([None, 1, 2]),
    hold_incomplete_orders=st.booleans(),
    allow_partial_lines=st.booleans(),
    allow_split_lines=st.booleans(),
)


@st.composite
def problems(draw):
    policies = draw(st.dictionaries(st.sampled_from(STORES), policy_st, min_size=1, max_size=4))
    stores = sorted(policies)
    rows = []
    for o in range(draw(st.integers(0, 10))):
        store = draw(st.sampled_from(stores))
        day = draw(st.integers(1, 3))
        for i in range(draw(st.integers(1, 3))):
            rows.append(
                {
                    "order_id": f"O{o}",
                    "line_id": f"O{o}-{i}",
                    "line_number": i + 1,
                    "sku": draw(st.sampled_from(["A", "B"])),
                    "store": store,
                    "priority_tier": 0,
                    "origin_date": pd.Timestamp(f"2024-01-{day:02d}", tz="UTC"),
                    "qty_open": draw(st.integers(1, 4)),
                    "backorderable": draw(st.booleans()),
                    "shipments_used": draw(st.integers(0, 1)),
                }
            )
    demand = pd.DataFrame(rows, columns=DEMAND_COLUMNS).astype({"qty_open": "int64", "backorderable": bool})
    demand["origin_date"] = pd.to_datetime(demand["origin_date"], utc=True)
    stock = pd.DataFrame(
        [(s, k, draw(st.sampled_from([0, 1, 2, 3, 50]))) for s in SOURCES for k in ["A", "B"]],
        columns=["source_code", "sku", "qty_available"],
    )
    return demand, stock, policies


def _sorted(df, keys):
    return df.sort_values(keys).reset_index(drop=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_union_of_pools_equals_pools_allocated_one_by_one(problem):
    demand, stock, policies = problem
    pools = stock_pools(policies)
    sources = pool_sources(policies)
    whole = allocate_pool(demand, stock, policies)
    parts_lines, parts_allocs = [], []
    for pool, srcs in sources.items():
        stores = [s for s, p in pools.items() if p == pool]
        r = allocate_pool(
            demand[demand.store.isin(stores)],
            stock[stock.source_code.isin(srcs)],
            {s: policies[s] for s in stores},
        )
        parts_lines.append(r.lines)
        parts_allocs.append(r.allocations)
    keys = ["order_id", "line_id"]
    pd.testing.assert_frame_equal(_sorted(whole.lines, keys), _sorted(pd.concat(parts_lines), keys))
    akeys = ["order_id", "line_id", "source_code"]
    pd.testing.assert_frame_equal(
        _sorted(whole.allocations, akeys), _sorted(pd.concat(parts_allocs), akeys), check_dtype=False
    )


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(STORES), policy_st, max_size=4))
def test_pools_are_the_connected_components(policies):
    pools = stock_pools(policies)
    assert set(pools) == set(policies)
    stores = list(policies)
    # sharing a source implies the same pool
    for a in stores:
        for b in stores:
            if set(policies[a].sources) & set(policies[b].sources):
                assert pools[a] == pools[b]
    # each pool is connected: a walk over shared sources reaches all its stores
    for pool in set(pools.values()):
        members = [s for s in stores if pools[s] == pool]
        reached, frontier = {members[0]}, [members[0]]
        while frontier:
            a = frontier.pop()
            for b in members:
                if b not in reached and set(policies[a].sources) & set(policies[b].sources):
                    reached.add(b)
                    frontier.append(b)
        assert reached == set(members)
        srcs = {x for s in members for x in policies[s].sources}
        assert pool == (f"pool-{min(srcs)}" if srcs else f"nosource-{members[0]}")
