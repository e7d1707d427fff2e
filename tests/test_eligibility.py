"""Backorderability precedence (line attribute, catalog, channel) and priority tiers."""
from __future__ import annotations

import pandas as pd
import pytest

from backorders.eligibility import decide_backorderable, priority_tiers
from backorders.rules import PriorityFile

NA = pd.NA


@pytest.mark.parametrize("attr, catalog, channel, expected", [
    (True, False, False, (True, "line_attribute")),
    (False, True, True, (False, "line_attribute")),
    (NA, False, True, (False, "catalog")),
    (NA, True, False, (True, "catalog")),
    (NA, NA, True, (True, "channel")),
    (NA, NA, False, (False, "channel")),
])
def test_first_match_wins(attr, catalog, channel, expected):
    out = decide_backorderable(pd.Series([attr], dtype="boolean"), pd.Series([catalog], dtype="boolean"),
                               pd.Series([channel]))
    assert (bool(out.backorderable[0]), out.backorder_decided_by[0]) == expected


def test_vectorized_over_many_lines():
    n = 10_000
    attr = pd.Series([True, NA, NA] * (n // 3) + [NA], dtype="boolean")
    cat = pd.Series([NA, False, NA] * (n // 3) + [NA], dtype="boolean")
    chan = pd.Series([False] * n)
    out = decide_backorderable(attr, cat, chan)
    assert out.backorder_decided_by.value_counts().to_dict() == {"line_attribute": 3333, "catalog": 3333, "channel": 3334}
    assert out.backorderable.sum() == 3333


def test_priority_tiers_first_matching_rule():
    p = PriorityFile.model_validate({"default_tier": 100, "rules": [
        {"when": {"shipping_method": "EXPRESS"}, "tier": 10},
        {"when": {"customer_segment": "B2B", "store": "US_B2B"}, "tier": 50},
    ]})
    orders = pd.DataFrame({
        "shipping_method": ["EXPRESS", "STANDARD", None, "EXPRESS"],
        "customer_segment": ["B2C", "B2B", "B2B", "B2B"],
        "store": ["US_WEB", "US_B2B", "US_WEB", "US_B2B"],
        "customer_type": ["GUEST"] * 4,
    })
    assert list(priority_tiers(orders, p)) == [10, 50, 100, 10]
